"""How fast local run logs are read: values per second and peak memory, 1 run vs all runs.

Writes a store of real `.wandb` files with the wandb SDK (offline; cached in `--store` and reused),
plus the same values as JSON-lines files, then reads them with `LocalWandbSource` / `JsonlSource`
one run at a time, as the pipeline does. Each measurement runs in a fresh child process so its
peak RSS (`ru_maxrss`) is its own. Reading is single-process: per-core rate = values / CPU seconds.
The child reads as the catalog's parse workers do (allocator tuned by `reuse_freed_memory`); the
"plain process" rows read with the allocator untouched, as a sync in the asset's own process does.

    python bench/ingest_speed.py --values 10000000 --out bench/results/ingest.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

GOAL_VALUES_PER_S_PER_CORE = 2_000_000


def row_of(run: int, step: int, keys: int) -> dict[str, float]:
    rnd = random.Random(run * 1_000_003 + step)
    return {f"layer{k:04d}/grad_norm": rnd.random() for k in range(keys)}


def write_wandb_store(root: Path, runs: int, steps: int, keys: int, row: Callable[[int, int, int], dict] = row_of) -> None:
    """One offline SDK run per index, logging `row(run, step, keys)`; a `.done-<i>` marker makes
    an interrupted write resumable."""
    os.environ.update(
        {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true",
         "WANDB_CONFIG_DIR": str(root / ".wandb-config"), "WANDB_CACHE_DIR": str(root / ".wandb-cache")}
    )
    import wandb

    for index in range(runs):
        marker = root / f".done-{index}"
        if marker.exists():
            continue
        started = time.perf_counter()
        run = wandb.init(mode="offline", dir=root, project="ingest-bench", id=f"bench{index:04d}",
                         config={"fp8_format": "E5M2", "seed": index})
        for step in range(steps):
            run.log(row(index, step, keys), step=step)
        run.finish()
        marker.touch()
        print(f"  wrote wandb run {index + 1}/{runs} in {time.perf_counter() - started:.1f} s", flush=True)


def write_jsonl_store(root: Path, runs: int, steps: int, keys: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for index in range(runs):
        path = root / f"bench{index:04d}.jsonl"
        if path.exists():
            continue
        tmp = path.with_suffix(".partial")
        with open(tmp, "w") as handle:
            for step in range(steps):
                handle.write(json.dumps({"step": step, **row_of(index, step, keys)}) + "\n")
        tmp.rename(path)


def _measure(kind: str, root: str, limit: int | None, as_parse_worker: bool, queue: multiprocessing.Queue) -> None:
    """Child process: read `limit` runs (all when None) one at a time; report rate and peak RSS."""
    if as_parse_worker:
        from altgrad_pipeline.ingest.parse_process import reuse_freed_memory

        reuse_freed_memory()
    if kind == "wandb":
        from altgrad_pipeline.ingest.wandb.local import LocalWandbSource as Source
    else:
        from altgrad_pipeline.ingest.jsonl import JsonlSource as Source
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    source = Source(Path(root))
    wall, cpu = time.perf_counter(), time.process_time()
    locators = source.discover()[:limit]
    values = issues = 0
    for locator in locators:
        run = source.read(locator)
        values += run.history.height
        issues += len(run.issues)
        del run
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    queue.put({
        "runs": len(locators),
        "values": values,
        "issues": issues,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "values_per_s": round(values / wall),
        "values_per_cpu_s": round(values / cpu),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_imports_mb": round(baseline_kb / 1024, 1),
    })


def measure(kind: str, root: Path, limit: int | None, *, as_parse_worker: bool = True) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_measure, args=(kind, str(root), limit, as_parse_worker, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--values", type=int, default=10_000_000, help="history values in the store (at least)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--keys", type=int, default=1000, help="metrics per logged step")
    parser.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "altgrad-ingest-bench")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ingest.json"))
    parser.add_argument("--skip-jsonl", action="store_true")
    args = parser.parse_args()
    steps = -(-args.values // (args.runs * args.keys))
    store = args.store / f"{args.runs}x{steps}x{args.keys}"
    print(f"store {store}: {args.runs} runs x {steps} steps x {args.keys} keys = {args.runs * steps * args.keys:,} values")
    started = time.perf_counter()
    write_wandb_store(store / "wandb_runs", args.runs, steps, args.keys)
    print(f"wandb store ready ({time.perf_counter() - started:.0f} s)")
    results: dict = {
        "store": {"runs": args.runs, "steps": steps, "keys": args.keys, "values": args.runs * steps * args.keys,
                  "wandb_bytes": sum(p.stat().st_size for p in (store / "wandb_runs").rglob("*.wandb"))},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "note": "reading is single-process, one run at a time; per-core rate = values / CPU seconds of the reader",
        "goal_values_per_s_per_core": GOAL_VALUES_PER_S_PER_CORE,
        "wandb": {
            "one_run": measure("wandb", store / "wandb_runs", 1),
            "all_runs": measure("wandb", store / "wandb_runs", None),
            "all_runs_plain_process": measure("wandb", store / "wandb_runs", None, as_parse_worker=False),
        },
    }
    if args.skip_jsonl:
        results["jsonl"] = "skipped (--skip-jsonl)"
    else:
        write_jsonl_store(store / "jsonl_runs", args.runs, steps, args.keys)
        newest_write = max(p.stat().st_mtime for p in (store / "jsonl_runs").glob("*.jsonl"))
        results["jsonl"] = {
            # JsonlSource keeps logs written within its grace period (1 h) parsed, to resume them:
            # peak memory with a fresh store is that of a live study, with an older one of a finished one.
            "newest_file_age_s": round(time.time() - newest_write),
            "one_run": measure("jsonl", store / "jsonl_runs", 1),
            "all_runs": measure("jsonl", store / "jsonl_runs", None),
            "all_runs_plain_process": measure("jsonl", store / "jsonl_runs", None, as_parse_worker=False),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    json.dump(results, sys.stdout, indent=2)
    print()
    for kind in ("wandb", "jsonl"):
        for name, row in results[kind].items() if isinstance(results[kind], dict) else ():
            if isinstance(row, dict):
                print(f"{kind:6s} {name:24s} {row['values']:>11,} values  {row['values_per_cpu_s']:>10,} values/CPU-s  peak {row['peak_rss_mb']} MB")
    print(f"goal: {GOAL_VALUES_PER_S_PER_CORE:,} values/CPU-s for .wandb")


if __name__ == "__main__":
    main()

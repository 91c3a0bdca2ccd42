"""Scale-out figures, side by side in one run (writes bench/results/scale_out.json):

1. A backfill of 8 format partitions (ingest + layer_metrics + checks per partition, one Dagster
   run each) on a Postgres instance: in-process executor, runs one after another; forkserver
   multiprocess executor, runs one after another; Celery with 2 workers (one pool process each),
   4 partition runs in flight, as `altgrad-pipeline refresh` does with ALTGRAD_EXECUTOR=celery.
2. Peak memory of the `run_outcomes` analysis over 1,000 runs in 8 synthetic Parquet partitions:
   one lazy scan (what the IO manager hands a `pl.LazyFrame` input) against loading every
   partition first (a `pl.DataFrame` input). Each variant runs in a fresh process; peak RSS is its
   `ru_maxrss`.

Needs the scale extra and the servers of the scale tier (PostgreSQL 15, redis-server), run as root.

    python bench/scale_out.py [--runs-per-format 3] [--max-steps 300] [--memory-runs 1000]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from altgrad_pipeline_tests.scale import servers  # noqa: E402

FORMATS = ["BF16", "E5M2", "E3M4", "E2M5", "E1M6", "E0M7", "E4M3", "E7M0"]
RESULTS = PROJECT_ROOT / "bench" / "results" / "scale_out.json"


def write_study(store: Path, runs_per_format: int, max_steps: int) -> int:
    from altgrad_pipeline.examples import ExampleRunSpec, write_example_runs

    specs = [
        ExampleRunSpec(format_name=fmt, optimizer="adamw", seed=seed, max_steps=max_steps)
        for fmt in FORMATS
        for seed in range(1, runs_per_format + 1)
    ]
    write_example_runs(store, specs)
    return len(specs)


def backfill(executor: str, env: dict[str, str], store: Path, data: Path) -> dict[str, object]:
    """Materialize the 8 format partitions with one executor; wall time and success per run."""
    import dagster as dg

    from altgrad_pipeline import execution, refresh, settings
    from altgrad_pipeline.defs.jobs import refresh_format_job
    from altgrad_pipeline.defs.partitions import fp8_format_partitions

    os.environ.update(env | {"ALTGRAD_EXECUTOR": executor, "ALTGRAD_CACHE_DIR": str(data / "cache")})
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        instance.add_dynamic_partitions(fp8_format_partitions.name, FORMATS)
        job = execution.reconstructable_refresh_job(str(store), str(data), refresh_format_job.name)
        started = time.perf_counter()
        if execution.runs_in_parallel(settings.executor_choice()):
            outcomes = [ok for _, (ok, _) in refresh._run_partitions_in_parallel(instance, str(store), str(data), FORMATS)]
        else:
            outcomes = [refresh._run(instance, job, fmt)[0] for fmt in FORMATS]
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "runs_succeeded": sum(outcomes), "runs": len(FORMATS)}


def synthetic_partitions(folder: Path, n_runs: int, steps: int, keys: int) -> None:
    """`raw_runs` and `run_histories` partitions shaped like the real ones, 8 formats."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(0)
    per_format = n_runs // len(FORMATS)
    for fmt in FORMATS:
        run_ids = [f"{fmt}-{i:04d}" for i in range(per_format)]
        (folder / "raw_runs").mkdir(parents=True, exist_ok=True)
        (folder / "run_histories").mkdir(parents=True, exist_ok=True)
        pl.DataFrame(
            {"run_id": run_ids, "state": ["finished"] * per_format, "max_steps": [steps] * per_format, "last_step": [steps - 1] * per_format}
        ).write_parquet(folder / "raw_runs" / f"{fmt}.parquet")
        key_names = ["train/loss"] + [f"grad_norm/transformer.h.{i % 12}.mlp.c_fc.weight.{i}" for i in range(keys - 1)]
        rows = per_format * steps * keys
        pl.DataFrame(
            {
                "run_id": np.repeat(run_ids, steps * keys),
                "step": np.tile(np.repeat(np.arange(steps), keys), per_format),
                "key": np.tile(key_names, per_format * steps),
                "value": rng.standard_normal(rows),
                "runtime": np.zeros(rows),
                "timestamp": np.zeros(rows),
            }
        ).write_parquet(folder / "run_histories" / f"{fmt}.parquet", row_group_size=256_000)


def outcomes_peak_rss(folder: Path, lazy: bool) -> dict[str, float]:
    """`run_outcomes` in a fresh process: peak RSS (MB) and seconds."""
    code = f"""
import resource, time, polars as pl
from altgrad_pipeline.analysis.outcomes import run_outcomes
folder = {str(folder)!r}
started = time.perf_counter()
runs = pl.scan_parquet(folder + "/raw_runs/*.parquet")
histories = pl.scan_parquet(folder + "/run_histories/*.parquet")
if not {lazy}:
    runs, histories = runs.collect(), histories.collect()
frame = run_outcomes(runs, histories)
print(frame.height, time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
    height, seconds, peak_mb = out.stdout.split()
    return {"rows_out": int(height), "seconds": round(float(seconds), 2), "peak_rss_mb": round(float(peak_mb))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-per-format", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--memory-runs", type=int, default=1000)
    parser.add_argument("--memory-steps", type=int, default=200)
    parser.add_argument("--memory-keys", type=int, default=40)
    args = parser.parse_args()
    missing = servers.missing_binaries()
    if missing or os.geteuid() != 0:
        sys.exit(f"needs root and {', '.join(missing) or 'the servers'}: see the docstring")

    work = Path(tempfile.mkdtemp(prefix="altgrad-scale-bench-"))
    pg_root = Path(tempfile.mkdtemp(prefix="altgrad-scale-bench-pg-"))
    started: list[servers.Server] = []
    results: dict[str, object] = {"cores": len(os.sched_getaffinity(0)), "formats": FORMATS}
    try:
        store = work / "runs"
        results["study_runs"] = write_study(store, args.runs_per_format, args.max_steps)
        results["study_max_steps"] = args.max_steps
        postgres, pg_port = servers.start_postgres(pg_root)
        started.append(postgres)
        redis, redis_port = servers.start_redis(work)
        started.append(redis)
        env = {
            "DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": "unused", "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(pg_port), "DAGSTER_PG_DB": "dagster",
            "ALTGRAD_CELERY_BROKER": f"redis://127.0.0.1:{redis_port}/0",
            "ALTGRAD_CELERY_BACKEND": f"redis://127.0.0.1:{redis_port}/1",
        }  # fmt: skip
        backfills = {}
        for executor in ("in_process", "multiprocess", "celery"):
            home = work / f"home-{executor}"
            home.mkdir()
            shutil.copy(PROJECT_ROOT / "deploy" / "postgres" / "dagster.yaml", home / "dagster.yaml")
            run_env = env | {"DAGSTER_HOME": str(home)}
            data = work / f"data-{executor}"
            workers = []
            if executor == "celery":
                worker_env = os.environ | run_env | {"ALTGRAD_RUNS": str(store), "ALTGRAD_DATA_DIR": str(data), "ALTGRAD_CACHE_DIR": str(data / "cache")}
                workers = [servers.start_worker(f"bench-{i}", work, worker_env) for i in (1, 2)]
                started.extend(workers)
            # Each backfill starts from an empty ingest cache, so every executor parses every run.
            # A fresh process per executor: forkserver children keep the environment it started with.
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
                backfills[executor] = fresh.submit(backfill, executor, run_env, store, data).result()
            print(executor, backfills[executor], flush=True)
            for worker in workers:
                worker.stop()
        results["backfill_8_partitions"] = backfills

        memory_dir = work / "memory"
        synthetic_partitions(memory_dir, args.memory_runs, args.memory_steps, args.memory_keys)
        results["run_outcomes_memory"] = {
            "runs": args.memory_runs,
            "history_rows": args.memory_runs // len(FORMATS) * len(FORMATS) * args.memory_steps * args.memory_keys,
            "lazy_scan": outcomes_peak_rss(memory_dir, lazy=True),
            "load_every_partition": outcomes_peak_rss(memory_dir, lazy=False),
        }
        print(results["run_outcomes_memory"], flush=True)
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(pg_root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

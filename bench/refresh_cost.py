"""What a first `refresh` costs next to reading its runs: CPU, peak memory and where the time goes.

Writes a few template runs with the wandb SDK (`examples.write_run`, nanoGPT-style keys: loss,
per-parameter gradient metrics, bit stall; cached in `--store` and reused), clones them into a
study of `--runs` runs (about 14 M values by default) and one of `--scale` times as many, then for
each study, in fresh child processes with fresh data dirs:

- reading alone: one catalog sync (every run parsed, histories cached), as `refresh` starts with;
- the first `refresh`: every asset of every format partition, analysis and reports.

CPU is user + system of the child and everything it waited for, peak RSS the largest single
process among them (both from `wait4` on that child). Step durations come from the refresh's own Dagster event log
(summed over format partitions), so the table says which assets cost what. With `--profile-memory`
the refresh's RSS is sampled every 50 ms (`/proc/<pid>/status`) and each sample attributed to the
step running then (the event log's step start and end times): the peak of every step.

    python bench/refresh_cost.py --out bench/results/refresh_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import defaultdict
from pathlib import Path

#: One template per kind of run the analysis treats differently (baseline, FP8 arms, a NaN run).
TEMPLATES = (("BF16", "adamw"), ("E5M2", "adamw"), ("E5M2", "manifold"), ("E3M4", "adamw"),
             ("E3M4", "manifold"), ("E0M7", "adamw"), ("E0M7", "manifold"), ("E1M6", "adamw"))  # fmt: skip
N_LAYER = 1  # 152 keys per row
STEPS = 2800  # 425,600 values per run

READ_ONLY = """
from altgrad_pipeline.defs.resources import RunStores
RunStores(runs={runs!r}, data_dir={data_dir!r}).catalog().sync()
"""
REFRESH = """
from altgrad_pipeline.refresh import refresh
report = refresh(runs={runs!r}, data_dir={data_dir!r}, echo=lambda line: None)
assert report.ok, report.failed
"""


def write_templates(root: Path) -> list[Path]:
    """The template run folders, written once through the SDK (a marker per finished run)."""
    from altgrad_pipeline.examples import example_spec, write_run
    from altgrad_pipeline.ingest.wandb.names import RUN_FOLDER

    folders = []
    for fmt, optimizer in TEMPLATES:
        marker = root / f".done-{fmt}-{optimizer}"
        if not marker.exists():
            started = time.perf_counter()
            written = write_run(root, example_spec(fmt, optimizer, 1, n_layer=N_LAYER, max_steps=STEPS))
            marker.write_text(written.run_dir)
            print(f"  wrote template {fmt}/{optimizer} in {time.perf_counter() - started:.0f} s", flush=True)
        folder = root / marker.read_text()
        assert RUN_FOLDER.match(folder.name)
        folders.append(folder)
    return folders


def clone_study(templates: list[Path], store: Path, runs: int) -> Path:
    """`runs` hard-linked clones of the templates, round robin, under fresh run ids."""
    from altgrad_pipeline.examples import clone_run

    if not (store / ".complete").exists():
        shutil.rmtree(store, ignore_errors=True)
        for index in range(runs):
            clone_run(templates[index % len(templates)], store, f"cost{index:05d}", hard_link=True)
        (store / ".complete").touch()
    return store


def sample_rss(pid: int, samples: list[tuple[float, int]], every_s: float = 0.05) -> threading.Thread:
    """A thread appending (unix time, RSS in MB) of process `pid` every `every_s` until it exits."""

    def sample() -> None:
        status = Path(f"/proc/{pid}/status")
        while True:
            try:
                kb = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
            except (OSError, StopIteration):  # gone, or a zombie (no VmRSS) waiting for wait4
                return
            samples.append((time.time(), kb // 1024))
            time.sleep(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    return thread


def in_child(code: str, rss_samples: list[tuple[float, int]] | None = None) -> dict:
    """CPU seconds and peak RSS of a fresh interpreter running `code` (and its own children).
    Both come from `wait4` on that child alone: `RUSAGE_CHILDREN` keeps the largest RSS of every
    child ever waited for, so a later, smaller child would report an earlier one's peak."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.DEVNULL)
    sampler = None if rss_samples is None else sample_rss(child.pid, rss_samples)
    _, status, usage = os.wait4(child.pid, 0)
    if sampler is not None:
        sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, child.args)
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
    }


def step_durations(dagster_home: Path) -> dict[str, float]:
    """Seconds per asset step in the instance's event log, summed over runs (format partitions)."""
    import dagster as dg

    totals: dict[str, float] = defaultdict(float)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for run in instance.get_runs():
            records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS, limit=10_000)
            for record in records.records:
                event = record.event_log_entry.dagster_event
                totals[event.step_key] += event.event_specific_data.duration_ms / 1000
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def step_peaks(dagster_home: Path, samples: list[tuple[float, int]]) -> dict[str, int]:
    """The largest RSS sample (MB) taken while each step ran, by step key (a partition's steps
    under `<step>[<partition>]`); samples outside every step go to "(no step running)"."""
    import dagster as dg

    kinds = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
    spans: list[tuple[float, float, str]] = []
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for run in instance.get_runs():
            partition = run.tags.get("dagster/partition")
            started: dict[str, float] = {}
            for record in instance.get_records_for_run(run.run_id, of_type=kinds, limit=10_000).records:
                entry = record.event_log_entry
                step = entry.dagster_event.step_key + (f"[{partition}]" if partition else "")
                if entry.dagster_event.event_type == dg.DagsterEventType.STEP_START:
                    started[step] = entry.timestamp
                else:
                    spans.append((started.pop(step), entry.timestamp, step))
    peaks: dict[str, int] = defaultdict(int)
    for at, mb in samples:
        step = next((name for start, end, name in spans if start <= at <= end), "(no step running)")
        peaks[step] = max(peaks[step], mb)
    return dict(sorted(peaks.items(), key=lambda item: -item[1]))


def measure(store: Path, work: Path, label: str, profile_memory: bool = False) -> dict:
    """Reading alone, then a first refresh, each in a fresh data dir (run stores as ALTGRAD_RUNS)."""
    runs = str(store)
    os.environ["ALTGRAD_INGEST_WORKERS"] = "1"  # parse workers under a forkserver are not the child's: their CPU would not count
    read_dir, refresh_dir = work / f"{label}-read", work / f"{label}-refresh"
    for path in (read_dir, refresh_dir):
        shutil.rmtree(path, ignore_errors=True)
    os.environ["DAGSTER_HOME"] = str(refresh_dir / "dagster_home")
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True)
    read = in_child(READ_ONLY.format(runs=runs, data_dir=str(read_dir)))
    samples: list[tuple[float, int]] | None = [] if profile_memory else None
    full = in_child(REFRESH.format(runs=runs, data_dir=str(refresh_dir)), samples)
    home = Path(os.environ.pop("DAGSTER_HOME"))
    result = {"read": read, "refresh": full, "cpu_ratio": round(full["cpu_s"] / read["cpu_s"], 2), "steps_s": step_durations(home)}
    if samples is not None:
        result["step_peak_rss_mb"] = step_peaks(home, samples)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--scale", type=int, default=4,
                        help="the second study has this many times the runs (1: measure the first study only)")
    parser.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "altgrad-refresh-cost")
    parser.add_argument("--top", type=int, default=10, help="step durations (and step memory peaks) printed per study")
    parser.add_argument("--profile-memory", action="store_true",
                        help="sample the refresh's RSS every 50 ms and print the peak of each step")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("ALTGRAD_EXECUTOR", "in_process")
    templates = write_templates(args.store / "templates")
    results = {}
    for runs in sorted({args.runs, args.runs * args.scale}):
        store = clone_study(templates, args.store / f"study-{runs}", runs)
        result = measure(store, args.store / "work", f"{runs}runs", args.profile_memory)
        results[f"{runs} runs"] = result
        print(f"{runs} runs: read {result['read']['cpu_s']} CPU-s, {result['read']['peak_rss_mb']} MB; "
              f"first refresh {result['refresh']['cpu_s']} CPU-s ({result['cpu_ratio']}x), "
              f"{result['refresh']['peak_rss_mb']} MB peak", flush=True)  # fmt: skip
        for step, seconds in list(result["steps_s"].items())[: args.top]:
            print(f"    {seconds:7.1f} s  {step}")
        for step, mb in list(result.get("step_peak_rss_mb", {}).items())[: args.top]:
            print(f"    {mb:7d} MB peak  {step}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

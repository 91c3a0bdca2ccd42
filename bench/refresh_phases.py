"""CPU of one first `refresh`, in this process, by phase and by Dagster step.

`refresh_cost.py` gives a refresh's whole CPU and each step's wall time; this says where the CPU went
(user + system of the process, Polars' threads included): the imports, the catalog sync, the
format-partition runs, the analysis run, and every step inside them, summed over partitions. Steps
run one after another (in-process executor), so each step's CPU is the process's CPU while it ran.
Use one parse worker so the sync's parsing is counted here, not in a worker:

    ALTGRAD_INGEST_WORKERS=1 python bench/refresh_phases.py <fresh data dir> <run store>

The data dir should not exist yet (a first refresh); DAGSTER_HOME defaults to `<data dir>/dagster_home`.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections import defaultdict


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("runs", help="ALTGRAD_RUNS for the refresh (a local run store)")
    args = parser.parse_args()
    os.environ.setdefault("ALTGRAD_EXECUTOR", "in_process")

    started = cpu_seconds()
    # Dagster's per-step generator, wrapped to time each step; the refresh module's phases likewise.
    import dagster._core.execution.plan.execute_plan as execute_plan

    import altgrad_pipeline.refresh as refresh_module

    imports = cpu_seconds() - started
    steps: dict[str, float] = defaultdict(float)
    phases: dict[str, float] = defaultdict(float)
    step_events = execute_plan.dagster_event_sequence_for_step

    def timed_step(step_context, *args, **kwargs):
        before = cpu_seconds()
        yield from step_events(step_context, *args, **kwargs)
        steps[step_context.step.key] += cpu_seconds() - before

    def timed_phase(name, function):
        def timed(*args, **kwargs):
            before = cpu_seconds()
            try:
                return function(*args, **kwargs)
            finally:
                phases[name(*args) if callable(name) else name] += cpu_seconds() - before

        return timed

    execute_plan.dagster_event_sequence_for_step = timed_step
    refresh_module._run = timed_phase(lambda instance, job, fmt, *rest: "partition runs" if fmt else "analysis run", refresh_module._run)
    refresh_module.assess = timed_phase("catalog sync and staleness", refresh_module.assess)

    wall, before = time.perf_counter(), cpu_seconds()
    report = refresh_module.refresh(runs=args.runs, data_dir=args.data_dir, echo=lambda line: None)
    refreshed = cpu_seconds() - before
    if not report.ok:
        raise SystemExit(f"refresh failed: {report.failed}")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"wall {time.perf_counter() - wall:.1f} s; CPU-s: imports {imports:.2f}, refresh {refreshed:.2f}, "
          f"process {cpu_seconds():.2f}, child processes {children.ru_utime + children.ru_stime:.2f}")  # fmt: skip
    for name, seconds in phases.items():
        print(f"  {seconds:7.2f}  {name}")
    in_steps = sum(steps.values())
    print(f"  {in_steps:7.2f}  in steps; outside them in the runs {phases['partition runs'] + phases['analysis run'] - in_steps:.2f}")
    for step, seconds in sorted(steps.items(), key=lambda item: -item[1]):
        print(f"    {seconds:7.2f}  {step}")


if __name__ == "__main__":
    main()

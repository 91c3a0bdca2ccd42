"""Automation speed: sensor tick time and the cost of a refresh after one new run, by store size.

Stores are real files: copies of real `.wandb` run folders (written once by the wandb SDK, one per
format), renamed with new run ids. Seeding the 10,000-run catalog reads each distinct template once
and reuses the parse for its copies (same bytes); everything measured goes through the real readers.

Measured per store size:
- `tick_idle_s`: a sensor tick when nothing changed (goal: < 1 s at 10,000 runs);
- `tick_new_run_s`: the tick that sees one new finished run (scan, catalog sync, one run read);
- `ingest_partition_s`: materializing that run's format partition (raw_runs, run_histories, ...)
  afterwards, and how many runs it re-read (goal: 1,000-run figure within 1.5x of the 10-run one).
  The median of `REPEATS` new runs, refreshes of the store sizes interleaved, in wall-clock and in
  CPU seconds of this process (in-process execution: the CPU figure is the refresh's own work,
  steadier on a shared machine).

And per W&B API project size (`--api-sizes`; the real `wandb.Api` client against the loopback server
of the tests, which runs in this process and whose answering time is part of each figure):
- `api_tick_idle_s`: a tick when no run ended: one `Runs` listing narrowed to runs that ended since
  the last tick, no sync;
- `api_tick_full_listing_s`: the same tick with the narrowing off (the cursor forgets when it last
  asked): the whole project listed and compared with the cache, nothing read.

Run: `python bench/automation_speed.py [--sizes 10,1000,10000] [--refresh-sizes 10,1000] [--api-sizes 10,1000]`.
Writes `bench/results/automation.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

from altgrad_pipeline.definitions import build_defs
from altgrad_pipeline.defs.sensors import finished_runs_sensor
from altgrad_pipeline.defs.targets import format_partitioned_keys
from altgrad_pipeline.examples import ExampleRunSpec, clone_run, write_run
from altgrad_pipeline.ingest.catalog import RunCatalog
from altgrad_pipeline.ingest.finished_runs import WatchCursor, watch_tick
from altgrad_pipeline.ingest.wandb.api import WandbApiSource
from altgrad_pipeline.ingest.wandb.local import LocalWandbSource
from altgrad_pipeline.refresh import QUIET_RUN_CONFIG

FORMATS = ("E5M2", "E3M4", "E1M6", "E0M7", "BF16")
NEW_RUN_FORMAT = "E5M2"
RESULTS = Path(__file__).parent / "results" / "automation.json"
REPEATS = 5


def write_templates(root: Path) -> dict[str, Path]:
    """One real finished run per format."""
    runs = {}
    for fmt in FORMATS:
        written = write_run(root / fmt, ExampleRunSpec(format_name=fmt, optimizer="adamw", seed=1, max_steps=20))
        runs[fmt] = root / fmt / written.run_dir
    return runs


class _ReuseParses(LocalWandbSource):
    """Seeding only: copies of a template have the same bytes, so one parse serves them all."""

    def __init__(self, root: Path):
        super().__init__(root)
        self._parsed: dict[int, object] = {}

    def read(self, locator):
        size = next(Path(locator.location).glob("run-*.wandb")).stat().st_size
        if size not in self._parsed:
            self._parsed[size] = super().read(locator)
        run = copy.copy(self._parsed[size])
        run.run_id, run.location, run.fingerprint = Path(locator.location).name.rsplit("-", 1)[1], locator.location, locator.fingerprint
        return run


def _tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None) -> tuple[float, dg.SensorResult]:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources={"run_stores": defs.resources["run_stores"]}
    )
    start = time.perf_counter()
    result = finished_runs_sensor(context)
    elapsed = time.perf_counter() - start
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return elapsed, result


class StoreBench:
    """One store of `size` runs with its own Dagster instance, ready to be ticked and refreshed."""

    def __init__(self, size: int, templates: dict[str, Path], workdir: Path, stack: contextlib.ExitStack):
        self.size, self.templates = size, templates
        self.store, data = workdir / f"store-{size}", workdir / f"data-{size}"
        for i in range(size):
            clone_run(templates[FORMATS[i % len(FORMATS)]], self.store, f"b{i:07d}", hard_link=True)
        self.defs = build_defs(runs=str(self.store), data_dir=str(data))
        seed_start = time.perf_counter()
        RunCatalog(self.defs.resources["run_stores"].cache_dir / "runs", [_ReuseParses(self.store)]).sync()
        self.figures: dict[str, float | int] = {"runs": size, "seed_catalog_s": round(time.perf_counter() - seed_start, 2)}
        self.instance = stack.enter_context(dg.instance_for_test())
        self.figures["tick_first_s"], first = _tick(self.defs, self.instance, None)
        self.cursor = first.cursor
        self.figures["tick_idle_s"] = statistics.median(_tick(self.defs, self.instance, self.cursor)[0] for _ in range(5))
        self.keys = format_partitioned_keys(self.defs.get_repository_def())
        self.ticks: list[float] = []
        self.walls: list[float] = []
        self.cpus: list[float] = []

    def _materialize(self, tags: dict[str, str] | None = None) -> dg.ExecuteInProcessResult:
        result = dg.materialize(self.defs.assets, selection=self.keys, partition_key=NEW_RUN_FORMAT, instance=self.instance,
                                resources=self.defs.resources, run_config=QUIET_RUN_CONFIG, tags=tags)  # fmt: skip
        assert result.success
        return result

    def warm(self) -> None:
        self._materialize()

    def refresh_after_new_run(self, repeat: int) -> None:
        """A new finished run, the tick that sees it, then its partition's refresh (timed), run as
        the sensor requests it (with its tags)."""
        clone_run(self.templates[NEW_RUN_FORMAT], self.store, f"newrun{repeat:02d}", hard_link=True)
        tick_s, seen = _tick(self.defs, self.instance, self.cursor)
        [request] = [r for r in seen.run_requests if r.partition_key]
        assert request.partition_key == NEW_RUN_FORMAT, seen
        self.ticks.append(tick_s)
        self.cursor = seen.cursor
        wall, cpu = time.perf_counter(), time.process_time()
        result = self._materialize(request.tags)
        self.walls.append(time.perf_counter() - wall)
        self.cpus.append(time.process_time() - cpu)
        [materialization] = [
            e.materialization for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("raw_runs")
        ]
        self.figures["runs_in_partition"] = materialization.metadata["dagster/row_count"].value
        self.figures["runs_reread"] = materialization.metadata["runs_reread"].value

    def results(self) -> dict[str, float | int]:
        if self.walls:
            self.figures["tick_new_run_s"] = statistics.median(self.ticks)
            self.figures["ingest_partition_s"] = statistics.median(self.walls)
            self.figures["ingest_partition_cpu_s"] = statistics.median(self.cpus)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.figures.items()}


def api_tick_figures(size: int, workdir: Path) -> dict[str, float | int]:
    """Idle ticks against a W&B project of `size` finished runs, after a first tick read them all."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' loopback server
    from altgrad_pipeline_tests.wandb_server import FAKE_API_KEY, FakeRun, FakeWandbServer

    runs = [FakeRun(id=f"api{i:06d}", config={"fp8_format": FORMATS[i % len(FORMATS)]}, history=[{"_step": 0, "loss": 1.0}])
            for i in range(size)]  # fmt: skip
    saved = {name: os.environ.get(name) for name in ("WANDB_BASE_URL", "WANDB_API_KEY", "WANDB_MODE")}
    with FakeWandbServer(runs=runs) as server:
        os.environ.update(WANDB_BASE_URL=server.url, WANDB_API_KEY=FAKE_API_KEY, WANDB_MODE="online")
        try:
            never = 1e10  # the fake runs are dated 2024: none may count as crashed by today's clock
            source = WandbApiSource(f"{server.entity}/{server.project}", workdir / f"api-{size}", grace_period_s=never)
            catalog = RunCatalog(workdir / f"api-catalog-{size}", [source])

            def tick(cursor: WatchCursor) -> tuple[float, bool]:
                start = time.perf_counter()
                outcome = watch_tick(catalog, local_roots=[], has_remote_sources=True, cursor=cursor,
                                     now=dt.datetime.now(dt.UTC), grace_s=never)  # fmt: skip
                return time.perf_counter() - start, outcome.synced

            seed_start = time.perf_counter()
            first = watch_tick(catalog, local_roots=[], has_remote_sources=True, cursor=WatchCursor(),
                               now=dt.datetime.now(dt.UTC), grace_s=never)  # fmt: skip
            figures: dict[str, float | int] = {"api_runs": size, "api_first_tick_s": round(time.perf_counter() - seed_start, 2)}
            server.clear_requests()
            narrow = [tick(first.cursor) for _ in range(5)]
            figures["api_idle_runs_requests"] = server.count("Runs") // len(narrow)
            forgetful = dataclasses.replace(first.cursor, remote_checked_at=None)
            full = [tick(forgetful) for _ in range(5)]
            assert not any(synced for _, synced in narrow) and all(synced for _, synced in full)
            figures["api_tick_idle_s"] = round(statistics.median(t for t, _ in narrow), 4)
            figures["api_tick_full_listing_s"] = round(statistics.median(t for t, _ in full), 4)
            return figures
        finally:
            for name, value in saved.items():
                os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--refresh-sizes", default="10,1000")
    parser.add_argument("--api-sizes", default="10,1000", help="W&B API project sizes ('' to skip)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    refresh_sizes = {int(s) for s in args.refresh_sizes.split(",") if s}
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONSOLE="off", WANDB_DISABLE_GIT="true")
    with tempfile.TemporaryDirectory(prefix="altgrad-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        templates = write_templates(workdir / "templates")
        benches = [StoreBench(size, templates, workdir, stack) for size in sizes]
        refreshed = [bench for bench in benches if bench.size in refresh_sizes]
        for bench in refreshed:
            bench.warm()
        for repeat in range(REPEATS):  # sizes interleaved: a load change on the machine hits both alike
            for bench in refreshed:
                bench.refresh_after_new_run(repeat)
        rows = [bench.results() for bench in benches]
        api_rows = [api_tick_figures(int(size), workdir) for size in args.api_sizes.split(",") if size]
    columns = ["runs", "seed_catalog_s", "tick_first_s", "tick_idle_s", "tick_new_run_s", "ingest_partition_s", "ingest_partition_cpu_s", "runs_in_partition", "runs_reread"]
    print(" | ".join(f"{c:>18}" for c in columns))
    for row in rows:
        print(" | ".join(f"{row.get(c, '-')!s:>18}" for c in columns))
    by_size = {r["runs"]: r for r in rows}
    summary: dict[str, object] = {"rows": rows}
    if 10 in by_size and 1000 in by_size and "ingest_partition_s" in by_size[1000]:
        for figure, label in (("ingest_partition_s", "wall"), ("ingest_partition_cpu_s", "cpu")):
            ratio = by_size[1000][figure] / by_size[10][figure]
            summary[f"ingest_ratio_1000_vs_10_{label}"] = round(ratio, 3)
            print(f"partition refresh after one new run, 1,000 vs 10 runs ({label}): {ratio:.2f}x (goal <= 1.5x)")
    if 10000 in by_size:
        print(f"idle sensor tick at 10,000 runs: {by_size[10000]['tick_idle_s']:.3f} s (goal < 1 s)")
    for row in api_rows:
        print(f"W&B API project of {row['api_runs']:,} runs, idle tick: {row['api_tick_idle_s']:.3f} s with "
              f"{row['api_idle_runs_requests']} narrowed Runs request(s); with a full listing {row['api_tick_full_listing_s']:.3f} s")  # fmt: skip
    summary["api"] = api_rows
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""Automation speed: sensor tick time and the cost of a refresh after one new run, by store size.

Stores are real files: copies of real `.wandb` run folders (written once by the wandb SDK, one per
format), renamed with new run ids. Seeding the 10,000-run catalog reads each distinct template once
and reuses the parse for its copies (same bytes); everything measured goes through the real readers.

Measured per store size:
- `tick_idle_s`: a sensor tick when nothing changed (goal: < 1 s at 10,000 runs);
- `tick_new_run_s`: the tick that sees one new finished run (scan, catalog sync, one run read);
- `ingest_partition_s`: materializing that run's format partition (raw_runs, run_histories, ...)
  afterwards, and how many runs it re-read (goal: 1,000-run figure within 1.5x of the 10-run one).

Run: `python bench/automation_speed.py [--sizes 10,1000,10000] [--refresh-sizes 10,1000]`.
Writes `bench/results/automation.json`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg

from altgrad_pipeline.automation.runs_sensor import finished_runs_sensor
from altgrad_pipeline.automation.targets import format_partitioned_keys
from altgrad_pipeline.definitions import build_defs
from altgrad_pipeline.refresh import QUIET_RUN_CONFIG
from altgrad_pipeline.examples import ExampleRunSpec, clone_run, write_run
from altgrad_pipeline.ingest.catalog import RunCatalog
from altgrad_pipeline.ingest.wandb_local import LocalWandbSource

FORMATS = ("E5M2", "E3M4", "E1M6", "E0M7", "BF16")
NEW_RUN_FORMAT = "E5M2"
RESULTS = Path(__file__).parent / "results" / "automation.json"


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


def measure(size: int, templates: dict[str, Path], workdir: Path, *, refresh: bool) -> dict[str, float | int]:
    store, data = workdir / f"store-{size}", workdir / f"data-{size}"
    for i in range(size):
        clone_run(templates[FORMATS[i % len(FORMATS)]], store, f"b{i:07d}", hard_link=True)
    defs = build_defs(runs=str(store), data_dir=str(data))
    run_stores = defs.resources["run_stores"]
    seed_start = time.perf_counter()
    RunCatalog(run_stores.cache_dir / "runs", [_ReuseParses(store)]).sync()
    figures: dict[str, float | int] = {"runs": size, "seed_catalog_s": round(time.perf_counter() - seed_start, 2)}
    with dg.instance_for_test() as instance:
        figures["tick_first_s"], first = _tick(defs, instance, None)
        idle = [_tick(defs, instance, first.cursor)[0] for _ in range(5)]
        figures["tick_idle_s"] = statistics.median(idle)
        if refresh:
            keys = format_partitioned_keys(defs.get_repository_def())
            warm = dg.materialize(defs.assets, selection=keys, partition_key=NEW_RUN_FORMAT, instance=instance, resources=defs.resources, run_config=QUIET_RUN_CONFIG)
            assert warm.success
            clone_run(templates[NEW_RUN_FORMAT], store, "newrun00", hard_link=True)
            figures["tick_new_run_s"], seen = _tick(defs, instance, first.cursor)
            assert [r.partition_key for r in seen.run_requests if r.partition_key] == [NEW_RUN_FORMAT], seen
            start = time.perf_counter()
            result = dg.materialize(defs.assets, selection=keys, partition_key=NEW_RUN_FORMAT, instance=instance, resources=defs.resources, run_config=QUIET_RUN_CONFIG)
            figures["ingest_partition_s"] = time.perf_counter() - start
            assert result.success
            [materialization] = [
                e.materialization for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("raw_runs")
            ]
            figures["runs_in_partition"] = materialization.metadata["dagster/row_count"].value
            figures["runs_reread"] = materialization.metadata["runs_reread"].value
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--refresh-sizes", default="10,1000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    refresh_sizes = {int(s) for s in args.refresh_sizes.split(",")}
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONSOLE="off", WANDB_DISABLE_GIT="true")
    with tempfile.TemporaryDirectory(prefix="altgrad-bench-") as tmp:
        workdir = Path(tmp)
        templates = write_templates(workdir / "templates")
        rows = [measure(size, templates, workdir, refresh=size in refresh_sizes) for size in sizes]
    columns = ["runs", "seed_catalog_s", "tick_first_s", "tick_idle_s", "tick_new_run_s", "ingest_partition_s", "runs_in_partition", "runs_reread"]
    print(" | ".join(f"{c:>18}" for c in columns))
    for row in rows:
        print(" | ".join(f"{row.get(c, '-')!s:>18}" for c in columns))
    by_size = {r["runs"]: r for r in rows}
    summary: dict[str, object] = {"rows": rows}
    if 10 in by_size and 1000 in by_size and "ingest_partition_s" in by_size[1000]:
        ratio = by_size[1000]["ingest_partition_s"] / by_size[10]["ingest_partition_s"]
        summary["ingest_ratio_1000_vs_10"] = round(ratio, 3)
        print(f"partition ingest after one new run, 1,000 vs 10 runs: {ratio:.2f}x (goal <= 1.5x)")
    if 10000 in by_size:
        print(f"idle sensor tick at 10,000 runs: {by_size[10000]['tick_idle_s']:.3f} s (goal < 1 s)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

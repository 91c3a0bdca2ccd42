"""A format name with a dash (`E4M3-FNUZ`) goes through the whole graph: the sensor's partition-key
rule and the reports' file-name rule are one rule (`study.is_safe_format_name`), so a failing run of
such a format is partitioned, analysed, and drawn in the failure-modes report."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import polars as pl

from altgrad_pipeline.examples import example_spec, write_example_runs
from altgrad_pipeline.refresh import refresh
from altgrad_pipeline.study import is_safe_format_name

FORMAT = "E4M3-FNUZ"
STEPS = 120


def test_a_dashed_format_with_a_failing_run_goes_through_the_graph(tmp_path: Path) -> None:
    assert is_safe_format_name(FORMAT)
    store, data = tmp_path / "runs", tmp_path / "data"
    specs = [
        example_spec("BF16", "adamw", 1, max_steps=STEPS),
        example_spec("E5M2", "adamw", 1, max_steps=STEPS),
        # E7M0's design diverges to NaN at step 37: the run fails, with a runner failure report.
        dataclasses.replace(example_spec("E7M0", "adamw", 1, max_steps=STEPS), format_name=FORMAT),
    ]
    write_example_runs(store, specs, workers=1)
    with dg.instance_for_test() as instance:
        report = refresh(runs=str(store), data_dir=str(data), instance=instance, echo=lambda _: None)
    assert report.ok, report.failed
    assert FORMAT in report.formats
    assert (data / "assets" / "raw_runs" / f"{FORMAT}.parquet").exists()

    failures = pl.read_parquet(data / "assets" / "failure_modes.parquet").filter(pl.col("fp8_format") == FORMAT)
    assert failures.height == 1 and failures["failure_mode"][0] != "none"

    reports = data / "reports"
    assert FORMAT in (reports / "failure_modes.md").read_text()
    traces = list((reports / "figures").glob(f"failure_trace*_{FORMAT}.png"))
    assert traces, sorted(p.name for p in (reports / "figures").iterdir())
    assert (reports / "format_comparison.md").exists() and (reports / "index.md").exists()


def test_one_rule_decides_the_partition_of_a_format_name() -> None:
    """Ingest, the sensor, the schedule, the IO manager and the reports share `study`'s rule; a
    name it refuses goes to `invalid_format`, itself a safe name."""
    from altgrad_pipeline import settings
    from altgrad_pipeline.study import INVALID_FORMAT, format_partition

    assert not hasattr(settings, "is_safe_format_name")
    assert is_safe_format_name(INVALID_FORMAT) and format_partition(FORMAT) == FORMAT
    for name in ("../../../ESCAPE", ".hidden", "E" * 65, "a/b", "E4M3\n", "", None):
        assert not is_safe_format_name(name)
    for name in ("../../../ESCAPE", ".hidden", "E" * 65, "a/b", "E4M3\n", ""):
        assert format_partition(name) == INVALID_FORMAT

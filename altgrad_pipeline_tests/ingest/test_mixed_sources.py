"""One study logged partly to W&B and partly to TensorBoard goes through ingest and the analysis
unchanged: both sources' runs are counted in the same format rows.

The W&B runs are written by the real SDK (offline); the TensorBoard runs of the same study by
TensorBoard's own event-file writer, logging the same altgrad metrics as `simple_value` scalars and
the altgrad config as hparams, as a trainer logging to TensorBoard would.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import summary_v2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from altgrad_pipeline.analysis.layers import layer_metrics
from altgrad_pipeline.analysis.outcomes import run_outcomes
from altgrad_pipeline.analysis.rankings import format_rankings
from altgrad_pipeline.examples import ExampleRunSpec, example_spec, simulate_history, write_example_runs
from altgrad_pipeline.ingest.catalog import RunCatalog
from altgrad_pipeline.ingest.sources import build_sources
from altgrad_pipeline.refresh import refresh
from altgrad_pipeline.settings import parse_run_stores

STEPS = 120
WANDB_SPECS = [example_spec("E5M2", "adamw", 1, max_steps=STEPS), example_spec("BF16", "adamw", 1, max_steps=STEPS)]
TENSORBOARD_SPECS = [example_spec("E5M2", "adamw", 2, max_steps=STEPS), example_spec("BF16", "adamw", 2, max_steps=STEPS)]
#: Event files never record an end: the runs stopped two hours ago, past the default grace period.
STOPPED_AGO_S = 2 * 3600


def write_tensorboard_run(folder: Path, spec: ExampleRunSpec) -> None:
    """The spec's history as TensorBoard scalars (one event per value, as `add_scalar` writes) and
    its config as hparams (hparams take bool, number and string values: lists are left out)."""
    folder.mkdir(parents=True)
    history = simulate_history(spec)
    writer = EventFileWriter(str(folder), max_queue_size=100_000, flush_secs=1000)
    hparams = {k: v for k, v in spec.config().items() if isinstance(v, bool | int | float | str)}
    writer.add_event(event_pb2.Event(wall_time=1.7e9, step=0, summary=summary_v2.hparams_pb(hparams, start_time_secs=1)))
    for step, row in enumerate(history):
        for key, value in row.items():
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=key, simple_value=value)])
            writer.add_event(event_pb2.Event(wall_time=1.7e9 + step * 0.15, step=step, summary=summary))
    writer.close()
    stopped = time.time() - STOPPED_AGO_S
    for path in folder.iterdir():
        os.utime(path, (stopped, stopped))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mixed") / "runs"
    write_example_runs(root, WANDB_SPECS, workers=1)
    for spec in TENSORBOARD_SPECS:
        write_tensorboard_run(root / "tensorboard" / spec.run_name, spec)
    return root


def sync(root: Path, cache: Path):
    sources = build_sources(parse_run_stores(str(root)), api_cache_dir=cache / "api", grace_period_s=3600)
    catalog = RunCatalog(cache / "catalog", sources)
    return catalog, catalog.sync()


def test_tensorboard_runs_hold_the_logged_values_and_config(store: Path, tmp_path: Path) -> None:
    catalog, result = sync(store, tmp_path)
    runs = catalog.raw_runs(result.entries)
    histories = catalog.histories(result.entries).collect()

    assert result.issues == []
    assert runs.group_by("source").len().sort("source").rows() == [("tensorboard", 2), ("wandb-local", 2)]
    tensorboard = runs.filter(pl.col("source") == "tensorboard").sort("name")
    assert tensorboard.select("name", "project", "fp8_format", "optimizer", "seed", "max_steps", "state").rows() == [
        ("bf16-adamw-s2", "altgrad", "BF16", "AdamW", 2, STEPS, "crashed"),
        ("e5m2-adamw-s2", "altgrad", "E5M2", "AdamW", 2, STEPS, "crashed"),
    ]
    for spec in TENSORBOARD_SPECS:
        run_id = tensorboard.filter(pl.col("name") == spec.run_name).item(0, "run_id")
        logged = {(step, key): value for step, row in enumerate(simulate_history(spec)) for key, value in row.items()}
        read = histories.filter(pl.col("run_id") == run_id)
        assert read.height == len(logged)
        for step, key, value in read.select("step", "key", "value").iter_rows():
            # simple_value is a float32: the value as the writer stored it.
            assert value == float(np.float32(logged[(step, key)])) or (np.isnan(value) and np.isnan(logged[(step, key)]))


def test_analysis_counts_runs_of_both_sources_in_the_same_format_rows(store: Path, tmp_path: Path) -> None:
    catalog, result = sync(store, tmp_path)
    runs = catalog.raw_runs(result.entries)
    histories = catalog.histories(result.entries)

    outcomes = run_outcomes(runs, histories)
    layers = layer_metrics(histories)
    rankings = format_rankings(runs, histories, outcomes, layers)

    assert outcomes.get_column("outcome").to_list() == ["completed"] * 4
    by_source = layers.join(runs.select("run_id", "source"), on="run_id").group_by("source").agg(pl.col("layer_type").unique().sort())
    assert dict(by_source.iter_rows()) == {s: ["attention", "embedding", "mlp", "norm"] for s in ("tensorboard", "wandb-local")}
    overall = rankings.filter(pl.col("layer_type") == "all").sort("fp8_format")
    assert overall.select("project", "fp8_format", "n_runs", "n_completed").rows() == [
        ("altgrad", "BF16", 2, 2),
        ("altgrad", "E5M2", 2, 2),
    ]
    assert rankings.get_column("project").unique().to_list() == ["altgrad"]
    assert sorted(rankings.get_column("layer_type").unique()) == ["all", "attention", "embedding", "mlp", "norm"]
    assert rankings.get_column("n_runs").to_list() == [2] * rankings.height
    assert rankings.filter(pl.col("fp8_format") == "E5M2").get_column("is_sweet_spot").all()


def test_whole_graph_ranks_the_mixed_study(store: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with dg.instance_for_test() as instance:
        report = refresh(runs=str(store), data_dir=str(data), instance=instance, echo=lambda _: None)

    assert report.ok, report.failed
    raw = pl.concat([pl.read_parquet(p) for p in sorted((data / "assets" / "raw_runs").glob("*.parquet"))], how="diagonal_relaxed")
    assert sorted(raw.get_column("source").to_list()) == ["tensorboard", "tensorboard", "wandb-local", "wandb-local"]
    rankings = pl.read_parquet(data / "assets" / "format_rankings.parquet")
    overall = rankings.filter(pl.col("layer_type") == "all").sort("fp8_format")
    assert overall.select("project", "fp8_format", "n_runs", "n_completed", "is_sweet_spot").rows() == [
        ("altgrad", "BF16", 2, 2, False),
        ("altgrad", "E5M2", 2, 2, True),
    ]


def test_an_aim_repository_is_one_clear_issue_and_the_other_runs_are_read(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_tensorboard_run(root / "tb" / "e5m2-adamw-s2", TENSORBOARD_SPECS[0])
    (root / ".aim" / "meta").mkdir(parents=True)

    _, result = sync(root, tmp_path / "cache")

    [issue] = result.issues
    assert (issue.source, issue.kind, issue.location) == ("aim", "source_unavailable", str(root / ".aim"))
    assert "Aim repository; its runs were not read" in issue.reason and "Export the runs" in issue.reason
    assert [entry.source for entry in result.entries] == ["tensorboard"]

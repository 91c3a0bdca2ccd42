"""Small raw_runs / run_histories frames for the dynamics tests, built without writing a store:
the example study's configs as `write_run` logs them, and its simulated loss curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from altgrad_pipeline.defs.io_manager import PolarsParquetIOManager
from altgrad_pipeline.defs.resources import ReportFiles
from altgrad_pipeline.examples import ExampleRunSpec, simulate_history
from altgrad_pipeline.ingest.tables import config_columns


def runs_frame(
    configs: list[dict],
    *,
    run_ids: list[str],
    projects: list[str],
    seeds: list[int | None],
    states: list[str] | None = None,
    tags: list[list[str]] | None = None,
    formats: list[str] | None = None,
) -> pl.DataFrame:
    """A raw_runs-shaped frame: the columns the dynamics code and the reports read plus `config.*`."""
    base = pl.DataFrame(
        {
            "run_id": run_ids,
            "fp8_format": formats or ["no_format"] * len(run_ids),
            "updated_at": pl.Series([None] * len(run_ids), dtype=pl.Datetime("us", "UTC")),
            "project": projects,
            "name": run_ids,
            "state": states or ["finished"] * len(run_ids),
            "seed": pl.Series(seeds, dtype=pl.Int64),
            "tags": pl.Series(tags or [[] for _ in run_ids], dtype=pl.List(pl.String)),
        }
    )
    return pl.concat([base, config_columns(configs)], how="horizontal")


def example_frames(specs: list[ExampleRunSpec], keys: tuple[str, ...] = ("loss", "val_loss")) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(raw_runs, run_histories) of example specs, histories restricted to `keys`."""
    run_ids = [f"{s.run_name}-{i}" for i, s in enumerate(specs)]
    raw = runs_frame(
        [s.config() for s in specs], run_ids=run_ids, projects=["altgrad"] * len(specs), seeds=[s.seed for s in specs],
        tags=[s.tags for s in specs], formats=[s.format_name for s in specs],
    )
    parts = []
    for run_id, spec in zip(run_ids, specs):
        rows = simulate_history(spec)
        for key in keys:
            steps = [i for i, r in enumerate(rows) if key in r]
            parts.append(pl.DataFrame({"run_id": run_id, "step": steps, "key": key, "value": [float(rows[i][key]) for i in steps]}))
    histories = pl.concat(parts).with_columns(pl.col("step").cast(pl.Int64), pl.lit(None, pl.Float64).alias("runtime"), pl.lit(None, pl.Float64).alias("timestamp"))
    return raw, histories


def curve_history(run_id: str, steps: np.ndarray, values: np.ndarray, key: str = "loss") -> pl.DataFrame:
    return pl.DataFrame({"run_id": run_id, "step": steps.astype(np.int64), "key": key, "value": values.astype(float)})


def materialize_on_frames(
    raw: pl.DataFrame,
    histories: pl.DataFrame,
    assets: Sequence[dg.AssetsDefinition],
    data_dir: Path,
    instance: dg.DagsterInstance,
) -> dg.ExecuteInProcessResult:
    """`assets` materialized by Dagster over `raw_runs` and `run_histories` given as frames, with
    the real IO manager and report files under `data_dir`. The caller holds `instance`:
    `output_for_node` loads through it after this returns."""

    @dg.asset(key="raw_runs")
    def raw_runs() -> pl.DataFrame:
        return raw

    @dg.asset(key="run_histories")
    def run_histories() -> pl.DataFrame:
        return histories

    return dg.materialize(
        [raw_runs, run_histories, *assets],
        resources={"report_files": ReportFiles(data_dir=str(data_dir)), "io_manager": PolarsParquetIOManager(base_dir=str(data_dir))},
        instance=instance,
    )

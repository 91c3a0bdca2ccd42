"""Helpers for notebooks: pick runs by config, tags and state, see how chosen runs differ, and
load a metric's curves aligned on step from the stored assets.

    runs = pl.read_parquet("altgrad_data/assets/raw_runs/*.parquet")
    fp8 = select_runs(runs, pl.col("config.learning_rate") > 1e-4, tags=["fp8"], state="finished")
    differing_config(fp8)
    curves = load_curves("altgrad_data", "loss", run_ids=fp8["run_id"].to_list())
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from altgrad_pipeline.analysis.sweeps import DEFAULT_NOISE_PATTERNS, varying_keys
from altgrad_pipeline.ingest.model import numeric_history
from altgrad_pipeline.ingest.tables import CONFIG_PREFIX

HISTORIES_GLOB = Path("assets") / "run_histories" / "*.parquet"


def select_runs(
    raw_runs: pl.DataFrame | pl.LazyFrame,
    *predicates: pl.Expr,
    tags: Sequence[str] = (),
    state: str | Sequence[str] | None = None,
) -> pl.DataFrame:
    """The runs matching every predicate (Polars expressions over raw_runs columns, e.g.
    `pl.col("config.lr") > 1e-3`), carrying every tag in `tags`, in `state` (one or several)."""
    lazy = raw_runs.lazy()
    for predicate in predicates:
        lazy = lazy.filter(predicate)
    for tag in tags:
        lazy = lazy.filter(pl.col("tags").list.contains(tag))
    if state is not None:
        lazy = lazy.filter(pl.col("state").is_in([state] if isinstance(state, str) else list(state)))
    return lazy.collect()


def differing_config(runs: pl.DataFrame | pl.LazyFrame, noise_patterns: Sequence[str] = DEFAULT_NOISE_PATTERNS) -> pl.DataFrame:
    """run_id, name and the `config.*` columns whose values differ between the given runs (a
    key missing from some runs differs), one row per run: what makes these runs different. Noise
    keys (run names, seeds, paths, timestamps) are left out by the sweep detection's own rule
    (`analysis.sweeps.varying_keys`), so a notebook and the sweep summary agree."""
    frame = runs.lazy().collect()
    differing = [CONFIG_PREFIX + k for k in varying_keys(frame, noise_patterns)]
    return frame.select([c for c in ("run_id", "name") if c in frame.columns] + differing)


def load_curves(
    source: str | Path | pl.DataFrame | pl.LazyFrame,
    metric: str,
    run_ids: Sequence[str] | None = None,
) -> pl.DataFrame:
    """One row per step, one column per run (named by run_id) with the metric's value, aligned on
    step (null where a run did not log it). `source` is a data dir (reads
    `<data dir>/assets/run_histories/*.parquet`) or a run_histories frame."""
    if isinstance(source, (str, Path)):
        lazy = pl.scan_parquet(str(Path(source) / HISTORIES_GLOB))
    else:
        lazy = source.lazy()
    lazy = numeric_history(lazy).filter(pl.col("key") == metric)
    if run_ids is not None:
        lazy = lazy.filter(pl.col("run_id").is_in(list(run_ids)))
    long = lazy.group_by("run_id", "step").agg(pl.col("value").last()).collect()
    if long.is_empty():
        return pl.DataFrame({"step": pl.Series([], dtype=pl.Int64)})
    wide = long.pivot(on="run_id", index="step", values="value", sort_columns=True).sort("step")
    order = [r for r in (run_ids or sorted(long["run_id"].unique())) if r in wide.columns]
    return wide.select("step", *order)

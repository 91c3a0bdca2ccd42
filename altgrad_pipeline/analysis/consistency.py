"""Data checks behind the analysis assets: each returns (passed, details), details listing the
offending rows, so an asset check can show exactly what is wrong."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from altgrad_pipeline.analysis.history_scans import per_run
from altgrad_pipeline.ingest.model import numeric_history
from altgrad_pipeline.study import CONFIG_NOISE_KEYS, LOSS_KEYS


def every_run_has_loss(raw_runs: pl.LazyFrame | pl.DataFrame, histories: pl.LazyFrame | pl.DataFrame) -> tuple[bool, pl.DataFrame]:
    """Every run logged a loss series (`loss` or `train/loss`). Details: run_id, name, state of
    the runs without one (e.g. FormatExperimentRunner runs, which log only diagnostics)."""
    with_loss = numeric_history(histories).filter(pl.col("key").is_in(LOSS_KEYS)).select("run_id").unique()
    missing = raw_runs.lazy().join(with_loss, on="run_id", how="anti").select("run_id", "name", "state").sort("run_id").collect()
    return missing.is_empty(), missing


def steps_unique_and_increasing(histories: pl.LazyFrame | pl.DataFrame, runs: Sequence[str] | None = None) -> tuple[bool, pl.DataFrame]:
    """Steps of every (run, key) series are unique and increase in logged order. Details:
    run_id, key, n_duplicate_steps, n_decreasing_steps of the series that break it.

    In a series that never decreases a repeated step is a zero difference, so one pass of
    differences decides every series; distinct steps are counted only for series that decrease.
    A series belongs to one run, so the runs are checked one at a time (`history_scans`): memory stays
    one run's, however many runs a partition holds. `runs` names the runs whose rows `histories`
    holds (default: found by a scan of its `run_id` column, 45 % of the check's CPU).
    """
    bad = per_run(histories.lazy().select("run_id", "key", "step"), _series_step_faults, runs).sort("run_id", "key")
    return bad.is_empty(), bad


def _series_step_faults(steps: pl.LazyFrame) -> pl.DataFrame:
    """run_id, key, n_duplicate_steps, n_decreasing_steps of the series of `steps` (one run's
    rows) that repeat or go back (see `steps_unique_and_increasing`). Rows in strictly increasing
    (step, key) order, as the catalog keeps a history, have none: every series' steps increase,
    which one comparison of neighbouring rows proves, without grouping by key."""
    rows = steps.collect()
    step, key = pl.col("step"), pl.col("key")
    in_step_then_key_order = ((step > step.shift()) | ((step == step.shift()) & (key > key.shift()))).all()
    if not rows.select(step.null_count() + key.null_count()).item() and rows.select(in_step_then_key_order).item():
        return pl.DataFrame(schema={"run_id": rows.schema["run_id"], "key": rows.schema["key"], "n_duplicate_steps": pl.UInt32, "n_decreasing_steps": pl.UInt32})
    difference = step.diff()
    suspect = (
        rows.group_by("run_id", "key")
        .agg((difference == 0).sum().alias("n_repeats"), (difference < 0).sum().alias("n_decreasing_steps"))
        .filter((pl.col("n_repeats") > 0) | (pl.col("n_decreasing_steps") > 0))
    )
    unordered = suspect.filter(pl.col("n_decreasing_steps") > 0).select("run_id", "key")
    duplicates = (
        rows.join(unordered, on=["run_id", "key"], how="semi")
        .group_by("run_id", "key")
        .agg((pl.len() - pl.col("step").n_unique()).alias("n_duplicates"))
    )
    return suspect.join(duplicates, on=["run_id", "key"], how="left").select(
        "run_id", "key", pl.coalesce("n_duplicates", "n_repeats").alias("n_duplicate_steps"), "n_decreasing_steps"
    )


def rankings_cover_formats(rankings: pl.DataFrame) -> tuple[bool, pl.DataFrame]:
    """Every ranked format has a completed run or is marked all-failed, and all-failed formats
    carry no rank. Details: the offending rows."""
    bad = rankings.filter(
        ((pl.col("n_completed") == 0) != pl.col("all_failed")) | (pl.col("all_failed") & pl.col("rank").is_not_null())
    ).select("project", "fp8_format", "layer_type", "rank", "n_completed", "all_failed")
    return bad.is_empty(), bad


def manifold_intervals_contain_diff(manifold: pl.DataFrame) -> tuple[bool, pl.DataFrame]:
    """ci_low <= diff <= ci_high on every row that has an interval; a row without one must be
    `low_n` (too few runs for a bootstrap). Details: the offending rows."""
    bad = manifold.filter(
        pl.when(pl.col("ci_low").is_null() | pl.col("ci_high").is_null())
        .then(~pl.col("low_n"))
        .otherwise(~((pl.col("ci_low") <= pl.col("diff")) & (pl.col("diff") <= pl.col("ci_high"))))
    ).select("project", "fp8_format", "metric", "diff", "ci_low", "ci_high", "method", "low_n")
    return bad.is_empty(), bad


def duplicate_configurations(raw_runs: pl.LazyFrame | pl.DataFrame, noise_keys: tuple[str, ...] = CONFIG_NOISE_KEYS) -> tuple[bool, pl.DataFrame]:
    """Runs of one project with the same effective configuration and the same seed are one
    experiment logged twice, not replicates (altgrad's e5m2_short and e5m2_standard).

    The effective configuration is every flattened `config.*` column except the noise keys and
    `log_*` switches. Details: project, seed, duplicate_group (1, 2, ...), run_id, name for each
    run in a group of two or more; passed when there is none. Unseeded runs (null seed, e.g. the
    classification study) are independent draws, never duplicates.
    """
    runs = raw_runs.lazy()
    effective = [
        name
        for name in runs.collect_schema().names()
        if name.startswith("config.")
        and name.removeprefix("config.") not in noise_keys
        and not name.removeprefix("config.").split(".")[-1].startswith("log_")
    ]
    duplicates = (
        runs.filter(pl.col("seed").is_not_null())
        .with_columns(pl.struct(effective).alias("effective_config") if effective else pl.lit(None).alias("effective_config"))
        .with_columns(pl.len().over("project", "seed", "effective_config").alias("n_same"))
        .filter(pl.col("n_same") > 1)
        .with_columns(pl.struct("project", "seed", "effective_config").rank("dense").cast(pl.Int64).alias("duplicate_group"))
        .select("project", "seed", "duplicate_group", "run_id", "name")
        .sort("duplicate_group", "run_id")
        .collect()
    )
    return duplicates.is_empty(), duplicates

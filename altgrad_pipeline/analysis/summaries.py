"""Run summaries: one row per (run, numeric history key), computed from the full history.

- `last` is the last logged value (NaN if the run ended on NaN); `last_finite` the last finite one.
- `min`/`max` and their steps (`argmin_step`/`argmax_step`, the first step reaching them) are
  over finite values only: NaN and ±inf never win, so a run whose loss went NaN keeps its best
  finite value, and `first_nan_step` says when NaN began (`first_inf_step` likewise for ±inf).
- `final_mean` is the mean of the finite values among the last `ceil(final_fraction · n)` logged
  values of the key (n = values logged for that key; default fraction 0.1).
- `auc` is the trapezoid area under the finite values with the step axis normalised to [0, 1]
  (first finite step 0, last finite step 1); null with fewer than two finite steps.
- `first_step_below`/`first_step_above`: the first step whose finite value is below/above the
  threshold configured for the first key pattern (regular expression, searched) that matches
  the key; null when no pattern matches or the value never crossed.
- `n_values`, `n_finite`, `n_nan`, `n_inf` count the logged values.

All of it is one Polars group_by per run, over its keys (their categorical codes): no Python
loop over values. The group_by keeps each key's rows in row order, so a run's rows in step
order, as the catalog keeps a history, are grouped as they are; other rows are first sorted by
key and step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from altgrad_pipeline.ingest.model import numeric_history

DEFAULT_FINAL_FRACTION = 0.1


@dataclass(frozen=True)
class Threshold:
    """Crossing thresholds for every key matching `pattern` (a regular expression, searched)."""

    pattern: str
    below: float | None = None
    above: float | None = None


RUN_SUMMARIES_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "key": pl.String(),
    "n_values": pl.UInt32(),
    "n_finite": pl.UInt32(),
    "n_nan": pl.UInt32(),
    "n_inf": pl.UInt32(),
    "first_step": pl.Int64(),
    "last_step": pl.Int64(),
    "last": pl.Float64(),
    "last_finite": pl.Float64(),
    "min": pl.Float64(),
    "argmin_step": pl.Int64(),
    "max": pl.Float64(),
    "argmax_step": pl.Int64(),
    "final_mean": pl.Float64(),
    "auc": pl.Float64(),
    "first_nan_step": pl.Int64(),
    "first_inf_step": pl.Int64(),
    "threshold_below": pl.Float64(),
    "first_step_below": pl.Int64(),
    "threshold_above": pl.Float64(),
    "first_step_above": pl.Int64(),
}


def _thresholds_per_key(keys: pl.Series, thresholds: Sequence[Threshold]) -> pl.DataFrame:
    """key -> (below, above) of the first matching pattern (a loop over distinct keys, not values)."""
    compiled = [(re.compile(t.pattern), t) for t in thresholds]
    rows = []
    for key in keys.to_list():
        match = next((t for pattern, t in compiled if pattern.search(key)), None)
        rows.append((key, match.below if match else None, match.above if match else None))
    return pl.DataFrame(rows, schema={"key": pl.String, "threshold_below": pl.Float64, "threshold_above": pl.Float64}, orient="row")


def run_summaries(
    run_histories: pl.LazyFrame | pl.DataFrame,
    *,
    final_fraction: float = DEFAULT_FINAL_FRACTION,
    thresholds: Sequence[Threshold] = (),
) -> pl.DataFrame:
    """One row per (run_id, key) of `run_histories` (`HISTORY_SCHEMA`); see the module docstring."""
    if not 0 < final_fraction <= 1:
        raise ValueError(f"final_fraction must be in (0, 1], got {final_fraction}")
    history = numeric_history(run_histories).select("run_id", "step", "key", "value").collect()
    if thresholds:
        limits = _thresholds_per_key(history.get_column("key").unique(), thresholds)
        history = history.with_columns(
            pl.col("key").replace_strict(limits.get_column("key"), limits.get_column(name), default=None).alias(name)
            for name in ("threshold_below", "threshold_above")
        )
    runs = history.partition_by("run_id", maintain_order=True) if history.get_column("run_id").n_unique() > 1 else [history]
    summary = pl.concat([_summaries_of_run(rows, final_fraction) for rows in runs])
    return summary.select(*RUN_SUMMARIES_SCHEMA).sort("run_id", "key").cast(RUN_SUMMARIES_SCHEMA)  # type: ignore[arg-type]


def _summaries_of_run(rows: pl.DataFrame, final_fraction: float) -> pl.DataFrame:
    """The summaries of one run's rows (run_id, step, key, value, and the two thresholds when
    any is configured: without them the first steps below and above are null, unsearched)."""
    # Each key's rows in step order (group_by keeps row order within a group): rows already in
    # step order, as the catalog keeps a history, are grouped as they are (sorting them by the
    # key's code first, so that groups are contiguous, cost more than it saved: 32 runs, two
    # Polars threads, 1.94-2.14 -> 1.78-1.92 CPU-s); others are sorted by code and step, stably,
    # like a stable sort by step. The run_id (one value) and the key strings are left out, the
    # key kept as its code.
    crossings = "threshold_below" in rows.columns
    steps = rows.get_column("step")
    coded = rows.select(pl.exclude("run_id", "key"), pl.col("key").cast(pl.Categorical).alias("_key")).with_columns(
        pl.col("_key").to_physical().alias("_code")
    )
    grouped = coded if not steps.null_count() and steps.is_sorted() else coded.sort("_code", "step", maintain_order=True)
    n = pl.len()
    final = pl.col("value").slice(n - (n.cast(pl.Float64) * final_fraction).ceil().cast(pl.UInt32))
    value, step = pl.col("value"), pl.col("step")
    finite = value.is_finite()
    finite_value, finite_step = value.filter(finite), step.filter(finite)
    span = finite_step.last() - finite_step.first()
    trapezoids = (finite_step.diff() * (finite_value + finite_value.shift(1)) / 2).sum()
    none, no_step = pl.lit(None, pl.Float64), pl.lit(None, pl.Int64)
    return grouped.group_by("_code").agg(
        pl.lit(rows.get_column("run_id").first(), pl.String).alias("run_id"),
        pl.col("_key").first().cast(pl.String).alias("key"),
        pl.len().alias("n_values"),
        finite.sum().cast(pl.UInt32).alias("n_finite"),
        value.is_nan().sum().cast(pl.UInt32).alias("n_nan"),
        value.is_infinite().sum().cast(pl.UInt32).alias("n_inf"),
        step.first().alias("first_step"),
        step.last().alias("last_step"),
        value.last().alias("last"),
        finite_value.last().alias("last_finite"),
        finite_value.min().alias("min"),
        finite_step.filter(finite_value == finite_value.min()).first().alias("argmin_step"),
        finite_value.max().alias("max"),
        finite_step.filter(finite_value == finite_value.max()).first().alias("argmax_step"),
        final.filter(final.is_finite()).mean().alias("final_mean"),
        pl.when(span > 0).then(trapezoids / span.cast(pl.Float64)).alias("auc"),
        step.filter(value.is_nan()).first().alias("first_nan_step"),
        step.filter(value.is_infinite()).first().alias("first_inf_step"),
        (pl.col("threshold_below").first() if crossings else none).alias("threshold_below"),
        (step.filter(finite & (value < pl.col("threshold_below"))).first() if crossings else no_step).alias("first_step_below"),
        (pl.col("threshold_above").first() if crossings else none).alias("threshold_above"),
        (step.filter(finite & (value > pl.col("threshold_above"))).first() if crossings else no_step).alias("first_step_above"),
    )


def final_count(n_values: int, final_fraction: float = DEFAULT_FINAL_FRACTION) -> int:
    """How many of a key's last logged values `final_mean` averages (for tests and reports)."""
    return math.ceil(n_values * final_fraction)

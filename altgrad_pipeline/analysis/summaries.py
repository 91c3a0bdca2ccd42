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

Run by run, the rows are sorted key by key (NumPy's stable sort of the keys' codes; by code and
step when the steps are not already in order, as the catalog keeps them), and every statistic is
a vectorised reduction over each key's contiguous slice: no Python loop over values or keys.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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
    if history.is_empty():
        return pl.DataFrame(schema=RUN_SUMMARIES_SCHEMA)
    run_ids = history.get_column("run_id")
    runs = [history] if run_ids.eq_missing(run_ids.first()).all() else history.partition_by("run_id", maintain_order=True)
    summary = pl.concat([_summaries_of_run(rows, final_fraction) for rows in runs])
    return summary.select(*RUN_SUMMARIES_SCHEMA).sort("run_id", "key").cast(RUN_SUMMARIES_SCHEMA)  # type: ignore[arg-type]


def _summaries_of_run(rows: pl.DataFrame, final_fraction: float) -> pl.DataFrame:
    """The summaries of one run's rows (run_id, step, key, value, and the two thresholds when
    any is configured: without them the first steps below and above are null, unsearched).

    The rows are put key by key, each key's rows in step order (null steps first, ties in row
    order), by NumPy's stable sort of the keys' codes (a radix sort of 16-bit codes) — alone when
    the steps never go back, as the catalog keeps a history. Each key is then a contiguous slice:
    its counts and first NaN, inf or crossing are binary searches in the sorted positions where
    they occur, its finite statistics reductions over the slice of the finite rows. Few arrays as
    long as the run: this VM pays for every freshly touched page (docs/performance.md)."""
    steps = rows.get_column("step")
    known = steps.is_not_null().to_numpy()
    codes = _key_codes(rows.get_column("key"))
    step_of = steps.fill_null(0).to_numpy()
    order = np.argsort(codes, kind="stable") if known.all() and steps.is_sorted() else np.lexsort((step_of, known, codes))
    counts = np.bincount(codes)
    counts = counts[counts > 0]
    ends = np.cumsum(counts)
    starts = ends - counts
    values = rows.get_column("value").to_numpy()
    nan_at, infinite_at = np.flatnonzero(np.isnan(values)[order]), np.flatnonzero(np.isinf(values)[order])
    finite_at = np.flatnonzero(np.isfinite(values)[order])
    # The finite rows (their values, steps, and whether the step is known) in sorted order,
    # padded by two so that every slice bound below is an index of them.
    finite_rows = order[finite_at]
    finite_value, finite_step, finite_known = np.zeros(finite_at.size + 2), np.zeros(finite_at.size + 2, np.int64), np.ones(finite_at.size + 2, bool)
    for source, padded in ((values, finite_value), (step_of, finite_step), (known, finite_known)):
        np.take(source, finite_rows, out=padded[: finite_at.size], mode="clip")  # "clip": no buffered copy of `out`
    first_finite, end_finite = np.searchsorted(finite_at, starts), np.searchsorted(finite_at, ends)
    n_finite = end_finite - first_finite
    any_finite = n_finite > 0
    minimum = _reduce_slices(np.minimum, finite_value, first_finite, end_finite)
    maximum = _reduce_slices(np.maximum, finite_value, first_finite, end_finite)
    # final_mean: the finite values among each key's last ceil(n * fraction) rows.
    first_final = np.searchsorted(finite_at, ends - np.ceil(counts * final_fraction).astype(np.int64))
    n_final = end_finite - first_final
    final_sum = _reduce_slices(np.add, finite_value, first_final, end_finite)
    # auc: trapezoids between a key's consecutive finite rows over its finite step span; none
    # when that span is not positive or a finite row's step is null (null steps sort first).
    trapezoids = np.diff(finite_step).astype(np.float64)
    trapezoids *= finite_value[1:] + finite_value[:-1]
    trapezoids /= 2
    area = _reduce_slices(np.add, trapezoids, first_finite, np.maximum(end_finite - 1, first_finite))
    span = finite_step[end_finite - 1] - finite_step[first_finite]
    has_auc = any_finite & (span > 0) & finite_known[first_finite]

    def step_at(rows_at: np.ndarray, found: np.ndarray | bool) -> tuple[np.ndarray, np.ndarray]:
        """The steps of rows (original positions), and whether each was found and is known."""
        return step_of[rows_at], found & known[rows_at]

    def first_finite_step(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each key's first step among its finite rows where `mask` (over them) holds."""
        position, found = _first_in(np.flatnonzero(mask), first_finite, end_finite)
        return step_at(finite_rows[position] if finite_at.size else starts, found)

    def first_step(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        position, found = _first_in(positions, starts, ends)
        return step_at(order[position], found)

    columns = {
        "n_values": (counts, None),
        "n_finite": (n_finite, None),
        "n_nan": (np.searchsorted(nan_at, ends) - np.searchsorted(nan_at, starts), None),
        "n_inf": (np.searchsorted(infinite_at, ends) - np.searchsorted(infinite_at, starts), None),
        "first_step": step_at(order[starts], True),
        "last_step": step_at(order[ends - 1], True),
        "last": (values[order[ends - 1]], None),
        "last_finite": (finite_value[end_finite - 1], any_finite),
        "min": (minimum, any_finite),
        "argmin_step": first_finite_step(finite_value[: finite_at.size] == np.repeat(minimum, n_finite)),
        "max": (maximum, any_finite),
        "argmax_step": first_finite_step(finite_value[: finite_at.size] == np.repeat(maximum, n_finite)),
        "final_mean": (final_sum / np.maximum(n_final, 1), n_final > 0),
        "auc": (area / np.where(has_auc, span, 1), has_auc),
        "first_nan_step": first_step(nan_at),
        "first_inf_step": first_step(infinite_at),
    }
    for side, crossed in (("below", np.less), ("above", np.greater)):
        name = f"threshold_{side}"
        limit = rows.get_column(name).to_numpy()[order[starts]] if name in rows.columns else np.full(counts.size, np.nan)
        searched = ~np.isnan(limit)  # no threshold for the key: its crossing is null, unsearched
        columns[name] = (limit, searched)
        crossing = crossed(finite_value[: finite_at.size], np.repeat(limit, n_finite)) if searched.any() else np.zeros(0, bool)
        columns[f"first_step_{side}"] = first_finite_step(crossing)
    frame = pl.DataFrame({name: column for name, (column, _) in columns.items()}).with_columns(
        pl.when(pl.Series(valid)).then(pl.col(name)).alias(name) for name, (_, valid) in columns.items() if valid is not None
    )
    return frame.with_columns(
        pl.lit(rows.get_column("run_id").first(), pl.String).alias("run_id"), rows.get_column("key").gather(order[starts]).alias("key")
    )


def _reduce_slices(ufunc: np.ufunc, array: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """`ufunc` reduced over each `array[lo:hi]` (meaningless where lo == hi; every bound an index)."""
    return ufunc.reduceat(array, np.column_stack((lo, hi)).ravel())[::2]


def _first_in(positions: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first of the sorted `positions` in each [lo, hi), and whether there is one (else 0)."""
    at = np.searchsorted(positions, lo)
    found = at < np.searchsorted(positions, hi)
    return (positions[np.minimum(at, positions.size - 1)] if positions.size else np.zeros_like(lo)), found


def _key_codes(keys: pl.Series) -> np.ndarray:
    """Each row's key as a small unsigned integer, equal for equal keys: the key's categorical code
    less the run's smallest one, as 16 bits when they fit (NumPy sorts those by radix); the codes
    are global to the process, so a wider spread is first made dense."""
    codes = keys.cast(pl.Categorical).to_physical()
    if codes.null_count():
        codes = codes.fill_null((codes.max() or 0) + 1)  # a null key is a key of its own
    lowest, highest, values = codes.min() or 0, codes.max() or 0, codes.to_numpy()
    if highest - lowest < 2**16:  # subtracted modulo 2^16: exact for a spread below it
        return np.subtract(values, values.dtype.type(lowest), dtype=np.uint16, casting="unsafe")
    return np.unique(values, return_inverse=True)[1].astype(np.uint32)


def final_count(n_values: int, final_fraction: float = DEFAULT_FINAL_FRACTION) -> int:
    """How many of a key's last logged values `final_mean` averages (for tests and reports)."""
    return math.ceil(n_values * final_fraction)

"""Each run's learning curves and training-health series, read once from the histories.

The rows (run_id, key, step, value) of every numeric history row whose key is a curve metric
(`curves.is_curve_metric`: the losses, `eval/*`, curvature and gradient-noise keys) or one of the
series the failure, ranking and manifold analyses follow by name (`SERIES_KEYS`: the training
loss, global gradient norm, `param_nan_count`, the bit-stall, overflow and underflow rates, the
epoch keys). Rows are kept as logged: NaN and ±inf as data, a step logged twice twice, in the
order of the histories (the partition files keep each run's rows together, in logged order).

Why a table of its own: the analyses and reports read these few series of each run, not the
per-parameter rows that make up most of a study's history (the benchmark study: 0.58 M of 14 M
values). Found once per refresh, they are no longer re-derived from the whole history by every
step that needs them (run outcomes, training dynamics, sweep summary, rankings, manifold
statistics and their reports each did). Failure modes still read the histories: their evidence
needs the per-parameter gradient norms and dead-neuron fractions.
"""

from __future__ import annotations

import polars as pl

from altgrad_pipeline.analysis.curves import EPOCH_KEYS, is_curve_metric
from altgrad_pipeline.analysis.failures import NAMED_KEYS
from altgrad_pipeline.ingest.model import numeric_history

LEARNING_CURVES_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "key": pl.String(),
    "step": pl.Int64(),
    "value": pl.Float64(),
}
#: History keys the analyses read by name besides the curve metrics.
SERIES_KEYS = (*NAMED_KEYS, *EPOCH_KEYS)


def is_learning_curve_key() -> pl.Expr:
    """True for the history keys `learning_curves` keeps (see module doc)."""
    return is_curve_metric() | pl.col("key").is_in(SERIES_KEYS)


def learning_curves(histories: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """run_id, key, step, value (`LEARNING_CURVES_SCHEMA`) of the numeric rows of `histories`
    whose key `is_learning_curve_key`, in the order of `histories`. A plan, not a frame: streamed
    into its file, the key test is a filter the Parquet reader applies and memory holds a few
    batches, neither the history nor the table (collected and sorted, the 4x benchmark study's
    table peaked at 546 MB alone, against 201 MB streamed)."""
    return numeric_history(histories).filter(is_learning_curve_key()).select(list(LEARNING_CURVES_SCHEMA)).cast(LEARNING_CURVES_SCHEMA)  # type: ignore[arg-type]

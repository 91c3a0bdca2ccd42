"""Which history keys are learning curves, how steps become epochs, and curves averaged per group.

Fitted and summarised metrics: `loss`, `train/loss`, `train_loss`, `val_loss`, `val/loss`,
`eval/loss` and every other `eval/*` key except the evaluation's own bookkeeping
(`eval/runtime`, `eval/samples_per_second`, `eval/steps_per_second`, `eval/epoch`, `eval/step`).
Eval metrics such as accuracy or F1 are higher-is-better; they are fitted with the same models
(a rising curve has a < 0) and their finals are summarised the same way. A metric counts as a loss
(and gets a value in bits, nats / ln 2) when its name ends in `loss`.

Curvature and gradient-noise series (the gap analysis's other dynamics) are fitted and summarised
like the loss when a run logs them: keys whose last `/` segment is one of `DYNAMICS_METRIC_NAMES`
(`lambda_max`/`sharpness` for the top Hessian eigenvalue, `hutchinson_trace`/`hessian_trace`/
`trace_estimate` for the Hutchinson trace estimate, `grad_variance`/`gradient_variance`/`grad_var`,
`residual_power`), e.g. `curvature/lambda_max`. altgrad logs none of them at 506b2a5 (the data
notes list no curvature or noise key), so these are the names such probes conventionally log;
a run without them simply has no such rows. Losses, variances and powers are nonnegative, so
their fitted limit is bounded below by 0; an eigenvalue or a trace may be negative.

Steps per epoch come from the config: the first present of `steps_per_epoch`,
`iters_per_epoch`, `batches_per_epoch`, `num_batches_per_epoch` (any nesting: the last dotted
segment is matched), else a dataset size (`train_size`, `dataset_size`, `num_train_examples`,
`n_train`, `train_samples`) divided by a batch size (`batch_size`, `train_batch_size`,
`per_device_train_batch_size`), rounded up, else read off the history's own epoch key
(`EPOCH_KEYS`: the least-squares slope of step on epoch). Epochs are reported to the nearest
¼ epoch, and with a known epoch length each series is also aggregated per quarter epoch
(`quarter_epoch_aggregates`: mean, min, max and count of the finite values logged in it).
"""

from __future__ import annotations

import polars as pl

from altgrad_pipeline.analysis.history_scans import distinct
from altgrad_pipeline.analysis.stats import finite, least_squares_slope, t_quantiles
from altgrad_pipeline.ingest.model import numeric_history
from altgrad_pipeline.ingest.tables import CONFIG_PREFIX
from altgrad_pipeline.study import LOSS_KEYS

LOSS_METRICS = (*LOSS_KEYS, "train_loss", "val_loss", "val/loss", "eval/loss")
EVAL_PREFIX = "eval/"
DYNAMICS_METRIC_NAMES = (
    "lambda_max", "sharpness", "hutchinson_trace", "hessian_trace", "trace_estimate",
    "grad_variance", "gradient_variance", "grad_var", "residual_power",
)
NONNEGATIVE_METRIC_NAMES = ("grad_variance", "gradient_variance", "grad_var", "residual_power")
EPOCH_KEYS = ("epoch", "train/epoch", "trainer/epoch")
EVAL_BOOKKEEPING = ("eval/runtime", "eval/samples_per_second", "eval/steps_per_second", "eval/epoch", "eval/step")
STEPS_PER_EPOCH_KEYS = ("steps_per_epoch", "iters_per_epoch", "batches_per_epoch", "num_batches_per_epoch")
DATASET_SIZE_KEYS = ("train_size", "dataset_size", "num_train_examples", "n_train", "train_samples")
BATCH_SIZE_KEYS = ("batch_size", "train_batch_size", "per_device_train_batch_size")
EPOCH_RESOLUTION = 4
CURVE_CONFIDENCE = 0.95


def is_curve_metric() -> pl.Expr:
    """True for the history keys this package fits and summarises (see module doc)."""
    key = pl.col("key")
    dynamics = key.str.split("/").list.last().is_in(DYNAMICS_METRIC_NAMES)
    return key.is_in(LOSS_METRICS) | (key.str.starts_with(EVAL_PREFIX) & ~key.is_in(EVAL_BOOKKEEPING)) | dynamics


def is_loss_metric(metric: str) -> bool:
    return metric.endswith("loss")


def is_nonnegative_metric(metric: str) -> bool:
    """Losses, variances and powers: their fitted limit is bounded below by 0."""
    return is_loss_metric(metric) or metric.rsplit("/", 1)[-1] in NONNEGATIVE_METRIC_NAMES


def curve_series(histories: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """run_id, metric, step, value of every curve metric, sorted by step (last value per step).
    The key test runs on the distinct keys (streamed), not on every history row, and the curve
    rows are then read by a filter the Parquet reader applies (`history_scans`)."""
    history = numeric_history(histories)
    curve_keys = pl.DataFrame({"key": distinct(history, "key")}, schema={"key": pl.String}).filter(is_curve_metric())
    return (
        history.filter(pl.col("key").is_in(curve_keys.get_column("key").to_list()))
        .group_by("run_id", "key", "step")
        .agg(pl.col("value").last())
        .rename({"key": "metric"})
        .sort("run_id", "metric", "step")
    )


def _config_column(columns: list[str], names: tuple[str, ...]) -> str | None:
    for name in names:
        for column in columns:
            if column.startswith(CONFIG_PREFIX) and column.rsplit(".", 1)[-1] == name:
                return column
    return None


def steps_per_epoch(raw_runs: pl.LazyFrame | pl.DataFrame, histories: pl.LazyFrame | pl.DataFrame | None = None) -> pl.LazyFrame:
    """run_id, steps_per_epoch (Float64, null when neither the config nor an epoch key in
    `histories` says; see module doc)."""
    lazy = raw_runs.lazy()
    columns = lazy.collect_schema().names()
    direct = _config_column(columns, STEPS_PER_EPOCH_KEYS)
    size = _config_column(columns, DATASET_SIZE_KEYS)
    batch = _config_column(columns, BATCH_SIZE_KEYS)
    options = []
    if direct is not None:
        options.append(pl.col(direct).cast(pl.Float64, strict=False))
    if size is not None and batch is not None:
        options.append((pl.col(size).cast(pl.Float64, strict=False) / pl.col(batch).cast(pl.Float64, strict=False)).ceil())
    value = pl.coalesce(options) if options else pl.lit(None, pl.Float64)
    configured = lazy.select("run_id", pl.when(value > 0).then(value).alias("steps_per_epoch"))
    if histories is None or "key" not in histories.lazy().collect_schema().names():
        return configured
    logged = (
        histories.lazy()
        .filter(pl.col("key").is_in(EPOCH_KEYS) & finite(pl.col("value")))
        .group_by("run_id")
        .agg(least_squares_slope(pl.col("value"), pl.col("step").cast(pl.Float64)).round(6).alias("logged"))  # no 49.9999999 from rounding
    )
    return (
        configured.join(logged, on="run_id", how="left")
        .select("run_id", pl.coalesce("steps_per_epoch", pl.when(pl.col("logged") > 0).then(pl.col("logged"))).alias("steps_per_epoch"))
    )


def to_epochs(step: pl.Expr, per_epoch: pl.Expr) -> pl.Expr:
    """A step as epochs, to the nearest 1/EPOCH_RESOLUTION epoch."""
    return (step / per_epoch * EPOCH_RESOLUTION).round() / EPOCH_RESOLUTION


def quarter_epoch_aggregates(series: pl.LazyFrame | pl.DataFrame, per_epoch: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """run_id, metric, epoch (start of the quarter epoch), n_values, mean, min, max of the finite
    values of `series` (run_id, metric, step, value) per quarter epoch, for runs whose
    `per_epoch` (run_id, steps_per_epoch) is known: the per-epoch view of a per-step series."""
    quarter = (pl.col("step") / pl.col("steps_per_epoch") * EPOCH_RESOLUTION).floor() / EPOCH_RESOLUTION
    return (
        series.lazy()
        .filter(finite(pl.col("value")))
        .join(per_epoch.lazy().filter(pl.col("steps_per_epoch").is_not_null()), on="run_id", how="inner")
        .group_by("run_id", "metric", quarter.alias("epoch"))
        .agg(pl.len().cast(pl.Int64).alias("n_values"), pl.col("value").mean().alias("mean"), pl.col("value").min().alias("min"), pl.col("value").max().alias("max"))
        .sort("run_id", "metric", "epoch")
        .collect()
    )


def grouped_curves(series: pl.LazyFrame | pl.DataFrame, groups: pl.LazyFrame | pl.DataFrame, *, confidence: float = CURVE_CONFIDENCE) -> pl.DataFrame:
    """Per group and step: n_runs, mean, ci_low, ci_high of the finite values of `series`
    (run_id, step, value) over the runs of each group (`groups`: run_id, group). The band is the
    Student-t interval mean ± t(0.975, n−1)·s/√n; a step with one run has no band."""
    summary = (
        series.lazy()
        .filter(finite(pl.col("value")))
        .join(groups.lazy().select("run_id", "group"), on="run_id", how="inner")
        .group_by("group", "step")
        .agg(pl.len().alias("n_runs"), pl.col("value").mean().alias("mean"), pl.col("value").std(ddof=1).alias("std"))
        .sort("group", "step")
        .collect()
    )
    half = t_quantiles(summary["n_runs"], confidence) * summary["std"] / summary["n_runs"].cast(pl.Float64).sqrt()
    return summary.with_columns((pl.col("mean") - half).alias("ci_low"), (pl.col("mean") + half).alias("ci_high")).select(
        "group", "step", pl.col("n_runs").cast(pl.Int64), "mean", "ci_low", "ci_high"
    )

"""Which history keys are learning curves, how steps become epochs, and curves averaged per group.

Fitted and summarised metrics: `loss`, `train/loss`, `train_loss`, `val_loss`, `val/loss`,
`eval/loss` and every other `eval/*` key except the evaluation's own bookkeeping
(`eval/runtime`, `eval/samples_per_second`, `eval/steps_per_second`, `eval/epoch`, `eval/step`).
Eval metrics such as accuracy or F1 are higher-is-better; they are fitted with the same models
(a rising curve has a < 0) and their finals are summarised the same way. A metric counts as a loss
(and gets a value in bits, nats / ln 2) when its name ends in `loss`.

Steps per epoch come from the config: the first present of `steps_per_epoch`,
`iters_per_epoch`, `batches_per_epoch`, `num_batches_per_epoch` (any nesting: the last dotted
segment is matched), else a dataset size (`train_size`, `dataset_size`, `num_train_examples`,
`n_train`, `train_samples`) divided by a batch size (`batch_size`, `train_batch_size`,
`per_device_train_batch_size`), rounded up. Epochs are reported to the nearest ¼ epoch.
"""

from __future__ import annotations

import polars as pl
from scipy import stats as sps

from altgrad_pipeline.analysis.stats import finite
from altgrad_pipeline.ingest.model import numeric_history
from altgrad_pipeline.ingest.tables import CONFIG_PREFIX

LOSS_METRICS = ("loss", "train/loss", "train_loss", "val_loss", "val/loss", "eval/loss")
EVAL_PREFIX = "eval/"
EVAL_BOOKKEEPING = ("eval/runtime", "eval/samples_per_second", "eval/steps_per_second", "eval/epoch", "eval/step")
STEPS_PER_EPOCH_KEYS = ("steps_per_epoch", "iters_per_epoch", "batches_per_epoch", "num_batches_per_epoch")
DATASET_SIZE_KEYS = ("train_size", "dataset_size", "num_train_examples", "n_train", "train_samples")
BATCH_SIZE_KEYS = ("batch_size", "train_batch_size", "per_device_train_batch_size")
EPOCH_RESOLUTION = 4
CURVE_CONFIDENCE = 0.95


def is_curve_metric() -> pl.Expr:
    """True for the history keys this package fits and summarises (see module doc)."""
    key = pl.col("key")
    return key.is_in(LOSS_METRICS) | (key.str.starts_with(EVAL_PREFIX) & ~key.is_in(EVAL_BOOKKEEPING))


def is_loss_metric(metric: str) -> bool:
    return metric.endswith("loss")


def curve_series(histories: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """run_id, metric, step, value of every curve metric, sorted by step (last value per step)."""
    return (
        numeric_history(histories)
        .filter(is_curve_metric())
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


def steps_per_epoch(raw_runs: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """run_id, steps_per_epoch (Float64, null when the config does not say; see module doc)."""
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
    return lazy.select("run_id", pl.when(value > 0).then(value).alias("steps_per_epoch"))


def to_epochs(step: pl.Expr, per_epoch: pl.Expr) -> pl.Expr:
    """A step as epochs, to the nearest 1/EPOCH_RESOLUTION epoch."""
    return (step / per_epoch * EPOCH_RESOLUTION).round() / EPOCH_RESOLUTION


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
    quantile = pl.Series([float(sps.t.ppf(0.5 + confidence / 2, n - 1)) if n >= 2 else None for n in summary["n_runs"].to_list()], dtype=pl.Float64)
    half = quantile * summary["std"] / summary["n_runs"].cast(pl.Float64).sqrt()
    return summary.with_columns((pl.col("mean") - half).alias("ci_low"), (pl.col("mean") + half).alias("ci_high")).select(
        "group", "step", pl.col("n_runs").cast(pl.Int64), "mean", "ci_low", "ci_high"
    )

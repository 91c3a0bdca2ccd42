"""The numbers the analysis reports draw: the loss-curve bands over seeds (`loss_curve_summary`)
and the metric traces before a collapse (`failure_trace_series`). Computed here, drawn by
`reports.figures`, quoted by the report text, so figure and text show the same values.
"""

from __future__ import annotations

import polars as pl
from scipy import stats as sps

from altgrad_pipeline.analysis.outcomes import history_series, loss_history
from altgrad_pipeline.analysis.stats import finite
from altgrad_pipeline.study import LOSS_KEYS

#: Confidence level of the loss-curve bands.
CURVE_CONFIDENCE = 0.95

#: How the loss-curve band is computed, for figure captions and the report's Method section.
CURVE_BAND_METHOD = (
    "mean over seeds at each logged step, with a two-sided 95% Student-t interval "
    "(mean ± t(0.975, n−1)·s/√n, s the sample standard deviation over the n runs with a finite loss "
    "at that step); steps with a single run show the mean without a band. Non-finite losses are "
    "left out, so n drops where runs have stopped."
)

#: Failure-trace series: name -> history keys in priority order. The dead-neuron series is not a
#: history key; it is averaged from `layer_metrics` (see `failure_trace_series`).
TRACE_SERIES: dict[str, tuple[str, ...]] = {
    "loss": LOSS_KEYS,
    "grad_norm": ("grad_norm",),
    "bit_stall_rate": ("quantization/bit_stall_rate", "bit_stall_rate"),
    "dead_neuron_frac_ex_embedding": (),
}

#: The per-layer metric averaged into `dead_neuron_frac_ex_embedding`.
DEAD_NEURON_METRIC = "dead_neuron_frac"


def _t_half_width(std: pl.Expr, n: pl.Expr, confidence: float) -> pl.Expr:
    """Half width of the Student-t interval; null for fewer than two values."""
    quantile = n.map_elements(
        lambda k: float(sps.t.ppf(0.5 + confidence / 2, k - 1)) if k >= 2 else None,
        return_dtype=pl.Float64,
    )
    return quantile * std / n.cast(pl.Float64).sqrt()


def loss_curve_summary(
    histories: pl.LazyFrame | pl.DataFrame,
    runs: pl.DataFrame,
    *,
    confidence: float = CURVE_CONFIDENCE,
) -> pl.DataFrame:
    """Per format and step: n_runs, mean, ci_low, ci_high of the training loss over the runs in
    `runs` (run_id, fp8_format). Runs are aligned on the logged step; non-finite losses are left
    out (see `CURVE_BAND_METHOD`)."""
    loss = loss_history(histories).filter(finite(pl.col("value")))
    summary = (
        loss.join(runs.lazy().select("run_id", "fp8_format"), on="run_id", how="inner")
        .group_by("fp8_format", "step")
        .agg(
            pl.len().alias("n_runs"),
            pl.col("value").mean().alias("mean"),
            pl.col("value").std(ddof=1).alias("std"),
        )
        .collect()
    )
    half = _t_half_width(pl.col("std"), pl.col("n_runs"), confidence)
    return (
        summary.with_columns((pl.col("mean") - half).alias("ci_low"), (pl.col("mean") + half).alias("ci_high"))
        .select("fp8_format", "step", pl.col("n_runs").cast(pl.Int64), "mean", "ci_low", "ci_high")
        .sort("fp8_format", "step")
    )


def failure_trace_series(
    histories: pl.LazyFrame | pl.DataFrame,
    layer_metrics: pl.LazyFrame | pl.DataFrame,
    run_ids: list[str],
) -> pl.DataFrame:
    """run_id, step, series, value for the `TRACE_SERIES` series of the given runs. The dead-neuron
    series is the unweighted mean of `dead_neuron_frac` over each step's quantised (2-D weight)
    parameters outside the embedding layers, as in `failures.dead_neuron_frac_ex_embedding`
    (embedding gradients are structurally sparse)."""
    history = histories.lazy().filter(pl.col("run_id").is_in(run_ids))
    parts = [
        history_series(history, keys).select("run_id", "step", pl.lit(series).alias("series"), "value")
        for series, keys in TRACE_SERIES.items()
        if keys
    ]
    dead = (
        layer_metrics.lazy()
        .filter(
            pl.col("run_id").is_in(run_ids)
            & (pl.col("metric") == DEAD_NEURON_METRIC)
            & pl.col("quantized").fill_null(False)
            & (pl.col("layer_type") != "embedding")
        )
        .group_by("run_id", "step")
        .agg(pl.col("value").filter(finite(pl.col("value"))).mean())
        .select("run_id", "step", pl.lit("dead_neuron_frac_ex_embedding").alias("series"), "value")
    )
    return pl.concat([*parts, dead]).cast({"step": pl.Int64, "value": pl.Float64}).sort("series", "run_id", "step").collect()

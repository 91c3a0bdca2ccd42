"""The numbers the analysis reports draw: the loss-curve bands over seeds (`loss_curve_summary`)
and the metric traces before a collapse (`failure_trace_series`). Computed here, drawn by
`reports.figures`, quoted by the report text, so figure and text show the same values.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from altgrad_pipeline.analysis.history_scans import RUNS_PER_QUERY, per_run
from altgrad_pipeline.analysis.outcomes import history_series, loss_history
from altgrad_pipeline.analysis.stats import finite, t_quantiles
from altgrad_pipeline.ingest.model import numeric_history
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

#: Share of the compared steps the zoomed loss panel shows (the last steps, where formats separate).
ZOOM_FRACTION = 0.2
#: Padding added above and below a y range, as a share of its span.
RANGE_PADDING = 0.05

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
    quantile = n.map_batches(lambda counts: t_quantiles(counts, confidence), return_dtype=pl.Float64)
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


@dataclass(frozen=True)
class LossCurveView:
    """How the headline loss figure frames `loss_curve_summary`, decided from the data so every
    format that trains stays readable.

    `diverging`: formats whose mean loss ends above where it started (they blow up); the y range
    `y_range` is set by the other formats (their bands included, padded) and the diverging
    formats' first steps (so they start inside the frame), and `exits` (fp8_format,
    step, peak) says where each diverging format first leaves that range and how high it goes.
    `zoom_steps` are the last `ZOOM_FRACTION` of the steps every training format reached, and
    `zoom_range` the y range of the training formats there."""

    diverging: tuple[str, ...]
    y_range: tuple[float, float]
    exits: pl.DataFrame
    zoom_steps: tuple[int, int]
    zoom_range: tuple[float, float]


def _padded(low: float, high: float) -> tuple[float, float]:
    pad = RANGE_PADDING * (high - low) if high > low else max(abs(high), 1.0) * RANGE_PADDING
    return low - pad, high + pad


def loss_curve_view(summary: pl.DataFrame, *, zoom_fraction: float = ZOOM_FRACTION) -> LossCurveView | None:
    """The framing of the headline loss figure (see `LossCurveView`); None without a finite mean at
    a step >= 1."""
    shown = summary.filter((pl.col("step") >= 1) & finite(pl.col("mean")))
    if shown.is_empty():
        return None
    ends = shown.group_by("fp8_format").agg(
        pl.col("mean").sort_by("step").first().alias("first"),
        pl.col("mean").sort_by("step").last().alias("last"),
        pl.col("step").max().alias("last_step"),
    )
    diverging = ends.filter(pl.col("last") > pl.col("first"))["fp8_format"].sort().to_list()
    training = shown.filter(~pl.col("fp8_format").is_in(diverging)) if len(diverging) < ends.height else shown
    def value_range(frame: pl.DataFrame) -> tuple[float, float]:
        lows = frame.select(pl.min_horizontal(pl.col("mean"), pl.col("ci_low").fill_nan(None)).min()).item()
        highs = frame.select(pl.max_horizontal(pl.col("mean"), pl.col("ci_high").fill_nan(None)).max()).item()
        return _padded(float(lows), float(highs))

    starts = shown.filter(pl.col("fp8_format").is_in(diverging)).sort("step").group_by("fp8_format").head(1)
    y_range = value_range(pl.concat([training, starts]))
    exits = (
        shown.filter(pl.col("fp8_format").is_in(diverging))
        .group_by("fp8_format")
        .agg(pl.col("step").filter(pl.col("mean") > y_range[1]).min().alias("step"), pl.col("mean").max().alias("peak"))
        .filter(pl.col("step").is_not_null())
        .sort("fp8_format")
    )
    end = int(ends.filter(pl.col("fp8_format").is_in(training["fp8_format"].unique().to_list()))["last_step"].min())
    start = max(1, end - max(1, round(zoom_fraction * end)))
    zoom_range = value_range(training.filter(pl.col("step").is_between(start, end)))
    return LossCurveView(tuple(diverging), y_range, exits, (start, end), zoom_range)


def failure_trace_series(
    histories: pl.LazyFrame | pl.DataFrame,
    layer_metrics: pl.LazyFrame | pl.DataFrame,
    run_ids: list[str],
) -> pl.DataFrame:
    """run_id, step, series, value for the `TRACE_SERIES` series of the given runs. The dead-neuron
    series is the unweighted mean of `dead_neuron_frac` over each step's quantised (2-D weight)
    parameters outside the embedding layers, as in `failures.dead_neuron_frac_ex_embedding`
    (embedding gradients are structurally sparse). Each run's series are found from its own rows,
    a few runs at a time (`history_scans.per_run`), read once: one plan over every run ran six scans of the histories at
    once (the 4x benchmark study's 128 runs: 386 MB above the imports, 262 MB this way)."""
    runs = list(dict.fromkeys(run_ids))
    keys = tuple(key for series_keys in TRACE_SERIES.values() for key in series_keys)
    logged = per_run(
        numeric_history(histories).filter(pl.col("key").is_in(keys)).select("run_id", "step", "key", "value"),
        lambda rows: _logged_trace(rows.collect().lazy()),
        runs,
        runs_at_once=RUNS_PER_QUERY,
    )
    dead = per_run(
        layer_metrics.lazy()
        .filter(
            (pl.col("metric") == DEAD_NEURON_METRIC) & pl.col("quantized").fill_null(False) & (pl.col("layer_type") != "embedding")
        )
        .select("run_id", "step", "value"),
        lambda rows: rows.group_by("run_id", "step")
        .agg(pl.col("value").filter(finite(pl.col("value"))).mean())
        .select("run_id", "step", pl.lit("dead_neuron_frac_ex_embedding").alias("series"), "value"),
        runs,
        runs_at_once=RUNS_PER_QUERY,
    )
    return pl.concat([logged, dead.cast(logged.schema)]).sort("series", "run_id", "step")


def _logged_trace(rows: pl.LazyFrame) -> pl.LazyFrame:
    """run_id, step, series, value of the trace series logged as history keys, from `rows` (the
    numeric rows of their keys)."""
    return pl.concat(
        [
            history_series(rows, keys).select("run_id", pl.col("step").cast(pl.Int64), pl.lit(series).alias("series"), pl.col("value").cast(pl.Float64))
            for series, keys in TRACE_SERIES.items()
            if keys
        ]
    )


def reference_trace_means(
    histories: pl.LazyFrame | pl.DataFrame,
    layer_metrics: pl.LazyFrame | pl.DataFrame,
    reference_runs: pl.DataFrame,
) -> pl.DataFrame:
    """fp8_format, optimizer, series, step, value: the mean over the reference runs (run_id,
    fp8_format, optimizer) of each format and optimizer of their finite `failure_trace_series`
    values at each step, the thick lines of a failure trace. Found one format and optimizer at a
    time, so memory holds one group's series, not those of every completed run of the study."""
    parts = [
        failure_trace_series(histories, layer_metrics, runs.get_column("run_id").to_list())
        .filter(finite(pl.col("value")))
        .group_by("series", "step")
        .agg(pl.col("value").mean())
        .select(pl.lit(fp8_format).alias("fp8_format"), pl.lit(optimizer).alias("optimizer"), "series", "step", "value")
        for (fp8_format, optimizer), runs in reference_runs.group_by("fp8_format", "optimizer", maintain_order=True)
    ]
    schema = {"fp8_format": pl.String, "optimizer": pl.String, "series": pl.String, "step": pl.Int64, "value": pl.Float64}
    return pl.concat([part.cast(schema) for part in parts]).sort("fp8_format", "optimizer", "series", "step") if parts else pl.DataFrame(schema=schema)

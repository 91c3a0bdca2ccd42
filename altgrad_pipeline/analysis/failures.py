"""Why and when each run failed, with the trend that led there and what healthy runs looked like
at the same steps.

Failure mode, first match wins (thresholds from each run's own config, defaults in brackets):

1. `nan_loss`: the loss is NaN/+-inf, or `param_nan_count` > 0, for `config.nan_patience` [10]
   consecutive logged steps, or for a stretch that lasts to the end of the run (altgrad stops
   after `nan_patience` NaN losses without logging the last one, so the tail holds
   `nan_patience - 1`); also every run whose outcome is `nan_stopped`. An isolated NaN that
   training recovered from is not a failure. `failure_step` = first step of that stretch.
2. `bit_stall`: `quantization/bit_stall_rate` (else `bit_stall_rate`) > `config.bit_stall_threshold`
   [0.5] sustained: above it for >= `window` consecutive logged steps, or from some step to the
   end. The rate is cumulative since step 0, so one early spike cannot trigger it.
   `failure_step` = first step of the sustained stretch.
3. `overflow`: the same with `quantization/overflow_rate` (else `overflow_rate`) >
   `config.overflow_threshold` [0.01]. (altgrad's overflow rate is structurally 0.)
4. `early_stop`: the outcome is `incomplete` or `killed` and the last logged step is before
   `max_steps - 1`, with none of the above. `failure_step` = the last logged step.
5. `no_exit_record`: the outcome is `running`: the run has written no exit record yet. A killed
   process looks like this until the crash grace period (ALTGRAD_CRASH_GRACE_SECONDS) passes and
   it becomes `killed` (then `early_stop`); a live run looks like this too, which `last_write_at`
   (when the run's files last changed) tells apart: the report says how long it has been silent.
   The table holds the time, not the silence, so the same store always gives the same table.
   `failure_step` = the last logged step. Listed from the first refresh that sees the run, since
   the run already counts against its format's completion rate.
6. `none`.
A completed run can still have `bit_stall`: the mode names the pathology, the outcome the ending.
`exit_recorded` is True when the tracker holds an exit record (state finished or failed).

Failure stage, first match wins, for every mode but `none` and `no_exit_record`, from the logged
evidence (`failure_evidence` names the numbers):
1. `optimizer_state_corruption`: weights hold NaN (`param_nan_count` > 0) at a step whose global
   gradient norm is finite, no later than the first non-finite loss: the update, not the
   gradient, wrote the NaN (`param_nan_finite_grad_step`).
2. `forward_overflow`: mode `overflow`, or the overflow rate at the failure step above the run's
   `overflow_threshold`, or a non-finite loss after the gradient norm grew at least
   `EXPLODING_GROWTH`-fold over the trend window.
3. `backward_vanishing`: mode `bit_stall` (updates below the weight grid), or at the failure step
   an underflow rate above `VANISHING_FRACTION`, or a zero-gradient fraction (embeddings excluded)
   above `VANISHING_FRACTION`, or a gradient norm that shrank at least `EXPLODING_GROWTH`-fold.
4. `unknown`.
`recommendation` is the study's prevention rule for the stage (`RECOMMENDATIONS`).
Failure-report fields (gradient sparsity, zero-update layers) are quoted in the evidence when a
report was joined.

Trend before collapse: over steps [anchor - trend_steps, anchor], anchor = `failure_step`
(the last logged step when there is no failure), the start clamped to the run's first logged step,
finite values only:
`loss_slope` = least-squares slope of the loss per step; `grad_norm_growth` = exp(b * span) where
b is the least-squares slope of ln(grad_norm) per step and span the covered step range, i.e. the
fitted growth factor over the window (>1 growing); the global `grad_norm` is used, or, for runs
that do not log it (classification), sqrt(sum of squared per-parameter `grad_norm_l2`);
`grad_sparsity` = mean over steps of the per-step mean `dead_neuron_frac` of the quantised
(2-D weight) parameters; `dead_neuron_frac_ex_embedding` = the same without embedding layers.
`ref_*` = the same four numbers computed over the same step window for every successful run
(completed, failure mode `none`) of another format (not `no_format`) with the same optimizer in the
same project, averaged over those runs (`n_ref_runs` of them).
Failure reports (FormatExperimentRunner) are joined through `config.checkpoint_dir`, columns
prefixed `report_`.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from altgrad_pipeline.analysis.history_scans import RUNS_PER_QUERY, distinct, per_run
from altgrad_pipeline.analysis.layers import DEFAULT_LAYER_PATTERNS, LayerPatterns, parse_metric_keys
from altgrad_pipeline.analysis.outcomes import history_series, loss_history
from altgrad_pipeline.analysis.stats import finite, least_squares_slope
from altgrad_pipeline.ingest.failure_reports import FAILURE_REPORTS_SCHEMA
from altgrad_pipeline.ingest.model import numeric_history
from altgrad_pipeline.study import BIT_STALL_KEYS, LOSS_KEYS, NO_FORMAT

FAILURE_MODES = ("nan_loss", "bit_stall", "overflow", "early_stop", "no_exit_record", "none")
FAILURE_STAGES = ("optimizer_state_corruption", "forward_overflow", "backward_vanishing", "unknown")
#: The study's prevention rule for each failure stage.
RECOMMENDATIONS = {
    "forward_overflow": "Scale the loss or clip gradients (partition clipping) before quantising, or use a format with more exponent bits.",
    "backward_vanishing": "Use more mantissa bits (E3M4 or E5M2 rather than E0M7 or E1M6) or a manifold-aware step (ManifoldAdamW), so updates stay above the weight grid.",
    "optimizer_state_corruption": "Keep optimizer state and master weights in higher precision, skip updates with non-finite values, and lower the learning rate.",
    "unknown": "No logged metric localises the failure: read the process log, the failure report and the last checkpoint.",
}
#: A gradient norm that grows (or shrinks) this many times over the trend window explodes (vanishes).
EXPLODING_GROWTH = 10.0
#: Underflow rate or zero-gradient fraction above which gradients count as vanishing (the runner's 50%).
VANISHING_FRACTION = 0.5
UNDERFLOW_KEYS = ("quantization/underflow_rate", "underflow_rate")
EXIT_RECORDED_STATES = ("finished", "failed")
THRESHOLD_DEFAULTS = {"config.bit_stall_threshold": 0.5, "config.overflow_threshold": 0.01, "config.nan_patience": 10}
OVERFLOW_KEYS = ("quantization/overflow_rate", "overflow_rate")
TREND_METRICS = ("loss_slope", "grad_norm_growth", "grad_sparsity", "dead_neuron_frac_ex_embedding")


def _report_columns() -> dict[str, pl.DataType]:
    return {(name if name.startswith("report_") else f"report_{name}"): dtype for name, dtype in FAILURE_REPORTS_SCHEMA.items()}


def sustained_onset(flags: pl.LazyFrame, min_length: pl.Expr) -> pl.LazyFrame:
    """First step of the first sustained True stretch per run.

    `flags`: run_id, step, flag (+ any per-run columns `min_length` refers to). A stretch is
    sustained when it covers >= `min_length` consecutive logged steps or is the run's last stretch.
    Returns run_id, onset_step.
    """
    return (
        flags.sort("run_id", "step")
        .with_columns(pl.col("flag").fill_null(False).rle_id().over("run_id").alias("stretch"), min_length.alias("min_length"))
        .group_by("run_id", "stretch")
        .agg(
            pl.col("flag").fill_null(False).first().alias("flag"),
            pl.col("step").min().alias("start"),
            pl.len().alias("length"),
            pl.col("min_length").first(),
        )
        .filter(pl.col("flag") & ((pl.col("length") >= pl.col("min_length")) | (pl.col("stretch") == pl.col("stretch").max().over("run_id"))))
        .group_by("run_id")
        .agg(pl.col("start").min().alias("onset_step"))
    )


def _thresholds(raw_runs: pl.LazyFrame) -> pl.LazyFrame:
    columns = raw_runs.collect_schema().names()
    return raw_runs.select(
        "run_id",
        *(
            (pl.col(name).cast(pl.Float64).fill_null(default) if name in columns else pl.lit(default, pl.Float64)).alias(name.removeprefix("config."))
            for name, default in THRESHOLD_DEFAULTS.items()
        ),
    )


@dataclass(frozen=True)
class PerParamKeys:
    """The per-parameter keys `_per_param_series` reduces, found once from the keys logged: each
    run's rows are then filtered by key, not joined to the parsed keys (a string join that
    gathered the parsed columns onto every row cost twice the reductions)."""

    grad_norm: tuple[str, ...]
    dead_quantized: tuple[str, ...]
    dead_quantized_ex_embedding: tuple[str, ...]

    @classmethod
    def parse(cls, keys: list[str], patterns: LayerPatterns) -> PerParamKeys:
        parsed = parse_metric_keys(pl.LazyFrame({"key": keys}, schema={"key": pl.String}), patterns).collect()
        dead = parsed.filter((pl.col("metric") == "dead_neuron_frac") & pl.col("quantized").fill_null(False))
        return cls(
            tuple(parsed.filter(pl.col("metric") == "grad_norm_l2").get_column("key")),
            tuple(dead.get_column("key")),
            tuple(dead.filter(pl.col("layer_type") != "embedding").get_column("key")),
        )


#: The keys failure modes read by name: loss, global gradient norm, NaN count and rates.
NAMED_KEYS = (*LOSS_KEYS, "grad_norm", "param_nan_count", *BIT_STALL_KEYS, *OVERFLOW_KEYS, *UNDERFLOW_KEYS)
#: The per-run evidence `_run_evidence` reduces each run's rows to, besides its trend series.
EVIDENCE_COLUMNS = (
    "nan_onset_step",
    "bit_stall_onset_step",
    "overflow_onset_step",
    "overflow_rate_at_failure",
    "underflow_rate_at_failure",
    "bit_stall_rate_at_failure",
    "param_nan_finite_grad_step",
    "grad_norm_at_param_nan",
)


def _classify(frame: pl.LazyFrame, trend_steps: int) -> pl.LazyFrame:
    """failure_mode, failure_step, exit_recorded, last_write_at and the trend window of each run
    (module docstring), from its base columns (raw run, outcome, thresholds) and the onsets."""
    ended_early = (pl.col("last_step") < pl.col("max_steps") - 1).fill_null(False)
    return (
        frame.with_columns(
            pl.when(pl.col("nan_onset_step").is_not_null() | (pl.col("outcome") == "nan_stopped"))
            .then(pl.lit("nan_loss"))
            .when(pl.col("bit_stall_onset_step").is_not_null())
            .then(pl.lit("bit_stall"))
            .when(pl.col("overflow_onset_step").is_not_null())
            .then(pl.lit("overflow"))
            .when(pl.col("outcome").is_in(["incomplete", "killed"]) & ended_early)
            .then(pl.lit("early_stop"))
            .when(pl.col("outcome") == "running")
            .then(pl.lit("no_exit_record"))
            .otherwise(pl.lit("none"))
            .alias("failure_mode")
        )
        .with_columns(
            pl.when(pl.col("failure_mode") == "nan_loss")
            .then(pl.coalesce("nan_onset_step", "first_nan_step", "first_param_nan_step"))
            .when(pl.col("failure_mode") == "bit_stall")
            .then(pl.col("bit_stall_onset_step"))
            .when(pl.col("failure_mode") == "overflow")
            .then(pl.col("overflow_onset_step"))
            .when(pl.col("failure_mode").is_in(["early_stop", "no_exit_record"]))
            .then(pl.col("last_step"))
            .alias("failure_step"),
            pl.col("state").is_in(EXIT_RECORDED_STATES).alias("exit_recorded"),
            pl.col("updated_at").alias("last_write_at"),
        )
        .with_columns(
            pl.coalesce("failure_step", "last_step").alias("trend_end_step"),
            pl.max_horizontal(pl.coalesce("failure_step", "last_step") - trend_steps, "first_step").alias("trend_start_step"),
        )
    )


def _run_evidence(
    run_rows: pl.LazyFrame, per_param_keys: PerParamKeys, base: pl.LazyFrame, window: int, trend_steps: int
) -> pl.DataFrame:
    """A few runs' rows (of the named and per-parameter keys) reduced to one row per run:
    `EVIDENCE_COLUMNS` and `trend_series`, the list of (step, quantity, value) of its trend
    quantities (`_trend_series`).

    Everything but the comparison with other runs' trends needs each run's own rows only (its
    onsets, its class and so its anchor step, its rates at the anchor), so `failure_modes` calls
    this on a few runs at a time (`history_scans.per_run`, `RUNS_PER_QUERY`) and holds only
    these reductions: a few numbers and four finite series per run, instead of the loss, rate and
    gradient-norm rows of every run. A run is classified here for its anchor, and again with
    every run in `failure_modes`, which also classifies runs that logged nothing. `base`: run_id,
    first_step, the outcome and threshold columns."""
    rows = run_rows.collect()
    history = rows.filter(pl.col("key").is_in(NAMED_KEYS)).lazy()
    per_param = _per_param_series(rows.lazy(), per_param_keys).collect().lazy()
    run = base.join(rows.select(pl.col("run_id").unique()).lazy(), on="run_id", how="inner")

    non_finite_loss = loss_history(history).select("run_id", "step", (~finite(pl.col("value"))).alias("flag"))
    param_nan = history.filter(pl.col("key") == "param_nan_count").select("run_id", "step", (pl.col("value") > 0).alias("flag"))
    nan_onset = (
        pl.concat([sustained_onset(flags.join(run, on="run_id"), pl.col("nan_patience")) for flags in (non_finite_loss, param_nan)])
        .group_by("run_id")
        .agg(pl.col("onset_step").min().alias("nan_onset_step"))
    )

    def rate_onset(keys: tuple[str, ...], threshold: str, name: str) -> pl.LazyFrame:
        flags = history_series(history, keys).join(run, on="run_id").with_columns((pl.col("value") > pl.col(threshold)).alias("flag"))
        return sustained_onset(flags, pl.lit(window)).rename({"onset_step": name})

    classified = _classify(
        run.join(nan_onset, on="run_id", how="left")
        .join(rate_onset(BIT_STALL_KEYS, "bit_stall_threshold", "bit_stall_onset_step"), on="run_id", how="left")
        .join(rate_onset(OVERFLOW_KEYS, "overflow_threshold", "overflow_onset_step"), on="run_id", how="left"),
        trend_steps,
    )
    anchors = classified.select("run_id", pl.col("trend_end_step").alias("anchor_step"))
    grad_norm = grad_norm_series(history, per_param)
    param_nan_finite_grad = (
        param_nan.filter(pl.col("flag"))
        .join(grad_norm.filter(finite(pl.col("value"))), on=["run_id", "step"], how="inner")
        .group_by("run_id")
        .agg(pl.col("step").min().alias("param_nan_finite_grad_step"), pl.col("value").sort_by("step").first().alias("grad_norm_at_param_nan"))
    )
    trend_series = _trend_series(history, per_param, grad_norm).group_by("run_id").agg(pl.struct("step", "quantity", "value").alias("trend_series"))
    return (
        classified.join(_value_at(history_series(history, OVERFLOW_KEYS), anchors, "overflow_rate_at_failure"), on="run_id", how="left")
        .join(_value_at(history_series(history, UNDERFLOW_KEYS), anchors, "underflow_rate_at_failure"), on="run_id", how="left")
        .join(_value_at(history_series(history, BIT_STALL_KEYS), anchors, "bit_stall_rate_at_failure"), on="run_id", how="left")
        .join(param_nan_finite_grad, on="run_id", how="left")
        .join(trend_series, on="run_id", how="left")
        .select("run_id", *EVIDENCE_COLUMNS, "trend_series")
        .collect()
    )


def _per_param_series(rows: pl.LazyFrame, keys: PerParamKeys) -> pl.LazyFrame:
    """run_id, step, quantity, value of the series failure modes derive from per-parameter keys:
    `grad_norm_from_params` (sqrt of the summed squared `grad_norm_l2`, non-finite values kept),
    `grad_sparsity` (mean finite `dead_neuron_frac` of the quantized weights) and
    `dead_neuron_frac_ex_embedding` (the same without embeddings)."""
    dead = rows.filter(pl.col("key").is_in(keys.dead_quantized) & finite(pl.col("value")))
    return pl.concat(
        [
            rows.filter(pl.col("key").is_in(keys.grad_norm))
            .group_by("run_id", "step")
            .agg((pl.col("value") ** 2).sum().sqrt().alias("value"))
            .select("run_id", "step", pl.lit("grad_norm_from_params").alias("quantity"), "value"),
            dead.group_by("run_id", "step").agg(pl.col("value").mean()).select("run_id", "step", pl.lit("grad_sparsity").alias("quantity"), "value"),
            dead.filter(pl.col("key").is_in(keys.dead_quantized_ex_embedding))
            .group_by("run_id", "step")
            .agg(pl.col("value").mean())
            .select("run_id", "step", pl.lit("dead_neuron_frac_ex_embedding").alias("quantity"), "value"),
        ]
    )


def grad_norm_series(histories: pl.LazyFrame, per_param: pl.LazyFrame) -> pl.LazyFrame:
    """run_id, step, value: the logged global `grad_norm`, or for runs that do not log it
    (classification) sqrt(sum of squared per-parameter `grad_norm_l2`) (`per_param`: the
    `_per_param_series`); non-finite values kept."""
    logged_grad_norm = history_series(histories, ("grad_norm",))
    grad_norm_from_params = (
        per_param.filter(pl.col("quantity") == "grad_norm_from_params")
        .join(logged_grad_norm.select("run_id").unique(), on="run_id", how="anti")
    )
    return pl.concat([logged_grad_norm.select("run_id", "step", "value"), grad_norm_from_params.select("run_id", "step", "value")])


def _trend_series(histories: pl.LazyFrame, per_param: pl.LazyFrame, grad_norm: pl.LazyFrame) -> pl.LazyFrame:
    """run_id, step, quantity, value for the quantities the trend metrics are computed from."""
    return pl.concat(
        [
            loss_history(histories).select("run_id", "step", pl.lit("loss").alias("quantity"), "value"),
            grad_norm.select("run_id", "step", pl.lit("log_grad_norm").alias("quantity"), pl.col("value").log()),
            per_param.filter(pl.col("quantity").is_in(["grad_sparsity", "dead_neuron_frac_ex_embedding"])),
        ]
    ).filter(finite(pl.col("value")))


def trend_metrics(series: pl.LazyFrame, windows: pl.LazyFrame) -> pl.LazyFrame:
    """The four trend metrics of each (target_id, source_id) window.

    `series`: run_id, step, quantity, value (from the trend quantities). `windows`: target_id,
    source_id, window_start, window_end: the source run's data inside the target's step window.
    Returns target_id, source_id and `TREND_METRICS`.
    """
    joined = (
        windows.join(series, left_on="source_id", right_on="run_id", how="inner")
        .filter(pl.col("step").is_between(pl.col("window_start"), pl.col("window_end")))
        .group_by("target_id", "source_id", "quantity")
        .agg(
            least_squares_slope(pl.col("step").cast(pl.Float64), pl.col("value")).alias("slope"),
            (pl.col("step").max() - pl.col("step").min()).alias("span"),
            pl.col("value").mean().alias("mean"),
        )
    )
    def pick(quantity: str, expr: pl.Expr) -> pl.Expr:
        return expr.filter(pl.col("quantity") == quantity).first()

    return joined.group_by("target_id", "source_id").agg(
        pick("loss", pl.col("slope")).alias("loss_slope"),
        pick("log_grad_norm", (pl.col("slope") * pl.col("span")).exp()).alias("grad_norm_growth"),
        pick("grad_sparsity", pl.col("mean")).alias("grad_sparsity"),
        pick("dead_neuron_frac_ex_embedding", pl.col("mean")).alias("dead_neuron_frac_ex_embedding"),
    )


def _value_at(series: pl.LazyFrame, steps: pl.LazyFrame, name: str) -> pl.LazyFrame:
    """run_id, `name`: the series' last finite value at or before each run's `anchor_step`."""
    return (
        series.join(steps, on="run_id")
        .filter((pl.col("step") <= pl.col("anchor_step")) & finite(pl.col("value")))
        .group_by("run_id")
        .agg(pl.col("value").sort_by("step").last().alias(name))
    )


def _num(name: str) -> pl.Expr:
    """A column as 3 significant figures of text, "n/a" when missing: evidence stays readable."""
    return pl.col(name).cast(pl.Float64).round_sig_figs(3).cast(pl.String).fill_null("n/a")


def _step(name: str) -> pl.Expr:
    return pl.col(name).cast(pl.String).fill_null("n/a")


def _stage(frame: pl.LazyFrame) -> pl.LazyFrame:
    """failure_stage, failure_evidence and recommendation from the evidence columns (module docstring)."""
    failed = ~pl.col("failure_mode").is_in(["none", "no_exit_record"])
    corrupted = pl.col("param_nan_finite_grad_step").is_not_null() & (
        pl.col("first_nan_step").is_null() | (pl.col("param_nan_finite_grad_step") <= pl.col("first_nan_step"))
    )
    overflowed = (pl.col("failure_mode") == "overflow") | (pl.col("overflow_rate_at_failure") > pl.col("overflow_threshold")).fill_null(False) | (
        (pl.col("failure_mode") == "nan_loss") & (pl.col("grad_norm_growth") >= EXPLODING_GROWTH).fill_null(False)
    )
    vanished = (
        (pl.col("failure_mode") == "bit_stall")
        | (pl.col("underflow_rate_at_failure") > VANISHING_FRACTION).fill_null(False)
        | (pl.col("dead_neuron_frac_ex_embedding") > VANISHING_FRACTION).fill_null(False)
        | (pl.col("grad_norm_growth") <= 1 / EXPLODING_GROWTH).fill_null(False)
    )
    stage = (
        pl.when(~failed)
        .then(pl.lit(None, pl.String))
        .when(corrupted)
        .then(pl.lit("optimizer_state_corruption"))
        .when(overflowed)
        .then(pl.lit("forward_overflow"))
        .when(vanished)
        .then(pl.lit("backward_vanishing"))
        .otherwise(pl.lit("unknown"))
    )
    window = pl.format("over steps {}-{}", _step("trend_start_step"), _step("trend_end_step"))
    growth = pl.format("gradient norm x{} {}", _num("grad_norm_growth"), window)
    evidence = (
        pl.when(pl.col("failure_stage") == "optimizer_state_corruption")
        .then(pl.format("weights hold NaN from step {} while the gradient norm is finite ({}); loss non-finite from step {}",
                        _step("param_nan_finite_grad_step"), _num("grad_norm_at_param_nan"), _step("first_nan_step")))
        .when(pl.col("failure_stage") == "forward_overflow")
        .then(pl.format("{}; overflow rate {} (threshold {}); loss non-finite from step {}",
                        growth, _num("overflow_rate_at_failure"), _num("overflow_threshold"), _step("first_nan_step")))
        .when(pl.col("failure_stage") == "backward_vanishing")
        .then(pl.format("bit-stall rate {} (threshold {}, above it from step {}); zero-gradient fraction {} (embeddings excluded); underflow rate {}; {}",
                        _num("bit_stall_rate_at_failure"), _num("bit_stall_threshold"), _step("bit_stall_onset_step"),
                        _num("dead_neuron_frac_ex_embedding"), _num("underflow_rate_at_failure"), growth))
        .when(pl.col("failure_stage") == "unknown")
        .then(pl.format("no overflow, vanishing or NaN-weight evidence: {}; overflow rate {}; underflow rate {}; last logged step {} of max_steps {}",
                        growth, _num("overflow_rate_at_failure"), _num("underflow_rate_at_failure"), _step("last_step"), _step("max_steps")))
    )
    report = pl.format("; failure report: gradient sparsity {}, {} zero-update layers", _num("report_gradient_sparsity"), _step("report_n_zero_update_layers"))
    return frame.with_columns(stage.alias("failure_stage")).with_columns(
        (evidence + pl.when(pl.col("report_path").is_not_null()).then(report).otherwise(pl.lit(""))).alias("failure_evidence"),
        pl.col("failure_stage").replace_strict(RECOMMENDATIONS, default=None, return_dtype=pl.String).alias("recommendation"),
    )


def _logged_keys_and_first_steps(
    history: pl.LazyFrame, run_summaries: pl.LazyFrame | pl.DataFrame | None
) -> tuple[list[str], pl.DataFrame]:
    """The numeric keys the runs logged, and run_id, first_step, logs_grad_norm of every run that
    logged one (the runs `per_run` visits). From `run_summaries` when given, instead of two scans
    of the study's histories (0.8 CPU-s for 14 M values); a key logged at a null step has a null
    summary `first_step` (nulls sort first), so the first steps of such runs are still read from
    their rows. `logs_grad_norm` (null without summaries: not known) spares reading the
    per-parameter gradient norms of runs that log the global one."""
    first_step = pl.col("step").min().alias("first_step")
    if run_summaries is None:
        first_steps = history.group_by("run_id").agg(first_step).collect(engine="streaming")
        return distinct(history, "key"), first_steps.with_columns(pl.lit(None, pl.Boolean).alias("logs_grad_norm"))
    summaries = run_summaries.lazy().select("run_id", "key", "first_step").collect()
    null_step_runs = summaries.filter(pl.col("first_step").is_null()).get_column("run_id").unique().to_list()
    first_steps = summaries.filter(~pl.col("run_id").is_in(null_step_runs)).group_by("run_id").agg(pl.col("first_step").min())
    if null_step_runs:
        scanned = history.filter(pl.col("run_id").is_in(null_step_runs)).group_by("run_id").agg(first_step).collect(engine="streaming")
        first_steps = pl.concat([first_steps, scanned])
    logs_grad_norm = summaries.group_by("run_id").agg((pl.col("key") == "grad_norm").any().alias("logs_grad_norm"))
    return summaries.get_column("key").unique().to_list(), first_steps.join(logs_grad_norm, on="run_id", how="left")


def failure_modes(
    raw_runs: pl.LazyFrame | pl.DataFrame,
    histories: pl.LazyFrame | pl.DataFrame,
    outcomes: pl.LazyFrame | pl.DataFrame,
    failure_reports: pl.LazyFrame | pl.DataFrame | None = None,
    window: int = 20,
    trend_steps: int = 50,
    patterns: LayerPatterns = DEFAULT_LAYER_PATTERNS,
    run_summaries: pl.LazyFrame | pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One row per run: failure mode, step and stage, the trend before it, the same trend for
    successful runs of other formats with the same optimizer (`ref_*`) and the parsed failure
    report (`report_*`). See the module docstring. `run_summaries` (one row per run and numeric
    key), when given, tells which keys and first steps the runs logged without a scan of `histories`."""
    runs = raw_runs.lazy()
    history = numeric_history(histories)
    logged_keys, first_steps = _logged_keys_and_first_steps(history, run_summaries)
    per_param_keys = PerParamKeys.parse(logged_keys, patterns)
    thresholds = _thresholds(runs)
    run_columns = runs.collect_schema().names()
    updated_at = pl.col("updated_at").cast(pl.Datetime("us", "UTC")) if "updated_at" in run_columns else pl.lit(None, pl.Datetime("us", "UTC"))
    outcome_columns = ["run_id", "state", "outcome", "last_step", "last_finite_loss", "last_finite_loss_step", "first_nan_step", "first_param_nan_step"]
    base = (
        runs.select("run_id", "project", "fp8_format", "optimizer", pl.col("max_steps").cast(pl.Int64), updated_at.alias("updated_at"))
        .join(outcomes.lazy().select(outcome_columns), on="run_id", how="left")
        .join(thresholds, on="run_id", how="left")
        .join(first_steps.lazy().select("run_id", "first_step"), on="run_id", how="left")
        .collect(engine="streaming")
    )
    # The per-parameter gradient norms stand in for the global one only where a run lacks it.
    param_grad_norm_runs = first_steps.filter(~pl.col("logs_grad_norm").fill_null(False)).get_column("run_id").to_list()
    evidence_keys = pl.col("key").is_in([*NAMED_KEYS, *per_param_keys.dead_quantized]) | (
        pl.col("key").is_in(per_param_keys.grad_norm) & pl.col("run_id").is_in(param_grad_norm_runs)
    )
    evidence = per_run(
        history.filter(evidence_keys).select("run_id", "step", "key", "value"),
        lambda run_rows: _run_evidence(run_rows, per_param_keys, base.lazy(), window, trend_steps),
        sorted(first_steps.get_column("run_id")),
        runs_at_once=RUNS_PER_QUERY,
    )
    classified = _classify(base.lazy().join(evidence.lazy().drop("trend_series"), on="run_id", how="left"), trend_steps).collect().lazy()

    targets = classified.select("run_id", "project", "optimizer", "fp8_format", "trend_start_step", "trend_end_step")
    references = classified.filter(
        (pl.col("outcome") == "completed") & (pl.col("failure_mode") == "none") & (pl.col("fp8_format") != NO_FORMAT)
    ).select(pl.col("run_id").alias("source_id"), "project", "optimizer", pl.col("fp8_format").alias("source_format"))
    windows = pl.concat(
        [
            targets.select(pl.col("run_id").alias("target_id"), pl.col("run_id").alias("source_id"), "trend_start_step", "trend_end_step"),
            targets.join(references, on=["project", "optimizer"], how="inner")
            .filter(pl.col("source_format") != pl.col("fp8_format"))
            .select(pl.col("run_id").alias("target_id"), "source_id", "trend_start_step", "trend_end_step"),
        ]
    ).rename({"trend_start_step": "window_start", "trend_end_step": "window_end"}).collect().lazy()
    # One source run at a time: the join of a run's series with every window it is compared in is
    # the largest frame of the analysis (runs x reference runs x steps for the study at once).
    trends = per_run(
        evidence.select("run_id", "trend_series"),
        lambda source: trend_metrics(source.explode("trend_series").drop_nulls("trend_series").unnest("trend_series"), windows),
    ).lazy()
    own = trends.filter(pl.col("target_id") == pl.col("source_id")).drop("source_id")
    ref = (
        trends.filter(pl.col("target_id") != pl.col("source_id"))
        .group_by("target_id")
        .agg(pl.len().alias("n_ref_runs"), *(pl.col(m).mean().alias(f"ref_{m}") for m in TREND_METRICS))
    )

    report_schema = _report_columns()
    reports = (
        pl.DataFrame(schema=FAILURE_REPORTS_SCHEMA).lazy() if failure_reports is None else failure_reports.lazy().select(list(FAILURE_REPORTS_SCHEMA))
    ).rename({name: new for name, new in zip(FAILURE_REPORTS_SCHEMA, report_schema)})
    checkpoint_dir = pl.col("config.checkpoint_dir") if "config.checkpoint_dir" in run_columns else pl.lit(None, pl.String)
    run_reports = (
        runs.select("run_id", checkpoint_dir.cast(pl.String).alias("report_checkpoint_dir"))
        .join(reports, on="report_checkpoint_dir", how="inner")
    )

    joined = (
        classified.join(own, left_on="run_id", right_on="target_id", how="left")
        .join(ref, left_on="run_id", right_on="target_id", how="left")
        .join(run_reports, on="run_id", how="left")
        .with_columns(pl.col("n_ref_runs").fill_null(0).cast(pl.Int64))
    )
    return (
        _stage(joined)
        .select(
            "run_id",
            "project",
            "fp8_format",
            "optimizer",
            "outcome",
            "exit_recorded",
            "last_write_at",
            "failure_mode",
            "failure_step",
            "failure_stage",
            "failure_evidence",
            "recommendation",
            "last_step",
            "max_steps",
            "last_finite_loss",
            "last_finite_loss_step",
            "first_nan_step",
            "nan_patience",
            "bit_stall_threshold",
            "overflow_threshold",
            "bit_stall_onset_step",
            "overflow_onset_step",
            "bit_stall_rate_at_failure",
            "overflow_rate_at_failure",
            "underflow_rate_at_failure",
            "param_nan_finite_grad_step",
            "grad_norm_at_param_nan",
            "trend_start_step",
            "trend_end_step",
            *TREND_METRICS,
            "n_ref_runs",
            *(f"ref_{m}" for m in TREND_METRICS),
            *report_schema,
        )
        .sort("run_id")
        .collect()
    )


def trace_to_collapse(trace: pl.LazyFrame | pl.DataFrame, failure_modes: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """The rows of `trace` (run_id, step, ...) of each failed run up to its own failure step, so a
    figure never draws one run past its collapse because another run of the format failed later.
    Runs without a failure step (references) are kept whole."""
    ends = failure_modes.lazy().select("run_id", pl.col("failure_step").alias("collapse_step"))
    return (
        trace.lazy()
        .join(ends, on="run_id", how="left")
        .filter(pl.col("collapse_step").is_null() | (pl.col("step") <= pl.col("collapse_step")))
        .drop("collapse_step")
        .collect()
    )

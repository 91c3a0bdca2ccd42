"""ManifoldAdamW against AdamW, per format, with 95% confidence intervals.

For every (project, fp8_format) that has runs with both optimizers, one row per metric. Only
completed runs enter the statistics; the others are counted in `n_excluded_*`. All metrics but
`best_loss` are measured up to the format's common step (the minimum over its completed runs of
their last loss step), so arms of different length stay comparable. Lower is better for every
metric:

- `final_loss`: mean of the run's last `last_k` finite losses at or before the common step.
- `best_loss`: the run's best finite loss, read from the `run_summaries` asset (the `min` of its
  loss key: NaN and ±inf never win, so a run whose loss went NaN keeps its best finite value).
  It is what a best-checkpoint callback keeps and what altgrad's own analysis reads as
  `best_loss` (never logged), so it covers the whole run: the two arms of a format run the same
  `max_steps` in the study, so for completed runs that window ends at the common step anyway;
  where arms differ in length the longer one has more steps to reach its best, and `final_loss`
  is the like-for-like comparison. It is not smoothed: the minimum of noisy losses lies below the
  loss curve by an amount that grows with the noise and the number of logged steps, but both
  arms of a format share the logging cadence and, to first order, the noise, so the offset
  largely cancels in `diff`, and the value stays the one a reader finds in the run.
- `steps_to_threshold`: first step at which the smoothed loss is <= the threshold; a run that
  never gets there counts as common_step + 1 (censored at the end of the compared window).
  Smoothing (so that one noisy step does not count as a crossing) = exponentially weighted
  moving average without bias adjustment, alpha = 2 / (smoothing_span + 1) (y_0 = x_0,
  y_t = (1 - alpha) y_{t-1} + alpha x_t over the run's finite losses in step order).
  The threshold is `loss_threshold` when given, else L0 + threshold_fraction * (L_base - L0):
  L0 = mean first finite loss of the format's compared runs, L_base = mean final loss (as above,
  at the same common step) of the project's completed baseline runs, or of the compared runs
  themselves when there is no baseline.
- `bit_stall_rate`: the last finite `quantization/bit_stall_rate` (else `bit_stall_rate`) at or
  before the common step: the cumulative stall rate of the run.

The optimizer's effect on failure (when the `failure_modes` table is given), over every run of
the arm whatever its outcome, runs still without an exit record left out (undecided):
- `failure_rate`: 1 for a run whose failure mode is not `none`, else 0; the mean is the arm's
  failure rate (lower is better).
- `failure_step`: the failure step of each failed run (higher is better: failure comes later).

Statistics: `diff` = mean_manifold - mean_standard. Runs are paired by seed when both arms have
distinct, non-null seeds and the same seed set; then the per-seed differences are bootstrapped
(one-sample mean). Otherwise the two arms are resampled independently and the statistic is the
difference of means. With at least `min_bootstrap_n` (default 8) values per arm: 95% BCa interval
(`scipy.stats.bootstrap`, `n_resamples`, a generator seeded with `seed` for each row), falling
back to the percentile interval when BCa is degenerate. With fewer, the bootstrap undercovers (at
n = 3 it has only 10 distinct resamples), so the interval is Student's t on the per-seed
differences (paired) or Welch's t (unpaired). `method` says which ("BCa paired", "percentile
unpaired", "t paired", "Welch t unpaired", or "none ..." when an arm has fewer than two values:
no interval). `prob_improvement` = probability that ManifoldAdamW is lower:
paired, the share of seeds with a negative difference; unpaired, P(X_manifold < X_adamw) over all
manifold x adamw pairs (common-language effect size); ties count one half. `low_n` is True when
either arm has fewer than 3 values: the numbers are observations, not expectations.
`n_lower` of `n_pairs` comparisons had ManifoldAdamW lower (per seed when paired, over all
manifold x adamw pairs otherwise): observed counts for wording such as "lower in 3 of 3 seeds".
`higher_is_better` says which way helps; `diff_pct` = 100 * diff / |mean_standard|.
`verdict` reads the interval: "helps" when it lies entirely on the better side of 0, "hurts" when
entirely on the worse side, "no detectable effect" when it contains 0, "not enough runs" when there
is no interval.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from altgrad_pipeline.analysis.outcomes import loss_and_series, run_ids
from altgrad_pipeline.analysis.stats import (
    count_lower,
    finite,
    mean_difference_interval,
    mean_of_last_k,
    probability_lower,
)
from altgrad_pipeline.study import BASELINE_FORMAT, BIT_STALL_KEYS, MANIFOLD_OPTIMIZER, NO_FORMAT, STANDARD_OPTIMIZER

METRICS = ("final_loss", "best_loss", "steps_to_threshold", "bit_stall_rate")
FAILURE_METRICS = ("failure_rate", "failure_step")
#: Metrics for which a higher value is the better one.
HIGHER_IS_BETTER = ("failure_step",)
NOT_FAILED = ("none", "no_exit_record")
LOW_N = 3
#: Below this many values per arm the CI is Student/Welch t, not the bootstrap (see stats.mean_difference_interval).
MIN_BOOTSTRAP_N = 8

MANIFOLD_SCHEMA: dict[str, pl.DataType] = {
    "project": pl.String(),
    "fp8_format": pl.String(),
    "metric": pl.String(),
    "n_manifold": pl.Int64(),
    "n_standard": pl.Int64(),
    "n_excluded_manifold": pl.Int64(),
    "n_excluded_standard": pl.Int64(),
    "mean_manifold": pl.Float64(),
    "mean_standard": pl.Float64(),
    "diff": pl.Float64(),
    "diff_pct": pl.Float64(),
    "ci_low": pl.Float64(),
    "ci_high": pl.Float64(),
    "method": pl.String(),
    "verdict": pl.String(),
    "higher_is_better": pl.Boolean(),
    "paired": pl.Boolean(),
    "prob_improvement": pl.Float64(),
    "n_lower": pl.Int64(),
    "n_pairs": pl.Int64(),
    "low_n": pl.Boolean(),
    "common_step": pl.Int64(),
    "loss_threshold": pl.Float64(),
}


def smoothed_loss(loss: pl.LazyFrame, span: int) -> pl.LazyFrame:
    """run_id, step, value: the EWMA (alpha = 2/(span+1), no bias adjustment) of finite losses."""
    return (
        loss.filter(finite(pl.col("value")))
        .sort("run_id", "step")
        .with_columns(pl.col("value").ewm_mean(span=span, adjust=False).over("run_id"))
    )


def per_run_metrics(
    raw_runs: pl.LazyFrame | pl.DataFrame,
    histories: pl.LazyFrame | pl.DataFrame,
    outcomes: pl.LazyFrame | pl.DataFrame,
    run_summaries: pl.LazyFrame | pl.DataFrame,
    *,
    last_k: int = 10,
    smoothing_span: int = 20,
    threshold_fraction: float = 0.8,
    loss_threshold: float | None = None,
    baseline: str = BASELINE_FORMAT,
) -> pl.DataFrame:
    """One row per completed run of a format that has both optimizers: run_id, project,
    fp8_format, optimizer, seed, common_step, loss_threshold and the four `METRICS`.
    `run_summaries` is the `run_summaries` asset (one row per run and key, `min` among them)."""
    runs = raw_runs.lazy().filter(pl.col("fp8_format") != NO_FORMAT)
    loss_series, stall_series = loss_and_series(histories, BIT_STALL_KEYS, run_ids(raw_runs))
    completed_ids = outcomes.lazy().filter(pl.col("outcome") == "completed").select("run_id")
    loss = loss_series.select("run_id", "step", "value")
    best = (
        run_summaries.lazy()
        .join(loss_series.select("run_id", "key").unique(), on=["run_id", "key"], how="semi")
        .select("run_id", pl.col("min").alias("best_loss"))
    )
    last_loss_step = loss.group_by("run_id").agg(pl.col("step").max().alias("last_loss_step"))
    key = ["project", "fp8_format"]
    both = (
        runs.filter(pl.col("optimizer").is_in([STANDARD_OPTIMIZER, MANIFOLD_OPTIMIZER]))
        .group_by(key)
        .agg(pl.col("optimizer").n_unique().alias("n_optimizers"))
        .filter(pl.col("n_optimizers") == 2)
        .select(key)
    )
    compared = (
        runs.filter(pl.col("optimizer").is_in([STANDARD_OPTIMIZER, MANIFOLD_OPTIMIZER]))
        .join(both, on=key, how="semi")
        .join(completed_ids, on="run_id", how="semi")
        .join(last_loss_step, on="run_id", how="inner")
        .select("run_id", *key, "optimizer", pl.col("seed").cast(pl.Int64), pl.col("last_loss_step").min().over(key).alias("common_step"))
    )
    cutoffs = compared.select("run_id", pl.col("common_step").alias("cutoff_step"))
    final = mean_of_last_k(loss, cutoffs, last_k).select("run_id", pl.col("value").alias("final_loss"))

    baseline_runs = runs.filter(pl.col("fp8_format") == baseline).join(completed_ids, on="run_id", how="semi").select("run_id", "project")
    format_steps = compared.select(*key, "common_step").unique()
    baseline_at_step = (
        mean_of_last_k(loss, baseline_runs.join(format_steps, on="project").select("run_id", *key, pl.col("common_step").alias("cutoff_step")), last_k)
        .group_by(key)
        .agg(pl.col("value").mean().alias("baseline_final_loss"))
    )
    first_loss = loss.filter(finite(pl.col("value"))).group_by("run_id").agg(pl.col("value").sort_by("step").first().alias("first_loss"))
    thresholds = (
        compared.join(first_loss, on="run_id", how="left")
        .join(final, on="run_id", how="left")
        .group_by(key)
        .agg(pl.col("first_loss").mean().alias("initial_loss"), pl.col("final_loss").mean().alias("compared_final_loss"))
        .join(baseline_at_step, on=key, how="left")
        .select(
            *key,
            (
                pl.lit(loss_threshold, pl.Float64)
                if loss_threshold is not None
                else pl.col("initial_loss") + threshold_fraction * (pl.coalesce("baseline_final_loss", "compared_final_loss") - pl.col("initial_loss"))
            ).alias("loss_threshold"),
        )
    )
    smooth = (
        smoothed_loss(loss.join(compared.select("run_id", "common_step"), on="run_id").filter(pl.col("step") <= pl.col("common_step")), smoothing_span)
        .join(compared.select("run_id", *key), on="run_id")
        .join(thresholds, on=key)
    )
    threshold_steps = smooth.group_by("run_id").agg(
        pl.col("step").filter(pl.col("value") <= pl.col("loss_threshold")).min().alias("threshold_step"),
    )
    stall = (
        stall_series.join(compared.select("run_id", "common_step"), on="run_id")
        .filter((pl.col("step") <= pl.col("common_step")) & finite(pl.col("value")))
        .group_by("run_id")
        .agg(pl.col("value").sort_by("step").last().alias("bit_stall_rate"))
    )
    return (
        compared.join(thresholds, on=key, how="left")
        .join(final, on="run_id", how="left")
        .join(best, on="run_id", how="left")
        .join(threshold_steps, on="run_id", how="left")
        .join(stall, on="run_id", how="left")
        .with_columns(pl.coalesce("threshold_step", pl.col("common_step") + 1).cast(pl.Float64).alias("steps_to_threshold"))
        .select("run_id", *key, "optimizer", "seed", "common_step", "loss_threshold", *METRICS)
        .sort("run_id")
        .collect()
    )


def _verdict(low: float, high: float, higher_is_better: bool) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "not enough runs"
    if low > 0:
        return "helps" if higher_is_better else "hurts"
    if high < 0:
        return "hurts" if higher_is_better else "helps"
    return "no detectable effect"


def _compare(manifold: pl.DataFrame, standard: pl.DataFrame, metric: str, n_resamples: int, seed: int, min_bootstrap_n: int) -> dict:
    """Statistics of one (format, metric): the two arms hold seed and the metric's values."""
    m = manifold.filter(pl.col(metric).is_not_null() & pl.col(metric).is_not_nan())
    s = standard.filter(pl.col(metric).is_not_null() & pl.col(metric).is_not_nan())
    m_seeds, s_seeds = m["seed"], s["seed"]
    paired = (
        m.height > 0
        and m_seeds.null_count() == 0
        and s_seeds.null_count() == 0
        and m_seeds.n_unique() == m.height
        and s_seeds.n_unique() == s.height
        and set(m_seeds.to_list()) == set(s_seeds.to_list())
    )
    if paired:
        m, s = m.sort("seed"), s.sort("seed")
    x, y = m[metric].to_numpy(), s[metric].to_numpy()
    have_both = len(x) > 0 and len(y) > 0
    interval = mean_difference_interval(x, y, paired=paired, n_resamples=n_resamples, seed=seed, min_bootstrap_n=min_bootstrap_n)
    diff = float(np.mean(x) - np.mean(y)) if have_both else None
    n_lower, n_pairs = count_lower(x, y, paired=paired)
    higher_is_better = metric in HIGHER_IS_BETTER
    return {
        "n_manifold": len(x),
        "n_standard": len(y),
        "mean_manifold": float(np.mean(x)) if len(x) else None,
        "mean_standard": float(np.mean(y)) if len(y) else None,
        "diff": diff,
        "diff_pct": 100 * diff / abs(float(np.mean(y))) if diff is not None and np.mean(y) != 0 else None,
        "ci_low": interval.low if np.isfinite(interval.low) else None,
        "ci_high": interval.high if np.isfinite(interval.high) else None,
        "method": interval.method,
        "verdict": _verdict(interval.low, interval.high, higher_is_better),
        "higher_is_better": higher_is_better,
        "paired": paired,
        "prob_improvement": probability_lower(x, y, paired=paired) if have_both else None,
        "n_lower": n_lower,
        "n_pairs": n_pairs,
        "low_n": min(len(x), len(y)) < LOW_N,
    }


def per_run_failures(raw_runs: pl.LazyFrame | pl.DataFrame, failure_modes: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """run_id, project, fp8_format, optimizer, seed, failure_rate (0/1), failure_step (failed runs
    only) of every run of either optimizer whose fate is decided (it has an exit record or the
    grace period has passed)."""
    return (
        raw_runs.lazy()
        .filter((pl.col("fp8_format") != NO_FORMAT) & pl.col("optimizer").is_in([STANDARD_OPTIMIZER, MANIFOLD_OPTIMIZER]))
        .select("run_id", "project", "fp8_format", "optimizer", pl.col("seed").cast(pl.Int64))
        .join(failure_modes.lazy().select("run_id", "failure_mode", "failure_step"), on="run_id", how="inner")
        .filter(pl.col("failure_mode") != "no_exit_record")
        .with_columns(
            (~pl.col("failure_mode").is_in(NOT_FAILED)).cast(pl.Float64).alias("failure_rate"),
            pl.when(~pl.col("failure_mode").is_in(NOT_FAILED)).then(pl.col("failure_step")).cast(pl.Float64).alias("failure_step"),
        )
        .drop("failure_mode")
        .sort("run_id")
        .collect()
    )


def formats_missing_an_arm(raw_runs: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """project, fp8_format, n_standard, n_manifold, missing_optimizer for every format that has
    runs of only one optimizer: it has no ManifoldAdamW comparison at all."""
    return (
        raw_runs.lazy()
        .filter(pl.col("fp8_format") != NO_FORMAT)
        .group_by("project", "fp8_format")
        .agg((pl.col("optimizer") == STANDARD_OPTIMIZER).sum().alias("n_standard"), (pl.col("optimizer") == MANIFOLD_OPTIMIZER).sum().alias("n_manifold"))
        .filter((pl.col("n_standard") == 0) | (pl.col("n_manifold") == 0))
        .with_columns(pl.when(pl.col("n_manifold") == 0).then(pl.lit(MANIFOLD_OPTIMIZER)).otherwise(pl.lit(STANDARD_OPTIMIZER)).alias("missing_optimizer"))
        .sort("project", "fp8_format")
        .collect()
    )


def manifold_stats(
    raw_runs: pl.LazyFrame | pl.DataFrame,
    histories: pl.LazyFrame | pl.DataFrame,
    outcomes: pl.LazyFrame | pl.DataFrame,
    run_summaries: pl.LazyFrame | pl.DataFrame,
    failure_modes: pl.LazyFrame | pl.DataFrame | None = None,
    *,
    n_resamples: int = 9999,
    seed: int = 0,
    min_bootstrap_n: int = MIN_BOOTSTRAP_N,
    last_k: int = 10,
    smoothing_span: int = 20,
    threshold_fraction: float = 0.8,
    loss_threshold: float | None = None,
    baseline: str = BASELINE_FORMAT,
) -> pl.DataFrame:
    """One row per (project, fp8_format, metric) for formats with both optimizers (columns:
    `MANIFOLD_SCHEMA`; definitions in the module docstring); the `FAILURE_METRICS` rows only when
    `failure_modes` is given."""
    runs = raw_runs.lazy().filter((pl.col("fp8_format") != NO_FORMAT) & pl.col("optimizer").is_in([STANDARD_OPTIMIZER, MANIFOLD_OPTIMIZER]))
    key = ["project", "fp8_format"]
    arms = (
        runs.join(outcomes.lazy().select("run_id", "outcome"), on="run_id", how="left")
        .group_by(key)
        .agg(
            *(
                (pl.col("optimizer") == optimizer).sum().alias(f"n_{arm}") for arm, optimizer in (("manifold", MANIFOLD_OPTIMIZER), ("standard", STANDARD_OPTIMIZER))
            ),
            *(
                ((pl.col("optimizer") == optimizer) & (pl.col("outcome") != "completed").fill_null(True)).sum().alias(f"n_excluded_{arm}")
                for arm, optimizer in (("manifold", MANIFOLD_OPTIMIZER), ("standard", STANDARD_OPTIMIZER))
            ),
        )
        .filter((pl.col("n_manifold") > 0) & (pl.col("n_standard") > 0))
        .sort(key)
        .collect()
    )
    values = per_run_metrics(
        raw_runs, histories, outcomes, run_summaries, last_k=last_k, smoothing_span=smoothing_span,
        threshold_fraction=threshold_fraction, loss_threshold=loss_threshold, baseline=baseline,
    )
    fates = per_run_failures(raw_runs, failure_modes) if failure_modes is not None else None
    rows = []
    for project, fp8_format, n_excluded_manifold, n_excluded_standard in arms.select(*key, "n_excluded_manifold", "n_excluded_standard").iter_rows():
        group = values.filter((pl.col("project") == project) & (pl.col("fp8_format") == fp8_format))
        manifold, standard = group.filter(pl.col("optimizer") == MANIFOLD_OPTIMIZER), group.filter(pl.col("optimizer") == STANDARD_OPTIMIZER)
        for metric in METRICS:
            rows.append(
                {
                    "project": project,
                    "fp8_format": fp8_format,
                    "metric": metric,
                    "n_excluded_manifold": n_excluded_manifold,
                    "n_excluded_standard": n_excluded_standard,
                    "common_step": group["common_step"].first() if group.height else None,
                    "loss_threshold": group["loss_threshold"].first() if metric == "steps_to_threshold" and group.height else None,
                    **_compare(manifold, standard, metric, n_resamples, seed, min_bootstrap_n),
                }
            )
        if fates is not None:
            fate = fates.filter((pl.col("project") == project) & (pl.col("fp8_format") == fp8_format))
            for metric in FAILURE_METRICS:
                rows.append(
                    {
                        "project": project,
                        "fp8_format": fp8_format,
                        "metric": metric,
                        "n_excluded_manifold": n_excluded_manifold,
                        "n_excluded_standard": n_excluded_standard,
                        **_compare(fate.filter(pl.col("optimizer") == MANIFOLD_OPTIMIZER), fate.filter(pl.col("optimizer") == STANDARD_OPTIMIZER), metric, n_resamples, seed, min_bootstrap_n),
                    }
                )
    return pl.DataFrame(rows, schema=MANIFOLD_SCHEMA).select(list(MANIFOLD_SCHEMA))

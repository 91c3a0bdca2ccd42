"""Format rankings, overall and per layer type, against the BF16 baseline.

Rows: one per (project, optimizer, fp8_format, layer_type), layer_type "all" plus every layer type
found in the layer metrics; runs without format information (`no_format`) are left out. Each
(project, optimizer) is ranked on its own: the study compares formats under one optimizer (the
standard AdamW, `use_manifold_aware: false`), so ManifoldAdamW rows sit beside the AdamW ones and
are never pooled with them.

Step alignment: runs differ in length (altgrad's BF16 baseline runs 2000 steps, the FP8 runs 500),
so everything is measured up to a common step: the largest step that every completed run of the
project logged a loss at (the minimum over those runs of their last loss step). A run's final
loss is the mean of its last `last_k` finite losses logged at or before that common step; a
format's `final_loss` is the mean over its completed runs, with a 95% interval
`final_loss_ci_low`/`final_loss_ci_high` (`final_loss_ci_method`): Student's t below
`min_bootstrap_n` (8) runs, the BCa bootstrap from there (as in manifold_stats). Only completed runs
enter any score. `bit_stall_rate` is the mean over completed runs of the last finite cumulative
`quantization/bit_stall_rate` (else `bit_stall_rate`) at or before the common step;
`bit_stall_rank` ranks the candidates by it (lower is better), a ranking of its own.

Per-layer health, over completed runs, steps <= common step, finite values only, each first
averaged within a run and then over the format's runs:
- `grad_snr`: mean `grad_snr` over the layer type's parameters and steps (higher is better);
- `sparsity`: mean `dead_neuron_frac` over the layer type's parameters and steps, excluding the
  word embedding (`wte`/`word_embeddings`), whose gradients are structurally sparse (lower is
  better);
- `norm_cov`: coefficient of variation (sample std / mean) of `grad_norm_l2` over steps, per
  parameter, averaged over the layer type's parameters (lower is better).
`<criterion>_std` is the sample standard deviation of the per-run values over the format's
completed runs: the spread the mean hides.

Ranking (rank 1 = best) among FP8 candidates only: the baseline format is not a candidate (rank
null, never the sweet spot), nor is a format without a completed run (`all_failed`, rank null).
Layer type "all" is ranked by `final_loss` (lower is better). Each other layer type is ranked by
`mean_rank` (also `health_score`) = the mean of the format's three per-criterion ranks (average
ranks for ties, SNR ranked descending, sparsity and CoV ascending; a criterion that is missing is
left out of the mean): a rank, not a score on any scale. `score` holds the number the rank came
from and `score_basis` names it. Ties share the best rank ("min").
Sweet spot: `is_sweet_spot` marks the best-scoring candidate with at least `min_sweet_spot_runs`
(2) completed runs (`eligible_for_sweet_spot`): one lucky run is never declared the sweet spot,
even when it ranks first. On the sweet spot's "all" row, `runner_up` is the next eligible format
and `lead_over_runner_up` = runner-up final_loss - sweet-spot final_loss (positive = ahead) with a
95% interval `lead_ci_low`/`lead_ci_high` (`lead_ci_method`: Welch's t below `min_bootstrap_n`
runs per format, the bootstrap from there); `lead_beyond_noise` is True when the interval lies
above 0.
`improvement_over_baseline` = (baseline final_loss - format final_loss) / |baseline final_loss|,
positive when the format reaches a lower loss than BF16 at the common step; the baseline is the
BF16 runs of the same optimizer, else of the standard optimizer (the usual design: one BF16 arm);
it is loss-based and repeated on every layer-type row of the format.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from altgrad_pipeline.analysis.outcomes import loss_and_series, loss_history, run_ids
from altgrad_pipeline.analysis.stats import (
    coefficient_of_variation,
    finite,
    mean_difference_interval,
    mean_intervals,
    mean_of_last_k,
)
from altgrad_pipeline.study import BASELINE_FORMAT, BIT_STALL_KEYS, NO_FORMAT, STANDARD_OPTIMIZER

RUN_KEY = ("project", "optimizer", "fp8_format")
#: Below this many values per format the intervals are Student/Welch t, not the bootstrap.
MIN_BOOTSTRAP_N = 8
#: A format needs this many completed runs before it can be named the sweet spot.
MIN_SWEET_SPOT_RUNS = 2
HEALTH_CRITERIA = (("grad_snr", True), ("sparsity", False), ("norm_cov", False))


def completed_runs_at_common_step(raw_runs: pl.LazyFrame, histories: pl.LazyFrame, outcomes: pl.LazyFrame) -> pl.LazyFrame:
    """run_id, project, optimizer, fp8_format, common_step for every completed run with a format: the common
    step is the minimum, over the project's completed runs, of their last loss step."""
    completed = (
        raw_runs.filter(pl.col("fp8_format") != NO_FORMAT)
        .select("run_id", *RUN_KEY)
        .join(outcomes.filter(pl.col("outcome") == "completed").select("run_id"), on="run_id", how="semi")
    )
    last_loss_step = loss_history(histories).group_by("run_id").agg(pl.col("step").max().alias("last_loss_step"))
    return completed.join(last_loss_step, on="run_id", how="inner").with_columns(
        pl.col("last_loss_step").min().over("project").alias("common_step")
    ).drop("last_loss_step")


def _run_health(layer_metrics: pl.LazyFrame, run_id: str, common_step: int) -> pl.LazyFrame:
    """run_id, layer_type ("all" included), grad_snr, sparsity, norm_cov of one completed run, from
    its rows of `layer_metrics` at steps up to its project's `common_step`. The run and step are
    literals and each mean is taken over its metric's rows alone: joining every row to its run's
    common step, then grouping a copy of the rows under "all" by run and layer type, cost twice as
    much. A parameter belongs to one layer type, so its coefficient of variation is computed once."""
    rows = (
        layer_metrics.filter(
            (pl.col("run_id") == run_id)
            & pl.col("metric").is_in(["grad_snr", "dead_neuron_frac", "grad_norm_l2"])
            & (pl.col("step") <= common_step)
            & finite(pl.col("value"))
        )
        .select("metric", "param", "layer_type", "is_structurally_sparse", "value")
        .collect()
        .lazy()
    )
    grad_snr = rows.filter(pl.col("metric") == "grad_snr").select("layer_type", pl.col("value").alias("grad_snr"))
    sparsity = rows.filter((pl.col("metric") == "dead_neuron_frac") & ~pl.col("is_structurally_sparse")).select(
        "layer_type", pl.col("value").alias("sparsity")
    )
    norm_cov = (
        rows.filter(pl.col("metric") == "grad_norm_l2")
        .group_by("param")
        .agg(pl.col("layer_type").first(), coefficient_of_variation(pl.col("value")).alias("norm_cov"))
        .filter(finite(pl.col("norm_cov")))
    )

    def by_layer_type(values: pl.LazyFrame, name: str) -> pl.LazyFrame:
        # the values are finite: the mean over all of them is null only when there are none;
        # layer types come categorical (`LAYER_METRICS_SCHEMA`), "all" is a string: cast once grouped
        overall = values.select(pl.lit("all").alias("layer_type"), pl.col(name).mean()).drop_nulls(name)
        per_type = values.group_by("layer_type").agg(pl.col(name).mean()).with_columns(pl.col("layer_type").cast(pl.String))
        return pl.concat([per_type, overall])

    return (
        by_layer_type(grad_snr, "grad_snr")
        .join(by_layer_type(sparsity, "sparsity"), on="layer_type", how="full", coalesce=True)
        .join(by_layer_type(norm_cov, "norm_cov"), on="layer_type", how="full", coalesce=True)
        .select(pl.lit(run_id).alias("run_id"), "layer_type", "grad_snr", "sparsity", "norm_cov")
    )


def _leads(run_final: pl.DataFrame, ranked: pl.DataFrame, n_resamples: int, seed: int, min_bootstrap_n: int) -> pl.DataFrame:
    """project, optimizer, fp8_format (the sweet spot), runner_up and its lead with interval: one
    interval per (project, optimizer), from the two formats' per-run final losses."""
    order = ranked.filter((pl.col("layer_type") == "all") & pl.col("eligible_for_sweet_spot")).sort("score", "fp8_format", nulls_last=True)
    pairs = order.group_by("project", "optimizer", maintain_order=True).agg(
        pl.col("fp8_format").first().alias("sweet_spot"), pl.col("fp8_format").get(1, null_on_oob=True).alias("runner_up")
    ).filter(pl.col("runner_up").is_not_null())
    rows = []
    for project, optimizer, sweet_spot, runner_up in pairs.iter_rows():
        arm = run_final.filter((pl.col("project") == project) & (pl.col("optimizer") == optimizer))
        ahead = arm.filter(pl.col("fp8_format") == sweet_spot)["value"].to_numpy()
        behind = arm.filter(pl.col("fp8_format") == runner_up)["value"].to_numpy()
        interval = mean_difference_interval(behind, ahead, paired=False, n_resamples=n_resamples, seed=seed, min_bootstrap_n=min_bootstrap_n)
        rows.append((project, optimizer, sweet_spot, runner_up, float(np.mean(behind) - np.mean(ahead)), interval.low, interval.high, interval.method))
    return pl.DataFrame(
        rows,
        schema={"project": pl.String, "optimizer": pl.String, "fp8_format": pl.String, "runner_up": pl.String, "lead_over_runner_up": pl.Float64,
                "lead_ci_low": pl.Float64, "lead_ci_high": pl.Float64, "lead_ci_method": pl.String},
        orient="row",
    ).with_columns(pl.col("lead_ci_low", "lead_ci_high").fill_nan(None), pl.lit("all").alias("layer_type"))


def format_rankings(
    raw_runs: pl.LazyFrame | pl.DataFrame,
    histories: pl.LazyFrame | pl.DataFrame,
    outcomes: pl.LazyFrame | pl.DataFrame,
    layer_metrics: pl.LazyFrame | pl.DataFrame,
    *,
    last_k: int = 10,
    baseline: str = BASELINE_FORMAT,
    standard: str = STANDARD_OPTIMIZER,
    min_sweet_spot_runs: int = MIN_SWEET_SPOT_RUNS,
    min_bootstrap_n: int = MIN_BOOTSTRAP_N,
    n_resamples: int = 9999,
    seed: int = 0,
) -> pl.DataFrame:
    """Rank formats within each optimizer, overall and per layer type (definitions in the module docstring)."""
    runs = raw_runs.lazy().filter(pl.col("fp8_format") != NO_FORMAT)
    # The loss and bit-stall series, read once (run by run): the plan below reads them thrice.
    loss_series, stall_series = loss_and_series(histories, BIT_STALL_KEYS, run_ids(raw_runs))
    per_layer = layer_metrics.lazy()
    completed = completed_runs_at_common_step(runs, loss_series, outcomes.lazy()).collect().lazy()

    counts = (
        runs.join(outcomes.lazy().select("run_id", "outcome"), on="run_id", how="left")
        .group_by(RUN_KEY)
        .agg(pl.len().alias("n_runs"), (pl.col("outcome") == "completed").sum().alias("n_completed"))
        .with_columns(
            (pl.col("n_completed") / pl.col("n_runs")).alias("completion_rate"),
            (pl.col("n_completed") == 0).alias("all_failed"),
        )
    )
    loss = loss_series.select("run_id", "step", "value")
    run_final = (
        mean_of_last_k(loss, completed.select("run_id", pl.col("common_step").alias("cutoff_step")), last_k)
        .join(completed.select("run_id", *RUN_KEY), on="run_id", how="inner")
        .select("run_id", *RUN_KEY, "value")
        .collect()
    )
    final = (
        run_final.group_by(RUN_KEY)
        .agg(pl.col("value").mean().alias("final_loss"))
        .join(
            mean_intervals(run_final, list(RUN_KEY), n_resamples=n_resamples, seed=seed, min_bootstrap_n=min_bootstrap_n).rename(
                {"ci_low": "final_loss_ci_low", "ci_high": "final_loss_ci_high", "ci_method": "final_loss_ci_method"}
            ),
            on=RUN_KEY,
        )
        .lazy()
    )
    stall = (
        stall_series.join(completed, on="run_id")
        .filter((pl.col("step") <= pl.col("common_step")) & finite(pl.col("value")))
        .group_by("run_id", *RUN_KEY)
        .agg(pl.col("value").sort_by("step").last())
        .group_by(RUN_KEY)
        .agg(pl.col("value").mean().alias("bit_stall_rate"))
    )
    common_step = completed.group_by("project").agg(pl.col("common_step").first())
    baselines = final.filter(pl.col("fp8_format") == baseline)
    baseline_loss = (
        counts.select("project", "optimizer").unique()
        .join(baselines.select("project", "optimizer", pl.col("final_loss").alias("own_baseline")), on=["project", "optimizer"], how="left")
        .join(baselines.filter(pl.col("optimizer") == standard).select("project", pl.col("final_loss").alias("standard_baseline")), on="project", how="left")
        .select("project", "optimizer", pl.coalesce("own_baseline", "standard_baseline").alias("baseline_final_loss"))
    )
    # Layer metrics are the study's largest table: read run by run, and only the completed runs'.
    run_steps = completed.select("run_id", "common_step").unique("run_id", maintain_order=True).collect().rows()
    run_health = [_run_health(per_layer, run, step).collect() for run, step in run_steps]
    health = (
        pl.concat(run_health or [_run_health(per_layer.head(0), "", 0).collect()])
        .lazy()
        .join(completed.select("run_id", *RUN_KEY), on="run_id")
        .group_by(*RUN_KEY, "layer_type")
        .agg(*(pl.col(name).mean() for name, _ in HEALTH_CRITERIA), *(pl.col(name).std(ddof=1).alias(f"{name}_std") for name, _ in HEALTH_CRITERIA))
    )
    layer_types = pl.concat(
        [
            runs.select("project").unique().with_columns(pl.lit("all").alias("layer_type")),
            pl.LazyFrame(per_layer.select("run_id", "layer_type").unique().collect(engine="streaming"))
            .with_columns(pl.col("layer_type").cast(pl.String))
            .join(runs.select("run_id", "project"), on="run_id")
            .select("project", "layer_type")
            .unique(),
        ]
    ).unique()

    group = ["project", "optimizer", "layer_type"]
    candidate = (pl.col("fp8_format") != baseline) & ~pl.col("all_failed")
    eligible = candidate & (pl.col("n_completed") >= min_sweet_spot_runs)
    criterion_ranks = [
        pl.when(candidate).then(pl.col(name).fill_nan(None)).rank("average", descending=descending).over(group).alias(f"{name}_rank")
        for name, descending in HEALTH_CRITERIA
    ]
    score = pl.when(pl.col("layer_type") == "all").then(pl.col("final_loss").fill_nan(None)).otherwise(pl.col("health_score"))
    ranked = (
        counts.join(layer_types, on="project", how="inner")
        .join(final, on=RUN_KEY, how="left")
        .join(stall, on=RUN_KEY, how="left")
        .join(common_step, on="project", how="left")
        .join(baseline_loss, on=["project", "optimizer"], how="left")
        .join(health, on=[*RUN_KEY, "layer_type"], how="left")
        .with_columns(candidate.alias("is_candidate"), eligible.alias("eligible_for_sweet_spot"), *criterion_ranks)
        .with_columns(pl.mean_horizontal(f"{name}_rank" for name, _ in HEALTH_CRITERIA).alias("health_score"))
        .with_columns(
            pl.col("health_score").alias("mean_rank"),
            pl.when(candidate).then(score).alias("score"),
            pl.when(pl.col("layer_type") == "all").then(pl.lit("final_loss")).otherwise(pl.lit("health_rank_mean")).alias("score_basis"),
            pl.when(candidate).then(pl.col("bit_stall_rate").fill_nan(None)).rank("min").over(group).cast(pl.Int64).alias("bit_stall_rank"),
        )
        .with_columns(
            pl.col("score").rank("min").over(group).cast(pl.Int64).alias("rank"),
            pl.when(eligible).then(pl.col("score")).rank("min").over(group).alias("eligible_rank"),
        )
        .with_columns(
            (pl.col("eligible_rank") == 1).fill_null(False).alias("is_sweet_spot"),
            ((pl.col("baseline_final_loss") - pl.col("final_loss")) / pl.col("baseline_final_loss").abs()).alias("improvement_over_baseline"),
            pl.lit(last_k).alias("last_k"),
        )
        .collect()
    )
    leads = _leads(run_final, ranked, n_resamples, seed, min_bootstrap_n)
    return (
        ranked.join(leads, on=[*RUN_KEY, "layer_type"], how="left")
        .with_columns((pl.col("lead_ci_low") > 0).alias("lead_beyond_noise"))
        .select(
            "project",
            "optimizer",
            "fp8_format",
            "layer_type",
            "rank",
            "is_sweet_spot",
            "eligible_for_sweet_spot",
            "score",
            "score_basis",
            "mean_rank",
            "final_loss",
            "final_loss_ci_low",
            "final_loss_ci_high",
            "final_loss_ci_method",
            "runner_up",
            "lead_over_runner_up",
            "lead_ci_low",
            "lead_ci_high",
            "lead_ci_method",
            "lead_beyond_noise",
            "baseline_final_loss",
            "improvement_over_baseline",
            "bit_stall_rate",
            "bit_stall_rank",
            "common_step",
            "last_k",
            *(name for name, _ in HEALTH_CRITERIA),
            *(f"{name}_std" for name, _ in HEALTH_CRITERIA),
            *(f"{name}_rank" for name, _ in HEALTH_CRITERIA),
            "health_score",
            "n_runs",
            "n_completed",
            "completion_rate",
            "all_failed",
            "is_candidate",
        )
        .sort("project", "optimizer", "layer_type", "rank", "fp8_format", nulls_last=True)
    )

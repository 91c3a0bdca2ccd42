"""Format rankings, overall and per layer type, against the BF16 baseline.

Rows: one per (project, fp8_format, layer_type), layer_type "all" plus every layer type found in
the layer metrics; runs without format information (`no_format`) are left out; each project
(study) is ranked on its own.

Step alignment: runs differ in length (altgrad's BF16 baseline runs 2000 steps, the FP8 runs 500),
so everything is measured up to a common step: the largest step that every completed run of the
project logged a loss at (the minimum over those runs of their last loss step). A run's final
loss is the mean of its last `last_k` finite losses logged at or before that common step; a
format's `final_loss` is the mean over its completed runs. Only completed runs enter any score.

Per-layer health, over completed runs, steps <= common step, finite values only, each first
averaged within a run and then over the format's runs:
- `grad_snr`: mean `grad_snr` over the layer type's parameters and steps (higher is better);
- `sparsity`: mean `dead_neuron_frac` over the layer type's parameters and steps, excluding the
  word embedding (`wte`/`word_embeddings`), whose gradients are structurally sparse (lower is
  better);
- `norm_cov`: coefficient of variation (sample std / mean) of `grad_norm_l2` over steps, per
  parameter, averaged over the layer type's parameters (lower is better).

Ranking (rank 1 = best) among FP8 candidates only: the baseline format is not a candidate (rank
null, never the sweet spot), nor is a format without a completed run (`all_failed`, rank null).
Layer type "all" is ranked by `final_loss` (lower is better). Each other layer type is ranked by
`health_score` = the mean of the format's three per-criterion ranks (average ranks for ties,
SNR ranked descending, sparsity and CoV ascending; a criterion that is missing is left out of the
mean); `score` holds the number the rank came from and `score_basis` names it. Ties share the
best rank ("min"). `is_sweet_spot` marks rank 1.
`improvement_over_baseline` = (baseline final_loss - format final_loss) / |baseline final_loss|,
positive when the format reaches a lower loss than BF16 at the common step; it is loss-based and
repeated on every layer-type row of the format.
"""

from __future__ import annotations

import polars as pl

from altgrad_pipeline.analysis.outcomes import loss_history
from altgrad_pipeline.analysis.stats import coefficient_of_variation, finite, mean_of_last_k
from altgrad_pipeline.ingest.model import numeric_history

NO_FORMAT = "no_format"
RUN_KEY = ("project", "fp8_format")
HEALTH_CRITERIA = (("grad_snr", True), ("sparsity", False), ("norm_cov", False))


def completed_runs_at_common_step(raw_runs: pl.LazyFrame, histories: pl.LazyFrame, outcomes: pl.LazyFrame) -> pl.LazyFrame:
    """run_id, project, fp8_format, common_step for every completed run with a format: the common
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


def _health_per_run(layer_metrics: pl.LazyFrame, completed: pl.LazyFrame) -> pl.LazyFrame:
    """run_id, layer_type ("all" included), grad_snr, sparsity, norm_cov of each completed run."""
    metrics = (
        layer_metrics.join(completed.select("run_id", "common_step"), on="run_id", how="inner")
        .filter((pl.col("step") <= pl.col("common_step")) & finite(pl.col("value")))
        .filter(pl.col("metric").is_in(["grad_snr", "dead_neuron_frac", "grad_norm_l2"]))
    )
    metrics = pl.concat([metrics, metrics.with_columns(pl.lit("all").alias("layer_type"))])
    by = ["run_id", "layer_type"]
    means = metrics.group_by(by).agg(
        pl.col("value").filter(pl.col("metric") == "grad_snr").mean().alias("grad_snr"),
        pl.col("value").filter((pl.col("metric") == "dead_neuron_frac") & ~pl.col("is_structurally_sparse")).mean().alias("sparsity"),
    )
    cov = (
        metrics.filter(pl.col("metric") == "grad_norm_l2")
        .group_by(*by, "param")
        .agg(coefficient_of_variation(pl.col("value")).alias("norm_cov"))
        .filter(finite(pl.col("norm_cov")))
        .group_by(by)
        .agg(pl.col("norm_cov").mean())
    )
    return means.join(cov, on=by, how="full", coalesce=True)


def format_rankings(
    raw_runs: pl.LazyFrame | pl.DataFrame,
    histories: pl.LazyFrame | pl.DataFrame,
    outcomes: pl.LazyFrame | pl.DataFrame,
    layer_metrics: pl.LazyFrame | pl.DataFrame,
    *,
    last_k: int = 10,
    baseline: str = "BF16",
) -> pl.DataFrame:
    """Rank formats overall and per layer type (definitions in the module docstring)."""
    runs = raw_runs.lazy().filter(pl.col("fp8_format") != NO_FORMAT)
    history = numeric_history(histories)
    per_layer = layer_metrics.lazy()
    completed = completed_runs_at_common_step(runs, history, outcomes.lazy())

    counts = (
        runs.join(outcomes.lazy().select("run_id", "outcome"), on="run_id", how="left")
        .group_by(RUN_KEY)
        .agg(pl.len().alias("n_runs"), (pl.col("outcome") == "completed").sum().alias("n_completed"))
        .with_columns(
            (pl.col("n_completed") / pl.col("n_runs")).alias("completion_rate"),
            (pl.col("n_completed") == 0).alias("all_failed"),
        )
    )
    loss = loss_history(history).select("run_id", "step", "value")
    run_final = mean_of_last_k(loss, completed.select("run_id", pl.col("common_step").alias("cutoff_step")), last_k)
    final = (
        completed.join(run_final, on="run_id", how="inner")
        .group_by(RUN_KEY)
        .agg(pl.col("value").mean().alias("final_loss"))
    )
    common_step = completed.group_by("project").agg(pl.col("common_step").first())
    baseline_loss = final.filter(pl.col("fp8_format") == baseline).select("project", pl.col("final_loss").alias("baseline_final_loss"))
    health = (
        _health_per_run(per_layer, completed)
        .join(completed.select("run_id", *RUN_KEY), on="run_id")
        .group_by(*RUN_KEY, "layer_type")
        .agg(pl.col(name).mean() for name, _ in HEALTH_CRITERIA)
    )
    layer_types = pl.concat(
        [
            runs.select("project").unique().with_columns(pl.lit("all").alias("layer_type")),
            per_layer.join(runs.select("run_id", "project"), on="run_id").select("project", "layer_type").unique(),
        ]
    ).unique()

    group = ["project", "layer_type"]
    candidate = (pl.col("fp8_format") != baseline) & ~pl.col("all_failed")
    criterion_ranks = [
        pl.when(candidate).then(pl.col(name).fill_nan(None)).rank("average", descending=descending).over(group).alias(f"{name}_rank")
        for name, descending in HEALTH_CRITERIA
    ]
    score = pl.when(pl.col("layer_type") == "all").then(pl.col("final_loss").fill_nan(None)).otherwise(pl.col("health_score"))
    return (
        counts.join(layer_types, on="project", how="inner")
        .join(final, on=RUN_KEY, how="left")
        .join(common_step, on="project", how="left")
        .join(baseline_loss, on="project", how="left")
        .join(health, on=[*RUN_KEY, "layer_type"], how="left")
        .with_columns(candidate.alias("is_candidate"), *criterion_ranks)
        .with_columns(pl.mean_horizontal(f"{name}_rank" for name, _ in HEALTH_CRITERIA).alias("health_score"))
        .with_columns(
            pl.when(candidate).then(score).alias("score"),
            pl.when(pl.col("layer_type") == "all").then(pl.lit("final_loss")).otherwise(pl.lit("health_rank_mean")).alias("score_basis"),
        )
        .with_columns(pl.col("score").rank("min").over(group).cast(pl.Int64).alias("rank"))
        .with_columns(
            (pl.col("rank") == 1).fill_null(False).alias("is_sweet_spot"),
            ((pl.col("baseline_final_loss") - pl.col("final_loss")) / pl.col("baseline_final_loss").abs()).alias("improvement_over_baseline"),
            pl.lit(last_k).alias("last_k"),
        )
        .select(
            "project",
            "fp8_format",
            "layer_type",
            "rank",
            "is_sweet_spot",
            "score",
            "score_basis",
            "final_loss",
            "baseline_final_loss",
            "improvement_over_baseline",
            "common_step",
            "last_k",
            *(name for name, _ in HEALTH_CRITERIA),
            *(f"{name}_rank" for name, _ in HEALTH_CRITERIA),
            "health_score",
            "n_runs",
            "n_completed",
            "completion_rate",
            "all_failed",
            "is_candidate",
        )
        .sort("project", "layer_type", "rank", "fp8_format", nulls_last=True)
        .collect()
    )

"""ANAL-01's per-run results and conclusions, as tables the report renders (no text here).

`run_results`: one row per run of the store, whatever its format or outcome, so a reader can find
every run behind a ranking: its final loss (mean of its last `last_k` finite losses, up to its own
last loss step), best loss (lowest finite loss) and final bit-stall rate (last finite cumulative
`quantization/bit_stall_rate`, else `bit_stall_rate`).

`conclusions`: from `format_rankings` and `failure_modes`, per (project, optimizer):
- `best`: the sweet spot overall, with its interval, runner-up and whether the lead is beyond noise;
- `avoid`: formats at least half of whose decided runs failed (a failure mode other than `none`;
  runs without an exit record are undecided), with the failure modes seen: e.g. completed 0 of 3;
- `per_layer`: the recommended format per layer type (the sweet spot of its mean rank);
- `vs_baseline`: how far each ranked format trails BF16 at the common step (`trails_by`, nats,
  and `trails_by_pct` of the baseline's final loss; negative = ahead of BF16).

`failure_conclusions` (ANAL-02): per (project, fp8_format, optimizer, failure_mode,
failure_stage) of the failed runs: how many of the decided runs failed that way, the first,
median and last failure step, and the stage's recommendation.

`manifold_conclusions` (ANAL-03): per (project, fp8_format) of `manifold_stats`: the verdict and
effect on `final_loss` (absolute and percent, interval, method, observed counts), the effect on
the failure step and each arm's failure rate; `benefits_most` marks the format whose final loss
ManifoldAdamW lowers most in percent among those where it helps.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from altgrad_pipeline.analysis.history_scans import RUNS_PER_QUERY, per_run
from altgrad_pipeline.analysis.outcomes import history_series, loss_history, run_ids
from altgrad_pipeline.analysis.stats import finite
from altgrad_pipeline.ingest.model import numeric_history
from altgrad_pipeline.study import BIT_STALL_KEYS, LOSS_KEYS, NO_FORMAT

#: Failure modes that do not count as a failure when deciding which formats to avoid.
NOT_FAILED = ("none", "no_exit_record")


def run_results(
    raw_runs: pl.LazyFrame | pl.DataFrame, histories: pl.LazyFrame | pl.DataFrame, outcomes: pl.LazyFrame | pl.DataFrame, *, last_k: int = 10
) -> pl.DataFrame:
    """One row per run: project, run_id, name, url, fp8_format, optimizer, seed, state, outcome,
    last_step, max_steps, final_loss, best_loss, final_bit_stall_rate (module docstring). The loss
    and bit-stall facts are reduced a few runs at a time (`history_scans.per_run`): one plan deriving the
    series from every run's rows held them all (4x benchmark study: 350 MB, 1x: 246 MB)."""
    runs = raw_runs.lazy()
    url = pl.col("url") if "url" in runs.collect_schema().names() else pl.lit(None, pl.String)
    facts = per_run(
        numeric_history(histories).filter(pl.col("key").is_in((*LOSS_KEYS, *BIT_STALL_KEYS))).select("run_id", "step", "key", "value"),
        lambda rows: _loss_and_stall_facts(rows.collect().lazy(), last_k),
        run_ids(raw_runs),
        runs_at_once=RUNS_PER_QUERY,
    )
    return (
        runs.select("project", "run_id", "name", url.alias("url"), "fp8_format", "optimizer", "seed", "state", pl.col("max_steps").cast(pl.Int64))
        .join(outcomes.lazy().select("run_id", "outcome", "last_step"), on="run_id", how="left")
        .join(facts.lazy(), on="run_id", how="left")
        .select(
            "project", "run_id", "name", "url", "fp8_format", "optimizer", "seed", "state", "outcome", "last_step", "max_steps",
            "final_loss", "best_loss", "final_bit_stall_rate",
        )
        .sort("project", "optimizer", "fp8_format", "name")
        .collect()
    )


def _loss_and_stall_facts(rows: pl.LazyFrame, last_k: int) -> pl.LazyFrame:
    """run_id, final_loss (mean of the last `last_k` finite losses), best_loss and
    final_bit_stall_rate (last finite) of the runs of `rows` (numeric history rows)."""
    tail = pl.col("value").sort_by("step").tail(last_k)
    loss = (
        loss_history(rows)
        .filter(finite(pl.col("value")))
        .group_by("run_id")
        .agg(tail.mean().alias("final_loss"), pl.col("value").min().alias("best_loss"))
    )
    stall = (
        history_series(rows, BIT_STALL_KEYS)
        .filter(finite(pl.col("value")))
        .group_by("run_id")
        .agg(pl.col("value").sort_by("step").last().alias("final_bit_stall_rate"))
    )
    return loss.join(stall, on="run_id", how="full", coalesce=True)


@dataclass(frozen=True)
class Conclusions:
    """The conclusions of ANAL-01, one table each (see the module docstring)."""

    best: pl.DataFrame
    avoid: pl.DataFrame
    per_layer: pl.DataFrame
    vs_baseline: pl.DataFrame


def conclusions(format_rankings: pl.DataFrame, failure_modes: pl.DataFrame) -> Conclusions:
    """Best format per optimizer, formats to avoid, format per layer type and distance to BF16."""
    overall = format_rankings.filter(pl.col("layer_type") == "all")
    best = overall.filter(pl.col("is_sweet_spot")).select(
        "project", "optimizer", "fp8_format", "final_loss", "final_loss_ci_low", "final_loss_ci_high", "final_loss_ci_method", "n_completed", "n_runs",
        "runner_up", "lead_over_runner_up", "lead_ci_low", "lead_ci_high", "lead_ci_method", "lead_beyond_noise",
    )
    failed = ~pl.col("failure_mode").is_in(NOT_FAILED)
    avoid = (
        failure_modes.filter(pl.col("fp8_format") != NO_FORMAT)
        .group_by("project", "optimizer", "fp8_format")
        .agg(
            (pl.col("failure_mode") != "no_exit_record").sum().alias("n_decided"),
            (pl.col("outcome") == "completed").sum().alias("n_completed"),
            failed.sum().alias("n_failed"),
            pl.col("failure_mode").filter(failed).unique().sort().alias("failure_modes"),
            pl.col("failure_stage").drop_nulls().unique().sort().alias("failure_stages"),
        )
        .filter((pl.col("n_failed") > 0) & (2 * pl.col("n_failed") >= pl.col("n_decided")))
        .sort("project", "optimizer", "fp8_format")
    )
    per_layer = (
        format_rankings.filter((pl.col("layer_type") != "all") & pl.col("is_sweet_spot"))
        .select("project", "optimizer", "layer_type", "fp8_format", "mean_rank", "n_completed")
        .sort("project", "optimizer", "layer_type", "fp8_format")
    )
    vs_baseline = (
        overall.filter(pl.col("is_candidate") & pl.col("final_loss").is_not_null() & pl.col("baseline_final_loss").is_not_null())
        .select(
            "project", "optimizer", "fp8_format", "rank", "final_loss", "baseline_final_loss",
            (pl.col("final_loss") - pl.col("baseline_final_loss")).alias("trails_by"),
            (100 * (pl.col("final_loss") - pl.col("baseline_final_loss")) / pl.col("baseline_final_loss").abs()).alias("trails_by_pct"),
        )
        .sort("project", "optimizer", "rank", "fp8_format", nulls_last=True)
    )
    return Conclusions(best=best, avoid=avoid, per_layer=per_layer, vs_baseline=vs_baseline)


def failure_conclusions(failure_modes: pl.DataFrame) -> pl.DataFrame:
    """project, fp8_format, optimizer, failure_mode, failure_stage, recommendation, n_failed,
    n_decided, first/median/last_failure_step: how, when and where each format's runs fail."""
    decided = (
        failure_modes.filter(pl.col("failure_mode") != "no_exit_record")
        .group_by("project", "fp8_format", "optimizer")
        .agg(pl.len().alias("n_decided"))
    )
    return (
        failure_modes.filter(~pl.col("failure_mode").is_in(NOT_FAILED))
        .group_by("project", "fp8_format", "optimizer", "failure_mode", "failure_stage", "recommendation")
        .agg(
            pl.len().alias("n_failed"),
            pl.col("failure_step").min().alias("first_failure_step"),
            pl.col("failure_step").median().alias("median_failure_step"),
            pl.col("failure_step").max().alias("last_failure_step"),
        )
        .join(decided, on=["project", "fp8_format", "optimizer"], how="left")
        .sort("project", "fp8_format", "optimizer", "failure_mode", nulls_last=True)
    )


def manifold_conclusions(manifold_stats: pl.DataFrame) -> pl.DataFrame:
    """One row per (project, fp8_format) of `manifold_stats` (module docstring)."""
    key = ["project", "fp8_format"]
    stats = manifold_stats
    loss = stats.filter(pl.col("metric") == "final_loss").select(
        *key, "verdict", "diff", "diff_pct", "ci_low", "ci_high", "method", "paired", "n_lower", "n_pairs", "n_standard", "n_manifold", "common_step"
    )
    step = stats.filter(pl.col("metric") == "failure_step").select(
        *key,
        pl.col("mean_standard").alias("failure_step_standard"),
        pl.col("mean_manifold").alias("failure_step_manifold"),
        pl.col("diff").alias("failure_delay"),
        pl.col("diff_pct").alias("failure_delay_pct"),
        pl.col("verdict").alias("failure_step_verdict"),
    )
    rate = stats.filter(pl.col("metric") == "failure_rate").select(
        *key,
        pl.col("mean_standard").alias("failure_rate_standard"),
        pl.col("n_standard").alias("n_decided_standard"),
        pl.col("mean_manifold").alias("failure_rate_manifold"),
        pl.col("n_manifold").alias("n_decided_manifold"),
    )
    helps = pl.col("verdict") == "helps"
    return (
        loss.join(step, on=key, how="left")
        .join(rate, on=key, how="left")
        .with_columns((helps & (pl.col("diff_pct") == pl.col("diff_pct").filter(helps).min().over("project"))).fill_null(False).alias("benefits_most"))
        .sort(key)
    )

"""Asset checks: the data the analysis stands on is what it claims to be. Partitioned checks read
one format's partition, so a new run re-checks its format only. Each failure lists the offenders."""


import warnings
from collections.abc import Iterator

import dagster as dg
import polars as pl

from altgrad_pipeline.analysis import consistency, manifold
from altgrad_pipeline.defs.partitions import fp8_format_partitions
from altgrad_pipeline.defs.ui import preview
from altgrad_pipeline.study import NO_FORMAT

# Partitioned asset checks (one format at a time) are a preview feature of Dagster 1.13: chosen knowingly.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning)

#: The checks of a format partition's `ingest_format` tables (one step: `ingest_format_checks`).
NO_DUPLICATE_CONFIGURATIONS = dg.AssetCheckKey(dg.AssetKey("raw_runs"), "no_duplicate_configurations")
EVERY_RUN_HAS_A_LOSS_SERIES = dg.AssetCheckKey(dg.AssetKey("run_histories"), "every_run_has_a_loss_series")
STEPS_ARE_UNIQUE_AND_INCREASING = dg.AssetCheckKey(dg.AssetKey("run_histories"), "steps_are_unique_and_increasing")


def _result(
    passed: bool, details: pl.DataFrame, what: str, check: dg.AssetCheckKey | None = None, **extra: object
) -> dg.AssetCheckResult:
    """`check` names the check of a step that runs several; a single check's step leaves it out."""
    metadata: dict[str, object] = {"n_offending": details.height, **extra}
    if details.height:
        metadata["offending"] = preview(details, rows=20)
    return dg.AssetCheckResult(
        passed=passed,
        description=f"All good: {what}" if passed else f"{details.height} violations: {what}",
        metadata=metadata,
        asset_key=check.asset_key if check else None,
        check_name=check.name if check else None,
    )


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            NO_DUPLICATE_CONFIGURATIONS.name,
            asset=NO_DUPLICATE_CONFIGURATIONS.asset_key,
            partitions_def=fp8_format_partitions,
            description="No two runs share an effective configuration and seed (e.g. altgrad's e5m2_short and "
            "e5m2_standard are one config): such runs are not independent replicates.",
        ),
        dg.AssetCheckSpec(
            EVERY_RUN_HAS_A_LOSS_SERIES.name,
            asset=EVERY_RUN_HAS_A_LOSS_SERIES.asset_key,
            additional_deps=["raw_runs"],
            partitions_def=fp8_format_partitions,
            description="Every run of the format has a loss series (`loss` or `train/loss`).",
        ),
        dg.AssetCheckSpec(
            STEPS_ARE_UNIQUE_AND_INCREASING.name,
            asset=STEPS_ARE_UNIQUE_AND_INCREASING.asset_key,
            additional_deps=["raw_runs"],
            partitions_def=fp8_format_partitions,
            description="Steps of every (run, key) series are unique and increasing.",
        ),
    ],
    ins={"raw_runs": dg.AssetIn(), "run_histories": dg.AssetIn()},
    can_subset=True,
)
def ingest_format_checks(
    context: dg.AssetCheckExecutionContext, raw_runs: pl.LazyFrame, run_histories: pl.LazyFrame
) -> Iterator[dg.AssetCheckResult]:
    """The checks of what `ingest_format` writes for a format (its two tables come from one step, so
    they are checked together): one step, with one start, input load and success, instead of one
    per check; Dagster's own cost per step exceeds what any of these checks computes. A check
    executed alone (e.g. from the UI) runs alone.

    The partition's runs are the ones its `raw_runs` lists (one catalog listing builds both), so
    the step check needs no scan of the histories to find them."""
    selected = context.selected_asset_check_keys
    if NO_DUPLICATE_CONFIGURATIONS in selected:
        passed, duplicates = consistency.duplicate_configurations(raw_runs)
        yield _result(passed, duplicates, "no duplicated configuration with the same seed", check=NO_DUPLICATE_CONFIGURATIONS)
    if EVERY_RUN_HAS_A_LOSS_SERIES in selected:
        passed, missing = consistency.every_run_has_loss(raw_runs, run_histories)
        yield _result(passed, missing, "every run logged a loss", check=EVERY_RUN_HAS_A_LOSS_SERIES)
    if STEPS_ARE_UNIQUE_AND_INCREASING in selected:
        runs = raw_runs.select("run_id").collect().get_column("run_id").to_list()
        passed, bad = consistency.steps_unique_and_increasing(run_histories, runs)
        yield _result(passed, bad, "steps unique and increasing in every series", check=STEPS_ARE_UNIQUE_AND_INCREASING)


@dg.asset_check(
    asset="format_rankings",
    additional_ins={"raw_runs": dg.AssetIn()},
    description="Every format found in raw_runs has a registered partition and a row in the rankings.",
)
def partitions_cover_every_format(
    context: dg.AssetCheckExecutionContext, format_rankings: pl.DataFrame, raw_runs: pl.LazyFrame
) -> dg.AssetCheckResult:
    formats = set(raw_runs.select("fp8_format").unique().collect().to_series().to_list()) - {NO_FORMAT}
    registered = set(fp8_format_partitions.get_partition_keys(dynamic_partitions_store=context.instance))
    ranked = set(format_rankings.get_column("fp8_format").to_list())
    gaps = pl.DataFrame(
        [{"fp8_format": f, "has_partition": f in registered, "in_rankings": f in ranked} for f in sorted(formats)],
        schema={"fp8_format": pl.String(), "has_partition": pl.Boolean(), "in_rankings": pl.Boolean()},
    ).filter(~pl.col("has_partition") | ~pl.col("in_rankings"))
    return _result(gaps.is_empty(), gaps, "every format partitioned and ranked", n_formats=len(formats))


@dg.asset_check(
    asset="format_rankings",
    description="Every ranked format has a completed run, or is marked all-failed and carries no rank.",
)
def formats_completed_or_marked_all_failed(format_rankings: pl.DataFrame) -> dg.AssetCheckResult:
    passed, bad = consistency.rankings_cover_formats(format_rankings)
    return _result(passed, bad, "formats have a completed run or are marked all-failed")


@dg.asset_check(
    asset="manifold_stats",
    description="ci_low <= diff <= ci_high for every effect (rows without an interval must be low-n).",
)
def intervals_contain_the_effect(manifold_stats: pl.DataFrame) -> dg.AssetCheckResult:
    passed, bad = consistency.manifold_intervals_contain_diff(manifold_stats)
    return _result(passed, bad, "every CI contains its point estimate")


@dg.asset_check(
    asset="manifold_stats",
    additional_ins={"raw_runs": dg.AssetIn()},
    description="Every format has runs of both optimizers; a format lacking an arm has no ManifoldAdamW comparison (warns, listing them).",
)
def every_format_has_both_optimizers(manifold_stats: pl.DataFrame, raw_runs: pl.LazyFrame) -> dg.AssetCheckResult:
    missing = manifold.formats_missing_an_arm(raw_runs)
    result = _result(missing.is_empty(), missing, "every format has both optimizer arms")
    return dg.AssetCheckResult(passed=result.passed, severity=dg.AssetCheckSeverity.WARN, description=result.description, metadata=result.metadata)

"""Analysis assets: thin Dagster wiring around the pure Polars functions of `analysis/`: layer
metrics, each run's learning curves, run outcomes, failure modes, rankings and the manifold
comparison (ANAL-01/02/03), per-key run summaries, training dynamics and sweep summaries.

Unpartitioned assets read every format partition of their inputs through one lazy scan (see the
IO manager); their descriptions are the analysis modules' own docstrings, so the UI, the reports
and the code state the same definitions.
"""

from pathlib import Path

import dagster as dg
import polars as pl

from altgrad_pipeline.analysis import (
    columns,
    failures,
    layers,
    manifold,
    outcomes,
    rankings,
    summaries,
    sweeps,
    training,
)
from altgrad_pipeline.analysis import learning_curves as curves_table  # the module; `learning_curves` names the asset
from altgrad_pipeline.defs.automation import analysis_automation_condition
from altgrad_pipeline.defs.partitions import fp8_format_partitions
from altgrad_pipeline.defs.resources import ReportFiles, RunStores
from altgrad_pipeline.defs.ui import counts, preview, table_schema
from altgrad_pipeline.partition_tables import CATALOG_FINGERPRINT, built_from, recipe, run_versions
from altgrad_pipeline.study import DEFAULT_NOISE_PATTERNS

ANALYSIS_GROUP = "analysis"
LAYER_METRICS_RECIPE = recipe(layers)
ALL_FORMATS = {"raw_runs": dg.AssetIn(), "run_histories": dg.AssetIn()}
#: What the analyses of the curves read: every run, and each run's curve and health series.
RUNS_AND_CURVES = {"raw_runs": dg.AssetIn(), "learning_curves": dg.AssetIn()}
#: Display remapping read by `sweep_summary` when its config names no file: `<data dir>/sweep_display.yaml`.
DISPLAY_FILE_NAME = "sweep_display.yaml"


def _doc(module: object) -> str:
    return (module.__doc__ or "").strip()


@dg.asset(
    group_name=ANALYSIS_GROUP,
    partitions_def=fp8_format_partitions,
    description="Per-parameter metrics in long form with layer index and layer type.\n\n" + _doc(layers),
    metadata={"dagster/column_schema": table_schema(layers.LAYER_METRICS_SCHEMA, columns.LAYER_METRICS)},
    kinds={"polars", "parquet"},
)
def layer_metrics(
    context: dg.AssetExecutionContext, raw_runs: pl.DataFrame, run_histories: pl.LazyFrame, run_stores: RunStores
) -> dg.MaterializeResult:
    built = run_stores.rebuild_partition(
        context,
        "layer_metrics",
        context.partition_key,
        run_versions(raw_runs),
        LAYER_METRICS_RECIPE,
        lambda run_ids: layers.layer_metrics(run_histories.filter(pl.col("run_id").is_in(run_ids))),
        streamed=True,
        describe=_describe_layer_metrics,
    )
    return dg.MaterializeResult(
        value=built.table, metadata={"runs_rebuilt": len(built.computed), CATALOG_FINGERPRINT: built_from(raw_runs)}
    )


def _describe_layer_metrics(frame: pl.LazyFrame) -> dict[str, object]:
    """What the UI shows of a `layer_metrics` partition, read from it as written (a first build
    is computed only while it is written)."""
    n_rows, n_params = frame.select(pl.len(), pl.col("param").n_unique()).collect().row(0)
    return {
        "dagster/row_count": n_rows,
        "rows_by_layer_type": counts(frame, "layer_type"),
        "n_params": n_params,
        "preview": preview(frame.head(8).collect(), rows=8),
    }


@dg.asset(
    group_name=ANALYSIS_GROUP,
    ins={"run_histories": dg.AssetIn()},
    description="One row per (run, step, key) of each run's learning curves and training-health series.\n\n" + _doc(curves_table),
    metadata={"dagster/column_schema": table_schema(curves_table.LEARNING_CURVES_SCHEMA, columns.LEARNING_CURVES)},
    automation_condition=analysis_automation_condition(),
    kinds={"polars", "parquet"},
)
def learning_curves(run_histories: pl.LazyFrame) -> dg.MaterializeResult:
    # A lazy value: the IO manager streams it into the file, so the table is never held.
    frame = curves_table.learning_curves(run_histories)
    return dg.MaterializeResult(value=frame, metadata={"preview": preview(frame.head(8).collect(), rows=8)})


@dg.asset(
    group_name=ANALYSIS_GROUP,
    ins={**RUNS_AND_CURVES, "run_summaries": dg.AssetIn()},
    description="One row per run: its outcome decided from the data, not the tracker state.\n\n" + _doc(outcomes),
    metadata={"dagster/column_schema": table_schema(outcomes.OUTCOMES_SCHEMA, columns.RUN_OUTCOMES)},
    automation_condition=analysis_automation_condition(),
    kinds={"polars", "parquet"},
)
def run_outcomes(raw_runs: pl.LazyFrame, learning_curves: pl.LazyFrame, run_summaries: pl.LazyFrame) -> dg.MaterializeResult:
    frame = outcomes.run_outcomes(raw_runs, learning_curves, run_summaries)
    return dg.MaterializeResult(
        value=frame,
        metadata={
            "dagster/row_count": frame.height,
            "runs_by_outcome": counts(frame, "outcome"),
            "preview": preview(frame, ["run_id", "state", "outcome", "last_step", "last_finite_loss", "first_nan_step"]),
        },
    )


@dg.asset(
    group_name=ANALYSIS_GROUP,
    ins={**ALL_FORMATS, "run_outcomes": dg.AssetIn(), "failure_reports": dg.AssetIn(), "run_summaries": dg.AssetIn()},
    description="ANAL-02: one row per run with its failure mode, failure step and the trend before it.\n\n" + _doc(failures),
    automation_condition=analysis_automation_condition(),
    kinds={"polars", "parquet"},
)
def failure_modes(
    raw_runs: pl.LazyFrame,
    run_histories: pl.LazyFrame,
    run_outcomes: pl.LazyFrame,
    failure_reports: pl.LazyFrame,
    run_summaries: pl.LazyFrame,
) -> dg.MaterializeResult:
    frame = failures.failure_modes(raw_runs, run_histories, run_outcomes, failure_reports, run_summaries=run_summaries)
    failed = frame.filter(pl.col("failure_mode") != "none")
    return dg.MaterializeResult(
        value=frame,
        metadata={
            "dagster/row_count": frame.height,
            "dagster/column_schema": table_schema(frame.schema, columns.FAILURE_MODES),
            "runs_by_failure_mode": counts(frame, "failure_mode"),
            "failed_runs": preview(
                failed, ["fp8_format", "optimizer", "run_id", "failure_mode", "failure_step", "last_finite_loss"], rows=15
            ),
        },
    )


@dg.asset(
    group_name=ANALYSIS_GROUP,
    ins={**RUNS_AND_CURVES, "run_outcomes": dg.AssetIn(), "layer_metrics": dg.AssetIn()},
    description="ANAL-01: formats ranked overall and per layer type; the sweet spot per layer type.\n\n" + _doc(rankings),
    automation_condition=analysis_automation_condition(),
    kinds={"polars", "parquet"},
)
def format_rankings(
    raw_runs: pl.LazyFrame, learning_curves: pl.LazyFrame, run_outcomes: pl.LazyFrame, layer_metrics: pl.LazyFrame
) -> dg.MaterializeResult:
    frame = rankings.format_rankings(raw_runs, learning_curves, run_outcomes, layer_metrics)
    sweet = frame.filter(pl.col("is_sweet_spot"))
    return dg.MaterializeResult(
        value=frame,
        metadata={
            "dagster/row_count": frame.height,
            "dagster/column_schema": table_schema(frame.schema, columns.FORMAT_RANKINGS),
            "sweet_spots": dg.MetadataValue.json({str(t): str(f) for t, f in sweet.select("layer_type", "fp8_format").rows()}),
            "ranking_all_layers": preview(
                frame.filter(pl.col("layer_type") == "all").sort("rank", nulls_last=True),
                ["fp8_format", "rank", "final_loss", "n_runs", "n_completed", "completion_rate", "improvement_over_baseline"],
            ),
        },
    )


@dg.asset(
    group_name=ANALYSIS_GROUP,
    ins={**RUNS_AND_CURVES, "run_outcomes": dg.AssetIn(), "run_summaries": dg.AssetIn(), "failure_modes": dg.AssetIn()},
    description="ANAL-03: ManifoldAdamW against AdamW per format and metric, with 95% intervals: Student's or "
    "Welch's t below 8 runs per arm, the BCa bootstrap from 8 (`method` names each row's).\n\n" + _doc(manifold),
    metadata={"dagster/column_schema": table_schema(manifold.MANIFOLD_SCHEMA, columns.MANIFOLD_STATS)},
    automation_condition=analysis_automation_condition(),
    kinds={"polars", "parquet", "scipy"},
)
def manifold_stats(
    raw_runs: pl.LazyFrame, learning_curves: pl.LazyFrame, run_outcomes: pl.LazyFrame, run_summaries: pl.LazyFrame, failure_modes: pl.LazyFrame
) -> dg.MaterializeResult:
    frame = manifold.manifold_stats(raw_runs, learning_curves, run_outcomes, run_summaries, failure_modes)
    return dg.MaterializeResult(
        value=frame,
        metadata={
            "dagster/row_count": frame.height,
            "interval_methods": counts(frame, "method"),
            "effects": preview(frame, ["fp8_format", "metric", "diff", "ci_low", "ci_high", "method", "n_manifold", "n_standard", "low_n"], rows=20),
        },
    )


class ThresholdConfig(dg.Config):
    """Thresholds for keys matching `pattern` (a regular expression, searched)."""

    pattern: str
    below: float | None = None
    above: float | None = None


class RunSummariesConfig(dg.Config):
    final_fraction: float = summaries.DEFAULT_FINAL_FRACTION
    thresholds: list[ThresholdConfig] = []


@dg.asset(
    group_name=ANALYSIS_GROUP,
    partitions_def=fp8_format_partitions,
    description=(summaries.__doc__ or "").strip(),
    metadata={"dagster/column_schema": table_schema(summaries.RUN_SUMMARIES_SCHEMA, columns.RUN_SUMMARIES)},
    kinds={"polars", "parquet"},
)
def run_summaries(
    context: dg.AssetExecutionContext,
    config: RunSummariesConfig,
    raw_runs: pl.DataFrame,
    run_histories: pl.LazyFrame,
    run_stores: RunStores,
) -> dg.MaterializeResult:
    thresholds = [summaries.Threshold(t.pattern, t.below, t.above) for t in config.thresholds]
    built = run_stores.rebuild_partition(
        context,
        "run_summaries",
        context.partition_key,
        run_versions(raw_runs),
        recipe(summaries, final_fraction=config.final_fraction, thresholds=thresholds),
        lambda run_ids: summaries.run_summaries(
            run_histories.filter(pl.col("run_id").is_in(run_ids)), final_fraction=config.final_fraction, thresholds=thresholds
        ),
    )
    frame = built.table.frame.lazy().collect()  # one row per (run, key): small
    return dg.MaterializeResult(value=built.table, metadata={CATALOG_FINGERPRINT: built_from(raw_runs),
        "dagster/row_count": frame.height, "keys_with_nan": int(frame.filter(pl.col("n_nan") > 0).height),
        "preview": preview(frame, ["run_id", "key", "last", "min", "argmin_step", "final_mean", "first_nan_step"], rows=8)})  # fmt: skip


class SweepSummaryConfig(dg.Config):
    """Run config of `sweep_summary` (the defaults are what automation uses)."""

    display_file: str | None = None
    extra_noise_patterns: list[str] = []
    last_k: int = sweeps.LAST_K
    min_bootstrap_n: int = sweeps.MIN_BOOTSTRAP_N


@dg.asset(
    group_name=ANALYSIS_GROUP,
    ins=RUNS_AND_CURVES,
    description=(training.__doc__ or "").strip(),
    metadata={"dagster/column_schema": table_schema(training.TRAINING_DYNAMICS_SCHEMA, columns.TRAINING_DYNAMICS)},
    automation_condition=analysis_automation_condition(),
    kinds={"polars", "parquet", "scipy"},
)
def training_dynamics(raw_runs: pl.LazyFrame, learning_curves: pl.LazyFrame) -> dg.MaterializeResult:
    frame = training.training_dynamics(raw_runs, learning_curves)
    selected = frame.filter(pl.col("selected"))
    return dg.MaterializeResult(
        value=frame,
        metadata={
            "dagster/row_count": frame.height,
            "selected_models": counts(selected, "model"),
            "selected": preview(selected, ["run_id", "metric", "model", "b", "tau", "knee_step", "plateau_step", "final_loss_bits"], rows=15),
        },
    )


@dg.asset(
    group_name=ANALYSIS_GROUP,
    ins=RUNS_AND_CURVES,
    description=(sweeps.__doc__ or "").strip(),
    metadata={"dagster/column_schema": table_schema(sweeps.SWEEP_SUMMARY_SCHEMA, columns.SWEEP_SUMMARY)},
    automation_condition=analysis_automation_condition(),
    kinds={"polars", "parquet", "scipy"},
)
def sweep_summary(config: SweepSummaryConfig, raw_runs: pl.LazyFrame, learning_curves: pl.LazyFrame, report_files: ReportFiles) -> dg.MaterializeResult:
    display_file = config.display_file or str(Path(report_files.data_dir) / DISPLAY_FILE_NAME)
    frame = sweeps.sweep_summary(
        raw_runs,
        learning_curves,
        noise_patterns=DEFAULT_NOISE_PATTERNS + tuple(config.extra_noise_patterns),
        display=sweeps.DisplayNames.from_yaml(display_file),
        last_k=config.last_k,
        min_bootstrap_n=config.min_bootstrap_n,
    )
    varying = {p: list(k) for p, k in frame.select("project", "varying_keys").unique("project").iter_rows()} if frame.height else {}
    return dg.MaterializeResult(
        value=frame,
        metadata={
            "dagster/row_count": frame.height,
            "varying_keys": dg.MetadataValue.json({str(p): k for p, k in varying.items()}),
            "groups": preview(frame, ["project", "group_label", "metric", "n_runs", "n_values", "mean", "ci_low", "ci_high", "ci_note"], rows=15),
        },
    )

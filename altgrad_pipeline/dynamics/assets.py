"""Training-dynamics and sweep assets: thin Dagster wiring around `dynamics.training`,
`dynamics.sweeps` and their reports. The descriptions are the modules' docstrings."""

from pathlib import Path

import dagster as dg
import polars as pl

from altgrad_pipeline.automation.conditions import analysis_automation_condition
from altgrad_pipeline.dynamics import sweeps, training
from altgrad_pipeline.reports import dynamics_documents
from altgrad_pipeline.reports.assets import report_asset, report_result
from altgrad_pipeline.resources import ReportFiles
from altgrad_pipeline.ui import counts, preview, table_schema

ANALYSIS_GROUP = "analysis"
ALL_FORMATS = {"raw_runs": dg.AssetIn(), "run_histories": dg.AssetIn()}
#: Display remapping read by `sweep_summary` when its config names no file: `<data dir>/sweep_display.yaml`.
DISPLAY_FILE_NAME = "sweep_display.yaml"


class SweepSummaryConfig(dg.Config):
    """Run config of `sweep_summary` (the defaults are what automation uses)."""

    display_file: str | None = None
    extra_noise_patterns: list[str] = []
    last_k: int = sweeps.LAST_K
    min_bootstrap_n: int = sweeps.MIN_BOOTSTRAP_N


@dg.asset(
    group_name=ANALYSIS_GROUP,
    ins=ALL_FORMATS,
    description=(training.__doc__ or "").strip(),
    metadata={"dagster/column_schema": table_schema(training.TRAINING_DYNAMICS_SCHEMA)},
    automation_condition=analysis_automation_condition(),
    kinds={"polars", "parquet", "scipy"},
)
def training_dynamics(raw_runs: pl.LazyFrame, run_histories: pl.LazyFrame) -> dg.MaterializeResult:
    frame = training.training_dynamics(raw_runs, run_histories)
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
    ins=ALL_FORMATS,
    description=(sweeps.__doc__ or "").strip(),
    metadata={"dagster/column_schema": table_schema(sweeps.SWEEP_SUMMARY_SCHEMA)},
    automation_condition=analysis_automation_condition(),
    kinds={"polars", "parquet", "scipy"},
)
def sweep_summary(config: SweepSummaryConfig, raw_runs: pl.LazyFrame, run_histories: pl.LazyFrame, report_files: ReportFiles) -> dg.MaterializeResult:
    display_file = config.display_file or str(Path(report_files.data_dir) / DISPLAY_FILE_NAME)
    frame = sweeps.sweep_summary(
        raw_runs,
        run_histories,
        noise_patterns=sweeps.DEFAULT_NOISE_PATTERNS + tuple(config.extra_noise_patterns),
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


@report_asset(
    "Report `training_dynamics.md`: selected learning-curve model per run and metric with parameters, "
    "knee, plateau, residual spectrum, and fits drawn over the data with residuals."
)
def training_dynamics_report(
    training_dynamics: pl.DataFrame, raw_runs: pl.DataFrame, run_histories: pl.LazyFrame, report_files: ReportFiles
) -> dg.MaterializeResult:
    return report_result(dynamics_documents.write_training_dynamics_report(training_dynamics, raw_runs, run_histories, report_files.reports_dir), report_files)


@report_asset(
    "Report `sweep_summary.md`: varying hyperparameters per project, final metrics per setting with "
    "n, completeness and bootstrap CIs, grouped curves with CI bands."
)
def sweep_summary_report(
    sweep_summary: pl.DataFrame, raw_runs: pl.DataFrame, run_histories: pl.LazyFrame, report_files: ReportFiles
) -> dg.MaterializeResult:
    return report_result(dynamics_documents.write_sweep_summary_report(sweep_summary, raw_runs, run_histories, report_files.reports_dir), report_files)

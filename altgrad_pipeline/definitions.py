"""The one `Definitions` of the project: `dagster dev` from the repo root (workspace.yaml) and
`altgrad-pipeline refresh` both load `altgrad_pipeline.definitions:defs`."""

from __future__ import annotations

import dagster as dg

from altgrad_pipeline import settings
from altgrad_pipeline.analysis import assets as analysis_assets
from altgrad_pipeline.analysis.checks import ANALYSIS_CHECKS
from altgrad_pipeline.automation.definitions import automation_defs
from altgrad_pipeline.dynamics import assets as dynamics_assets
from altgrad_pipeline.execution import executor_from_env
from altgrad_pipeline.ingest import assets as ingest_assets
from altgrad_pipeline.media import assets as media_assets
from altgrad_pipeline.io_manager import PolarsParquetIOManager
from altgrad_pipeline.reports import assets as report_assets
from altgrad_pipeline.resources import ReportFiles, RunStores

ASSETS = [
    ingest_assets.ingest_format,
    ingest_assets.ingest_issues,
    analysis_assets.layer_metrics,
    analysis_assets.run_outcomes,
    analysis_assets.failure_modes,
    analysis_assets.format_rankings,
    analysis_assets.manifold_stats,
    report_assets.format_comparison_report,
    report_assets.failure_modes_report,
    report_assets.manifold_comparison_report,
    dynamics_assets.training_dynamics,
    dynamics_assets.sweep_summary,
    dynamics_assets.training_dynamics_report,
    dynamics_assets.sweep_summary_report,
    media_assets.media_format,
    media_assets.run_summaries,
    media_assets.media_report,
    report_assets.reports_index,
]
ASSET_CHECKS = ANALYSIS_CHECKS


def build_resources(*, runs: str | None = None, data_dir: str | None = None) -> dict[str, object]:
    data_dir = settings.absolute_data_dir(data_dir)
    return {
        "run_stores": RunStores(
            runs=settings.run_stores_value() if runs is None else runs,
            data_dir=data_dir,
            crash_grace_seconds=settings.crash_grace_seconds(),
        ),
        "report_files": ReportFiles(data_dir=data_dir),
        "io_manager": PolarsParquetIOManager(base_dir=data_dir),
    }


def build_defs(*, runs: str | None = None, data_dir: str | None = None) -> dg.Definitions:
    """Definitions bound to run stores and a data dir (defaults: the environment), so tests and the
    CLI build the very graph the UI shows, against any store. Steps execute as ALTGRAD_EXECUTOR says
    (`execution.py`)."""
    return dg.Definitions.merge(
        dg.Definitions(
            assets=ASSETS,
            asset_checks=ASSET_CHECKS,
            resources=build_resources(runs=runs, data_dir=data_dir),
            executor=executor_from_env(),
        ),
        automation_defs(),
    )


defs = build_defs()

"""The one `Definitions` of the project: `dg dev` from the repo root (`[tool.dg]` in pyproject.toml),
dagster-webserver (workspace.yaml) and `altgrad-pipeline refresh` all load `altgrad_pipeline.definitions:defs`.

Everything Dagster lives in `defs/`; this module only collects it. Assets and checks are gathered
from the asset-group modules, so adding an asset or a check touches its `defs/` module only;
sensors, schedules and jobs are listed here. An explicit list rather than `load_from_defs_folder`:
`build_defs(runs=..., data_dir=...)` binds the resources to any run store and data dir (tests and
the CLI), which a folder scan with environment-configured resources would not.
"""

from __future__ import annotations

import dagster as dg
from threadpoolctl import threadpool_limits

from altgrad_pipeline import settings
from altgrad_pipeline.defs import analysis, checks, ingest, jobs, media, reports, schedules, sensors
from altgrad_pipeline.defs.executor import executor_from_env
from altgrad_pipeline.defs.io_manager import PolarsParquetIOManager
from altgrad_pipeline.defs.resources import ReportFiles, RunStores

# Every process that runs assets loads this module. Their BLAS work is small products (a curve
# fit's 48 × 3,000 grid, 4-column Jacobians) between which OpenBLAS's worker threads spin: one
# thread computes the same numbers for two thirds of the CPU (`training_dynamics` 6.4 -> 3.9 CPU-s
# in a first refresh), and Polars keeps the cores busy meanwhile.
threadpool_limits(1, user_api="blas")

#: The code location's name in workspace.yaml (and `[tool.dagster]`): runs of `refresh` carry it.
CODE_LOCATION_NAME = "altgrad_pipeline"
#: The asset-group modules, upstream first.
ASSET_MODULES = [ingest, analysis, media, reports]
ASSETS = dg.load_assets_from_modules(ASSET_MODULES)
ASSET_CHECKS = dg.load_asset_checks_from_modules([checks])


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
    (`defs.executor`)."""
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=ASSET_CHECKS,
        sensors=[sensors.finished_runs_sensor, sensors.analysis_automation_sensor],
        schedules=[schedules.stale_formats_schedule],
        jobs=[*jobs.REFRESH_JOBS, jobs.full_rebuild_job],
        resources=build_resources(runs=runs, data_dir=data_dir),
        executor=executor_from_env(),
    )


defs = build_defs()

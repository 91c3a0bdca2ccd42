"""`stale_formats_schedule`: a daily safety net behind the sensor. It re-checks every format
against what was last materialized (`refresh.stale_formats`) and refreshes the stale ones, which
catches anything a stopped sensor or a lost cursor missed. Cron: ALTGRAD_REFRESH_CRON."""

from __future__ import annotations

import os

import dagster as dg

from altgrad_pipeline import execution
from altgrad_pipeline.settings import is_safe_format_name
from altgrad_pipeline.automation.targets import format_partitioned_keys
from altgrad_pipeline.partitions import register_formats
from altgrad_pipeline.resources import RunStores

REFRESH_CRON_ENV = "ALTGRAD_REFRESH_CRON"
DEFAULT_REFRESH_CRON = "0 4 * * *"


def refresh_cron() -> str:
    return os.environ.get(REFRESH_CRON_ENV) or DEFAULT_REFRESH_CRON


@dg.schedule(
    name="stale_formats_schedule",
    cron_schedule=refresh_cron(),
    target=dg.AssetSelection.all(),
    description="Refreshes every FP8-format partition whose runs no longer match its last materialization.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def stale_formats_schedule(context: dg.ScheduleEvaluationContext, run_stores: RunStores):
    # Imported here: `refresh` imports the project's Definitions, which include this schedule.
    from altgrad_pipeline.refresh import stale_formats

    _, stale = stale_formats(run_stores, context.instance)
    stale = [fmt for fmt in stale if is_safe_format_name(fmt)]
    if not stale:
        return dg.SkipReason("every format partition matches its runs")
    # A schedule cannot return partition requests; adding keys is idempotent, so register directly.
    register_formats(context.instance, stale)
    execution.create_pools(context.instance)
    partitioned = format_partitioned_keys(context.repository_def)
    tick = context.scheduled_execution_time.isoformat()
    return [
        dg.RunRequest(run_key=f"{fmt}:{tick}", partition_key=fmt, asset_selection=partitioned,
                      tags={"altgrad/trigger": "stale_formats_schedule"})  # fmt: skip
        for fmt in stale
    ]

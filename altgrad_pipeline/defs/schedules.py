"""`stale_formats_schedule`: a daily safety net behind the sensor. It re-checks every format
against what was last materialized (`stale_formats`) and refreshes the stale ones, which
catches anything a stopped sensor or a lost cursor missed. Cron: ALTGRAD_REFRESH_CRON."""

from __future__ import annotations

import datetime as dt
import os

import dagster as dg

from altgrad_pipeline.defs.executor import create_pools
from altgrad_pipeline.defs.ingest import CATALOG_FINGERPRINT
from altgrad_pipeline.defs.jobs import refresh_format_job
from altgrad_pipeline.defs.partitions import fp8_format_partitions
from altgrad_pipeline.defs.resources import RunStores
from altgrad_pipeline.study import is_safe_format_name

REFRESH_CRON_ENV = "ALTGRAD_REFRESH_CRON"
DEFAULT_REFRESH_CRON = "0 4 * * *"


def refresh_cron() -> str:
    return os.environ.get(REFRESH_CRON_ENV) or DEFAULT_REFRESH_CRON


def stored_fingerprint(instance: dg.DagsterInstance, fmt: str) -> str | None:
    """The catalog fingerprint the latest `raw_runs` materialization of this format was built from."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_runs"), asset_partitions=[fmt]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get(CATALOG_FINGERPRINT)
    return None if value is None else value.value


def stale_formats(run_stores: RunStores, instance: dg.DagsterInstance, formats: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(all formats found, formats whose stored partition no longer matches the run stores)."""
    catalog = run_stores.catalog()
    result = catalog.sync()
    now = dt.datetime.now(dt.UTC)
    stale = []
    for fmt in result.formats if formats is None else formats:
        entries = result.for_format(fmt)
        runs = catalog.raw_runs(entries, now=now, grace_s=run_stores.crash_grace_seconds)
        wanted = catalog.partition_fingerprint(entries, runs)
        if stored_fingerprint(instance, fmt) != wanted:
            stale.append(fmt)
    return result.formats, stale


@dg.schedule(
    name="stale_formats_schedule",
    cron_schedule=refresh_cron(),
    target=refresh_format_job,
    description="Refreshes every FP8-format partition whose runs no longer match its last materialization.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def stale_formats_schedule(context: dg.ScheduleEvaluationContext, run_stores: RunStores):
    _, stale = stale_formats(run_stores, context.instance)
    stale = [fmt for fmt in stale if is_safe_format_name(fmt)]
    if not stale:
        return dg.SkipReason("every format partition matches its runs")
    # A schedule cannot return partition requests; adding keys is idempotent, so register directly.
    context.instance.add_dynamic_partitions(fp8_format_partitions.name, stale)
    create_pools(context.instance)
    tick = context.scheduled_execution_time.isoformat()
    return [
        dg.RunRequest(run_key=f"{fmt}:{tick}", partition_key=fmt, tags={"altgrad/trigger": "stale_formats_schedule"})
        for fmt in stale
    ]

"""`stale_formats_schedule`: a daily safety net behind the sensor. It re-checks every format
against what was last materialized (`stale_formats`) and refreshes the stale ones, which
catches anything a stopped sensor or a lost cursor missed. Cron: ALTGRAD_REFRESH_CRON.

`assess` (which `refresh` reuses) decides staleness: a partition is current only when every
format-partitioned asset carries the fingerprint of its runs now (`partition_tables.built_from`) and
each file (local or in an object store) still has the SHA-256 recorded when it was written; damaged
files are quarantined."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dagster as dg

from altgrad_pipeline.defs.executor import create_pools
from altgrad_pipeline.defs.io_manager import asset_path, file_problem, quarantine_file, recorded_sha256
from altgrad_pipeline.defs.jobs import refresh_format_job
from altgrad_pipeline.defs.partitions import register_formats
from altgrad_pipeline.defs.resources import RunStores
from altgrad_pipeline.defs.targets import format_partitioned_keys
from altgrad_pipeline.partition_tables import CATALOG_FINGERPRINT, built_from
from altgrad_pipeline.study import is_safe_format_name

REFRESH_CRON_ENV = "ALTGRAD_REFRESH_CRON"
DEFAULT_REFRESH_CRON = "0 4 * * *"


def refresh_cron() -> str:
    return os.environ.get(REFRESH_CRON_ENV) or DEFAULT_REFRESH_CRON


def stored_fingerprint(instance: dg.DagsterInstance, key: dg.AssetKey, fmt: str) -> str | None:
    """The fingerprint of the runs the latest materialization of `key` in this format was built from."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[fmt]), limit=1).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get(CATALOG_FINGERPRINT)
    return None if value is None else value.value


def damaged_files(
    instance: dg.DagsterInstance, data_dir: str, keys: Sequence[dg.AssetKey], fmt: str | None, echo: Callable[[str], None]
) -> bool:
    """Whether a built asset's file is missing or no longer the one written (on local disk or in an
    object store); such a file is moved to `<data dir>/quarantine/` and named."""
    damaged = False
    for key in keys:
        if instance.get_latest_materialization_event(key) is None:
            continue
        path = asset_path(data_dir, key.path[-1], fmt)
        expected = recorded_sha256(instance, key, fmt)
        if fmt is not None and expected is None and stored_fingerprint(instance, key, fmt) is None:
            continue  # this partition of the asset was never built: nothing to check
        if (why := file_problem(path, expected)) is not None:
            moved = quarantine_file(path, data_dir)
            echo(f"  {why}: {f'moved to {moved}, ' if moved else ''}rebuilding it")
            damaged = True
    return damaged


@dataclass
class Assessment:
    formats: list[str]
    stale: list[str]
    #: Format -> fingerprint of its runs now (`partition_tables.built_from`).
    wanted: dict[str, str]


def assess(
    run_stores: RunStores,
    instance: dg.DagsterInstance,
    data_dir: str,
    keys: Sequence[dg.AssetKey],
    echo: Callable[[str], None] = lambda _: None,
    formats: Sequence[str] | None = None,
) -> Assessment:
    """Which format partitions need building, `keys` being every format-partitioned asset. A
    partition is current only when every one of its assets was last built from the runs it has now
    (a run killed or failed part-way leaves some asset behind) and each file is the one written;
    damaged run-cache files are re-read first. `formats`: only these are assessed (default: all found)."""
    catalog = run_stores.catalog()
    result, healed = catalog.verified_sync()
    for message in healed:
        echo(f"  {message}")
    now = dt.datetime.now(dt.UTC)
    stale, wanted = [], {}
    for fmt in result.formats if formats is None else formats:
        runs = catalog.raw_runs(result.for_format(fmt), now=now, grace_s=run_stores.crash_grace_seconds)
        wanted[fmt] = built_from(runs)
        damaged = damaged_files(instance, data_dir, keys, fmt, echo)
        if damaged or any(stored_fingerprint(instance, key, fmt) != wanted[fmt] for key in keys):
            stale.append(fmt)
    return Assessment(result.formats, stale, wanted)


def stale_formats(
    run_stores: RunStores, instance: dg.DagsterInstance, keys: Sequence[dg.AssetKey], formats: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """(all formats found, formats (of `formats`, default all) whose stored partition is incomplete or
    no longer matches the run stores); `keys` are the format-partitioned assets
    (`targets.format_partitioned_keys`)."""
    found = assess(run_stores, instance, run_stores.data_dir, keys, formats=formats)
    return found.formats, found.stale


@dg.schedule(
    name="stale_formats_schedule",
    cron_schedule=refresh_cron(),
    target=refresh_format_job,
    description="Refreshes every FP8-format partition whose runs no longer match its last materialization.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def stale_formats_schedule(context: dg.ScheduleEvaluationContext, run_stores: RunStores):
    partitioned = format_partitioned_keys(context.repository_def)
    _, stale = stale_formats(run_stores, context.instance, partitioned)
    stale = [fmt for fmt in stale if is_safe_format_name(fmt)]
    if not stale:
        return dg.SkipReason("every format partition matches its runs")
    # A schedule cannot return partition requests; adding keys is idempotent, so register directly.
    register_formats(context.instance, stale)
    create_pools(context.instance)
    tick = context.scheduled_execution_time.isoformat()
    return [
        dg.RunRequest(run_key=f"{fmt}:{tick}", partition_key=fmt, tags={"altgrad/trigger": "stale_formats_schedule"})
        for fmt in stale
    ]

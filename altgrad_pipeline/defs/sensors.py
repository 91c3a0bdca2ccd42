"""Sensors. `finished_runs_sensor`: a newly finished run refreshes exactly the format partition it
changes. `analysis_automation_sensor`: evaluates the automation conditions of the analysis and
report assets (`automation.analysis_automation_condition`).

Each tick scans the local stores cheaply (sizes and mtimes) and asks W&B API sources only for runs
that ended since the last tick; only when something changed (or a running run may have passed the
crash grace period) does it sync the run catalog, which re-reads just the changed runs and caches
them for the ingest run.
Formats whose finished runs changed get one request each, however many runs finished together.
The first tick (no cursor yet: a new `dg dev` after `altgrad-pipeline refresh`, or a reset
sensor) requests only formats whose stored partition is stale, not everything it sees for the first time.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import os

import dagster as dg

from altgrad_pipeline.defs.executor import create_pools
from altgrad_pipeline.defs.ingest import STORE_DIGEST_TAG
from altgrad_pipeline.defs.jobs import REFRESH_JOBS, refresh_analysis_job, refresh_format_job
from altgrad_pipeline.defs.orphaned_runs import fail_orphaned_runs
from altgrad_pipeline.defs.partitions import fp8_format_partitions
from altgrad_pipeline.defs.resources import RunStores
from altgrad_pipeline.defs.schedules import stale_formats
from altgrad_pipeline.defs.targets import format_partitioned_keys, run_store_root_keys
from altgrad_pipeline.ingest.catalog import RunCatalog
from altgrad_pipeline.ingest.finished_runs import WatchCursor, watch_tick

SENSOR_INTERVAL_ENV = "ALTGRAD_SENSOR_INTERVAL_SECONDS"
DEFAULT_SENSOR_INTERVAL_S = 30
AUTOMATION_INTERVAL_ENV = "ALTGRAD_AUTOMATION_INTERVAL_SECONDS"
DEFAULT_AUTOMATION_INTERVAL_S = 30
TRIGGER_TAG = "altgrad/trigger"


def sensor_interval_seconds() -> int:
    return int(os.environ.get(SENSOR_INTERVAL_ENV) or DEFAULT_SENSOR_INTERVAL_S)


@functools.lru_cache(maxsize=8)
def _catalog(run_stores: RunStores) -> RunCatalog:
    """One catalog per configuration for the life of the code server, so its readers keep their
    read positions between ticks: a growing JSONL log is parsed only from where the last tick stopped."""
    return run_stores.catalog()


def _requests(repository: dg.RepositoryDefinition, refresh: dict[str, str], store_digest: str) -> list[dg.RunRequest]:
    """One run per changed format; the run key embeds the digest of its finished runs, so a run that
    finishes again (or changes) gets a new key while a repeated tick is deduplicated. The runs carry
    the digest of the stores this tick synced (`STORE_DIGEST_TAG`)."""
    requests = [
        dg.RunRequest(
            run_key=f"{fmt}:{digest}",
            job_name=refresh_format_job.name,
            partition_key=fmt,
            tags={TRIGGER_TAG: "finished_runs", STORE_DIGEST_TAG: store_digest},
        )
        for fmt, digest in refresh.items()
    ]
    roots = run_store_root_keys(repository)
    if roots and refresh:
        combined = hashlib.sha256(repr(sorted(refresh.items())).encode()).hexdigest()[:16]
        requests.append(
            dg.RunRequest(
                run_key=f"run_stores:{combined}",
                job_name=refresh_analysis_job.name,
                asset_selection=roots,
                tags={TRIGGER_TAG: "finished_runs"},
            )
        )
    return requests


@dg.sensor(
    name="finished_runs_sensor",
    description="Requests the FP8-format partition of every format whose finished runs changed "
    "(new, re-finished, crashed past the grace period, or removed); registers new formats.",
    jobs=list(REFRESH_JOBS),
    minimum_interval_seconds=sensor_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def finished_runs_sensor(context: dg.SensorEvaluationContext, run_stores: RunStores) -> dg.SensorResult:
    # Every tick (3 ms): a backfill launched from the UI then also finds the pool's row in place.
    create_pools(context.instance)
    # Runs whose process died (a killed refresh, a crashed run worker) would hold the run queue.
    for run_id in fail_orphaned_runs(context.instance):
        context.log.warning(f"run {run_id} was left unfinished by a process that is gone: marked failed")
    cursor = WatchCursor.from_json(context.cursor)
    outcome = watch_tick(
        _catalog(run_stores),
        local_roots=run_stores.local_roots(),
        has_remote_sources=any(e.kind != "local" for e in run_stores.store_entries()),
        cursor=cursor,
        now=dt.datetime.now(dt.UTC),
        grace_s=run_stores.crash_grace_seconds,
    )
    for fmt in outcome.rejected_formats:
        context.log.warning(f"format {fmt!r} is not a safe partition key; its runs are not refreshed")
    refresh = outcome.refresh
    if not context.cursor and refresh:
        # What `refresh` or a backfill already built is not news: keep the formats whose stored
        # partition (every asset's fingerprint, its files) no longer matches the stores.
        _, stale = stale_formats(run_stores, context.instance, format_partitioned_keys(context.repository_def), list(refresh))
        refresh = {fmt: digest for fmt, digest in refresh.items() if fmt in stale}
    if not refresh:
        return dg.SensorResult(cursor=outcome.cursor.to_json(), skip_reason="no run finished or changed")
    known = set(context.instance.get_dynamic_partitions(fp8_format_partitions.name))
    new_formats = [fmt for fmt in refresh if fmt not in known]
    context.log.info(f"refreshing formats {sorted(refresh)}; new: {new_formats}")
    return dg.SensorResult(
        run_requests=_requests(context.repository_def, refresh, outcome.cursor.store_digest),
        dynamic_partitions_requests=[fp8_format_partitions.build_add_request(new_formats)] if new_formats else [],
        cursor=outcome.cursor.to_json(),
    )


analysis_automation_sensor = dg.AutomationConditionSensorDefinition(
    name="analysis_automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(os.environ.get(AUTOMATION_INTERVAL_ENV) or DEFAULT_AUTOMATION_INTERVAL_S),
    description="Runs analysis and reports once format partitions they read were refreshed.",
)

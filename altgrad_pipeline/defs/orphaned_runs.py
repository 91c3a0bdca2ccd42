"""Runs whose process is gone: a refresh killed mid-run, a run worker that crashed, a machine that
rebooted. Such a run stays STARTED (or NOT_STARTED) forever and holds the run queue
(`max_concurrent_runs`), so `refresh` and the sensor mark it failed; the next refresh redoes its work.

`refresh` tags every run it executes with its own process (`process_tags`); a run the daemon
launched on a local (SQLite) instance is traced through Dagster's "Started process" engine event.
"""

from __future__ import annotations

import re
import socket

import dagster as dg

from altgrad_pipeline import locking

#: Tags on every run `refresh` executes: the process running it, so a later refresh or sensor tick
#: can tell a run whose process was killed from one still going.
PROCESS_TAGS = ("altgrad/host", "altgrad/pid", "altgrad/pid_started")
_UNFINISHED = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
_STARTED_PROCESS = re.compile(r"^Started process for run \(pid: (\d+)\)")


def process_tags() -> dict[str, str]:
    return {f"altgrad/{name}": value for name, value in locking.this_process().items()}


def _run_process(instance: dg.DagsterInstance, run: dg.DagsterRun) -> tuple[str, int, float | None] | None:
    """(host, pid, start) of the process executing a run: from `refresh`'s tags, or for a run the
    daemon launched on a local (SQLite) instance, from Dagster's "Started process" engine event."""
    tags = run.tags
    if all(tag in tags for tag in PROCESS_TAGS):
        return tags["altgrad/host"], int(tags["altgrad/pid"]), float(tags["altgrad/pid_started"])
    if "sqlite" not in type(instance.run_storage).__name__.lower():
        return None  # a shared instance: the run may belong to another machine
    records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=50).records
    for record in records:
        if match := _STARTED_PROCESS.match(record.event_log_entry.user_message or ""):
            started = instance.get_run_record_by_id(run.run_id)
            start_time = started.start_time if started else None
            return socket.gethostname(), int(match.group(1)), start_time
    return None


def fail_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed every unfinished run whose process is gone (killed, or its machine rebooted), so
    it neither shows as running forever nor holds the run queue (`max_concurrent_runs`). Returns the
    ids of the runs marked."""
    marked = []
    for run in instance.get_runs(dg.RunsFilter(statuses=_UNFINISHED)):
        process = _run_process(instance, run)
        if process is None or locking.is_alive(*process) is not False:
            continue
        host, pid, _ = process
        instance.report_run_failed(run, f"The process executing this run (pid {pid} on {host}) is gone: it was "
                                        "killed or crashed. Marked failed so the next refresh redoes its work.")  # fmt: skip
        marked.append(run.run_id)
    return marked

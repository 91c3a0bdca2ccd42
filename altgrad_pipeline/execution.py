"""How the steps of a Dagster run execute, chosen once by ALTGRAD_EXECUTOR:

- `in_process` (default): every step in the run's own process. A Dagster run already costs 4–5 CPU-s
  of process start; a step subprocess costs as much again, so on one machine this is the fastest.
- `multiprocess`: steps in forkserver children that preload the project once, so a step starts
  by forking a warm process instead of importing Dagster, Polars and wandb again.
- `celery`: steps are Celery tasks on `altgrad-pipeline worker` processes, on any machine that shares
  the Dagster instance (Postgres) and the data dir (object store); broker and result backend are
  ALTGRAD_CELERY_BROKER / ALTGRAD_CELERY_BACKEND. Needs the `scale` extra.

Out-of-process executors need a job they can rebuild from its code: `refresh_job` is that job
for `altgrad-pipeline refresh` (the code location's own jobs serve the daemon and the UI).
"""

from __future__ import annotations

import re
import socket
import warnings
from collections.abc import Iterable

import dagster as dg
import sqlalchemy.exc
from dagster._core.definitions.reconstruct import ReconstructableJob

from altgrad_pipeline import locking, settings

#: Imported once by the forkserver, so every step process starts with the project loaded.
PRELOAD_MODULES = ["altgrad_pipeline.definitions"]
MULTIPROCESS_CONFIG = {"start_method": {"forkserver": {"preload_modules": PRELOAD_MODULES}}}


def executor_for(choice: settings.ExecutorChoice) -> dg.ExecutorDefinition:
    if choice.name == "multiprocess":
        return dg.multiprocess_executor.configured(MULTIPROCESS_CONFIG, name="multiprocess")
    if choice.name == "celery":
        try:
            from celery.exceptions import DuplicateTaskNameWarning
            from dagster_celery import celery_executor
        except ImportError as exc:
            raise ImportError(
                f"{settings.EXECUTOR_ENV}=celery needs the scale extra: pip install 'altgrad-pipeline[scale]'"
            ) from exc
        # dagster-celery 0.29 registers its one task again for every step it submits; Celery 5.7
        # warns each time, although every registration is the same `execute_plan`.
        warnings.filterwarnings("ignore", message="Task name 'execute_plan'", category=DuplicateTaskNameWarning)
        return celery_executor.configured({"broker": choice.celery_broker, "backend": choice.celery_backend}, name="celery")
    return dg.in_process_executor


def executor_from_env() -> dg.ExecutorDefinition:
    return executor_for(settings.executor_choice())


REFRESH_JOB_NAME = "refresh"


def refresh_job(runs: str, data_dir: str) -> dg.JobDefinition:
    """Every asset of the graph against these run stores and this data dir, with the configured
    executor; a step process or Celery worker rebuilds it from these two arguments."""
    from altgrad_pipeline.definitions import build_defs

    job = dg.define_asset_job(REFRESH_JOB_NAME, selection=dg.AssetSelection.all(), description="altgrad-pipeline refresh")
    return dg.Definitions.merge(build_defs(runs=runs, data_dir=data_dir), dg.Definitions(jobs=[job])).resolve_job_def(REFRESH_JOB_NAME)


def reconstructable_refresh_job(runs: str, data_dir: str) -> ReconstructableJob:
    return dg.build_reconstructable_job(
        "altgrad_pipeline.execution", "refresh_job", reconstructable_kwargs={"runs": runs, "data_dir": data_dir}
    )


def runs_in_parallel(choice: settings.ExecutorChoice) -> bool:
    """Celery steps run on other processes, so `refresh` keeps several partition runs in flight to
    give every worker something to do; in-process and multiprocess runs share this machine's cores
    and run one after another."""
    return choice.name == "celery"


#: The pools the project's ops declare.
PROJECT_POOLS = (settings.WANDB_API_POOL,)


def create_pools(instance: dg.DagsterInstance, pools: Iterable[str] = PROJECT_POOLS) -> None:
    """Give each pool its default-limit row before runs start. Dagster creates it when a step first
    claims the pool, and on PostgreSQL steps of runs starting together race to insert it: the loser
    fails with a UniqueViolation or an aborted transaction (dagster 1.13.27). Here a lost race is
    harmless: the row exists either way."""
    storage = instance.event_log_storage
    if instance.global_op_concurrency_default_limit is None or not storage.supports_global_concurrency_limits:
        return
    for pool in set(pools) - set(storage.get_concurrency_keys()):
        try:
            storage.initialize_concurrency_limit_to_default(pool)
        except sqlalchemy.exc.DBAPIError:
            if pool not in storage.get_concurrency_keys():
                raise


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

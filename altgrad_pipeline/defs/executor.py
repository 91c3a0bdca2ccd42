"""How the steps of a Dagster run execute, chosen once by ALTGRAD_EXECUTOR:

- `in_process` (default): every step in the run's own process. A Dagster run already costs 4–5 CPU-s
  of process start; a step subprocess costs as much again, so on one machine this is the fastest.
- `multiprocess`: steps in forkserver children that preload the project once, so a step starts
  by forking a warm process instead of importing Dagster, Polars and wandb again.
- `celery`: steps are Celery tasks on `altgrad-pipeline worker` processes, on any machine that shares
  the Dagster instance (Postgres) and the data dir (object store); broker and result backend are
  ALTGRAD_CELERY_BROKER / ALTGRAD_CELERY_BACKEND. Needs the `scale` extra.

Out-of-process executors need a job they can rebuild from its code: `execution.refresh_job` is
that job for `altgrad-pipeline refresh` (the code location's own jobs serve the daemon and the UI).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import dagster as dg
import sqlalchemy.exc

from altgrad_pipeline import settings

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

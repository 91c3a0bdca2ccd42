"""Entry point for the runs of `altgrad-pipeline refresh`: `refresh_job` is one of the code
location's refresh jobs (`defs.jobs`), rebuilt by a step process or Celery worker from its code
(`reconstructable_refresh_job`) over the project's Definitions (`definitions.build_defs`), and
`execute` runs it as a run of the code location, as if launched from the UI. The executors
themselves are chosen in `defs.executor` (ALTGRAD_EXECUTOR)."""

from __future__ import annotations

import sys
from collections.abc import Mapping

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
from dagster._core.execution.api import execute_run
from dagster._core.remote_origin import ManagedGrpcPythonEnvCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from altgrad_pipeline import settings
from altgrad_pipeline.definitions import CODE_LOCATION_NAME, build_defs


def refresh_job(runs: str, data_dir: str, job_name: str) -> dg.JobDefinition:
    """The code location's job `job_name` against these run stores and this data dir, so a refresh
    run is a run of a job the UI knows; a step process or Celery worker rebuilds it from these arguments."""
    return build_defs(runs=runs, data_dir=data_dir).resolve_job_def(job_name)


def reconstructable_refresh_job(runs: str, data_dir: str, job_name: str) -> ReconstructableJob:
    return dg.build_reconstructable_job(
        "altgrad_pipeline.execution",
        "refresh_job",
        reconstructable_kwargs={"runs": runs, "data_dir": data_dir, "job_name": job_name},
    )


def code_location_origin(job_name: str) -> RemoteJobOrigin:
    """The job as the code location serves it (workspace.yaml): the UI ties a run to its job, its
    "View job" link and the Overview timeline only through this origin, by location and job name."""
    location = ManagedGrpcPythonEnvCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name="altgrad_pipeline.definitions"),
        location_name=CODE_LOCATION_NAME,
    )
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_name)


def execute(
    job: ReconstructableJob, instance: dg.DagsterInstance, *, tags: Mapping[str, str], run_config: Mapping[str, object]
) -> dg.JobExecutionResult:
    """`dg.execute_job`, but the run carries the code location's origin (`code_location_origin`):
    `execute_job` records none, and the UI then cannot find the job of a refresh run."""
    definition = job.get_definition()
    run = instance.create_run_for_job(
        definition,
        run_config=run_config,
        tags=tags,
        job_code_origin=job.get_python_origin(),
        remote_job_origin=code_location_origin(definition.name),
    )
    return execute_run(job, run, instance)


def runs_in_parallel(choice: settings.ExecutorChoice) -> bool:
    """Celery steps run on other processes, so `refresh` keeps several partition runs in flight to
    give every worker something to do; in-process and multiprocess runs share this machine's cores
    and run one after another."""
    return choice.name == "celery"

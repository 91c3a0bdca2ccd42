"""Entry point for out-of-process runs of `altgrad-pipeline refresh`: `refresh_job` is the job a
step process or Celery worker rebuilds from its code (`reconstructable_refresh_job`), over the
project's Definitions (`definitions.build_defs`); the executors themselves are chosen in
`defs.executor` (ALTGRAD_EXECUTOR)."""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableJob

from altgrad_pipeline import settings
from altgrad_pipeline.definitions import build_defs

REFRESH_JOB_NAME = "refresh"


def refresh_job(runs: str, data_dir: str) -> dg.JobDefinition:
    """Every asset of the graph against these run stores and this data dir, with the configured
    executor; a step process or Celery worker rebuilds it from these two arguments."""
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

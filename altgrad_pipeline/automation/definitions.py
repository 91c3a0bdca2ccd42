"""`automation_defs()`: the sensors, schedule and job, merged by the project's Definitions."""

from __future__ import annotations

import os

import dagster as dg

from altgrad_pipeline.automation.jobs import full_rebuild_job
from altgrad_pipeline.automation.runs_sensor import finished_runs_sensor
from altgrad_pipeline.automation.schedules import stale_formats_schedule

AUTOMATION_INTERVAL_ENV = "ALTGRAD_AUTOMATION_INTERVAL_SECONDS"
DEFAULT_AUTOMATION_INTERVAL_S = 30


def automation_defs() -> dg.Definitions:
    """Sensors, schedule and job; merge into the project's Definitions."""
    analysis_sensor = dg.AutomationConditionSensorDefinition(
        name="analysis_automation_sensor",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=int(os.environ.get(AUTOMATION_INTERVAL_ENV) or DEFAULT_AUTOMATION_INTERVAL_S),
        description="Runs analysis and reports once format partitions they read were refreshed.",
    )
    return dg.Definitions(
        sensors=[finished_runs_sensor, analysis_sensor],
        schedules=[stale_formats_schedule],
        jobs=[full_rebuild_job],
    )

"""When the unpartitioned analysis and report assets refresh on their own.

Plain `eager()` on an asset downstream of dynamic partitions never fires while any upstream
partition is missing (measured on Dagster 1.13): a format registered but not yet ingested would
freeze every report. Dropping the `any_deps_missing` guard lets them refresh from what exists.
"""

import dagster as dg


def analysis_automation_condition() -> dg.AutomationCondition:
    return dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())

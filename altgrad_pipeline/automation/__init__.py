"""Automation: a new finished run refreshes exactly the format partition it changes.

- `finished_runs_sensor` requests the changed formats' partitions of every format-partitioned
  asset (and registers new formats).
- Analysis and reports follow by Declarative Automation (`analysis_automation_condition`), through
  `analysis_automation_sensor`. Why not have the sensor request them: the analysis fans in over all
  formats, and Dagster's automation already waits for in-flight partition runs and fires once per
  batch; a sensor would have to re-implement that bookkeeping.
- `stale_formats_schedule` (daily) catches whatever the sensor missed; `full_rebuild` rebuilds all.

`definitions.automation_defs()` bundles them; `conditions.analysis_automation_condition()` goes on
the analysis and report assets. `finished_runs` is plain Python (no Dagster); the store digest it
compares lives in `ingest.listing`.
"""

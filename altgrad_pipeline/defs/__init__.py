"""Every Dagster object of the project, and nothing else: partitions, resources, the IO manager,
UI metadata helpers, automation conditions, one module per asset group (`ingest`, `analysis`,
`media`, `reports`), checks, sensors, schedules and jobs. `altgrad_pipeline.definitions` loads
them; the pure rooms (`ingest/`, `analysis/`, `reports/`, `study.py`, ...) never import from here.

Automation: a new finished run refreshes exactly the format partition it changes.

- `sensors.finished_runs_sensor` requests the changed formats' partitions of every
  format-partitioned asset (and registers new formats); its tick logic is plain Python
  (`ingest.finished_runs`).
- Analysis and reports follow by Declarative Automation (`automation.analysis_automation_condition`),
  through `sensors.analysis_automation_sensor`. Why not have the sensor request them: the analysis
  fans in over all formats, and Dagster's automation already waits for in-flight partition runs
  and fires once per batch; a sensor would have to re-implement that bookkeeping.
- `schedules.stale_formats_schedule` (daily) catches whatever the sensor missed;
  `jobs` holds the jobs every run belongs to (`refresh_format`, `refresh_analysis`, `full_rebuild`).
"""

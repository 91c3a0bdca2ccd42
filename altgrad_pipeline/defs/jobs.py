"""The jobs every run of the project belongs to, so the UI ties each run to a job it defines
("View job", the Overview timeline, an asset's "materialized in" link):

- `refresh_format`: the FP8-format-partitioned assets of one format; `altgrad-pipeline refresh`, the
  finished-runs sensor and the stale-formats schedule launch it, one run per format partition.
- `refresh_analysis`: every unpartitioned asset (analysis, reports, `ingest_issues`); `refresh` runs it
  after the partitions, the sensor runs it for `ingest_issues` (automation runs the rest).
- `full_rebuild`: every asset. Launch it from the UI as a backfill over all partitions: Dagster runs
  each format's partition, then the analysis and reports once.
"""

from __future__ import annotations

import dagster as dg

refresh_format_job = dg.define_asset_job(
    name="refresh_format",
    selection=dg.AssetSelection.from_string('partitions:"dynamic"'),
    description="Ingest one FP8-format partition: its runs, histories, media, layer metrics and summaries.",
)

refresh_analysis_job = dg.define_asset_job(
    name="refresh_analysis",
    selection=dg.AssetSelection.from_string('partitions:"none"'),
    description="Analysis and reports over every format partition, and `ingest_issues`.",
)

full_rebuild_job = dg.define_asset_job(
    name="full_rebuild",
    selection=dg.AssetSelection.all(),
    description="Rebuild everything: launch as a backfill of all FP8-format partitions "
    "(ingest per format, then analysis and reports once).",
    tags={"altgrad/trigger": "full_rebuild"},
)

REFRESH_JOBS = (refresh_format_job, refresh_analysis_job)

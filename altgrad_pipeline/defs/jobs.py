"""`full_rebuild`: every asset, every format partition. Launch it from the UI as a backfill over
all partitions: Dagster runs each format's partition, then the analysis and reports once."""

from __future__ import annotations

import dagster as dg

full_rebuild_job = dg.define_asset_job(
    name="full_rebuild",
    selection=dg.AssetSelection.all(),
    description="Rebuild everything: launch as a backfill of all FP8-format partitions "
    "(ingest per format, then analysis and reports once).",
    tags={"altgrad/trigger": "full_rebuild"},
)

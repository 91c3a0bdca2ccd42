"""One partition per FP8 format. Dynamic, so a new format (E2M5, say) becomes a new partition
with no code change: the refresh command and the sensor register the formats they find."""

import dagster as dg
import polars as pl
import sqlalchemy.exc

from altgrad_pipeline.analysis.layers import LAYER_METRICS_SCHEMA
from altgrad_pipeline.analysis.summaries import RUN_SUMMARIES_SCHEMA
from altgrad_pipeline.ingest.media.tables import MEDIA_TABLES_SCHEMA
from altgrad_pipeline.ingest.media.values import HISTOGRAMS_SCHEMA, RUN_MEDIA_SCHEMA
from altgrad_pipeline.ingest.model import HISTORY_SCHEMA, ISSUE_SCHEMA
from altgrad_pipeline.ingest.tables import RAW_RUNS_SCHEMA

fp8_format_partitions = dg.DynamicPartitionsDefinition(name="fp8_format")

#: The columns of each format-partitioned asset: what a downstream asset loads while no format
#: partition is built (an empty store), so it gets an empty table it can query rather than None.
PARTITIONED_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "raw_runs": RAW_RUNS_SCHEMA,
    "run_histories": HISTORY_SCHEMA,
    "layer_metrics": LAYER_METRICS_SCHEMA,
    "run_media": RUN_MEDIA_SCHEMA,
    "media_tables": MEDIA_TABLES_SCHEMA,
    "histograms": HISTOGRAMS_SCHEMA,
    "media_issues": ISSUE_SCHEMA,
    "run_summaries": RUN_SUMMARIES_SCHEMA,
}


def register_formats(instance: dg.DagsterInstance, formats: list[str]) -> None:
    """Add format partitions, tolerating another process adding the same ones at the same moment
    (the sensor, a second refresh): Dagster checks, then inserts, and the loser of that race gets a
    UNIQUE-constraint error although the partitions it wanted now exist."""
    missing = [f for f in formats if not instance.has_dynamic_partition(fp8_format_partitions.name, f)]
    if not missing:
        return
    try:
        instance.add_dynamic_partitions(fp8_format_partitions.name, missing)
    except sqlalchemy.exc.IntegrityError:
        still = [f for f in missing if not instance.has_dynamic_partition(fp8_format_partitions.name, f)]
        instance.add_dynamic_partitions(fp8_format_partitions.name, still)

"""One partition per FP8 format. Dynamic, so a new format (E2M5, say) becomes a new partition
with no code change: the refresh command and the sensor register the formats they find."""

import dagster as dg
import polars as pl

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

"""Ingest assets: `raw_runs` and `run_histories` per FP8 format partition, `ingest_issues`, and
`failure_reports` (the FormatExperimentRunner reports beside the runs, parsed).

Thin wiring: the catalog (pure Python + Polars) does the reading and caching; these functions pick
the partition's runs and describe the result for the UI.
"""


import dataclasses
import datetime as dt

import dagster as dg
import polars as pl

from altgrad_pipeline.defs.automation import analysis_automation_condition
from altgrad_pipeline.defs.partitions import fp8_format_partitions
from altgrad_pipeline.defs.resources import RunStores
from altgrad_pipeline.defs.ui import counts, preview, table_schema
from altgrad_pipeline.ingest import failure_reports as reports
from altgrad_pipeline.ingest.catalog import CACHE_VERSION, RunCatalog
from altgrad_pipeline.ingest.model import HISTORY_SCHEMA, ISSUE_SCHEMA
from altgrad_pipeline.ingest.sources import no_runs_message
from altgrad_pipeline.ingest.tables import RAW_RUNS_DESCRIPTIONS, RAW_RUNS_SCHEMA
from altgrad_pipeline.partition_tables import CATALOG_FINGERPRINT, built_from, recipe
from altgrad_pipeline.settings import WANDB_API_POOL

INGEST_GROUP = "ingest"
#: Histories are the catalog's cached ones: a new catalog format means rebuilding the partitions.
HISTORY_RECIPE = recipe(catalog_cache=CACHE_VERSION)
#: Run tag set by the sensor: the store digest its tick synced, so the run need not digest again.
STORE_DIGEST_TAG = "altgrad/store_digest"

HISTORY_DESCRIPTIONS = {
    "run_id": "Run the value belongs to",
    "step": "Step as logged (_step; falls back to the history record's step)",
    "key": "Metric name exactly as logged; '/' is part of the name",
    "value": "Value as logged; NaN and ±inf kept (they are the evidence of failure); null for a string",
    "text": "A string value exactly as logged (even one that reads as a number, such as \"7998.707\"); null for a number",
    "runtime": "Seconds since the run started (_runtime) when the row was logged",
    "timestamp": "Unix time (_timestamp) when the row was logged",
}
ISSUE_DESCRIPTIONS = {
    "kind": "What went wrong (crc_mismatch, truncated_tail, malformed_line, duplicate_step, …)",
    "position": "Where in the file: byte offset, block, line or step",
    "lost": "What data could not be used because of it",
}


@dg.multi_asset(
    outs={
        "raw_runs": dg.AssetOut(
            description="One row per run of this FP8 format: identity, tracker state, derived format and "
            "optimizer, config (JSON and flattened `config.*` columns), summary, step extent.",
            group_name=INGEST_GROUP,
            metadata={"dagster/column_schema": table_schema(RAW_RUNS_SCHEMA, RAW_RUNS_DESCRIPTIONS)},
            kinds={"polars", "parquet"},
        ),
        "run_histories": dg.AssetOut(
            description="Every logged history value of this format's runs, full resolution, long form: "
            "one row per (run_id, step, key). Use `pivot_history` to widen chosen keys.",
            group_name=INGEST_GROUP,
            metadata={"dagster/column_schema": table_schema(HISTORY_SCHEMA, HISTORY_DESCRIPTIONS)},
            kinds={"polars", "parquet"},
        ),
    },
    partitions_def=fp8_format_partitions,
    pool=WANDB_API_POOL,
)
def ingest_format(context: dg.AssetExecutionContext, run_stores: RunStores):
    """Sync the run catalog (re-reading only changed runs) and emit this format's runs."""
    fmt = context.partition_key
    catalog = run_stores.catalog()
    result, healed = catalog.verified_sync(
        lambda synced: synced.for_format(fmt), progress=context.log.info, seen_digest=context.run.tags.get(STORE_DIGEST_TAG)
    )
    for message in healed:
        context.log.warning(message)
    entries = result.for_format(fmt)
    runs = catalog.raw_runs(entries, now=dt.datetime.now(dt.UTC), grace_s=run_stores.crash_grace_seconds)
    # Each cached history is sorted by (step, key): in run_id order a partition needs no sort, and
    # only changed runs are read from the catalog; the others' rows come from the last build.
    by_run = {e.run_id: e for e in entries}
    built = run_stores.rebuild_partition(
        context,
        "run_histories",
        fmt,
        {e.run_id: e.version for e in entries},
        HISTORY_RECIPE,
        lambda run_ids: catalog.histories([by_run[run] for run in run_ids]),
        streamed=True,
    )
    table = built.table
    if built.computed and not built.reused:  # every run's rows are its cached file's: copied, not re-encoded
        table = dataclasses.replace(table, copied_from=catalog.history_files([by_run[run] for run in built.computed]))
    histories = table.frame.lazy()
    n_values, n_nonfinite = histories.select(pl.len(), (~pl.col("value").is_finite()).sum()).collect().row(0)
    n_keys = catalog.distinct_history_keys(entries)  # the partition's rows are these runs' cached histories
    context.log.info(f"{fmt}: {runs.height} runs, {n_values} values; re-read {len(result.reread)} changed runs")
    yield dg.Output(
        runs,
        output_name="raw_runs",
        metadata={
            "dagster/row_count": runs.height,
            "runs_by_state": counts(runs, "state"),
            "runs_by_optimizer": counts(runs, "optimizer"),
            "runs_reread": len(result.reread),
            CATALOG_FINGERPRINT: built_from(runs),
            "preview": preview(runs, ["run_id", "name", "state", "optimizer", "seed", "last_step", "n_values", "source"]),
        },
    )
    yield dg.Output(
        table,
        output_name="run_histories",
        metadata={
            "dagster/row_count": n_values,
            "n_runs": runs.height,
            "runs_rebuilt": len(built.computed),
            CATALOG_FINGERPRINT: built_from(runs),
            "n_keys": n_keys,
            "n_nonfinite": int(n_nonfinite or 0),
            "preview": preview(histories.head(8).collect(), rows=8),
        },
    )


@dg.asset(
    group_name=INGEST_GROUP,
    description="Every file, chunk, line or record that could not be used, with location, reason and "
    "what was lost. Nothing is dropped silently. With no runs at all, `no_runs` says where was looked and for what.",
    metadata={"dagster/column_schema": table_schema(ISSUE_SCHEMA, ISSUE_DESCRIPTIONS)},
    kinds={"polars", "parquet"},
)
def ingest_issues(context: dg.AssetExecutionContext, run_stores: RunStores) -> dg.MaterializeResult:
    catalog = run_stores.catalog()
    result, healed = catalog.verified_sync(progress=context.log.info)
    for message in healed:
        context.log.warning(message)
    issues = RunCatalog.issues(result).sort("location", "position")
    no_runs = {} if result.entries else {"no_runs": dg.MetadataValue.md(no_runs_message([e.label for e in run_stores.store_entries()]))}
    return dg.MaterializeResult(
        value=issues,
        metadata={
            "dagster/row_count": issues.height,
            "n_runs": len(result.entries),
            **no_runs,
            "issues_by_kind": counts(issues, "kind"),
            "preview": preview(issues, ["kind", "location", "position", "reason", "lost"]),
        },
    )


@dg.asset(
    group_name=INGEST_GROUP,
    ins={"raw_runs": dg.AssetIn()},
    description=(reports.__doc__ or "").strip(),
    metadata={"dagster/column_schema": table_schema(reports.FAILURE_REPORTS_SCHEMA, reports.FAILURE_REPORTS_DESCRIPTIONS)},
    automation_condition=analysis_automation_condition(),
    kinds={"polars", "parquet"},
)
def failure_reports(raw_runs: pl.LazyFrame, run_stores: RunStores) -> dg.MaterializeResult:
    """FormatExperimentRunner reports beside the runs: `<store root>/<checkpoint_dir>/failure_reports/`."""
    if "config.checkpoint_dir" not in raw_runs.collect_schema().names():
        frame = pl.DataFrame(schema=reports.FAILURE_REPORTS_SCHEMA)
    else:
        checkpoint_dirs = raw_runs.select("config.checkpoint_dir").unique().collect().to_series().to_list()
        frame = reports.read_failure_reports(run_stores.local_roots(), checkpoint_dirs)
    return dg.MaterializeResult(
        value=frame,
        metadata={
            "dagster/row_count": frame.height,
            "n_unparsed": int(frame.filter(pl.col("parse_error").is_not_null()).height),
            "preview": preview(frame, ["checkpoint_dir", "format", "collapse_step", "collapse_reason", "final_loss", "n_reports", "parse_error"]),
        },
    )

"""Media assets: `run_media`, `media_tables`, `histograms`, `media_issues` (one multi-asset per FP8
format partition, built from the runs the catalog lists). Thin wiring around `ingest.media`."""

import functools
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl

from altgrad_pipeline import atomic, settings
from altgrad_pipeline.defs.ingest import ISSUE_DESCRIPTIONS
from altgrad_pipeline.defs.partitions import fp8_format_partitions
from altgrad_pipeline.defs.resources import RunStores
from altgrad_pipeline.defs.ui import counts, preview, table_schema
from altgrad_pipeline.ingest.catalog import CatalogEntry
from altgrad_pipeline.ingest.media import store, tables, values
from altgrad_pipeline.ingest.model import ISSUE_SCHEMA, issues_frame
from altgrad_pipeline.ingest.wandb import media_api as wandb_media_api
from altgrad_pipeline.partition_tables import CATALOG_FINGERPRINT, built_from, recipe, run_versions

MEDIA_GROUP = "media"
#: Where each table's rows go: `<data dir>/assets/media_tables/<partition>/<hash>.parquet`.
TABLES_FOLDER = Path("assets") / "media_tables"


#: The media tables are rebuilt run by run (`partition_tables`); this decides when to start afresh.
MEDIA_RECIPE = recipe(values, tables, store, wandb_media_api)


def _write_tables(found: list[tables.TableRows], folder: Path) -> pl.DataFrame:
    """Store each table's rows as one Parquet file; the index of what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for table in found:
        path = folder / f"{table.stem}.parquet"
        with atomic.atomic_path(path) as tmp:
            table.frame.write_parquet(tmp)
        rows.append(tables.table_index_row(table, str(path)))
    return pl.DataFrame(rows, schema=tables.MEDIA_TABLES_SCHEMA)


def _remove_unlisted_tables(folder: Path, table_index: pl.DataFrame) -> None:
    """Table files of runs that left the partition, or of run versions since replaced."""
    listed = {Path(file).name for file in table_index.get_column("table_file")}
    for stale in folder.glob("*.parquet"):
        if stale.name not in listed:
            stale.unlink(missing_ok=True)


@dataclass(frozen=True)
class MediaOfRuns:
    """The four media tables of some runs, each sorted by run_id first (see `partition_tables`)."""

    run_media: pl.DataFrame
    media_tables: pl.DataFrame
    histograms: pl.DataFrame
    media_issues: pl.DataFrame


def _read_media(entries: list[CatalogEntry], cache_dir: Path, api_runs: store.ApiRuns, tables_folder: Path) -> MediaOfRuns:
    media, fetch_issues = store.media_values(entries, cache_dir, api_runs)
    decoded = values.decode_media(media)
    read = store.read_tables(decoded.run_media, entries, cache_dir, api_runs)
    return MediaOfRuns(
        run_media=decoded.run_media,
        media_tables=_write_tables(read.tables, tables_folder).sort("run_id", maintain_order=True),
        histograms=decoded.histograms,
        media_issues=issues_frame(fetch_issues + decoded.issues + read.issues).sort("run_id", maintain_order=True),
    )


@dg.multi_asset(
    outs={
        "run_media": dg.AssetOut(
            description=(values.__doc__ or "").strip(),
            group_name=MEDIA_GROUP,
            metadata={"dagster/column_schema": table_schema(values.RUN_MEDIA_SCHEMA, values.RUN_MEDIA_DESCRIPTIONS)},
            kinds={"polars", "parquet"},
        ),
        "media_tables": dg.AssetOut(
            description="One row per logged W&B Table; its rows are in `table_file`.\n\n" + (tables.__doc__ or "").strip(),
            group_name=MEDIA_GROUP,
            metadata={"dagster/column_schema": table_schema(tables.MEDIA_TABLES_SCHEMA, tables.MEDIA_TABLES_DESCRIPTIONS)},
            kinds={"polars", "parquet"},
        ),
        "histograms": dg.AssetOut(
            description="Every logged W&B histogram: one row per (run_id, step, key) with bin edges and counts.",
            group_name=MEDIA_GROUP,
            metadata={"dagster/column_schema": table_schema(values.HISTOGRAMS_SCHEMA, values.HISTOGRAM_DESCRIPTIONS)},
            kinds={"polars", "parquet"},
        ),
        "media_issues": dg.AssetOut(
            description="Media that could not be used (missing, truncated or invalid table files, tables whose rows "
            "disagree with their columns, histograms whose bins and counts do not match), with what was lost.",
            group_name=MEDIA_GROUP,
            metadata={"dagster/column_schema": table_schema(ISSUE_SCHEMA, ISSUE_DESCRIPTIONS)},
            kinds={"polars", "parquet"},
        ),
    },
    ins={"raw_runs": dg.AssetIn()},
    partitions_def=fp8_format_partitions,
)
def media_format(context: dg.AssetExecutionContext, raw_runs: pl.DataFrame, run_stores: RunStores):
    """Read the media values of this format's runs (cached per run version), then their tables
    (local runs' files, API runs' artifacts)."""
    fmt = context.partition_key
    catalog = run_stores.catalog()
    by_run = {entry.run_id: entry for entry in catalog.entries_of(raw_runs)}
    api_runs = store.ApiRuns(catalog.sources)
    tables_folder = settings.local_state_dir(run_stores.data_dir) / TABLES_FOLDER / fmt

    @functools.cache
    def media_of(run_ids: tuple[str, ...]) -> MediaOfRuns:  # one read serves all four tables
        return _read_media([by_run[run] for run in run_ids], run_stores.cache_dir, api_runs, tables_folder)

    versions = {run: version for run, version in run_versions(raw_runs).items() if run in by_run}
    built = {
        name: run_stores.rebuild_partition(context, name, fmt, versions, MEDIA_RECIPE, lambda run_ids, name=name: getattr(media_of(tuple(run_ids)), name))
        for name in ("run_media", "media_tables", "histograms", "media_issues")
    }  # fmt: skip
    run_media, table_index, histograms, issues = (built[name].table.frame for name in built)
    _remove_unlisted_tables(tables_folder, table_index)
    store.remove_superseded(catalog.live_versions(), run_stores.cache_dir)
    context.log.info(f"{fmt}: {run_media.height} media values, {table_index.height} tables, {histograms.height} histograms, "
                     f"{issues.height} issues; read {len(built['run_media'].computed)} new or changed runs")  # fmt: skip
    fingerprint = {CATALOG_FINGERPRINT: built_from(raw_runs)}
    yield dg.Output(built["run_media"].table, output_name="run_media", metadata={**fingerprint,
        "dagster/row_count": run_media.height, "values_by_media_type": counts(run_media, "media_type"),
        "preview": preview(run_media, ["run_id", "step", "key", "media_type", "path", "nrows", "ncols"])})  # fmt: skip
    yield dg.Output(built["media_tables"].table, output_name="media_tables", metadata={**fingerprint,
        "dagster/row_count": table_index.height, "preview": preview(table_index, ["run_id", "step", "key", "nrows", "ncols", "columns"])})  # fmt: skip
    yield dg.Output(built["histograms"].table, output_name="histograms", metadata={**fingerprint,
        "dagster/row_count": histograms.height, "n_keys": histograms["key"].n_unique()})  # fmt: skip
    yield dg.Output(built["media_issues"].table, output_name="media_issues", metadata={**fingerprint,
        "dagster/row_count": issues.height, "issues_by_kind": counts(issues, "kind"),
        "preview": preview(issues, ["kind", "location", "position", "reason", "lost"])})  # fmt: skip

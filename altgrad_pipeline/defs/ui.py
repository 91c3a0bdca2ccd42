"""What the Dagster UI shows for an asset: column schemas and small Markdown previews.
Kept small on purpose: every metadata value is stored in the instance's event log."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

import dagster as dg
import polars as pl

from altgrad_pipeline.analysis.columns import SHARED
from altgrad_pipeline.markdown import markdown_table


def column_description(name: str, descriptions: Mapping[str, str]) -> str | None:
    """The table's own entry, else the shared one, else the table's first glob (`report_*`) matching."""
    if name in descriptions:
        return descriptions[name]
    if name in SHARED:
        return SHARED[name]
    return next((text for pattern, text in descriptions.items() if fnmatch.fnmatchcase(name, pattern)), None)


def table_schema(schema: Mapping[str, pl.DataType], descriptions: Mapping[str, str]) -> dg.TableSchema:
    """The Columns panel of an asset: every column with its type and description."""
    return dg.TableSchema(
        columns=[dg.TableColumn(name, str(dtype), description=column_description(name, descriptions)) for name, dtype in schema.items()]
    )


def preview(frame: pl.DataFrame, columns: Sequence[str] | None = None, *, rows: int = 10) -> dg.MetadataValue:
    shown = frame.select([c for c in (columns or frame.columns) if c in frame.columns])
    return dg.MetadataValue.md(markdown_table(shown, max_rows=rows))


def counts(frame: pl.DataFrame | pl.LazyFrame, column: str) -> dg.MetadataValue:
    """`{value: count}` of one column, e.g. runs per state, as JSON metadata (a lazy frame is
    counted without loading it)."""
    lazy = frame.lazy()
    if column not in lazy.collect_schema().names():
        return dg.MetadataValue.json({})
    tally = lazy.group_by(column).len().sort(column).collect()
    return dg.MetadataValue.json({str(k): int(n) for k, n in tally.iter_rows()})

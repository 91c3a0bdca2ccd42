"""What the Dagster UI shows for an asset: column schemas and small Markdown previews.
Kept small on purpose: every metadata value is stored in the instance's event log."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg
import polars as pl

from altgrad_pipeline.markdown import markdown_table


def table_schema(schema: Mapping[str, pl.DataType], descriptions: Mapping[str, str] | None = None) -> dg.TableSchema:
    descriptions = descriptions or {}
    return dg.TableSchema(
        columns=[dg.TableColumn(name, str(dtype), description=descriptions.get(name)) for name, dtype in schema.items()]
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

"""Attention weights found in W&B Tables, in one long shape for the attention figures.

Two table shapes are recognised (names configurable through `AttentionShape`):

- matrix: numeric columns `q0, q1, …, qN` (one per query position); each row is one key
  position, so the cell in row i, column `qj` is the weight of query j on key i. With a `head`
  column the rows are split per head (row order within a head gives the key position); without
  one the whole table is one head, "0".
- long: columns `head`, `query`, `key`, `weight`, one row per weight.

An optional `layer` column names the layer; without it the layer is the table's logged key
(e.g. `attn/layer0`). Tables of any other shape are not attention and are left alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from altgrad_pipeline.ingest.media.tables import TABLE_COLUMN_PREFIX, TableRows

ATTENTION_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "step": pl.Int64(),
    "table_key": pl.String(),
    "layer": pl.String(),
    "head": pl.String(),
    "query": pl.Int64(),
    "key_position": pl.Int64(),
    "weight": pl.Float64(),
}


@dataclass(frozen=True)
class AttentionShape:
    """Column names (without the `col.` prefix) that make a table an attention table."""

    matrix_column: str = r"^q(\d+)$"
    head_column: str = "head"
    layer_column: str = "layer"
    query_column: str = "query"
    key_column: str = "key"
    weight_column: str = "weight"


def _col(name: str) -> str:
    return TABLE_COLUMN_PREFIX + name


def attention_weights(table: TableRows, shape: AttentionShape = AttentionShape()) -> pl.DataFrame | None:
    """The table's weights in `ATTENTION_SCHEMA`, or None when it is not an attention table."""
    frame = table.frame
    numeric = {c for c, t in frame.schema.items() if t.is_numeric()}
    head = pl.col(_col(shape.head_column)).cast(pl.String) if _col(shape.head_column) in frame.columns else pl.lit("0")
    layer = pl.col(_col(shape.layer_column)).cast(pl.String) if _col(shape.layer_column) in frame.columns else pl.lit(table.key)
    pattern = re.compile(shape.matrix_column)
    matrix = sorted(
        ((int(m.group(1)), c) for c in table.columns if (m := pattern.match(c)) and _col(c) in numeric), key=lambda p: p[0]
    )
    long_columns = [_col(shape.query_column), _col(shape.key_column), _col(shape.weight_column)]
    if matrix:
        with_ids = frame.with_columns(head.alias("head"), layer.alias("layer"))
        with_ids = with_ids.with_columns(pl.int_range(pl.len()).over("layer", "head").cast(pl.Int64).alias("key_position"))
        long = with_ids.unpivot(
            index=["layer", "head", "key_position"], on=[_col(c) for _, c in matrix], variable_name="column", value_name="weight"
        ).with_columns(
            pl.col("column").replace_strict({_col(c): q for q, c in matrix}, return_dtype=pl.Int64).alias("query")
        )
    elif all(c in numeric for c in long_columns):
        long = frame.select(
            layer.alias("layer"),
            head.alias("head"),
            pl.col(long_columns[0]).cast(pl.Int64).alias("query"),
            pl.col(long_columns[1]).cast(pl.Int64).alias("key_position"),
            pl.col(long_columns[2]).alias("weight"),
        )
    else:
        return None
    return long.select(
        pl.lit(table.run_id, pl.String).alias("run_id"),
        pl.lit(table.step, pl.Int64).alias("step"),
        pl.lit(table.key, pl.String).alias("table_key"),
        "layer",
        "head",
        "query",
        "key_position",
        pl.col("weight").cast(pl.Float64),
    ).sort("layer", "head", "query", "key_position")

"""The rows of W&B Tables, typed, one frame per logged table.

A table file is `{"columns": [...], "data": [[...], ...]}` (`files/media/table/*.table.json` in a
local run, `<key>.table.json` in an API run's artifact). JSON declares each cell's type; a
column whose non-null cells are all JSON integers becomes Int64, all numbers (NaN and ±Infinity
included) Float64, all booleans Boolean, all strings String; anything else (mixed kinds, lists,
objects) is kept as String holding each cell's JSON text, so nothing is lost or guessed.

Column naming: the bookkeeping columns `run_id`, `step`, `key` and `row` (position in the
table) are plain; every column of the table itself is prefixed `col.` (a table column called
`key` is `col.key`), so the two can never be confused. A repeated column name gets `#2`, `#3`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from altgrad_pipeline.ingest.media.values import TABLE_TYPES
from altgrad_pipeline.ingest.model import IngestIssue

TABLE_COLUMN_PREFIX = "col."
BOOKKEEPING_COLUMNS = ("run_id", "step", "key", "row")

#: One row per logged table: where its rows are stored and what they hold.
MEDIA_TABLES_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "step": pl.Int64(),
    "key": pl.String(),
    "table_file": pl.String(),
    "nrows": pl.Int64(),
    "ncols": pl.Int64(),
    "columns": pl.List(pl.String()),
    "column_types": pl.List(pl.String()),
}
MEDIA_TABLES_DESCRIPTIONS = {
    "table_file": "Parquet file with the table's rows: run_id, step, key, row, then `col.<name>` per table column",
    "nrows": "Rows read from the table file",
    "ncols": "Columns declared by the table file",
    "columns": "The table's column names as logged (without the `col.` prefix)",
    "column_types": "Polars type of each column, from the JSON cells (String for mixed or nested cells)",
}


@dataclass
class TableRows:
    """One logged table: where it was logged and its rows (bookkeeping + `col.` columns)."""

    run_id: str
    step: int
    key: str
    columns: list[str]
    frame: pl.DataFrame

    @property
    def stem(self) -> str:
        """File-name stem from a hash of (run_id, key, step): never from the untrusted names."""
        return hashlib.sha256(f"{self.run_id}\x00{self.key}\x00{self.step}".encode()).hexdigest()[:24]


@dataclass
class ReadTables:
    tables: list[TableRows] = field(default_factory=list)
    issues: list[IngestIssue] = field(default_factory=list)


def _kind(cell: Any) -> str:
    if cell is None:
        return "null"
    if isinstance(cell, bool):
        return "bool"
    if isinstance(cell, int):
        return "int"
    if isinstance(cell, float):
        return "float"
    if isinstance(cell, str):
        return "str"
    return "json"


def typed_column(name: str, cells: list[Any]) -> pl.Series:
    """A column typed from its JSON cells (see the module docstring)."""
    kinds = {_kind(c) for c in cells} - {"null"}
    if kinds == {"int"} and all(c is None or -(2**63) <= c < 2**63 for c in cells):
        return pl.Series(name, cells, dtype=pl.Int64)
    if kinds and kinds <= {"int", "float"}:
        return pl.Series(name, [None if c is None else float(c) for c in cells], dtype=pl.Float64)
    if kinds == {"bool"}:
        return pl.Series(name, cells, dtype=pl.Boolean)
    if kinds <= {"str"}:
        return pl.Series(name, cells, dtype=pl.String)
    return pl.Series(name, [None if c is None else json.dumps(c, allow_nan=True) for c in cells], dtype=pl.String)


def _unique_names(columns: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for column in columns:
        seen[column] = seen.get(column, 0) + 1
        names.append(column if seen[column] == 1 else f"{column}#{seen[column]}")
    return names


def parse_table(
    text: bytes | str, *, run_id: str, step: int, key: str, declared: dict[str, Any], location: str, source: str | None = None
) -> tuple[TableRows | None, list[IngestIssue]]:
    """One table file's rows, or None (with the reason) when the file is not a table. `declared`
    is the history value (its nrows/ncols are checked against the file)."""
    lost_all = f"the table {key!r} of step {step}"

    def issue(kind: str, reason: str, lost: str) -> IngestIssue:
        return IngestIssue(location=location, kind=kind, reason=reason, lost=lost, position=f"step {step}, key {key!r}", run_id=run_id, source=source)

    try:
        content = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, [issue("bad_table_file", f"the table file is not valid JSON (truncated or corrupt): {exc}", lost_all)]
    columns, data = (content.get("columns"), content.get("data")) if isinstance(content, dict) else (None, None)
    if not isinstance(columns, list) or not isinstance(data, list) or not all(isinstance(r, list) for r in data):
        return None, [issue("bad_table_file", "the table file has no `columns` list and `data` list of rows", lost_all)]
    names = [str(c) for c in columns]
    issues = []
    ragged = [i for i, r in enumerate(data) if len(r) != len(names)]
    if ragged:
        extra = sum(max(0, len(data[i]) - len(names)) for i in ragged)
        issues.append(
            issue(
                "table_shape",
                f"{len(ragged)} rows do not have the {len(names)} declared columns (first: row {ragged[0]}); short rows are padded with nulls",
                f"{extra} cells beyond the declared columns" if extra else "nothing (short rows padded with nulls)",
            )
        )
    rows = [(r + [None] * len(names))[: len(names)] for r in data]
    for field_name, found in (("nrows", len(rows)), ("ncols", len(names))):
        logged = declared.get(field_name)
        if isinstance(logged, int) and logged != found:
            issues.append(issue("table_shape", f"the history says {field_name}={logged}, the file has {found}", "nothing (the file's rows are kept)"))
    table_columns = [typed_column(TABLE_COLUMN_PREFIX + name, [r[i] for r in rows]) for i, name in enumerate(_unique_names(names))]
    frame = pl.DataFrame(
        [
            pl.Series("run_id", [run_id] * len(rows), dtype=pl.String),
            pl.Series("step", [step] * len(rows), dtype=pl.Int64),
            pl.Series("key", [key] * len(rows), dtype=pl.String),
            pl.Series("row", range(len(rows)), dtype=pl.Int64),
            *table_columns,
        ]
    )
    return TableRows(run_id, step, key, names, frame), issues


def read_local_file(file: str) -> bytes:
    """A local run's media file (its `file` is an absolute path)."""
    return Path(file).read_bytes()


def read_tables(run_media: pl.DataFrame, read_file: Callable[[str], bytes], *, sources: dict[str, str] | None = None) -> ReadTables:
    """Every table in `run_media` read with `read_file(file)`; a file that cannot be read, is
    not JSON or disagrees with its declared shape or checksum becomes an issue."""
    result = ReadTables()
    tables = run_media.filter(pl.col("media_type").is_in(TABLE_TYPES) & pl.col("file").is_not_null())
    for row in tables.iter_rows(named=True):
        source = (sources or {}).get(row["run_id"])
        location = row["file"]
        try:
            data = read_file(location)
        except OSError as exc:
            result.issues.append(
                IngestIssue(location=location, kind="missing_table_file", reason=f"cannot read the table file: {exc.strerror or exc}",
                            lost=f"the table {row['key']!r} of step {row['step']}", position=f"step {row['step']}, key {row['key']!r}",
                            run_id=row["run_id"], source=source)  # fmt: skip
            )
            continue
        if row["sha256"] and hashlib.sha256(data).hexdigest() != row["sha256"]:
            result.issues.append(
                IngestIssue(location=location, kind="media_checksum", reason="the table file's SHA-256 differs from the one logged (rewritten or damaged)",
                            lost="nothing (the file as found is read)", position=f"step {row['step']}, key {row['key']!r}", run_id=row["run_id"], source=source)  # fmt: skip
            )
        declared = {"nrows": row["nrows"], "ncols": row["ncols"]}
        table, issues = parse_table(data, run_id=row["run_id"], step=row["step"], key=row["key"], declared=declared, location=location, source=source)
        result.issues.extend(issues)
        if table is not None:
            result.tables.append(table)
    return result


def table_index_row(table: TableRows, table_file: str) -> dict[str, Any]:
    """The `media_tables` row of one stored table."""
    return {
        "run_id": table.run_id,
        "step": table.step,
        "key": table.key,
        "table_file": table_file,
        "nrows": table.frame.height,
        "ncols": len(table.columns),
        "columns": table.columns,
        "column_types": [str(table.frame.schema[c]) for c in table.frame.columns[len(BOOKKEEPING_COLUMNS) :]],
    }


"""PyTorch Lightning `CSVLogger` runs: `…/version_N/metrics.csv` + `hparams.yaml`.

The CSV header is the union of every logged name and each row fills only what was logged at that
moment: a train row, a validation row and an epoch-end row can share one `step`. Empty cells mean
"not logged" (null, never 0). Rows are melted to the long history and merged per step; `epoch` is
an ordinary key. Lightning reuses `version_N` folders after a clean-up, so the run id hashes the
content (hparams and first logged row) as well as the path.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from pathlib import Path
from typing import Any

import polars as pl

from altgrad_pipeline.ingest import listing
from altgrad_pipeline.ingest.files import (
    ROWS_SCHEMA,
    file_stamp,
    keep_last_writes,
    load_config_file,
    mtime_utc,
    relative_posix,
    stable_run_id,
)
from altgrad_pipeline.ingest.model import IngestIssue, ParsedRun, RunLocator

SOURCE_NAME = "lightning-csv"
METRICS_FILE = "metrics.csv"
HPARAMS_FILE = "hparams.yaml"
STEP_COLUMN = "step"
VERSION_DIR = re.compile(r"^version_\d+$")
#: A `version_N` folder holding these is a TensorBoardLogger run, which another reader owns.
TENSORBOARD_GLOB = "events.out.tfevents.*"


def _csv_records(text: str, location: str) -> tuple[list[str], list[list[str]], list[int], list[IngestIssue]]:
    """Header, the rows whose cell count matches it (with their line numbers), and an issue per
    row that does not match: a ragged row cannot be placed in columns without guessing."""
    issues: list[IngestIssue] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            position = f"line {reader.line_num}"
            issues.append(
                IngestIssue(
                    location, "malformed_line", f"not CSV: {exc}", position, position=position, source=SOURCE_NAME
                )
            )
            continue
        if not row:
            continue
        if header is None:
            header = row
        elif len(row) == len(header):
            rows.append(row)
            lines.append(reader.line_num)
        else:
            logged = sum(1 for cell in row if cell.strip())
            issues.append(
                IngestIssue(
                    location,
                    "ragged_row",
                    f"{len(row)} cells where the header has {len(header)}: cannot tell which column each belongs to",
                    f"line {reader.line_num} ({logged} non-empty cells)",
                    position=f"line {reader.line_num}",
                    source=SOURCE_NAME,
                )
            )
    return header or [], rows, lines, issues


def _named_columns(header: list[str], location: str) -> tuple[list[int], list[IngestIssue]]:
    """Indices of the columns to read: a blank or repeated name cannot be a key, so it is skipped."""
    kept: list[int] = []
    seen: set[str] = set()
    skipped: list[str] = []
    for index, name in enumerate(header):
        if name.strip() and name not in seen:
            kept.append(index)
            seen.add(name)
        else:
            skipped.append(f"column {index + 1} ({name!r})")
    issues = []
    if skipped:
        issues.append(
            IngestIssue(
                location,
                "unusable_column",
                f"blank or repeated column names in the header: {', '.join(skipped)}",
                f"the cells of {len(skipped)} columns",
                position="line 1",
                source=SOURCE_NAME,
            )
        )
    return kept, issues


def parse_metrics_csv(data: bytes, *, location: str) -> tuple[pl.DataFrame, list[IngestIssue]]:
    """Long rows (ROWS_SCHEMA, write order, duplicates unresolved) from CSVLogger bytes, a cell
    that is not a number kept in `text`, and the issues found. Never raises for bad content."""
    issues: list[IngestIssue] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = data.decode("utf-8", errors="replace")
        issues.append(
            IngestIssue(
                location,
                "invalid_utf8",
                f"{exc}; undecodable bytes replaced",
                "the cells holding them",
                source=SOURCE_NAME,
            )
        )
    if text and not text.endswith("\n"):
        complete_until = text.rfind("\n") + 1
        tail_line = text.count("\n") + 1
        issues.append(
            IngestIssue(
                location,
                "partial_last_line",
                "the last line has no newline yet (still being written); it is read once complete",
                f"line {tail_line}, for now",
                position=f"line {tail_line}",
                source=SOURCE_NAME,
            )
        )
        text = text[:complete_until]
    header, records, lines, csv_issues = _csv_records(text, location)
    issues.extend(csv_issues)
    kept, column_issues = _named_columns(header, location)
    issues.extend(column_issues)
    if not records:
        return pl.DataFrame(schema=ROWS_SCHEMA), issues
    cells = pl.DataFrame(records, schema=[(f"c{i}", pl.String()) for i in range(len(header))], orient="row")
    frame = cells.select(pl.Series("line", lines, dtype=pl.Int64()), *[pl.col(f"c{i}").alias(header[i]) for i in kept])
    if STEP_COLUMN in frame.columns:
        step = pl.col(STEP_COLUMN).str.strip_chars().cast(pl.Float64, strict=False)
        usable = step.is_finite() & (step == step.floor())
        unusable = frame.filter(~usable.fill_null(False))
        if unusable.height:
            first = unusable.row(0, named=True)
            issues.append(
                IngestIssue(
                    location,
                    "bad_step",
                    f"{unusable.height} rows have no integer step (first: {first[STEP_COLUMN]!r})",
                    f"{unusable.height} rows",
                    position=f"line {first['line']}",
                    source=SOURCE_NAME,
                )
            )
        frame = frame.filter(usable.fill_null(False)).with_columns(step.cast(pl.Int64).alias(STEP_COLUMN))
    else:
        issues.append(
            IngestIssue(
                location,
                "no_step_field",
                "no step column: the 0-based index of the data row is used as the step",
                position="line 1",
                source=SOURCE_NAME,
            )
        )
        frame = frame.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(STEP_COLUMN))
    cells_long = (
        frame.unpivot(index=["line", STEP_COLUMN], variable_name="key", value_name="text")
        .with_columns(pl.col("text").str.strip_chars())
        .filter(pl.col("text").is_not_null() & (pl.col("text") != ""))
        .with_columns(pl.col("text").cast(pl.Float64, strict=False).alias("value"))
    )
    text_keys = (
        cells_long.group_by("key")
        .agg(
            pl.col("value").is_null().sum().alias("texts"),
            pl.len().alias("cells"),
            pl.col("text").filter(pl.col("value").is_null()).first().alias("example"),
        )
        .filter(pl.col("texts") > 0)
        .sort("key")
    )
    for mixed in text_keys.filter(pl.col("texts") < pl.col("cells")).iter_rows(named=True):
        issues.append(
            IngestIssue(
                location,
                "non_numeric_value",
                f"{mixed['texts']} of {mixed['cells']} cells in column {mixed['key']!r} are not numbers "
                f"(e.g. {mixed['example']!r}); those are kept as text",
                "nothing (kept in `text`)",
                source=SOURCE_NAME,
            )
        )
    rows = cells_long.select(
        "line",
        STEP_COLUMN,
        "key",
        "value",
        pl.when(pl.col("value").is_null()).then(pl.col("text")).alias("text"),
        pl.lit(None, pl.Float64).alias("runtime"),
        pl.lit(None, pl.Float64).alias("timestamp"),
    )
    return rows, issues


def _first_row_identity(rows: pl.DataFrame) -> bytes:
    """The first logged row's numbers as sorted key=value pairs: stable while Lightning rewrites
    the file with a wider header, different for a different run in a reused folder. Text cells
    are left out, as before they were kept, so run ids do not change."""
    numbers = rows.filter(pl.col("value").is_not_null())
    if numbers.is_empty():
        return b""
    first = numbers.filter(pl.col("line") == pl.col("line").min()).sort("key")
    return repr(list(zip(first.get_column("key").to_list(), first.get_column("value").to_list(), strict=True))).encode()


def _read_if_present(path: Path) -> bytes:
    """The file's bytes, empty when absent (a run may stop before logging anything). Other OS
    errors propagate: the catalog then keeps the previously read version of the run."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


class LightningCsvSource:
    """Every folder under `root` with a `metrics.csv`, or a `version_N` folder with only an
    `hparams.yaml` (a run that stopped before logging), is one run."""

    name = SOURCE_NAME

    def __init__(self, root: Path, grace_period_s: float = 3600) -> None:
        self.root = Path(root)
        self.grace_period_s = grace_period_s
        self.label = str(self.root)

    def discover(self) -> list[RunLocator]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"run store folder {self.root} does not exist")
        with_metrics = {path.parent for path in listing.rglob(self.root, METRICS_FILE)}
        hparams_only = {
            path.parent
            for path in listing.rglob(self.root, HPARAMS_FILE)
            if VERSION_DIR.match(path.parent.name) and next(path.parent.glob(TENSORBOARD_GLOB), None) is None
        }
        return [
            RunLocator(
                source=self.name,
                location=str(run_dir),
                fingerprint=";".join(file_stamp(run_dir / name) for name in (METRICS_FILE, HPARAMS_FILE)),
            )
            for run_dir in sorted(with_metrics | hparams_only)
        ]

    def read(self, locator: RunLocator) -> ParsedRun:
        run_dir = Path(locator.location)
        metrics_path, hparams_path = run_dir / METRICS_FILE, run_dir / HPARAMS_FILE
        issues: list[IngestIssue] = []
        config: dict[str, Any] = {}
        hparams_bytes = _read_if_present(hparams_path)
        if hparams_path.is_file():
            loaded, config_issues = load_config_file(hparams_path, source=self.name)
            config = loaded or {}
            issues.extend(config_issues)
        metrics_bytes = _read_if_present(metrics_path)
        rows, csv_issues = parse_metrics_csv(metrics_bytes, location=str(metrics_path))
        issues.extend(csv_issues)
        relative = relative_posix(run_dir, self.root)
        readable = "-".join(run_dir.parts[-2:])
        run_id = stable_run_id(readable, relative.encode(), hparams_bytes, _first_row_identity(rows))
        history, history_issues = keep_last_writes(rows, run_id=run_id, location=str(metrics_path), source=self.name)
        writes = [t for t in (mtime_utc(metrics_path), mtime_utc(hparams_path)) if t is not None]
        return ParsedRun(
            run_id=run_id,
            source=self.name,
            location=locator.location,
            history=history,
            name="/".join(run_dir.parts[-2:]),
            config=config,
            last_write=max(writes, default=None),
            issues=[dataclasses.replace(issue, run_id=run_id) for issue in [*issues, *history_issues]],
            fingerprint=locator.fingerprint,
        )

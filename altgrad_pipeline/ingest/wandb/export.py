"""W&B history exports: the Parquet files W&B writes for a run's history (the `<run>-history`
artifact, or what `run.download_history_exports()` saves).

Layout detected: a folder that directly holds `*.parquet` files with a `_step` column is one run's
history export (its files are parts of one table). The run id is the folder name without a
`-history` suffix (the artifact's name is `run-<id>-history`, W&B's own `run-` prefix removed too),
so `run-abc123-history/` next to a W&B run folder `run-20240101_120000-abc123/` is run `abc123`'s
export. A `config.yaml` or `wandb-summary.json` in the same folder (or in a W&B run folder of the
same id beside it, under `files/`) supplies config and summary.

Columns `_step`, `_runtime` and `_timestamp` are the row's coordinates; numeric columns are
metrics (nulls mean "not logged at that step" and are dropped); string columns are history too,
their cells in `text`; other columns are listed in `value_types` under the names the API reader
gives them (a media struct by its `_type`, such as `histogram`; `bool`). Parts are combined in the order of their first step, whatever their
file names, so a later write of a (step, key) wins. The same reader reads the exports the W&B API
source downloads (`wandb_api`).
"""

from __future__ import annotations

import dataclasses
import json
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
    utc_from_epoch,
)
from altgrad_pipeline.ingest.model import IngestIssue, ParsedRun, RunLocator
from altgrad_pipeline.ingest.wandb.names import RUN_FOLDER

SOURCE_NAME = "wandb-export"
COORDINATES = ("_step", "_runtime", "_timestamp")
EXPORT_SUFFIX = "-history"
NUMERIC = (pl.Float32, pl.Float64, pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)


def export_run_id(folder: Path) -> str:
    name = folder.name.removesuffix(EXPORT_SUFFIX)
    return name.removeprefix("run-") if folder.name.endswith(EXPORT_SUFFIX) else name


def _value_type(column: pl.Series) -> str:
    """What a non-numeric export column holds, named as the API reader names it."""
    if isinstance(column.dtype, pl.Struct) and "_type" in [f.name for f in column.dtype.fields]:
        kinds = column.struct.field("_type").drop_nulls()
        return str(kinds[0]) if kinds.len() else "dict"
    if isinstance(column.dtype, pl.Struct):
        return "dict"
    return {pl.Boolean: "bool"}.get(column.dtype.base_type(), str(column.dtype))


def read_history_export(
    files: list[Path], *, run_id: str, location: str, source: str = SOURCE_NAME
) -> tuple[pl.DataFrame, dict[str, str], list[IngestIssue]]:
    """Long history from the export's Parquet parts; an unreadable part is an issue, the others kept."""
    issues: list[IngestIssue] = []
    parts = []
    for path in files:
        try:
            wide = pl.read_parquet(path)
        except (OSError, pl.exceptions.PolarsError) as exc:
            issues.append(
                IngestIssue(str(path), "unreadable_export", f"not a readable Parquet file: {exc}", "this part's rows",
                            source=source)  # fmt: skip
            )
            continue
        if "_step" not in wide.columns:
            issues.append(
                IngestIssue(str(path), "not_a_history_export", "no `_step` column", "this part's rows", source=source)
            )
            continue
        parts.append((wide.get_column("_step").min(), str(path), wide))
    parts.sort(key=lambda part: (part[0] is None, part[0] or 0, part[1]))
    frames = []
    value_types: dict[str, str] = {}
    for index, (_, _, wide) in enumerate(parts):
        metrics = [c for c, t in wide.schema.items() if c not in COORDINATES and isinstance(t, NUMERIC)]
        strings = [c for c, t in wide.schema.items() if not c.startswith("_") and t == pl.String]
        for column in wide.columns:
            if column not in COORDINATES and column not in metrics and column not in strings and not column.startswith("_"):
                value_types.setdefault(column, _value_type(wide.get_column(column)))
        coordinates = [
            pl.col("_step").cast(pl.Int64).alias("step"),
            *(
                pl.col(name).cast(pl.Float64).alias(name.lstrip("_")) if name in wide.columns
                else pl.lit(None, pl.Float64).alias(name.lstrip("_"))
                for name in ("_runtime", "_timestamp")
            ),
        ]  # fmt: skip
        picked = wide.select(*coordinates, *(pl.col(m).cast(pl.Float64) for m in metrics), *strings).with_row_index("row")
        index_columns, line = ["row", "step", "runtime", "timestamp"], (pl.col("row").cast(pl.Int64) + index * 2**40).alias("line")
        numbers = picked.unpivot(index=index_columns, on=metrics, variable_name="key", value_name="value").drop_nulls("value")
        texts = picked.unpivot(index=index_columns, on=strings, variable_name="key", value_name="text").drop_nulls("text")
        frames += [
            numbers.select(line, "step", "key", pl.col("value").cast(pl.Float64), pl.lit(None, pl.String).alias("text"), "runtime", "timestamp"),
            texts.select(line, "step", "key", pl.lit(None, pl.Float64).alias("value"), pl.col("text").cast(pl.String), "runtime", "timestamp"),
        ]
    rows = pl.concat(frames) if frames else pl.DataFrame(schema=ROWS_SCHEMA)
    history, merge_issues = keep_last_writes(rows, run_id=run_id, location=location, source=source)
    return history, value_types, [*issues, *merge_issues]


def _side_files(folder: Path, run_id: str) -> list[Path]:
    """Where this run's config and summary may be: the export folder, then a W&B run folder of the
    same id beside it."""
    siblings = [
        p / "files" for p in sorted(folder.parent.glob("*run-*")) if (match := RUN_FOLDER.match(p.name)) and match["id"] == run_id
    ]
    return [folder, *siblings]


class WandbExportSource:
    """Every folder under `root` directly holding W&B history-export Parquet files is one run."""

    name = SOURCE_NAME

    def __init__(self, root: Path, grace_period_s: float = 3600) -> None:
        self.root = Path(root)
        self.grace_period_s = grace_period_s
        self.label = str(self.root)

    def _exports(self) -> dict[Path, list[Path]]:
        folders: dict[Path, list[Path]] = {}
        for path in listing.rglob(self.root, "*.parquet"):
            if path.is_file() and "_step" in _parquet_columns(path):
                folders.setdefault(path.parent, []).append(path)
        return {folder: sorted(files) for folder, files in sorted(folders.items())}

    def discover(self) -> list[RunLocator]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"run store folder {self.root} does not exist")
        locators = []
        for folder, files in self._exports().items():
            run_id = export_run_id(folder)
            sides = [p / n for p in _side_files(folder, run_id) for n in ("config.yaml", "wandb-summary.json")]
            stamps = [file_stamp(p) for p in files] + [file_stamp(p) for p in sides if p.is_file()]
            locators.append(RunLocator(self.name, str(folder), ";".join(stamps), run_id_hint=f"{run_id}-export"))
        return locators

    def read(self, locator: RunLocator) -> ParsedRun:
        folder = Path(locator.location)
        files = sorted(p for p in folder.glob("*.parquet") if p.is_file())
        run_id = locator.run_id_hint or f"{export_run_id(folder)}-export"
        history, value_types, issues = read_history_export(files, run_id=run_id, location=str(folder))
        run = ParsedRun(
            run_id=run_id,
            source=SOURCE_NAME,
            location=str(folder),
            history=history,
            name=export_run_id(folder),
            value_types=value_types,
            last_write=max((t for t in (mtime_utc(p) for p in files) if t is not None), default=None),
            fingerprint=locator.fingerprint,
        )
        timestamps = history.get_column("timestamp").drop_nulls().drop_nans()
        run.started_at = utc_from_epoch(timestamps.min()) if timestamps.len() else None
        self._side_data(run, folder, issues)
        run.issues = [dataclasses.replace(i, run_id=run_id) for i in issues]
        return run

    @staticmethod
    def _side_data(run: ParsedRun, folder: Path, issues: list[IngestIssue]) -> None:
        for place in _side_files(folder, export_run_id(folder)):
            config_path, summary_path = place / "config.yaml", place / "wandb-summary.json"
            if config_path.is_file() and not run.config:
                config, config_issues = load_config_file(config_path, source=SOURCE_NAME)
                issues.extend(config_issues)
                run.config = {k: v.get("value") if isinstance(v, dict) and "value" in v else v
                              for k, v in (config or {}).items() if k != "_wandb"}  # fmt: skip
            if summary_path.is_file() and not run.summary:
                try:
                    summary: Any = json.loads(summary_path.read_text())
                except (OSError, ValueError) as exc:
                    issues.append(IngestIssue(str(summary_path), "bad_side_file", str(exc), "the summary", source=SOURCE_NAME))
                    continue
                run.summary = {k: v for k, v in summary.items() if k != "_wandb"} if isinstance(summary, dict) else {}


def _parquet_columns(path: Path) -> list[str]:
    try:
        return list(pl.read_parquet_schema(path))
    except (OSError, pl.exceptions.PolarsError):
        return []

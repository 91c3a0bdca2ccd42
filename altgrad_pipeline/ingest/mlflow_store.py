"""MLflow tracking stores, read directly (never through the MLflow client, which is 20-100x slower).

File store layout: `<store>/<experiment id>/meta.yaml` (the experiment) and
`<store>/<experiment id>/<run id>/{meta.yaml, metrics/, params/, tags/}` (a run). Metric files hold
lines `timestamp_ms value [step [dataset_name dataset_digest]]`; a metric name with `/` is stored as
sub-folders (`metrics/rollout/ep_rew_mean`). `.trash` (deleted runs) is ignored. A run folder is a
child of an experiment folder holding `meta.yaml`, `metrics/`, `params/` or `tags/`: a run whose
`meta.yaml` is missing or invalid is still read (with an issue) from what the folder holds.

SQL store (`sqlite:///path/mlruns.db`, or any SQLAlchemy URL): the tables `experiments`, `runs`,
`metrics`, `params`, `tags` and `alembic_version`. It keeps +-inf as +-1.797e308 and NaN as 0 with an
`is_nan` flag; both become NaN and +-inf again here. A schema revision this reader was not written
for is reported once per store; the store is still read if the columns it needs are there.

Both stores map the same way: params -> config (numeric-looking text becomes a number, as the
study's rules compare numbers), experiment name -> project, `mlflow.runName` -> name,
`mlflow.parentRunId` -> group, `mlflow.note.content` -> notes, user tags -> `tags` as `key=value`
(`mlflow.*` system tags are left out: they carry user names and local paths), status FINISHED ->
ended with exit 0, FAILED -> ended with exit 1, KILLED -> not ended but cut short, RUNNING -> not ended.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import itertools
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import sqlalchemy as sa

from altgrad_pipeline.ingest import listing
from altgrad_pipeline.ingest.files import (
    file_stamp,
    keep_last_writes,
    load_config_file,
    relative_posix,
    stable_run_id,
    utc_from_epoch,
)
from altgrad_pipeline.ingest.model import IngestIssue, ParsedRun, RunLocator


@functools.cache
def _columnar_driver() -> ModuleType | None:
    """The optional columnar SQLite driver (the `fast-sql` extra), about twice as fast on metric
    rows; None without it. Imported on first use: it pulls in pyarrow.dataset and pandas (0.35 s),
    which a refresh of stores without MLflow SQLite runs never needs."""
    try:
        from adbc_driver_sqlite import dbapi
    except ImportError:
        return None
    return dbapi

SOURCE_NAME = "mlflow"
TRASH = ".trash"
RUN_PARTS = ("meta.yaml", "metrics", "params", "tags")
#: The file store writes the status as RunStatus numbers.
FILE_STATUS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
#: status -> (ended, exit_code, cut_short)
STATUS_OUTCOME: dict[str, tuple[bool, int | None, bool]] = {
    "FINISHED": (True, 0, False),
    "FAILED": (True, 1, False),
    "KILLED": (False, None, True),
}
RUN_NAME_TAG = "mlflow.runName"
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"
SYSTEM_TAG_PREFIX = "mlflow."
#: MLflow's SQL store clamps +-inf to the largest double.
SQL_INF_SENTINEL = 1.7976931348623157e308
#: Alembic revisions of MLflow's SQL schema whose `metrics` table has `step` and `is_nan`
#: (MLflow 1.1 to 3.x, oldest first), as the migrations in MLflow 3.18 list them. A newer revision is
#: read by column names and reported once per store (`MlflowSqlSource.discovery_issues`).
KNOWN_SQL_REVISIONS = (
    "181f10493468", "df50e92ffc5e", "7ac759974ad8", "89d4b8295536", "2b4d017a5e9b", "cfd24bdc0731",
    "0a8213491aaa", "728d730b5ebd", "27a6a02d2cf1", "84291f40a231", "a8c4a736bde6", "39d1c3be5f05",
    "c48cb773bb87", "bd07f7e963c5", "0c779009ac13", "cc1f77228345", "97727af70f4d", "3500859a5d39",
    "7f2a7d5fae7d", "2d6e25af4d3e", "acf3f17fdcc7", "867495a8f9d4", "5b0e9adcef9c", "4465047574b1",
    "f5a4f2784254", "0584bdc529eb", "400f98739977", "6953534de441", "bda7b8c39065", "cbc13b556ace",
    "770bee3ae1dd", "a1b2c3d4e5f6", "de4033877273", "1a0cddfcaa16", "534353b11cbc", "71994744cf8e",
    "3da73c924c2f", "bf29a5ff90ea", "1bd49d398cd23", "b7c8d9e0f1a2", "5d2d30f0abce", "c9d4e5f6a7b8",
    "2c33131f4dae", "d3e4f5a6b7c8", "d0e1f2a3b4c5", "c8d9e0f1a2b3", "1b5f0d9ad7c1", "e1f2a3b4c5d6",
    "76601a5f987d", "c3d6457b6d8a", "a5b4c3d2e1f0", "ae8bbe7743c9", "7d34483879f0", "da6fb0208061",
    "89d3d66ed43f", "b7e4c1a90f23", "a8b9c0d1e2f3", "c1d2e3f4a5b6", "c3d9e7f1a2b4", "6f8d9c3b2a1e",
    "1971f2d9a75b", "17e22815139b", "b7e2c1a4d9f3", "75868b020152", "dc11669786a5", "8b6ad64cb8f5",
    "e7d1f4b2a9c6", "f4a9b2c7d1e6",
)  # fmt: skip
#: The columns read, per table: a store missing any of them cannot be read.
REQUIRED_SQL_COLUMNS = {
    "runs": {"run_uuid", "name", "status", "start_time", "end_time", "lifecycle_stage", "experiment_id"},
    "metrics": {"run_uuid", "key", "value", "timestamp", "step", "is_nan"},
    "params": {"run_uuid", "key", "value"},
    "tags": {"run_uuid", "key", "value"},
    "experiments": {"experiment_id", "name"},
}
#: One metric line split in columns; a line with another shape is reported, not guessed at.
METRIC_LINE = r"^(\S+) (\S+)(?: (\S+))?(?: \S+ \S+)?$"
#: The same line as typed columns (`step` is optional: pre-1.0 lines have none).
METRIC_COLUMNS = {"timestamp_ms": pl.Int64(), "value": pl.Float64(), "step": pl.Int64()}
#: Lines that also name a dataset (`log_metric(..., dataset=...)`): read only for the files that
#: hold them, as two more columns cost the common files a quarter more parsing time.
DATASET_METRIC_COLUMNS = {**METRIC_COLUMNS, "dataset_name": pl.String(), "dataset_digest": pl.String()}
#: A metric row as read from the SQL store, before `is_nan` and the infinity stand-ins are undone.
SQL_METRIC_ROW = np.dtype([("step", "<i8"), ("value", "<f8"), ("is_nan", "?"), ("timestamp_ms", "<i8")])
#: The Arrow types of FLAT_METRIC_QUERY's columns when every value of each is of the column's type.
COLUMNAR_METRIC_TYPES = [pa.int64(), pa.float64(), pa.int64(), pa.int64()]
SQL_METRIC_SCHEMA: dict[str, pl.DataType] = {
    "step": pl.Int64(),
    "value": pl.Float64(),
    "is_nan": pl.Boolean(),
    "timestamp_ms": pl.Int64(),
}
#: Dialects read with the SQLite queries below; any other SQLAlchemy URL gets the portable ones.
SQLITE_DIALECTS = frozenset({"sqlite"})
#: Per run, a key's rows are found through this index (one seek per key); the primary key starts
#: with the key, so through it each run's read would scan that key's rows of every run in the store.
RUN_KEY_INDEX = "index_metrics_run_uuid_key_step"
#: SQLite: a key's rows are read as one flat stream of float64 numbers, which numpy takes in
#: about a fifth less CPU time than rows converted to a structured dtype (the driver's row
#: iteration is the floor). Integers below EXACT_FLOAT64_INTEGERS are exact in float64; a key
#: with larger steps or timestamps is read again with typed columns.
FLAT_METRIC_QUERY = "SELECT step, value, is_nan, timestamp FROM metrics {index} WHERE run_uuid = ? AND key = ?"
EXACT_FLOAT64_INTEGERS = 2**53
#: A run's distinct keys by one index seek per key (a loose index scan), not a scan of its rows.
SQLITE_RUN_KEYS = (
    "WITH RECURSIVE k(key) AS (SELECT MIN(key) FROM metrics WHERE run_uuid = ?1 UNION ALL "
    "SELECT (SELECT MIN(key) FROM metrics WHERE run_uuid = ?1 AND key > k.key) FROM k WHERE k.key IS NOT NULL) "
    "SELECT key FROM k WHERE key IS NOT NULL"
)


def config_value(text: str) -> Any:
    """An MLflow param (always text) as the value it spells: int, float, bool, None or the text."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            continue
    return text


def _status_name(status: Any) -> str | None:
    if isinstance(status, int) and not isinstance(status, bool):
        return FILE_STATUS.get(status)
    return str(status) if status is not None else None


def apply_run_facts(run: ParsedRun, *, status: str | None, start_ms: Any, end_ms: Any, tags: dict[str, str]) -> None:
    """Status, times and tags, shared by both stores."""
    run.ended, run.exit_code, run.cut_short = STATUS_OUTCOME.get(status or "", (False, None, False))
    if isinstance(start_ms, int | float) and not isinstance(start_ms, bool):
        run.started_at = utc_from_epoch(start_ms / 1000)
    if isinstance(end_ms, int | float) and not isinstance(end_ms, bool) and end_ms:
        run.last_write = utc_from_epoch(end_ms / 1000)
    run.name = tags.get(RUN_NAME_TAG) or run.name
    run.group = tags.get(PARENT_TAG)
    run.notes = tags.get(NOTE_TAG)
    run.tags = sorted(f"{k}={v}" for k, v in tags.items() if not k.startswith(SYSTEM_TAG_PREFIX))


def _history_from_rows(
    rows: pl.DataFrame, *, run_id: str, location: str, start_ms: Any
) -> tuple[pl.DataFrame, list[IngestIssue]]:
    """(key, step, value, timestamp_ms) rows -> history; the write order is the timestamp order."""
    origin = start_ms / 1000 if isinstance(start_ms, int | float) and not isinstance(start_ms, bool) else None
    ordered = rows.sort("timestamp_ms", maintain_order=True).select(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("line"),
        pl.col("step").cast(pl.Int64),
        pl.col("key").cast(pl.String),
        pl.col("value").cast(pl.Float64),
        pl.lit(None, pl.String).alias("text"),  # MLflow metrics are numbers only
        (pl.col("timestamp_ms") / 1000 - (origin if origin is not None else pl.col("timestamp_ms").min() / 1000)).alias(
            "runtime"
        ),
        (pl.col("timestamp_ms") / 1000).alias("timestamp"),
    )
    return keep_last_writes(ordered, run_id=run_id, location=location, source=SOURCE_NAME)


# -- file store ------------------------------------------------------------------------------------


def _read_text_files(folder: Path) -> dict[str, str]:
    """`params/` or `tags/`: file path relative to the folder ('/'-joined) -> its text."""
    if not folder.is_dir():
        return {}
    return {
        path.relative_to(folder).as_posix(): path.read_text(encoding="utf-8", errors="replace")
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _scan_metric_files(files: list[Path], schema: dict[str, pl.DataType], prefix: str) -> pl.DataFrame | None:
    """(key, timestamp_ms, value, step) of well-formed metric files, read as space-separated
    columns in one Polars scan (NaN and +-inf spelled as Python writes them parse as such; the key
    is the path after `prefix`); None when any line of any file has another shape."""
    try:
        parsed = (
            pl.scan_csv(
                files,
                has_header=False,
                separator=" ",
                quote_char=None,
                comment_prefix=None,
                schema=schema,
                missing_columns="insert",
                include_file_paths="file",
            )
            .select(pl.col("file").str.strip_prefix(prefix).alias("key"), "timestamp_ms", "value", "step")
            .collect()
        )
    except pl.exceptions.PolarsError:
        return None
    if parsed.get_column("timestamp_ms").has_nulls() or parsed.get_column("value").has_nulls():
        return None  # an empty field (blank line, doubled space)
    return parsed.with_columns(pl.col("step").fill_null(0))


def _match_metric_lines(files: list[Path]) -> tuple[pl.DataFrame, list[IngestIssue]]:
    """The slow path for files `_scan_metric_files` refused: each line matched against
    METRIC_LINE, so only the lines that do not fit are lost (one issue per file)."""
    lines = pl.scan_csv(
        files,
        has_header=False,
        separator="\x1f",
        quote_char=None,
        schema={"line": pl.String},
        include_file_paths="file",
        comment_prefix=None,
    )
    fields = pl.col("line").str.strip_chars_end("\r").str.extract_groups(METRIC_LINE)
    parsed = (
        lines.with_row_index("row")
        .with_columns(fields.alias("fields"))
        .select(
            "file",
            "row",
            pl.col("fields").struct.field("1").cast(pl.Int64, strict=False).alias("timestamp_ms"),
            pl.col("fields").struct.field("2").cast(pl.Float64, strict=False).alias("value"),
            pl.col("fields").struct.field("3").cast(pl.Int64, strict=False).fill_null(0).alias("step"),
            (pl.col("fields").struct.field("3").is_not_null() & pl.col("fields").struct.field("3").cast(pl.Int64, strict=False).is_null()).alias("bad_step"),
        )
        .collect()
    )
    malformed = pl.col("timestamp_ms").is_null() | pl.col("value").is_null() | pl.col("bad_step")
    issues = [
        IngestIssue(
            file,
            "malformed_metric_line",
            f"{count} lines are not `timestamp value [step]` numbers",
            f"{count} values",
            source=SOURCE_NAME,
        )
        for file, count in parsed.filter(malformed).group_by("file", maintain_order=True).len().iter_rows()
    ]
    return parsed.filter(~malformed).select("file", "timestamp_ms", "value", "step"), issues


def read_metric_files(metrics_dir: Path, *, location: str) -> tuple[pl.DataFrame, list[IngestIssue]]:
    """Every metric file under `metrics_dir`: rows (key, step, value, timestamp_ms) and an issue
    per file holding lines that do not parse (those lines only are lost).

    All files are read in one columnar scan; only when that refuses some line are the files
    scanned one by one (also in the form with dataset fields), and those that still fail are
    matched line by line (`_match_metric_lines`)."""
    files = sorted(p for p in metrics_dir.rglob("*") if p.is_file()) if metrics_dir.is_dir() else []
    files = [p for p in files if p.stat().st_size]
    if not files:
        return pl.DataFrame(schema={"key": pl.String, "step": pl.Int64, "value": pl.Float64, "timestamp_ms": pl.Int64}), []
    issues: list[IngestIssue] = []
    prefix = str(metrics_dir) + "/"
    rows = _scan_metric_files(files, METRIC_COLUMNS, prefix)
    if rows is None:
        frames, refused = [], []
        for path in files:
            scanned = _scan_metric_files([path], METRIC_COLUMNS, prefix)
            if scanned is None:
                scanned = _scan_metric_files([path], DATASET_METRIC_COLUMNS, prefix)
            if scanned is None:
                refused.append(path)
            else:
                frames.append(scanned)
        if refused:
            matched, issues = _match_metric_lines(refused)
            key = pl.col("file").str.strip_prefix(prefix).alias("key")
            frames.append(matched.select(key, "timestamp_ms", "value", "step"))
        rows = pl.concat(frames)
    rows = rows.select("key", "step", "value", "timestamp_ms")
    return rows, [dataclasses.replace(i, location=i.location or location) for i in issues]


def _is_run_folder(folder: Path) -> bool:
    return folder.is_dir() and any((folder / part).exists() for part in RUN_PARTS)


def file_store_runs(root: Path) -> list[Path]:
    """Run folders of every MLflow file store under `root` (see the module docstring)."""
    metas = {p.parent for p in listing.rglob(root, "meta.yaml") if TRASH not in p.relative_to(root).parts}
    experiments = sorted(folder for folder in metas if folder.parent not in metas)
    runs = []
    for experiment in experiments:
        runs.extend(child for child in sorted(experiment.iterdir()) if _is_run_folder(child))
    return runs


class MlflowFileSource:
    """Runs of the MLflow file stores (`mlruns/` folders) found anywhere under `root`."""

    name = SOURCE_NAME

    def __init__(self, root: Path, grace_period_s: float = 3600) -> None:
        self.root = Path(root)
        self.grace_period_s = grace_period_s
        self.label = str(self.root)

    def run_id(self, folder: Path) -> str:
        return stable_run_id(folder.name, SOURCE_NAME.encode(), relative_posix(folder, self.root).encode())

    def discover(self) -> list[RunLocator]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"run store folder {self.root} does not exist")
        locators = []
        for folder in file_store_runs(self.root):
            stamps = [file_stamp(folder / "meta.yaml"), file_stamp(folder.parent / "meta.yaml")]
            for part in ("metrics", "params", "tags"):
                if (folder / part).is_dir():
                    stamps.extend(f"{part}/{file_stamp(p)}" for p in sorted((folder / part).rglob("*")) if p.is_file())
            locators.append(
                RunLocator(self.name, str(folder), ";".join(stamps), run_id_hint=self.run_id(folder))
            )
        return locators

    def read(self, locator: RunLocator) -> ParsedRun:
        folder = Path(locator.location)
        run_id = self.run_id(folder)
        issues: list[IngestIssue] = []
        meta = self._meta(folder / "meta.yaml", issues, what="the run's status, start and end times")
        experiment = self._meta(folder.parent / "meta.yaml", issues, what="the experiment name")
        rows, metric_issues = read_metric_files(folder / "metrics", location=str(folder / "metrics"))
        issues.extend(metric_issues)
        history, history_issues = _history_from_rows(
            rows, run_id=run_id, location=str(folder), start_ms=meta.get("start_time")
        )
        issues.extend(history_issues)
        tags = _read_text_files(folder / "tags")
        run = ParsedRun(
            run_id=run_id,
            source=SOURCE_NAME,
            location=str(folder),
            history=history,
            project=experiment.get("name") if isinstance(experiment.get("name"), str) else None,
            name=meta.get("run_name") or folder.name,
            config={key: config_value(text) for key, text in _read_text_files(folder / "params").items()},
            fingerprint=locator.fingerprint,
        )
        apply_run_facts(
            run, status=_status_name(meta.get("status")), start_ms=meta.get("start_time"), end_ms=meta.get("end_time"), tags=tags
        )
        if run.last_write is None:
            newest = max((p.stat().st_mtime for p in folder.rglob("*") if p.is_file()), default=None)
            run.last_write = utc_from_epoch(newest) if newest is not None else None
        run.issues = [dataclasses.replace(issue, run_id=run_id) for issue in issues]
        return run

    @staticmethod
    def _meta(path: Path, issues: list[IngestIssue], *, what: str) -> dict[str, Any]:
        if not path.is_file():
            issues.append(IngestIssue(str(path), "missing_meta", "meta.yaml is missing", what, source=SOURCE_NAME))
            return {}
        meta, meta_issues = load_config_file(path, source=SOURCE_NAME)
        issues.extend(dataclasses.replace(i, lost=what) if i.kind == "malformed_config" else i for i in meta_issues)
        return meta or {}


# -- SQL store -------------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The URL without its password, for locations and messages."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


class MlflowSqlError(RuntimeError):
    """The SQL store cannot be read at all (unreachable, or not an MLflow schema)."""


class MlflowSqlSource:
    """Runs of one MLflow SQL store, read with plain SQL through SQLAlchemy."""

    name = SOURCE_NAME

    def __init__(self, url: str, grace_period_s: float = 3600) -> None:
        self.url = url
        self.grace_period_s = grace_period_s
        self.label = redact_url(url)
        self._engine: sa.Engine | None = None
        #: What the last `discover()` found about the store as a whole (an unknown schema revision).
        self.discovery_issues: list[IngestIssue] = []

    def _connect(self) -> sa.Connection:
        if self._engine is None:
            self._engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        return self._engine.connect()

    def run_id(self, run_uuid: str) -> str:
        return stable_run_id(run_uuid, SOURCE_NAME.encode(), self.label.encode())

    def _schema_problem(self, connection: sa.Connection) -> tuple[str | None, str | None]:
        """(revision, why the store cannot be read or None)."""
        inspector = sa.inspect(connection)
        tables = set(inspector.get_table_names())
        revision = None
        if "alembic_version" in tables:
            found = connection.exec_driver_sql("SELECT version_num FROM alembic_version").fetchall()
            revision = found[0][0] if found else None
        missing = []
        for table, columns in REQUIRED_SQL_COLUMNS.items():
            have = {c["name"] for c in inspector.get_columns(table)} if table in tables else set()
            missing.extend(f"{table}.{column}" for column in sorted(columns - have))
        return revision, (f"not an MLflow store this reader knows: missing {', '.join(missing)}" if missing else None)

    def _revision_issues(self, revision: str | None) -> list[IngestIssue]:
        """One issue for the store when its schema revision is newer than this reader knows: the
        store is still read by column names, which every MLflow release so far has kept."""
        if revision in KNOWN_SQL_REVISIONS:
            return []
        return [
            IngestIssue(
                self.label,
                "unknown_schema_version",
                f"alembic revision {revision!r} is not one this reader was written for (MLflow up to 3.18); "
                "read by column names",
                "nothing (columns whose meaning changed would be misread)",
                source=SOURCE_NAME,
            )
        ]

    @staticmethod
    def _metrics_stamp(connection: sa.Connection) -> str:
        """SQL for what changes when a run's metrics change. SQLite: the run's largest rowid, one
        seek in the run_uuid index (a new row gets a larger one); elsewhere: count, last
        timestamp and last step, which scan the run's rows."""
        if connection.dialect.name in SQLITE_DIALECTS:
            return "(SELECT MAX(rowid) FROM metrics m WHERE m.run_uuid = r.run_uuid)"
        return (
            "(SELECT COUNT(*) FROM metrics m WHERE m.run_uuid = r.run_uuid), "
            "(SELECT MAX(timestamp) FROM metrics m WHERE m.run_uuid = r.run_uuid), "
            "(SELECT MAX(step) FROM metrics m WHERE m.run_uuid = r.run_uuid)"
        )

    def discover(self) -> list[RunLocator]:
        try:
            with self._connect() as connection:
                revision, problem = self._schema_problem(connection)
                if problem:
                    raise MlflowSqlError(f"{self.label} (schema revision {revision}): {problem}")
                self.discovery_issues = self._revision_issues(revision)
                listing = connection.exec_driver_sql(
                    f"SELECT r.run_uuid, r.status, r.end_time, {self._metrics_stamp(connection)}, "
                    "(SELECT COUNT(*) FROM params p WHERE p.run_uuid = r.run_uuid), "
                    "(SELECT COUNT(*) FROM tags t WHERE t.run_uuid = r.run_uuid) "
                    "FROM runs r WHERE r.lifecycle_stage = 'active' ORDER BY r.start_time, r.run_uuid"
                ).fetchall()
        except sa.exc.SQLAlchemyError as exc:
            raise MlflowSqlError(f"{self.label}: {type(exc).__name__}: {exc}") from None
        return [
            RunLocator(
                self.name,
                f"{self.label}#{row[0]}",
                f"{revision}|" + "|".join(str(value) for value in row[1:]),
                run_id_hint=self.run_id(row[0]),
            )
            for row in listing
        ]

    def read(self, locator: RunLocator) -> ParsedRun:
        run_uuid = locator.location.rsplit("#", 1)[1]
        run_id = self.run_id(run_uuid)
        with self._connect() as connection:
            meta = connection.execute(
                sa.text(
                    "SELECT r.name, r.status, r.start_time, r.end_time, e.name FROM runs r "
                    "LEFT JOIN experiments e ON e.experiment_id = r.experiment_id WHERE r.run_uuid = :run"
                ),
                {"run": run_uuid},
            ).fetchone()
            metrics = sql_metric_columns(connection, run_uuid)
            params = dict(self._select(connection, "SELECT key, value FROM params", run_uuid))
            tags = dict(self._select(connection, "SELECT key, value FROM tags", run_uuid))
        if meta is None:
            raise MlflowSqlError(f"run {run_uuid} is no longer in {self.label}")
        name, status, start_ms, end_ms, experiment = meta
        rows = sql_metric_frame(metrics)
        history, history_issues = _history_from_rows(rows, run_id=run_id, location=locator.location, start_ms=start_ms)
        run = ParsedRun(
            run_id=run_id,
            source=SOURCE_NAME,
            location=locator.location,
            history=history,
            project=experiment,
            name=name or run_uuid,
            config={key: config_value(text) for key, text in params.items() if text is not None},
            fingerprint=locator.fingerprint,
        )
        apply_run_facts(run, status=status, start_ms=start_ms, end_ms=end_ms, tags=tags)
        if run.last_write is None and rows.height:
            run.last_write = utc_from_epoch(rows.get_column("timestamp_ms").max() / 1000)
        run.last_write = run.last_write or run.started_at or dt.datetime.now(dt.UTC)
        run.issues = [dataclasses.replace(i, run_id=run_id) for i in history_issues]
        return run

    @staticmethod
    def _select(connection: sa.Connection, query: str, run_uuid: str) -> list[Any]:
        return list(connection.execute(sa.text(query + " WHERE run_uuid = :run"), {"run": run_uuid}).fetchall())


def sql_metric_columns(connection: sa.Connection, run_uuid: str) -> pl.DataFrame:
    """The run's metric rows (key, step, value, is_nan, timestamp_ms), one query per key.

    SQLite files are read through the columnar ADBC driver when it is installed (Arrow columns,
    no Python object per value); otherwise, and for any other database, the driver's cursor is
    read straight into numpy columns: no Python tuple list, no key string per row, which is most
    of the cost of reading through SQLAlchemy rows (the floor is the driver's own row iteration).
    SQLite rows are then read as flat numbers (see FLAT_METRIC_QUERY)."""
    sqlite = connection.dialect.name in SQLITE_DIALECTS
    indexed = sqlite and RUN_KEY_INDEX in {i["name"] for i in sa.inspect(connection).get_indexes("metrics")}
    if indexed:
        keys = [row[0] for row in connection.exec_driver_sql(SQLITE_RUN_KEYS, (run_uuid,)).fetchall()]
    else:
        keys = connection.execute(
            sa.text("SELECT DISTINCT key FROM metrics WHERE run_uuid = :run"), {"run": run_uuid}
        ).scalars().all()
    database = connection.engine.url.database if sqlite else None
    parts = _columnar_metric_rows(database, run_uuid, keys, indexed) if database and _columnar_driver() else None
    if parts is None:
        parts = []
        for key in keys:
            rows = _flat_metric_rows(connection, run_uuid, key, indexed) if sqlite else None
            rows = rows if rows is not None else _typed_metric_rows(connection, run_uuid, key)
            parts.append(pl.DataFrame({name: rows[name] for name in SQL_METRIC_ROW.names}))
    rows = pl.concat(parts) if parts else pl.DataFrame(schema=SQL_METRIC_SCHEMA)
    codes = np.repeat(np.arange(len(keys), dtype=np.uint32), [part.height for part in parts])
    key = pl.Series("key", keys, dtype=pl.String).gather(codes)
    return rows.select(key, *SQL_METRIC_SCHEMA).cast(SQL_METRIC_SCHEMA)  # type: ignore[arg-type]


def _columnar_metric_rows(database: str, run_uuid: str, keys: list[str], indexed: bool) -> list[pl.DataFrame] | None:
    """Each key's rows through the ADBC driver (read-only), or None when the file cannot be
    opened that way or a column holds values of more than one type (the driver then returns
    text, with numbers rounded to 7 digits): the sqlite3 path reads such runs."""
    query = FLAT_METRIC_QUERY.format(index=f"INDEXED BY {RUN_KEY_INDEX}" if indexed else "")
    parts = []
    adbc_sqlite = _columnar_driver()
    try:
        with adbc_sqlite.connect(Path(database).resolve().as_uri() + "?mode=ro") as adbc, adbc.cursor() as cursor:
            for key in keys:
                cursor.execute(query, (run_uuid, key))
                table = cursor.fetch_arrow_table()
                if table.num_rows and table.schema.types != COLUMNAR_METRIC_TYPES:
                    return None
                frame = pl.from_arrow(table).rename({"timestamp": "timestamp_ms"})  # type: ignore[union-attr]
                parts.append(frame.cast(SQL_METRIC_SCHEMA))  # type: ignore[arg-type]
    except adbc_sqlite.Error:
        return None
    return parts


def _typed_metric_rows(connection: sa.Connection, run_uuid: str, key: str) -> np.ndarray:
    result = connection.execute(
        sa.text("SELECT step, value, is_nan, timestamp FROM metrics WHERE run_uuid = :run AND key = :key"),
        {"run": run_uuid, "key": key},
    )
    rows = np.fromiter(result.cursor, dtype=SQL_METRIC_ROW)
    result.close()
    return rows


def _flat_metric_rows(connection: sa.Connection, run_uuid: str, key: str, indexed: bool) -> np.ndarray | None:
    """A key's rows through FLAT_METRIC_QUERY, or None when a step or timestamp is too large to
    be exact in float64."""
    query = FLAT_METRIC_QUERY.format(index=f"INDEXED BY {RUN_KEY_INDEX}" if indexed else "")
    result = connection.exec_driver_sql(query, (run_uuid, key))
    flat = np.fromiter(itertools.chain.from_iterable(result.cursor), dtype=np.float64).reshape(-1, 4)
    result.close()
    if flat.size and np.abs(flat[:, ::3]).max() >= EXACT_FLOAT64_INTEGERS:
        return None
    rows = np.empty(len(flat), dtype=SQL_METRIC_ROW)
    for column, name in enumerate(SQL_METRIC_ROW.names):
        rows[name] = flat[:, column]
    return rows


def sql_metric_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """(key, step, value, is_nan, timestamp_ms) columns with MLflow's stand-ins for the
    non-finite floats undone: `is_nan` -> NaN, +-1.797e308 -> +-inf."""
    return frame.select(
        "key",
        "step",
        pl.when(pl.col("is_nan"))
        .then(float("nan"))
        .when(pl.col("value") >= SQL_INF_SENTINEL)
        .then(float("inf"))
        .when(pl.col("value") <= -SQL_INF_SENTINEL)
        .then(float("-inf"))
        .otherwise(pl.col("value"))
        .alias("value"),
        "timestamp_ms",
    )

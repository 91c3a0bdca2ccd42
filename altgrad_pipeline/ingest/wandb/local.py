"""Local W&B run folders (`wandb/run-*`, `wandb/offline-run-*`) as `ParsedRun`s.

One run can span several folders (a resumed run writes a new folder with the same id), and
`wandb/latest-run` may be a symlink or a committed second copy of a run: runs are grouped by id,
copies dropped, segments merged. Side files fill what the transaction log lacks (config of killed
runs, the summary of a log cut short) and SDK 0.8 folders have only JSON-lines files. Folder names
follow `wandb_names`; a `run-*` folder that does not parse is an issue, never skipped in silence.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from altgrad_pipeline.ingest.jsonlines import parse_json_lines
from altgrad_pipeline.ingest.model import IngestIssue, ParsedRun, RunLocator, empty_history
from altgrad_pipeline.ingest.wandb.history import MEDIA_SCHEMA, HistoryColumns, build_history
from altgrad_pipeline.ingest.wandb.log import WandbLog, read_wandb_log
from altgrad_pipeline.ingest.wandb.names import LATEST_RUN, LOG_NAME, RUN_FOLDER, named_like_run_folder
from altgrad_pipeline.ingest.wandb.records import BOOKKEEPING_KEYS, PRIVATE_KEY, RUNTIME_KEY, STEP_KEY, TIMESTAMP_KEY

SOURCE_NAME = "wandb-local"
#: Files whose size and mtime make up a run's fingerprint (and its last write); read only as needed.
SIDE_FILES = (
    "files/config.yaml",
    "files/wandb-summary.json",
    "files/wandb-metadata.json",
    "files/output.log",
    "logs/debug.log",
    "logs/debug-internal.log",
)
#: SDK 0.8 folders keep their files at the top level and have no `.wandb`.
OLD_FORMAT_FILES = (
    "wandb-history.jsonl",
    "wandb-events.jsonl",
    "wandb-summary.json",
    "wandb-metadata.json",
    "config.yaml",
    "output.log",
)
#: The only `wandb-metadata.json` fields read: the rest is host, e-mail, user name, git and args.
METADATA_FIELDS = ("state", "exitcode", "startedAt", "project")
#: Metadata fields read only to scrub them from config and summary text (HF Trainer's
#: `logging_dir` holds the host name, model paths the user name).
PRIVATE_METADATA_FIELDS = ("email", "host", "username")
REDACTED = "<redacted>"


@dataclass(frozen=True)
class RunFolder:
    path: Path
    run_id: str
    #: `YYYYMMDD_HHMMSS` from the folder name ("" for a `latest-run` copy): the order segments were written.
    stamp: str
    is_latest_copy: bool = False


def _latest_copy_id(path: Path) -> str | None:
    """Run id of a `latest-run` folder committed as a real directory (from its log's name)."""
    for entry in sorted(path.glob("run-*.wandb")):
        match = LOG_NAME.match(entry.name)
        if match:
            return match["id"]
    return None


def _holds_parquet(path: str) -> bool:
    """A `run-<id>-history` folder of Parquet files is a history export (the `wandb-export` reader's)."""
    try:
        with os.scandir(path) as entries:
            return any(entry.name.endswith(".parquet") for entry in entries)
    except OSError:
        return False


def _run_folders_in(wandb_dir: Path) -> tuple[list[RunFolder], list[Path]]:
    """The run folders of one `wandb` directory, and the folders named like one that do not parse."""
    folders: list[RunFolder] = []
    unrecognised: list[Path] = []
    with os.scandir(wandb_dir) as entries:
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue  # latest-run symlinks and `latest-run.<pid>` files point at folders listed anyway
            match = RUN_FOLDER.match(entry.name)
            if match:
                folders.append(RunFolder(Path(entry.path), match["id"], match["stamp"]))
            elif LATEST_RUN.match(entry.name):
                run_id = _latest_copy_id(Path(entry.path))
                if run_id:
                    folders.append(RunFolder(Path(entry.path), run_id, "", is_latest_copy=True))
            elif named_like_run_folder(entry.name) and not _holds_parquet(entry.path):
                unrecognised.append(Path(entry.path))
    return folders, unrecognised


def scan_run_folders(root: Path) -> tuple[list[RunFolder], list[Path]]:
    """Every run folder in every `wandb` directory under `root` (or `root` itself), and every
    folder there named `run-*` / `offline-run-*` that is not `[offline-]run-<stamp>-<id>`."""
    root = Path(root)
    if not root.is_dir():
        return [], []
    found: list[RunFolder] = []
    unrecognised: list[Path] = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if here.name == "wandb":
            folders, odd = _run_folders_in(here)
            found.extend(folders)
            unrecognised.extend(odd)
            dirnames[:] = [d for d in dirnames if not (named_like_run_folder(d) or LATEST_RUN.match(d))]
    return found, sorted(unrecognised)


def find_run_folders(root: Path) -> list[RunFolder]:
    """Every run folder in every `wandb` directory under `root` (or `root` itself)."""
    return scan_run_folders(root)[0]


def group_runs(folders: list[RunFolder]) -> dict[str, list[RunFolder]]:
    """Folders by run id, in the order they were written; a `latest-run` copy only counts when
    no real folder of that run exists."""
    groups: dict[str, list[RunFolder]] = {}
    for folder in sorted(folders, key=lambda f: (f.run_id, f.is_latest_copy, f.stamp, str(f.path))):
        group = groups.setdefault(folder.run_id, [])
        if folder.is_latest_copy and group:
            continue
        group.append(folder)
    return groups


def _log_path(folder: Path) -> Path | None:
    logs = sorted(folder.glob("*.wandb"))
    return logs[0] if logs else None


def _tracked_files(folder: Path) -> list[Path]:
    """The files that say whether a run folder changed: its log and side files."""
    log = _log_path(folder)
    names = SIDE_FILES if log is not None or not (folder / "wandb-history.jsonl").exists() else OLD_FORMAT_FILES
    return [p for p in ([log] if log else []) + [folder / name for name in names] if p.is_file()]


def fingerprint(folders: list[Path]) -> str:
    """Paths, sizes and mtimes of every tracked file: changes when any of them is rewritten."""
    parts = []
    for folder in folders:
        for path in _tracked_files(folder):
            stat = path.stat()
            parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
    return ";".join(parts)


def _issue(location: Path, kind: str, reason: str, lost: str) -> IngestIssue:
    return IngestIssue(location=str(location), source=SOURCE_NAME, kind=kind, reason=reason, lost=lost)


def unwrap_config(raw: Any) -> dict[str, Any]:
    """`config.yaml` in either dialect to plain values: `{desc, value}` (up to 0.16) and `{value}`
    (0.19+) wrappers removed, the `wandb_version` line and `_wandb` dropped."""
    if not isinstance(raw, dict):
        return {}
    plain: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("wandb_version", PRIVATE_KEY):
            continue
        if isinstance(value, dict) and "value" in value and set(value) <= {"desc", "value"}:
            value = value["value"]
        plain[str(key)] = value
    return plain


def _side_sdk_version(raw: Any) -> str | None:
    """`_wandb.value.cli_version` of a config.yaml (the only version an 0.8 folder records)."""
    private = raw.get(PRIVATE_KEY) if isinstance(raw, dict) else None
    value = private.get("value") if isinstance(private, dict) else None
    version = value.get("cli_version") if isinstance(value, dict) else None
    return str(version) if version else None


def _read_yaml(path: Path, issues: list[IngestIssue]) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        issues.append(_issue(path, "bad_side_file", f"cannot read config.yaml: {exc}", "the side-file config"))
        return None


def _read_json(path: Path, issues: list[IngestIssue]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes() or b"{}")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        issues.append(_issue(path, "bad_side_file", f"cannot read {path.name}: {exc}", f"the contents of {path.name}"))
        return {}
    if not isinstance(data, dict):
        issues.append(_issue(path, "bad_side_file", f"{path.name} is not a JSON object", f"the contents of {path.name}"))
        return {}
    return data


def _parse_started(text: Any) -> dt.datetime | None:
    """`startedAt` has no zone up to 0.16 and a `Z` later: both are UTC."""
    if not isinstance(text, str):
        return None
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


@dataclass
class Segment:
    """One folder of a run, read: its log (or 0.8 files) with side files folded in."""

    folder: RunFolder
    log: WandbLog
    side_summary_step: int | None
    last_write: dt.datetime | None

    @property
    def first_step(self) -> int | None:
        return self.log.history["step"].min() if self.log.history.height else None  # type: ignore[return-value]

    @property
    def last_step(self) -> int | None:
        return self.log.history["step"].max() if self.log.history.height else None  # type: ignore[return-value]


def _old_format_log(folder: Path, grace_period_s: float) -> WandbLog:
    """SDK 0.8: one JSON object per history line (bare NaN tokens are data), no `.wandb`."""
    path = folder / "wandb-history.jsonl"
    log = WandbLog(location=str(folder))
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.issues.append(_issue(path, "unreadable_file", f"cannot read the history: {exc}", "the whole history"))
        return log
    if not data:
        log.issues.append(_issue(path, "empty_log", "wandb-history.jsonl is 0 bytes", "nothing (no history was written)"))
        return log
    lines = parse_json_lines(data, location=str(path), source=SOURCE_NAME)
    log.issues.extend(lines.issues)
    if lines.partial_tail:
        age = time.time() - path.stat().st_mtime
        still = " (written recently: the run may still be writing it)" if age < grace_period_s else ""
        log.issues.append(
            _issue(path, "truncated_tail", f"the last line has no newline{still}", f"{len(lines.partial_tail)} bytes at the end")
        )
    columns = HistoryColumns()
    for position, record in enumerate(lines.records):
        step = record.get(STEP_KEY)
        names = [k for k in record if k not in BOOKKEEPING_KEYS]
        columns.keys.extend(names)
        columns.texts.extend(json.dumps(record[k]) for k in names)
        columns.row_steps.append(step if isinstance(step, int) and not isinstance(step, bool) else position)
        columns.row_counts.append(len(names))
        columns.row_runtimes.append(json.dumps(record.get(RUNTIME_KEY)))
        columns.row_timestamps.append(json.dumps(record.get(TIMESTAMP_KEY)))
    table = build_history(columns, run_id="", location=str(path), source=SOURCE_NAME)
    log.history, log.value_types, log.media = table.history, table.value_types, table.media
    log.issues.extend(table.issues)
    return log


def read_segment(folder: RunFolder, grace_period_s: float) -> Segment:
    """Read one run folder: its transaction log (or 0.8 history), then its side files."""
    path = folder.path
    log_path = _log_path(path)
    old_format = log_path is None and (path / "wandb-history.jsonl").exists()
    if log_path is not None:
        log = read_wandb_log(log_path, source=SOURCE_NAME, grace_period_s=grace_period_s)
    elif old_format:
        log = _old_format_log(path, grace_period_s)
    else:
        log = WandbLog(location=str(path))
        log.issues.append(
            _issue(path, "missing_log", "the run folder has no .wandb transaction log", "the run's history (side files only)")
        )
    side_dir = path if old_format else path / "files"
    issues = log.issues
    config_path, summary_path, metadata_path = (side_dir / n for n in ("config.yaml", "wandb-summary.json", "wandb-metadata.json"))
    if config_path.is_file():
        raw_config = _read_yaml(config_path, issues)
        log.config = {**unwrap_config(raw_config), **log.config}
        log.sdk_version = log.sdk_version or _side_sdk_version(raw_config)
    side_summary: dict[str, Any] = _read_json(summary_path, issues) if summary_path.is_file() else {}
    side_summary.pop(PRIVATE_KEY, None)
    summary_step = side_summary.get(STEP_KEY)
    side_step = summary_step if isinstance(summary_step, int) and not isinstance(summary_step, bool) else None
    log_last_step = log.history["step"].max() if log.history.height else None
    # A log that stops before the side file's step was cut short: the side file is the newer summary.
    side_is_newer = not log.ended and side_step is not None and (log_last_step is None or side_step > log_last_step)
    log.summary = {**log.summary, **side_summary} if side_is_newer else {**side_summary, **log.summary}
    full_metadata = _read_json(metadata_path, issues) if metadata_path.is_file() else {}
    metadata = {k: full_metadata[k] for k in METADATA_FIELDS if k in full_metadata}
    log.private_strings |= {
        v for k in PRIVATE_METADATA_FIELDS if isinstance(v := full_metadata.get(k), str) and len(v) >= 3
    }
    log.started_at = log.started_at or _parse_started(metadata.get("startedAt"))
    log.project = log.project or (metadata["project"] if isinstance(metadata.get("project"), str) else None)
    if old_format and metadata.get("state") not in (None, "running"):
        log.ended = True
        exit_code = metadata.get("exitcode")
        log.exit_code = exit_code if isinstance(exit_code, int) else (0 if metadata["state"] == "finished" else None)
    mtimes = [p.stat().st_mtime for p in _tracked_files(path)]
    return Segment(
        folder=folder,
        log=log,
        side_summary_step=side_step,
        last_write=dt.datetime.fromtimestamp(max(mtimes), dt.UTC) if mtimes else None,
    )


def redact(value: Any, pattern: re.Pattern[str] | None) -> Any:
    """`value` with every private string (as a whole word) replaced, through dicts and lists."""
    if pattern is None:
        return value
    if isinstance(value, str):
        return pattern.sub(REDACTED, value)
    if isinstance(value, dict):
        return {redact(k, pattern): redact(v, pattern) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, pattern) for v in value]
    return value


def _private_pattern(strings: set[str]) -> re.Pattern[str] | None:
    words = sorted((s for s in strings if len(s) >= 3), key=len, reverse=True)
    if not words:
        return None
    return re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, words)) + r")(?![A-Za-z0-9])")


def _merge_history(segments: list[Segment]) -> tuple[pl.DataFrame, list[IngestIssue]]:
    """Segments ordered by first step; when their step ranges overlap, the later write wins."""
    frames = [s.log.history for s in segments if s.log.history.height]
    if not frames:
        return empty_history(), []
    if len(frames) == 1:
        return frames[0], []
    merged = pl.concat(frames)
    ranges = [(f["step"].min(), f["step"].max()) for f in frames]
    if all(prev[1] < nxt[0] for prev, nxt in zip(ranges, ranges[1:])):  # type: ignore[operator]
        return merged, []
    deduped = merged.unique(subset=["step", "key"], keep="last", maintain_order=True).sort("step", "key", maintain_order=True)
    superseded = merged.height - deduped.height
    issues = []
    if superseded:
        issues.append(
            _issue(
                segments[0].folder.path,
                "duplicate_step",
                "resumed segments wrote the same (step, key); the later segment's value is kept",
                f"{superseded} superseded values",
            )
        )
    return deduped, issues


def merge_segments(segments: list[Segment], *, location: str, run_id_hint: str, fingerprint_text: str) -> ParsedRun:
    """One `ParsedRun` from a run's folders: facts in write order, history in step order."""
    written = sorted(segments, key=lambda s: (s.folder.stamp, s.log.started_at or dt.datetime.max.replace(tzinfo=dt.UTC)))
    by_step = sorted(segments, key=lambda s: (s.first_step is None, s.first_step or 0, s.folder.stamp))
    logs = [s.log for s in written]
    first = lambda attr: next((getattr(log, attr) for log in logs if getattr(log, attr)), None)  # noqa: E731
    run_id = first("run_id") or run_id_hint
    history, merge_issues = _merge_history(by_step)
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    value_types: dict[str, str] = {}
    tags: list[str] = []
    for log in logs:
        config.update(log.config)
        summary.update(log.summary)
        value_types.update(log.value_types)
        tags.extend(t for t in log.tags if t not in tags)
    last = written[-1]
    last_step = history["step"].max() if history.height else None
    cut_short = (
        not last.log.ended
        and last.side_summary_step is not None
        and (last_step is None or last.side_summary_step > last_step)  # type: ignore[operator]
    )
    issues = [
        dataclasses.replace(issue, run_id=run_id, source=SOURCE_NAME)
        for issue in [i for log in logs for i in log.issues] + merge_issues
    ]
    write_times = [s.last_write for s in segments if s.last_write]
    private = _private_pattern(set().union(*(log.private_strings for log in logs)))
    return ParsedRun(
        run_id=run_id,
        source=SOURCE_NAME,
        location=location,
        history=history.with_columns(pl.lit(run_id, pl.String).alias("run_id")),
        entity=first("entity"),
        project=first("project"),
        name=redact(first("name"), private),
        group=redact(first("group"), private),
        notes=redact(first("notes"), private),
        tags=redact(tags, private),
        config=redact(config, private),
        summary=redact(summary, private),
        ended=last.log.ended,
        exit_code=last.log.exit_code,
        started_at=min((log.started_at for log in logs if log.started_at), default=None),
        last_write=max(write_times, default=None),
        cut_short=cut_short,
        sdk_version=last.log.sdk_version or first("sdk_version"),
        log_layout=",".join(dict.fromkeys(log.log_layout for log in logs if log.log_layout)) or None,
        value_types=value_types,
        issues=issues,
        fingerprint=fingerprint_text,
    )


class LocalWandbSource:
    """Runs in local `wandb/` directories (online, offline and SDK 0.8 folders) under one root."""

    name = SOURCE_NAME

    def __init__(self, root: Path, grace_period_s: float = 3600):
        self.root = Path(root)
        self.grace_period_s = grace_period_s
        #: Folders named like run folders that do not parse, from the last `discover()`.
        self.discovery_issues: list[IngestIssue] = []

    def discover(self) -> list[RunLocator]:
        """One locator per run id, all its folders in `parts`; reads no file contents."""
        found, unrecognised = scan_run_folders(self.root)
        self.discovery_issues = [
            _issue(
                path,
                "unrecognised_run_folder",
                f"{path.name!r} is named like a W&B run folder but is not `[offline-]run-YYYYMMDD_HHMMSS-<run id>`",
                "whatever run the folder holds (not read)",
            )
            for path in unrecognised
        ]
        locators = []
        for run_id, folders in sorted(group_runs(found).items()):
            paths = [f.path for f in folders]
            locators.append(
                RunLocator(
                    source=self.name,
                    location=str(paths[0]),
                    fingerprint=fingerprint(paths),
                    run_id_hint=run_id,
                    parts=tuple(str(p) for p in paths),
                )
            )
        return locators

    def read(self, locator: RunLocator) -> ParsedRun:
        paths = [Path(p) for p in (locator.parts or (locator.location,))]
        folders = []
        for path in paths:
            match = RUN_FOLDER.match(path.name)
            folders.append(
                RunFolder(path, match["id"] if match else locator.run_id_hint or path.name, match["stamp"] if match else "",
                          is_latest_copy=match is None)
            )
        segments = [read_segment(folder, self.grace_period_s) for folder in folders]
        run = merge_segments(
            segments,
            location=locator.location,
            run_id_hint=locator.run_id_hint or folders[0].run_id,
            fingerprint_text=fingerprint(paths),
        )
        # The media values come from the same decode of each log: the catalog keeps them beside
        # the history, so the media assets need not read the logs again.
        found = [(s.log, files_dir) for s in segments if (files_dir := _files_dir(s.folder.path)) is not None]
        run.media = _media_with_files_dir(found)
        return run


#: A run's media values with the folder their relative `path`s resolve against.
RUN_MEDIA_SCHEMA: dict[str, pl.DataType] = {**MEDIA_SCHEMA, "files_dir": pl.String()}


def run_folders_at(location: Path) -> list[RunFolder]:
    """The folders of the run whose first folder is `location` (a catalog entry's location): it
    and every resumed folder of the same run id in the same `wandb` directory, in write order."""
    location = Path(location)
    match = RUN_FOLDER.match(location.name)
    run_id = match["id"] if match else _latest_copy_id(location)
    if run_id is None or not location.parent.is_dir():
        return [RunFolder(location, location.name, "", is_latest_copy=match is None)]
    folders = [f for f in _run_folders_in(location.parent)[0] if f.run_id == run_id]
    grouped = group_runs(folders).get(run_id, [])
    return grouped or [RunFolder(location, run_id, "", is_latest_copy=match is None)]


def _media_with_files_dir(logs: list[tuple[WandbLog, Path]]) -> pl.DataFrame:
    """The media values of a run's folders' logs (each with the folder its paths resolve against),
    in write order; where resumed folders logged the same (step, key) the later folder wins."""
    frames = [log.media.with_columns(pl.lit(str(files_dir), pl.String).alias("files_dir")) for log, files_dir in logs]
    if not frames:
        return pl.DataFrame(schema=RUN_MEDIA_SCHEMA)
    return (
        pl.concat(frames)
        .unique(subset=["step", "key"], keep="last", maintain_order=True)
        .sort("step", "key", maintain_order=True)
    )


def _files_dir(folder: Path) -> Path | None:
    """Where a folder's media paths resolve: `files/` beside a `.wandb` log, the folder itself for
    SDK 0.8; None when the folder has neither."""
    if _log_path(folder) is not None:
        return folder / "files"
    if (folder / "wandb-history.jsonl").exists():
        return folder
    return None


def read_run_media(location: Path, *, grace_period_s: float = 3600.0) -> pl.DataFrame:
    """Every media value (table, histogram, image, ...) a local run logged in its history
    (`RUN_MEDIA_SCHEMA`), over all its folders; where resumed folders logged the same (step, key)
    the later folder wins, as in the history. Damage to the logs is not reported here: the
    catalog read the same files and its `ingest_issues` already say what was lost. The catalog
    keeps what `LocalWandbSource.read` found (`ParsedRun.media`): this reads the folders again
    only for runs it cached before it kept media."""
    logs = []
    for folder in run_folders_at(location):
        log_path = _log_path(folder.path)
        if log_path is not None:
            log, files_dir = read_wandb_log(log_path, source=SOURCE_NAME, grace_period_s=grace_period_s), folder.path / "files"
        elif (folder.path / "wandb-history.jsonl").exists():
            log, files_dir = _old_format_log(folder.path, grace_period_s), folder.path
        else:
            continue
        logs.append((log, files_dir))
    return _media_with_files_dir(logs)

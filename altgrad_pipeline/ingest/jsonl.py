"""JSON-lines run logs: one `*.jsonl` file is one run.

Line shapes understood:
- flat metric records `{"step": 3, "loss": 1.2, "train/acc": 0.5}`; the step is the first of
  `step`, `_step`, `global_step`, `iter` present (the others stay metrics); `timestamp`/`_timestamp`/
  `time` and `runtime`/`_runtime` are the row's time, not metrics. Without any step field the
  0-based index of the metric line is the step (reported once per file as `no_step_field`);
- dr_exp records `{"step": 3, "metrics": {"train_loss": ..., "timestamp": ...}}`: the `metrics`
  container is transparent, nested dicts become '/'-joined keys (`val/acc`);
- dr_gen Hydra JSON-logger lines: `{"type": "dict_config", "value": {...}}` is the config,
  `{"type": "str", ...}` free text is ignored, `{"data_name": "train", "agg_stats": {...}}` gives
  `train/<stat>` at step = the number of earlier aggregate lines of that split. That step is an
  inferred epoch index: the log itself does not say which epoch a line belongs to.

Config precedence, first found wins (no merging, which could mix two runs' settings): the log's
own `dict_config` line (what the run itself wrote), then the dr_exp job file `jobs/<RUNID>.json`
in the nearest ancestor folder, then beside the log `config.json`, `config.yaml`, `hparams.yaml`,
then Hydra's `.hydra/config.yaml` beside the log or in its parent folder. The job file also gives
the status (`completed` -> ended with exit 0, `failed` -> ended with exit 1) and the tags.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
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
    utc_from_epoch,
)
from altgrad_pipeline.ingest.growing import ReadPosition, read_appended
from altgrad_pipeline.ingest.jsonl_fast import (
    FastRows,
    LineShape,
    Segment,
    split_segments,
)
from altgrad_pipeline.ingest.jsonlines import parse_json_lines
from altgrad_pipeline.ingest.model import IngestIssue, ParsedRun, RunLocator
from altgrad_pipeline.ingest.wandb.names import RUN_FOLDER

SOURCE_NAME = "jsonl"
STEP_FIELDS = ("step", "_step", "global_step", "iter")
TIMESTAMP_FIELDS = ("timestamp", "_timestamp", "time")
RUNTIME_FIELDS = ("runtime", "_runtime")
METRICS_CONTAINER = "metrics"
#: dr_gen writes this free-text line just before the end of a training that completed.
FINISHED_MARKER = "Training time"
JOB_STATUS_EXIT_CODES = {"completed": 0, "failed": 1}
RUN_NAME_KEYS = ("run_name", "name")
SIBLING_CONFIG_FILES = ("config.json", "config.yaml", "hparams.yaml")
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
#: How many logs that may still grow a source keeps parsed, to resume them from their last offset.
DEFAULT_CACHED_LOGS = 32

#: What the fast path must reproduce; typed (`type`) and aggregate (`data_name`) lines are left to `_take`.
LINE_SHAPE = LineShape(STEP_FIELDS, TIMESTAMP_FIELDS, RUNTIME_FIELDS, METRICS_CONTAINER, ("type", "data_name"))

def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _value_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer_beyond_float"
    return type(value).__name__


@dataclasses.dataclass
class LineValues:
    """One line's history values: numbers, and strings kept as logged (they go to `text`)."""

    numbers: dict[str, float] = dataclasses.field(default_factory=dict)
    texts: dict[str, str] = dataclasses.field(default_factory=dict)


def _flatten_values(
    mapping: dict[str, Any], prefix: str, values: LineValues, value_types: dict[str, str]
) -> None:
    """Numbers and strings go to `values` under '/'-joined keys; anything else only names its
    type. A dict with a `_type` (W&B-style media or histogram) is one non-scalar value, not a folder."""
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        number = _number(value)
        if number is not None:
            values.numbers[name] = number
        elif isinstance(value, str):
            values.texts[name] = value
        elif isinstance(value, dict) and isinstance(value.get("_type"), str):
            value_types[name] = value["_type"]
        elif isinstance(value, dict):
            _flatten_values(value, f"{name}/", values, value_types)
        elif value is not None:
            value_types[name] = _value_type(value)


def _pop_number(mappings: list[dict[str, Any]], fields: tuple[str, ...]) -> float | None:
    """The first numeric one of `fields` found in `mappings`, removed so it is not also a metric."""
    for mapping in mappings:
        for name in fields:
            number = _number(mapping.get(name))
            if number is not None:
                del mapping[name]
                return number
    return None


def _is_typed_line(record: dict[str, Any]) -> bool:
    return isinstance(record.get("type"), str) and set(record) <= {"type", "value"}


def _is_aggregate_line(record: dict[str, Any]) -> bool:
    return isinstance(record.get("data_name"), str) and isinstance(record.get("agg_stats"), dict)


def _says_finished(record: dict[str, Any]) -> bool:
    value = record.get("value")
    return (
        _is_typed_line(record)
        and record["type"] == "str"
        and isinstance(value, str)
        and value.strip().startswith(FINISHED_MARKER)
    )


class JsonlLog:
    """A JSONL run log as read so far. `update()` parses only the bytes appended since the last
    call (a partial last line waits for its newline), so following a growing log is cheap; any
    sequence of updates gives the same result as one read of the final file. A file that was
    truncated or replaced is read again from its start. Lines are read by the vectorised fast path
    (`jsonl_fast`) and the lines it declines by `parse_json_lines` + `_take`; `fast = False` reads
    everything the second way (the reference the fast path is tested against)."""

    fast = True

    def __init__(self, path: Path, *, location: str | None = None) -> None:
        self.path = path
        self.location = location or str(path)
        self._start_over()

    def _start_over(self) -> None:
        self.position = ReadPosition()
        self.next_line = 1
        self.partial_tail = b""
        self.metric_lines = 0
        self._step_missing_reported = False
        self.epochs_by_split: dict[str, int] = {}
        self.config: dict[str, Any] | None = None
        self.finished = False
        self.value_types: dict[str, str] = {}
        self.issues: list[IngestIssue] = []
        self._chunks: list[pl.DataFrame] = []
        #: Every row so far from the fast path, its lines' steps increasing: rows in (step, key)
        #: order with no (step, key) twice, which `keep_last_writes` then need not check.
        self._in_order = True
        self._last_step: int | None = None
        self._last_records: list[dict[str, Any]] = []

    def update(self) -> int:
        """Parse what was appended to the file since the last call; returns the new complete lines."""
        data = read_appended(self.path, self.position)
        if data is None:
            self._start_over()
            data = self.path.read_bytes()
        return self.feed(data)

    def feed(self, data: bytes) -> int:
        """Parse bytes that continue the log at `position`; returns the number of complete lines."""
        if self.position.offset == 0 and data.startswith(LFS_POINTER_PREFIX):
            self.issues.append(
                IngestIssue(
                    self.location,
                    "lfs_pointer",
                    "the file is a Git-LFS pointer, not the log (fetch it with `git lfs pull`)",
                    "the whole log",
                    source=SOURCE_NAME,
                )
            )
            self.position = self.position.advanced(data, len(data))
            return 0
        complete = data.rfind(b"\n") + 1
        if self.fast:
            segments, new_lines = split_segments(data[:complete], first_line=self.next_line, shape=LINE_SHAPE)
        else:
            segments, new_lines = [Segment(self.next_line, data=data[:complete])], data.count(b"\n", 0, complete)
        # The reference order of issues: a chunk's malformed lines first, then what its records say.
        taken_from, malformed = len(self.issues), []
        for segment in segments:
            if segment.rows is None:
                malformed.extend(self._take_lines(segment))
            else:
                self._take_rows(segment.rows)
        self.issues[taken_from:taken_from] = malformed
        self.next_line += new_lines
        self.position = self.position.advanced(data, complete)
        self.partial_tail = data[complete:]
        self.finished = any(_says_finished(r) for r in self._last_records)
        return new_lines

    def _take_lines(self, segment: Segment) -> list[IngestIssue]:
        """Lines the fast path declined, one by one; returns the malformed ones."""
        parsed = parse_json_lines(segment.data, location=self.location, source=SOURCE_NAME, first_line=segment.first_line)
        columns: dict[str, list[Any]] = {name: [] for name in ROWS_SCHEMA}
        for record, line in zip(parsed.records, parsed.line_numbers, strict=True):
            self._take(record, line, columns)
        if columns["line"]:
            self._chunks.append(pl.DataFrame(columns, schema=ROWS_SCHEMA))
            self._in_order = False
        self._last_records = (self._last_records + parsed.records)[-2:]
        return parsed.issues

    def _take_rows(self, rows: FastRows) -> None:
        """Metric lines the fast path read: what `_take` does for each, for all of them at once."""
        missing = rows.first_line_without_step
        if missing is not None and not self._step_missing_reported:
            self._report_missing_step(missing)
        self._chunks.append(rows.frame(self.metric_lines, ROWS_SCHEMA))
        steps = rows.line_steps(self.metric_lines)
        if steps.size:
            after_earlier = self._last_step is None or int(steps[0]) > self._last_step
            self._in_order &= after_earlier and bool(np.all(steps[1:] > steps[:-1]))
            self._last_step = int(steps[-1])
        self.metric_lines += rows.count
        self.value_types.update(rows.value_types)
        # Only the last two lines can be the end marker, and a metric line never is one.
        self._last_records = (self._last_records + [{}] * min(rows.count, 2))[-2:]

    def _report_missing_step(self, line: int) -> None:
        self._step_missing_reported = True
        self.issues.append(
            IngestIssue(
                self.location,
                "no_step_field",
                f"no {'/'.join(STEP_FIELDS)} field: the 0-based index of the metric line is used as the step",
                position=f"line {line}",
                source=SOURCE_NAME,
            )
        )

    def _take(self, record: dict[str, Any], line: int, columns: dict[str, list[Any]]) -> None:
        if _is_typed_line(record):
            if record["type"] == "dict_config" and isinstance(record.get("value"), dict) and self.config is None:
                self.config = record["value"]
            return
        values = LineValues()
        if _is_aggregate_line(record):
            split = record["data_name"]
            step = self.epochs_by_split.get(split, 0)
            self.epochs_by_split[split] = step + 1
            _flatten_values(record["agg_stats"], f"{split}/", values, self.value_types)
            self._add(columns, line, step, values, runtime=None, timestamp=None)
            return
        body = dict(record)
        container = dict(body.pop(METRICS_CONTAINER)) if isinstance(body.get(METRICS_CONTAINER), dict) else {}
        timestamp = _pop_number([body, container], TIMESTAMP_FIELDS)
        runtime = _pop_number([body, container], RUNTIME_FIELDS)
        step_field = next((name for name in STEP_FIELDS if name in body), None)
        metric_index = self.metric_lines
        self.metric_lines += 1
        if step_field is None:
            step = metric_index
            if not self._step_missing_reported:
                self._report_missing_step(line)
        else:
            raw_step = body.pop(step_field)
            number = _number(raw_step)
            if number is None or not number.is_integer() or abs(number) >= 2**63:
                self.issues.append(
                    IngestIssue(
                        self.location,
                        "bad_step",
                        f"{step_field} is {raw_step!r}, not a 64-bit integer",
                        f"line {line} ({len(body) + len(container)} fields)",
                        position=f"line {line}",
                        source=SOURCE_NAME,
                    )
                )
                return
            step = int(number)
        _flatten_values(body, "", values, self.value_types)
        _flatten_values(container, "", values, self.value_types)
        self._add(columns, line, step, values, runtime=runtime, timestamp=timestamp)

    @staticmethod
    def _add(
        columns: dict[str, list[Any]],
        line: int,
        step: int,
        values: LineValues,
        *,
        runtime: float | None,
        timestamp: float | None,
    ) -> None:
        numbers, texts = values.numbers, values.texts
        count = len(numbers) + len(texts)
        columns["line"].extend([line] * count)
        columns["step"].extend([step] * count)
        columns["key"].extend([*numbers, *texts])
        columns["value"].extend([*numbers.values(), *[None] * len(texts)])
        columns["text"].extend([*[None] * len(numbers), *texts.values()])
        columns["runtime"].extend([runtime] * count)
        columns["timestamp"].extend([timestamp] * count)

    def rows(self) -> pl.DataFrame:
        """Every metric value read so far, in write order (duplicates not yet resolved)."""
        return pl.concat(self._chunks) if self._chunks else pl.DataFrame(schema=ROWS_SCHEMA)

    def parsed_run(self, run_id: str) -> ParsedRun:
        """The log as a run: history with duplicates resolved, the in-log config, and the issues."""
        history, issues = keep_last_writes(
            self.rows(), run_id=run_id, location=self.location, source=SOURCE_NAME, in_order=self._in_order
        )
        if self.partial_tail:
            issues.append(
                IngestIssue(
                    self.location,
                    "partial_last_line",
                    "the last line has no newline yet (still being written); it is read once complete",
                    f"{len(self.partial_tail)} bytes, for now",
                    position=f"line {self.next_line}",
                    source=SOURCE_NAME,
                )
            )
        timestamps = history.get_column("timestamp").drop_nulls().drop_nans()
        return ParsedRun(
            run_id=run_id,
            source=SOURCE_NAME,
            location=self.location,
            history=history,
            name=self.path.stem,
            config=dict(self.config or {}),
            ended=self.finished,
            exit_code=0 if self.finished else None,
            started_at=utc_from_epoch(timestamps.min()) if timestamps.len() else None,
            last_write=mtime_utc(self.path),
            value_types=dict(self.value_types),
            issues=[dataclasses.replace(issue, run_id=run_id) for issue in [*self.issues, *issues]],
        )


def _is_wandb_file(relative: Path) -> bool:
    """W&B run folders (`run-20240101_120000-abc123`) and files (`wandb-history.jsonl`) belong to the W&B reader."""
    return relative.name.startswith("wandb-") or any(
        part == "wandb" or RUN_FOLDER.match(part) for part in relative.parts[:-1]
    )


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def dr_exp_job_files(log: Path, root: Path) -> list[Path]:
    """Where dr_exp keeps this run's job file: `<exp_root>/jobs/<RUNID>.json`, RUNID being the
    last '_' token of the log's folder name; nearest ancestor first, never above `root`."""
    run_token = log.parent.name.rsplit("_", 1)[-1]
    return [
        folder / "jobs" / f"{run_token}.json" for folder in [log.parent, *log.parent.parents] if _inside(folder, root)
    ]


def plain_config_files(log: Path, root: Path) -> list[Path]:
    """Config files beside the log, then Hydra's, in precedence order (see the module docstring)."""
    here = log.parent
    hydra = [folder / HYDRA_CONFIG for folder in (here, here.parent) if _inside(folder, root)]
    return [*(here / name for name in SIBLING_CONFIG_FILES), *hydra]


class JsonlSource:
    """Every `*.jsonl` under `root` that is not a W&B file is one run.

    A log that may still be written (not ended, modified within `grace_period_s`) stays parsed
    so its next read parses only the appended bytes. Ended and quiet logs are dropped after
    their read, and at most `max_cached_logs` are kept (least recently read dropped first), so
    a long-lived process does not grow with the number of runs it has seen; a dropped log that
    grows after all is simply read again from its start."""

    name = SOURCE_NAME

    def __init__(self, root: Path, grace_period_s: float = 3600, max_cached_logs: int = DEFAULT_CACHED_LOGS) -> None:
        self.root = Path(root)
        self.grace_period_s = grace_period_s
        self.max_cached_logs = max_cached_logs
        self.label = str(self.root)
        #: Logs that may still grow, least recently read first.
        self._logs: OrderedDict[Path, JsonlLog] = OrderedDict()

    def run_id(self, path: Path) -> str:
        return stable_run_id(path.stem, relative_posix(path, self.root).encode())

    def discover(self) -> list[RunLocator]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"run store folder {self.root} does not exist")
        locators = []
        for path in sorted(listing.rglob(self.root, "*.jsonl")):
            if _is_wandb_file(path.relative_to(self.root)) or not path.is_file():
                continue
            config_files = [*dr_exp_job_files(path, self.root), *plain_config_files(path, self.root)]
            stamps = [file_stamp(path), *(file_stamp(p) for p in config_files if p.exists())]
            locators.append(
                RunLocator(
                    source=self.name, location=str(path), fingerprint=";".join(stamps), run_id_hint=self.run_id(path)
                )
            )
        return locators

    def read(self, locator: RunLocator) -> ParsedRun:
        path = Path(locator.location)
        log = self._logs.pop(path, None) or JsonlLog(path, location=locator.location)
        log.update()
        run_id = self.run_id(path)
        run = log.parsed_run(run_id)
        job_config = self._apply_job_file(run, path)
        if log.config is None:
            run.config = job_config if job_config is not None else self._sibling_config(run, path)
        run_name = next((run.config[k] for k in RUN_NAME_KEYS if isinstance(run.config.get(k), str)), None)
        run.name = run_name or run.name
        run.fingerprint = locator.fingerprint
        if not run.ended and self._written_recently(path):
            self._keep(path, log)
        return run

    def _written_recently(self, path: Path) -> bool:
        try:
            return time.time() - path.stat().st_mtime < self.grace_period_s
        except OSError:
            return False

    def _keep(self, path: Path, log: JsonlLog) -> None:
        self._logs[path] = log
        while len(self._logs) > self.max_cached_logs:
            self._logs.popitem(last=False)

    def _apply_job_file(self, run: ParsedRun, log: Path) -> dict[str, Any] | None:
        """Status and tags from the dr_exp job file, if there is one; returns its config."""
        job_file = next((p for p in dr_exp_job_files(log, self.root) if p.is_file()), None)
        if job_file is None:
            return None
        job, issues = load_config_file(job_file, source=SOURCE_NAME)
        run.issues.extend(dataclasses.replace(issue, run_id=run.run_id) for issue in issues)
        if job is None:
            return None
        exit_code = JOB_STATUS_EXIT_CODES.get(str(job.get("status")))
        if exit_code is not None:
            run.ended, run.exit_code = True, exit_code
        run.tags = [str(tag) for tag in job.get("tags") or [] if tag is not None]
        config = job.get("config")
        return config if isinstance(config, dict) else None

    def _sibling_config(self, run: ParsedRun, log: Path) -> dict[str, Any]:
        for candidate in plain_config_files(log, self.root):
            if not candidate.is_file():
                continue
            config, issues = load_config_file(candidate, source=SOURCE_NAME)
            run.issues.extend(dataclasses.replace(issue, run_id=run.run_id) for issue in issues)
            if config is not None:
                return config
        return {}

"""The TensorBoard run source: a directory that directly holds `events.out.tfevents.*` files is one
run; its event files combined in name order (`TensorBoardRun`), hyperparameters and project.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from altgrad_pipeline.ingest import listing
from altgrad_pipeline.ingest.files import (
    file_stamp,
    load_config_file,
    mtime_utc,
    relative_posix,
    stable_run_id,
    utc_from_epoch,
)
from altgrad_pipeline.ingest.model import HISTORY_SCHEMA, IngestIssue, ParsedRun, RunLocator
from altgrad_pipeline.ingest.tensorboard.events import NO_TEXT, POINT_DTYPES, SOURCE_NAME, EventFile

EVENT_FILE_GLOB = "events.out.tfevents.*"
#: Lightning writes its hyperparameters beside the event file as well.
LIGHTNING_HPARAMS = "hparams.yaml"
#: The hyperparameter that names the run's project (see the package docstring).
PROJECT_HPARAM = "project"


def _superseded(step: np.ndarray, starts: list[tuple[int, int]]) -> np.ndarray:
    """Which points a later SessionLog.START orphaned: read before a START at a step <= theirs.
    Points are in read order, and each START is given as the row it came before."""
    if not starts:
        return np.zeros(step.size, dtype=bool)
    start_row = np.array([s for s, _ in starts], dtype=np.int64)
    start_step = np.array([t for _, t in starts], dtype=np.int64)
    order = np.argsort(start_row, kind="stable")
    start_row, start_step = start_row[order], start_step[order]
    # The lowest START step among the STARTs after each one (inclusive).
    lowest_after = np.minimum.accumulate(start_step[::-1])[::-1]
    following = np.searchsorted(start_row, np.arange(step.size), side="right")
    has_following = following < start_row.size
    threshold = np.where(has_following, lowest_after[np.minimum(following, start_row.size - 1)], np.iinfo(np.int64).max)
    return step >= threshold


class TensorBoardRun:
    """The event files of one run directory, read incrementally and combined in name order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.tags: dict[str, int] = {}
        self.tag_plugins: dict[str, str] = {}
        self.texts: list[str] = []
        self.files: dict[Path, EventFile] = {}

    def update(self, paths: list[Path]) -> None:
        for path in paths:
            events = self.files.get(path)
            if events is None or not events.continues():
                events = self.files[path] = EventFile(path, self.tags, self.tag_plugins, self.texts)
            events.update()
        for gone in set(self.files) - set(paths):
            del self.files[gone]

    def parsed_run(self, run_id: str, paths: list[Path]) -> ParsedRun:
        issues: list[IngestIssue] = []
        pieces, starts, offset = [], [], 0
        first_wall_time = None
        hparams: dict[str, Any] = {}
        value_types: dict[str, str] = {}
        for path in paths:
            events = self.files[path]
            pieces.append(events.points.columns())
            starts.extend((row + offset, step) for row, step in events.starts)
            offset += events.points.rows
            if first_wall_time is None:
                first_wall_time = events.first_wall_time
            hparams.update(events.hparams)
            for tag, kind in events.value_types.items():
                value_types.setdefault(tag, kind)
            issues.extend(events.issues)
            if events.torn_tail:
                issues.append(
                    IngestIssue(
                        str(path),
                        "torn_record",
                        "the last record is incomplete (the file is still being written); it is read once complete",
                        f"{events.torn_tail} bytes, for now",
                        position=f"byte {events.position.offset}",
                        source=SOURCE_NAME,
                    )
                )
        # One file (the usual case) is used as it is, without a copy.
        if len(pieces) == 1:
            points = pieces[0]
        else:
            points = {name: np.concatenate([piece[name] for piece in pieces]) for name in POINT_DTYPES}
        points, restart_issues = self._apply_restarts(points, starts)
        issues.extend(restart_issues)
        history, duplicate_issues = self._history(points, run_id, first_wall_time)
        issues.extend(duplicate_issues)
        return ParsedRun(
            run_id=run_id,
            source=SOURCE_NAME,
            location=str(self.directory),
            history=history,
            name=self.directory.name,
            config=hparams,
            started_at=utc_from_epoch(first_wall_time) if first_wall_time is not None else None,
            last_write=max((t for t in (mtime_utc(p) for p in paths) if t is not None), default=None),
            value_types=value_types,
            issues=[dataclasses.replace(issue, run_id=run_id) for issue in issues],
        )

    def _apply_restarts(
        self, points: dict[str, np.ndarray], starts: list[tuple[int, int]]
    ) -> tuple[dict[str, np.ndarray], list[IngestIssue]]:
        dropped = _superseded(points["step"], starts)
        if not dropped.any():
            return points, []
        gone = points["step"][dropped]
        restart_steps = sorted({step for _, step in starts})
        issue = IngestIssue(
            str(self.directory),
            "restart_superseded",
            f"SessionLog.START at step(s) {restart_steps[:10]} (a restart from a checkpoint): points logged "
            f"before it at that step or later were orphaned and are replaced by the restarted run's",
            f"{gone.size} values at steps {gone.min()}..{gone.max()}",
            source=SOURCE_NAME,
        )
        return {name: column[~dropped] for name, column in points.items()}, [issue]

    def _history(
        self, points: dict[str, np.ndarray], run_id: str, first_wall_time: float | None
    ) -> tuple[pl.DataFrame, list[IngestIssue]]:
        """Long history sorted by (step, key): a (step, key) logged twice keeps its last value.
        Points already in that order (a scalar log's usual case) are neither sorted nor copied."""
        step, tag = points["step"], points["tag"]
        later = (step[1:] > step[:-1]) | ((step[1:] == step[:-1]) & (tag[1:] >= tag[:-1]))
        if not later.all():
            order = np.lexsort((tag, step))  # stable: writes of one (step, tag) stay in read order
            points = {name: column[order] for name, column in points.items()}
            step, tag = points["step"], points["tag"]
        last_of_group = np.ones(step.size, dtype=bool)
        last_of_group[:-1] = (step[1:] != step[:-1]) | (tag[1:] != tag[:-1])
        issues = []
        if not last_of_group.all():
            value, text = points["value"], self._canonical_texts(points["text"])
            differs = np.zeros(step.size, dtype=bool)
            same_value = (value[1:] == value[:-1]) | (np.isnan(value[1:]) & np.isnan(value[:-1]))
            differs[:-1] = ~last_of_group[:-1] & ~(same_value & (text[1:] == text[:-1]))
            if differs.any():
                first = int(np.flatnonzero(differs)[0])
                names = {code: name for name, code in self.tags.items()}
                issues.append(
                    IngestIssue(
                        str(self.directory),
                        "duplicate_step",
                        f"{int(differs.sum())} values logged again at a (step, tag) already written, with a "
                        f"different value (first: {names[int(tag[first])]!r} at step {int(step[first])}); the last "
                        f"write is kept",
                        f"{int(differs.sum())} earlier values",
                        source=SOURCE_NAME,
                    )
                )
            points = {name: column[last_of_group] for name, column in points.items()}
        names = pl.Series("key", sorted(self.tags, key=self.tags.__getitem__), dtype=pl.String)
        origin = first_wall_time if first_wall_time is not None else math.nan
        # The numpy columns are taken by Polars without a copy.
        kept = pl.DataFrame({name: points[name] for name in ("step", "value", "timestamp")})
        text = points["text"]
        has_text = bool((text != NO_TEXT).any())
        if has_text:
            # Index len(texts) is the null appended after the strings: numbers get no text.
            strings = pl.Series("text", [*self.texts, None], dtype=pl.String)
            kept = kept.with_columns(strings.gather(np.where(text == NO_TEXT, len(self.texts), text)))
        history = kept.select(
            pl.lit(run_id, pl.String).alias("run_id"),
            "step",
            names.gather(pl.Series(points["tag"])).alias("key") if names.len() else pl.lit(None, pl.String).alias("key"),
            pl.when(pl.col("text").is_null()).then("value").alias("value") if has_text else "value",
            "text" if has_text else pl.lit(None, pl.String).alias("text"),
            (pl.col("timestamp") - origin).alias("runtime"),
            "timestamp",
        )
        return history.cast(HISTORY_SCHEMA), issues  # type: ignore[arg-type]

    def _canonical_texts(self, text: np.ndarray) -> np.ndarray:
        """Text indices made equal for equal strings (NO_TEXT stays), so a text logged twice
        with the same words is a repeat, not a rewrite."""
        if not self.texts or not (text != NO_TEXT).any():
            return text
        _, canonical = np.unique(np.array(self.texts, dtype=object), return_inverse=True)
        return np.where(text == NO_TEXT, NO_TEXT, canonical[np.maximum(text, 0)])


def event_file_groups(root: Path) -> dict[Path, list[Path]]:
    """Run directory -> its event files in name order (TensorBoard's reading order)."""
    groups: dict[Path, list[Path]] = {}
    for path in listing.rglob(root, EVENT_FILE_GLOB):
        if path.is_file():
            groups.setdefault(path.parent, []).append(path)
    return {folder: sorted(files, key=lambda p: p.name) for folder, files in sorted(groups.items())}


class TensorBoardSource:
    """Every directory under `root` that directly holds event files is one run."""

    name = SOURCE_NAME

    def __init__(self, root: Path, grace_period_s: float = 3600) -> None:
        self.root = Path(root)
        self.grace_period_s = grace_period_s
        self.label = str(self.root)
        self._runs: dict[Path, TensorBoardRun] = {}

    def run_id(self, directory: Path) -> str:
        relative = relative_posix(directory, self.root)
        readable = re.sub(r"^\.$", self.root.name, relative).replace("/", "_")
        return stable_run_id(readable, SOURCE_NAME.encode(), relative.encode())

    def discover(self) -> list[RunLocator]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"run store folder {self.root} does not exist")
        locators = []
        for directory, files in event_file_groups(self.root).items():
            hparams = directory / LIGHTNING_HPARAMS
            stamps = [file_stamp(p) for p in files] + ([file_stamp(hparams)] if hparams.is_file() else [])
            locators.append(
                RunLocator(
                    source=self.name,
                    location=str(directory),
                    fingerprint=";".join(stamps),
                    run_id_hint=self.run_id(directory),
                    parts=tuple(str(p) for p in files),
                )
            )
        return locators

    def read(self, locator: RunLocator) -> ParsedRun:
        directory = Path(locator.location)
        files = sorted((p for p in directory.glob(EVENT_FILE_GLOB) if p.is_file()), key=lambda p: p.name)
        reader = self._runs.setdefault(directory, TensorBoardRun(directory))
        reader.update(files)
        run = reader.parsed_run(self.run_id(directory), files)
        if not run.config and (directory / LIGHTNING_HPARAMS).is_file():
            config, issues = load_config_file(directory / LIGHTNING_HPARAMS, source=SOURCE_NAME)
            run.config = config or {}
            run.issues.extend(dataclasses.replace(issue, run_id=run.run_id) for issue in issues)
        project = run.config.get(PROJECT_HPARAM)
        run.project = project if isinstance(project, str) and project else None
        run.fingerprint = locator.fingerprint
        return run

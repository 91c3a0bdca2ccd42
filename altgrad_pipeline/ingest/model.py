"""The shapes every run source produces: one `ParsedRun` per run, plus `IngestIssue` rows.

Sources (local W&B folders, the W&B API, JSONL, CSV, ...) differ in how they read; they all hand
back the same structure, so tables, analysis and reports never care where a run came from.
No Dagster import here: this is plain Python + Polars.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Protocol

import polars as pl

#: Long (tidy) history: one row per (run_id, step, key). NaN and +-inf are kept as they are. A
#: string value is kept as logged in `text` with `value` null (even one that reads as a number).
HISTORY_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "step": pl.Int64(),
    "key": pl.String(),
    "value": pl.Float64(),
    "text": pl.String(),
    "runtime": pl.Float64(),
    "timestamp": pl.Float64(),
}

#: Every file, chunk, line or record that could not be used, and what was lost with it.
ISSUE_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "source": pl.String(),
    "location": pl.String(),
    "position": pl.String(),
    "kind": pl.String(),
    "reason": pl.String(),
    "lost": pl.String(),
}

#: Keys whose values are neither numbers nor strings (images, tables, histograms, ...): key -> type name.
VALUE_TYPES_SCHEMA: dict[str, pl.DataType] = {"key": pl.String(), "value_type": pl.String()}


def empty_history() -> pl.DataFrame:
    return pl.DataFrame(schema=HISTORY_SCHEMA)


def numeric_history(histories: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """The rows holding a number: string rows have a null `value`, which numeric analyses must
    not mistake for a missing or last value."""
    return histories.lazy().filter(pl.col("value").is_not_null())


@dataclass(frozen=True)
class IngestIssue:
    """Something in the input that could not be used. `lost` says what data went with it."""

    location: str
    kind: str
    reason: str
    lost: str = "nothing"
    position: str | None = None
    run_id: str | None = None
    source: str | None = None

    def as_row(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "source": self.source,
            "location": self.location,
            "position": self.position,
            "kind": self.kind,
            "reason": self.reason,
            "lost": self.lost,
        }


def issues_frame(issues: list[IngestIssue]) -> pl.DataFrame:
    return pl.DataFrame([i.as_row() for i in issues], schema=ISSUE_SCHEMA)


@dataclass
class ParsedRun:
    """One run as read from its source, before any study-specific derivation.

    `config` holds plain values (W&B's `{desc, value}` wrappers removed, `_wandb` dropped: it
    carries host names and e-mail addresses). `summary` is the folded final summary.
    `ended` is True when the source recorded an end (W&B exit record, MLflow end time, ...);
    `exit_code` is its code when known. `last_write` is when the source last changed (file
    mtime, API `updatedAt`): with `ended` it decides running vs crashed. `cut_short` is True
    when there is evidence the log lost its tail (e.g. wandb-summary.json `_step` ahead of the
    last history step), which means the run is not still running whatever the file age.
    """

    run_id: str
    source: str
    location: str
    history: pl.DataFrame = field(default_factory=empty_history)
    entity: str | None = None
    project: str | None = None
    name: str | None = None
    group: str | None = None
    notes: str | None = None
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    ended: bool = False
    exit_code: int | None = None
    started_at: dt.datetime | None = None
    last_write: dt.datetime | None = None
    cut_short: bool = False
    url: str | None = None
    sdk_version: str | None = None
    #: Block layout of a `.wandb` log (`standard`, `wandb-core-0.17`); None for other sources.
    log_layout: str | None = None
    value_types: dict[str, str] = field(default_factory=dict)
    issues: list[IngestIssue] = field(default_factory=list)
    #: What reading was keyed on, for incremental ingest (paths with size and mtime, or API updatedAt).
    fingerprint: str = ""
    #: The W&B media values of the history (tables, histograms, ...) with the folder their paths
    #: resolve against (`wandb.local.RUN_MEDIA_SCHEMA`), from the same decode as the history; the
    #: catalog keeps them beside it. None for sources whose media are not read this way.
    media: pl.DataFrame | None = None


class RunSource(Protocol):
    """Anything that can list runs and read one. New kinds of store implement these two calls.

    A source may also keep `discovery_issues` (a list of `IngestIssue`): what its last `discover()`
    found about the store as a whole, recorded once per sync rather than on every run."""

    name: str

    def discover(self) -> list[RunLocator]: ...

    def read(self, locator: RunLocator) -> ParsedRun: ...


@dataclass(frozen=True)
class RunLocator:
    """Where one run lives and a cheap fingerprint of its current content (size and mtime, or
    the API's updatedAt), so a refresh re-reads only runs whose fingerprint changed."""

    source: str
    location: str
    fingerprint: str
    run_id_hint: str | None = None
    #: Extra places that belong to the same run (resumed segments): part of its identity.
    parts: tuple[str, ...] = ()

"""Runs read from a W&B server through the public `wandb.Api` client.

`ALTGRAD_RUNS` names a project as `wandb://entity/project`, optionally narrowed by a query string:
`?filters=<JSON>` passes a MongoDB-style filter as is (`{"config.fp8_format": "E5M2"}`), any other
`key=value` pair becomes an equality (`?config.fp8_format=E5M2&state=finished`; values that parse
as JSON, such as `32` or `true`, are compared as such).

What the client really sends (wandb 0.31, through its wandb-core sidecar): `Runs` to list (the
light fragment: no config, summary or `updatedAt`), `Run` with the full fragment to read one run,
then the history. Where the server keeps Parquet exports of a run's history (`RunParquetHistory`
answers with file URLs), the client's `run.download_history_exports()` fetches those files and
they are read with the history-export reader (`wandb_export`): a few large downloads instead of
one JSON `HistoryPage` per 1000 steps. Rows logged since the last export (the answer's live data,
a running run's tail) are paged with `scan_history(min_step=...)`. A run without exports, or whose
exports fail to download or to read, is paged whole with `scan_history()` (`RunHistoryKeys`,
then `HistoryPage`s); the 500-point sampled `history()` is never used. Because `updatedAt` is not
among the fields the client asks for, a run's fingerprint is `heartbeatAt`, `state`, `historyLineCount` and a digest of its tags, name, group and
notes: it changes whenever the run logs, ends or is relabelled.

wandb-core already retries 429 and 5xx answers with exponential backoff (about 2 s, doubling) and
honours `Retry-After`; this module only bounds that with `x_graphql_retry_max` instead of adding a
second retry loop, and turns a final failure into an `IngestIssue`. The API key stays with the
client (it reads `WANDB_API_KEY`); texts this module produces are scrubbed of it all the same.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import tempfile
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from altgrad_pipeline import atomic
from altgrad_pipeline.ingest.model import HISTORY_SCHEMA, IngestIssue, ParsedRun, RunLocator
from altgrad_pipeline.ingest.wandb.export import read_history_export

log = logging.getLogger(__name__)

SCHEME = "wandb://"
#: Rows per `HistoryPage` request; wandb's own default, which the W&B backend is tuned for.
HISTORY_PAGE_SIZE = 1000
#: How W&B (and Python's json) spell the non-finite floats when they arrive as strings.
NON_FINITE_STRINGS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
#: Issues of the export reader meaning a downloaded part was lost: the history is paged instead.
UNUSABLE_EXPORT = ("unreadable_export", "not_a_history_export")
#: What a secret is replaced with in every text this module keeps.
REDACTED = "[redacted]"
#: History columns that are the row's coordinates rather than metrics.
ROW_COORDINATES = ("_step", "_runtime", "_timestamp")


def parse_wandb_uri(uri: str) -> tuple[str, dict[str, Any]]:
    """`wandb://entity/project?...` -> (`entity/project`, filters); see the module docstring."""
    parts = urllib.parse.urlsplit(uri)
    path = f"{parts.netloc}{parts.path}".strip("/")
    if uri[: len(SCHEME)].lower() != SCHEME or path.count("/") != 1:
        raise ValueError(f"expected wandb://entity/project, got {uri!r}")
    filters: dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key == "filters":
            filters.update(json.loads(value))
            continue
        try:
            filters[key] = json.loads(value)
        except json.JSONDecodeError:
            filters[key] = value
    return path, filters


def default_api_factory(max_retries: int, timeout_s: int) -> Callable[[], Any]:
    """A `wandb.Api` whose wandb-core retries are bounded: its default keeps retrying for minutes.

    `x_graphql_retry_max` is a process-wide wandb setting (wandb.Api copies the global settings).
    """

    def make_api() -> Any:
        import wandb

        wandb.setup(wandb.Settings(x_graphql_retry_max=max_retries))
        return wandb.Api(timeout=timeout_s)

    return make_api


class WandbApiSource:
    """Lists and reads the runs of one W&B project, keeping a local copy of each run's history so
    a refresh downloads only runs that are new or changed since the last one.

    `path` is `entity/project`, optionally with the query string of the module docstring (or a
    whole `wandb://` URI); `filters` adds to what the query string says.
    """

    name = "wandb-api"

    def __init__(
        self,
        path: str,
        cache_dir: Path,
        filters: dict[str, Any] | None = None,
        grace_period_s: float = 3600,
        api_factory: Callable[[], Any] | None = None,
        max_retries: int = 5,
        timeout_s: int = 30,
    ):
        # `path` may still carry its query string (an ALTGRAD_RUNS entry minus the scheme).
        self.path, uri_filters = parse_wandb_uri(path if path.startswith(SCHEME) else SCHEME + path)
        self.entity, self.project = self.path.split("/")
        self.cache_dir = Path(cache_dir)
        self.filters = {**uri_filters, **(filters or {})}
        self.grace_period_s = grace_period_s
        self._api_factory = api_factory or default_api_factory(max_retries, timeout_s)
        self._api: Any = None

    # -- RunSource -------------------------------------------------------------------------------

    def discover(self) -> list[RunLocator]:
        """One locator per run matching the filters, from the run listing alone (no history)."""
        return self._list(self.filters)

    def discover_ended_since(self, since: dt.datetime) -> list[RunLocator]:
        """Locators of the matching runs the server updated after `since` (its `updatedAt`) and no
        longer calls running: the sensor's cheap question, since only ended runs trigger a refresh
        (a running run's every heartbeat updates it). Deleted runs are not among them; a full
        `discover()` drops those."""
        stamp = since.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds")
        news = [{"updatedAt": {"$gt": stamp}}, {"state": {"$ne": "running"}}]
        return self._list({"$and": [self.filters, *news] if self.filters else news})

    def _list(self, filters: dict[str, Any]) -> list[RunLocator]:
        try:
            api = self._client()
            api.flush()  # the client memoises listings per path and filter: always ask afresh
            runs = list(api.runs(self.path, filters=filters))
        except Exception as exc:  # the client raises many types; all mean "could not list"
            raise WandbApiError(f"listing {self.path} failed: {self._redact(exc)}") from None
        return [
            RunLocator(
                source=self.name,
                location=self._location(run.id),
                fingerprint=run_fingerprint(listing_fields(run)),
                run_id_hint=run.id,
            )
            for run in runs
        ]

    def read(self, locator: RunLocator) -> ParsedRun:
        """The run from the local copy when its fingerprint is unchanged, else from the server.

        A failed download never raises: the issue is returned with the last local copy, if any.
        """
        run_id = locator.run_id_hint or locator.location.rsplit("/", 1)[-1]
        cached = self._load_cache(run_id)
        if cached is not None and cached.fingerprint == locator.fingerprint:
            return cached
        try:
            parsed, state = self._fetch(run_id, locator.location)
        except Exception as exc:  # network, auth, rate limit after retries, missing run, ...
            issue = IngestIssue(
                location=locator.location,
                source=self.name,
                run_id=run_id,
                kind="api_error",
                reason=f"W&B API request failed: {self._redact(exc)}",
                lost="the run's update since the local copy" if cached else "the whole run",
            )
            log.warning("W&B run %s not read: %s", run_id, issue.reason)
            stale = cached or ParsedRun(run_id=run_id, source=self.name, location=locator.location)
            stale.issues.append(issue)
            return stale
        parsed = self._scrubbed(parsed)
        self._store_cache(parsed, state)
        return parsed

    # -- fetching --------------------------------------------------------------------------------

    def _client(self) -> Any:
        if self._api is None:
            self._api = self._api_factory()
        return self._api

    def _location(self, run_id: str) -> str:
        return f"{SCHEME}{self.path}/{run_id}"

    def _fetch(self, run_id: str, location: str) -> tuple[ParsedRun, str]:
        """The run as read from the server, and its W&B state (kept with the local copy)."""
        api = self._client()
        api.flush()  # `Api.run` memoises Run objects per path: a changed run must be asked afresh
        run = api.run(f"{self.path}/{run_id}")
        fields = listing_fields(run)
        history, value_types, issues = self._history(run, run_id, location)
        state = fields["state"] or "unknown"
        last_write = parse_timestamp(fields["heartbeat_at"])
        ended, exit_code, cut_short = state_outcome(state, last_write, self.grace_period_s)
        log.info("W&B run %s read: %d history values, state %s", run_id, history.height, state)
        parsed = ParsedRun(
            run_id=run_id,
            source=self.name,
            location=location,
            history=history,
            entity=run.entity,
            project=run.project,
            name=fields["display_name"],
            group=fields["group"],
            notes=fields["notes"],
            tags=list(fields["tags"] or []),
            config={key: value for key, value in run.config.items() if not key.startswith("_")},
            summary={
                key: normalise_scalar(value) for key, value in run.summary_metrics.items() if key != "_wandb"
            },
            ended=ended,
            exit_code=exit_code,
            started_at=parse_timestamp(fields["created_at"]),
            last_write=last_write,
            cut_short=cut_short,
            url=run.url,
            value_types=value_types,
            issues=issues,
            fingerprint=run_fingerprint(fields),
        )
        return parsed, state

    def _history(self, run: Any, run_id: str, location: str) -> tuple[pl.DataFrame, dict[str, str], list[IngestIssue]]:
        """The run's full history: from its Parquet exports plus the live tail when the server has
        exports, else paged with `scan_history` (see the module docstring)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="exports-", dir=self.cache_dir) as folder:
            try:
                exports = run.download_history_exports(folder, require_complete_history=False)
            except Exception as exc:  # an older server without exports, or a failed download
                log.info("W&B run %s: no history exports (%s); paging its history", run_id, self._redact(exc))
                exports = None
            if exports is None or not exports.paths or exports.errors:
                if exports is not None and exports.errors:
                    log.warning("W&B run %s: %d export files failed to download; paging its history", run_id, len(exports.errors))
                return self._scanned_history(run, run_id, location, min_step=0)
            history, value_types, issues = read_history_export(
                exports.paths, run_id=run_id, location=location, source=self.name
            )
            if any(issue.kind in UNUSABLE_EXPORT for issue in issues):
                log.warning("W&B run %s: an export file is not a readable history; paging its history", run_id)
                return self._scanned_history(run, run_id, location, min_step=0)
        issues = [dataclasses.replace(issue, run_id=run_id) for issue in issues]
        if not exports.contains_live_data:
            return history, value_types, issues
        exported_up_to = history.get_column("step").max()
        tail, tail_types, tail_issues = self._scanned_history(
            run, run_id, location, min_step=0 if exported_up_to is None else int(exported_up_to) + 1
        )
        combined = pl.concat([history, tail]).sort("step", "key", maintain_order=True)
        return combined, {**tail_types, **value_types}, [*issues, *tail_issues]

    def _scanned_history(
        self, run: Any, run_id: str, location: str, *, min_step: int
    ) -> tuple[pl.DataFrame, dict[str, str], list[IngestIssue]]:
        rows = list(run.scan_history(page_size=HISTORY_PAGE_SIZE, min_step=min_step, use_cache=False))
        return history_frame(rows, run_id=run_id, location=location, source=self.name)

    def _redact(self, exc: BaseException) -> str:
        return self.redact(describe_error(exc))

    def _secret_forms(self) -> list[str]:
        """Every form of the API key (the environment's and the client's), longest first."""
        secrets = {os.environ.get("WANDB_API_KEY"), getattr(self._api, "api_key", None)} - {None, ""}
        return sorted({form for secret in secrets for form in secret_forms(secret)}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """`text` without the API key (the environment's or the client's), in any form a client or a
        misbehaving server may echo it: plain, URL-encoded, or as Basic-auth base64 of `api:<key>`."""
        for form in self._secret_forms():
            text = text.replace(form, REDACTED)
        return text

    def redact_frame(self, frame: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
        """`frame` with the key taken out of these string columns (history keys and texts, media JSON)."""
        forms = self._secret_forms()
        if not forms or frame.is_empty():
            return frame
        def scrub(column: str) -> pl.Expr:
            expr = pl.col(column)
            for form in forms:
                expr = expr.str.replace_all(form, REDACTED, literal=True)
            return expr
        return frame.with_columns(scrub(c) for c in columns if c in frame.columns)

    def _scrubbed(self, run: ParsedRun) -> ParsedRun:
        """The run without the key in any text the server sent (name, notes, tags, config and summary
        keys and values, history keys and strings, issues): a server that echoes the credentials
        back must not get them stored in the cache, the tables or the reports."""
        forms = self._secret_forms()
        if not forms:
            return run
        def scrub(value: Any) -> Any:
            return redact_value(value, forms)
        return dataclasses.replace(
            run,
            history=self.redact_frame(run.history, ("key", "text")),
            name=scrub(run.name),
            group=scrub(run.group),
            notes=scrub(run.notes),
            tags=scrub(run.tags),
            config=scrub(run.config),
            summary=scrub(run.summary),
            value_types=scrub(run.value_types),
            issues=[dataclasses.replace(i, reason=scrub(i.reason), lost=scrub(i.lost), position=scrub(i.position)) for i in run.issues],
        )

    # -- what a run logged besides its history ---------------------------------------------------

    def owns(self, location: str) -> bool:
        return location.startswith(self._location(""))

    def api_run(self, location: str) -> Any:
        """The client's `Run` behind one of this source's locations, for the readers of its
        artifacts (`ingest.wandb.media_api`)."""
        return self._client().run(f"{self.path}/{location.rsplit('/', 1)[-1]}")

    # -- local copy ------------------------------------------------------------------------------

    def _cache_paths(self, run_id: str) -> tuple[Path, Path]:
        folder = self.cache_dir / urllib.parse.quote(self.entity, safe="") / urllib.parse.quote(self.project, safe="")
        stem = urllib.parse.quote(run_id, safe="")
        return folder / f"{stem}.json", folder / f"{stem}.parquet"

    def _store_cache(self, run: ParsedRun, state: str) -> None:
        meta_path, history_path = self._cache_paths(run.run_id)
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "run_id": run.run_id,
            "location": run.location,
            "fingerprint": run.fingerprint,
            "state": state,
            "entity": run.entity,
            "project": run.project,
            "name": run.name,
            "group": run.group,
            "notes": run.notes,
            "tags": run.tags,
            "config": run.config,
            "summary": run.summary,
            "started_at": run.started_at.isoformat() if run.started_at else None,
            "last_write": run.last_write.isoformat() if run.last_write else None,
            "url": run.url,
            "value_types": run.value_types,
            "issues": [issue.as_row() for issue in run.issues],
        }
        # History first, metadata last: the metadata's fingerprint is what marks the copy valid.
        with atomic.atomic_path(history_path) as tmp:  # a full disk leaves neither a temp nor half a file
            run.history.write_parquet(tmp)
        atomic.write_text(meta_path, json.dumps(meta, default=str))

    def _load_cache(self, run_id: str) -> ParsedRun | None:
        meta_path, history_path = self._cache_paths(run_id)
        try:
            meta = json.loads(meta_path.read_text())
            history = pl.read_parquet(history_path)
        except (OSError, ValueError, pl.exceptions.PolarsError):
            return None  # no copy, or a damaged one: read from the server instead
        last_write = parse_timestamp(meta["last_write"])
        # Recomputed, not stored: a silent "running" run passes its grace period while cached.
        ended, exit_code, cut_short = state_outcome(meta["state"], last_write, self.grace_period_s)
        return ParsedRun(
            run_id=meta["run_id"],
            source=self.name,
            location=meta["location"],
            history=history,
            entity=meta["entity"],
            project=meta["project"],
            name=meta["name"],
            group=meta["group"],
            notes=meta["notes"],
            tags=meta["tags"],
            config=meta["config"],
            summary=meta["summary"],
            ended=ended,
            exit_code=exit_code,
            started_at=parse_timestamp(meta["started_at"]),
            last_write=last_write,
            cut_short=cut_short,
            url=meta["url"],
            value_types=meta["value_types"],
            issues=[IngestIssue(**row) for row in meta["issues"]],
            fingerprint=meta["fingerprint"],
        )


class WandbApiError(RuntimeError):
    """The W&B server could not be listed (its text is scrubbed of the API key)."""


#: Run fields every listing carries (the client's light fragment), by their public attribute names.
LISTING_FIELDS = ("state", "heartbeat_at", "created_at", "history_line_count", "display_name", "group", "notes", "tags")


def listing_fields(run: Any) -> dict[str, Any]:
    """The listing fields of a `wandb` Run (its attribute access maps snake_case to the GraphQL
    camelCase names); absent ones are None."""
    return {name: getattr(run, name, None) for name in LISTING_FIELDS}


def run_fingerprint(fields: dict[str, Any]) -> str:
    """What changes when a run logs, ends or is relabelled, from the fields a listing returns."""
    labels = json.dumps([fields["display_name"], fields["group"], fields["notes"], sorted(fields["tags"] or [])])
    digest = hashlib.sha256(labels.encode()).hexdigest()[:12]
    return f"{fields['heartbeat_at']}|{fields['state']}|{fields['history_line_count']}|{digest}"


def state_outcome(state: str, last_write: dt.datetime | None, grace_period_s: float) -> tuple[bool, int | None, bool]:
    """W&B's run state as (ended, exit_code, cut_short).

    crashed/killed runs stopped without an exit record: not ended, but cut short. A run the server
    still calls running whose heartbeat is older than the grace period has stopped too (servers
    that never mark crashes); it is cut short as well.
    """
    if state == "finished":
        return True, 0, False
    if state == "failed":
        return True, 1, False
    if state in ("crashed", "killed", "preempted"):
        return False, None, True
    silent = last_write is not None and (dt.datetime.now(dt.UTC) - last_write).total_seconds() > grace_period_s
    return False, None, state == "running" and silent


def parse_timestamp(value: str | None) -> dt.datetime | None:
    """W&B's ISO timestamps (UTC, usually without an offset) as aware datetimes."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def normalise_scalar(value: Any) -> Any:
    """Non-finite floats sent as strings ("NaN", "Infinity") become floats; all else unchanged."""
    if isinstance(value, str) and value in NON_FINITE_STRINGS:
        return NON_FINITE_STRINGS[value]
    return value


def value_type_of(value: Any) -> str | None:
    """None for values that belong in the history (numbers, and strings as text), else the type
    to record for the key."""
    value = normalise_scalar(value)
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float | str):
        return None
    if isinstance(value, dict):
        return str(value.get("_type") or "dict")
    return type(value).__name__


def history_frame(
    rows: list[dict[str, Any]], *, run_id: str, location: str, source: str
) -> tuple[pl.DataFrame, dict[str, str], list[IngestIssue]]:
    """W&B history rows as the long HISTORY_SCHEMA frame (strings in `text`), the other
    non-numeric keys' types, and issues
    for rows without a usable `_step` (those rows are dropped, the rest kept)."""
    issues: list[IngestIssue] = []
    steps, runtimes, timestamps, keys, values, texts = [], [], [], [], [], []
    value_types: dict[str, str] = {}
    for index, row in enumerate(rows):
        step = row.get("_step")
        if not isinstance(step, int) or isinstance(step, bool):
            issues.append(
                IngestIssue(
                    location=location,
                    source=source,
                    run_id=run_id,
                    position=f"history row {index}",
                    kind="malformed_row",
                    reason=f"history row without an integer _step ({step!r})",
                    lost=f"history row {index} ({len(row)} keys)",
                )
            )
            continue
        runtime, timestamp = _float_or_none(row.get("_runtime")), _float_or_none(row.get("_timestamp"))
        for key, value in row.items():
            if key.startswith("_") or value is None:
                continue
            kind = value_type_of(value)
            if kind is not None:
                value_types.setdefault(key, kind)
                continue
            value = normalise_scalar(value)
            steps.append(step)
            runtimes.append(runtime)
            timestamps.append(timestamp)
            keys.append(key)
            values.append(None if isinstance(value, str) else float(value))
            texts.append(value if isinstance(value, str) else None)
    history = pl.DataFrame(
        {
            "run_id": [run_id] * len(keys),
            "step": steps,
            "key": keys,
            "value": values,
            "text": texts,
            "runtime": runtimes,
            "timestamp": timestamps,
        },
        schema=HISTORY_SCHEMA,
    ).sort("step", "key", maintain_order=True)
    return history, value_types, issues


def secret_forms(secret: str) -> list[str]:
    """The texts a secret may appear as: itself, URL-encoded, and base64 (standard and URL-safe,
    padded or not) of itself and of the Basic-auth pair `api:<secret>`; longest first."""
    forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    for raw in (f"api:{secret}".encode(), secret.encode()):
        for encoded in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
            forms |= {encoded, encoded.rstrip("=")}
    return sorted(forms, key=len, reverse=True)


def redact_value(value: Any, forms: Sequence[str]) -> Any:
    """`value` with every form of a secret replaced in its strings, dict keys included, through
    dicts and lists; other values unchanged."""
    if isinstance(value, str):
        for form in forms:
            value = value.replace(form, REDACTED)
        return value
    if isinstance(value, dict):
        return {redact_value(k, forms): redact_value(v, forms) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v, forms) for v in value)
    return value


def describe_error(exc: BaseException) -> str:
    """What went wrong, from the bottom of the exception chain: the client wraps a refused
    connection or an HTTP error status in an authentication error whose own text says neither."""
    text = f"{type(exc).__name__}: {exc}"
    if "connection refused" in text.lower():  # wandb-core reports it inside its own error's text
        return f"could not connect (connection refused): {text}"
    seen, cause = {id(exc)}, exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        response = getattr(cause, "response", None)
        status = getattr(response, "status_code", None)
        if status is not None:
            return f"{text} (HTTP {status} from {getattr(response, 'url', 'the server')})"
        if isinstance(cause, (ConnectionError, OSError)) or "ConnectionError" in type(cause).__name__:
            return f"{text} (could not connect: {type(cause).__name__}: {cause})"
        cause = cause.__cause__ or cause.__context__
    return text


def _float_or_none(value: Any) -> float | None:
    value = normalise_scalar(value)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

"""A per-run cache of parsed runs, keyed by each run's fingerprint, so that a refresh reads only
runs whose files (or API `updatedAt`) changed and reuses the stored rows of all the others.

Layout under the cache dir:
- `index.json`: one small record per run (location, fingerprint, format, end facts). A sync over
  10,000 unchanged runs opens this one file, not 10,000.
- `runs/<key>-<version>.json` (the run's `raw_runs` facts and issues),
  `runs/<key>-<version>.history.parquet` (its long history) and, for local W&B runs,
  `runs/<key>-<version>.media.parquet` (the media values found by the same decode, which the media
  assets read instead of decoding the logs again), where `version` hashes the
  fingerprint. Versioned names mean a reader holding an older index never pairs it with a newer
  history, whichever of two concurrent syncs (the sensor, a run) wrote last.

Every file is written atomically; the index is merged under a file lock, so concurrent syncs
never lose each other's runs. Superseded files are removed once they are old enough that no
reader can still be using them.

Changed runs are read in parallel when there are many (`workers` processes, at least
PARALLEL_MIN_RUNS changed runs): each worker parses a run and writes its two cache files, and the
parent merges the index once. Parsing is CPU-bound Python (protobuf records, JSON lines), so
threads would share one core; a forkserver pool pays its start once per sync, not per run. A
source that cannot be sent to another process (an API client) is read in this process.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import functools
import hashlib
import json
import multiprocessing
import os
import pickle
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from altgrad_pipeline import atomic, integrity
from altgrad_pipeline.ingest.listing import shared_walks, store_digest
from altgrad_pipeline.ingest.model import HISTORY_SCHEMA, IngestIssue, ParsedRun, RunLocator, RunSource, issues_frame
from altgrad_pipeline.ingest.parse_process import die_with_parent, reuse_freed_memory
from altgrad_pipeline.ingest.tables import history_with_run_id, raw_runs_frame, run_row, state_expr
from altgrad_pipeline.study import INVALID_FORMAT, StudyRules

try:
    import fcntl
except ImportError:  # Windows: concurrent syncs may then re-read a run the other one stored
    fcntl = None  # type: ignore[assignment]

CACHE_VERSION = 6  # 3: cached histories are sorted by (step, key); 4: wandb-core 0.17 logs read whole, `log_layout`; 5: strings kept in `text`; 6: unsafe format names in `invalid_format`
INDEX_NAME = "index.json"
#: What the last full sync saw: the stores' digest, its runs in discovery order, its issues.
LAST_SYNC_NAME = "last_sync.json"
RUNS_DIR = "runs"
#: A superseded run file is deleted only after this long: a run that synced just before may
#: still be scanning it.
SUPERSEDED_FILE_GRACE_S = 600.0
#: Below this many changed runs a sync reads them in this process: starting a pool costs more.
PARALLEL_MIN_RUNS = 8


def entry_key(source: str, location: str) -> str:
    """File-name-safe key of one run location: never the run's own (untrusted) name."""
    return hashlib.sha256(f"{source}\x00{location}".encode()).hexdigest()[:24]


def _version(fingerprint: str) -> str:
    """The run's fingerprint under this cache format: when the readers change what they make of
    the same files (a new `CACHE_VERSION`), every table and cache built per run version recomputes."""
    return hashlib.sha256(f"{CACHE_VERSION}\x00{fingerprint}".encode()).hexdigest()[:12]


@dataclass
class RunFacts:
    """What decides a run's state, kept in the index so states need no per-run file."""

    ended: bool
    exit_code: int | None
    cut_short: bool
    updated_at: dt.datetime | None


@dataclass
class CatalogEntry:
    """What the catalog knows about one run; its `row` and `issues` are loaded on first use."""

    key: str
    source: str
    location: str
    fingerprint: str
    run_id: str
    fp8_format: str
    facts: RunFacts
    #: The catalog's folder of per-run files (a string: thousands of entries are made per sync).
    runs_dir: str
    #: SHA-256 of the run's cache files as written (`history`, `details`, and `media` when the source
    #: kept media); empty for older indexes.
    sha256: dict[str, str] = field(default_factory=dict)
    _details: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def version(self) -> str:
        return _version(self.fingerprint)

    @property
    def details_path(self) -> Path:
        return Path(self.runs_dir) / f"{self.key}-{self.version}.json"

    @property
    def media_path(self) -> Path:
        """The run's media values (`ParsedRun.media`), for sources that read them with the history."""
        return Path(self.runs_dir) / f"{self.key}-{self.version}.media.parquet"

    @property
    def ended(self) -> bool:
        return self.facts.ended

    def _load_details(self) -> dict[str, Any]:
        if self._details is None:
            try:
                self._details = json.loads(self.details_path.read_text(), object_hook=_decode)
            except (OSError, ValueError) as exc:
                raise integrity.CorruptFileError(f"run cache file {self.details_path} is unreadable ({exc}); "
                                                 "the next `altgrad-pipeline refresh` re-reads the run") from exc  # fmt: skip
        return self._details

    @property
    def row(self) -> dict[str, Any]:
        return self._load_details()["row"]

    @property
    def issues(self) -> list[dict[str, Any]]:
        return self._load_details()["issues"]

    def index_record(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "location": self.location,
            "fingerprint": self.fingerprint,
            "run_id": self.run_id,
            "fp8_format": self.fp8_format,
            "facts": asdict(self.facts),
            "sha256": self.sha256,
        }


@dataclass
class SyncResult:
    entries: list[CatalogEntry]
    reread: list[str]
    issues: list[IngestIssue]

    def for_format(self, fmt: str) -> list[CatalogEntry]:
        return [e for e in self.entries if e.fp8_format == fmt]

    @property
    def formats(self) -> list[str]:
        return sorted({e.fp8_format for e in self.entries})


def _encode(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"__datetime__": value.isoformat()}
    raise TypeError(f"cannot store {type(value).__name__}")


def _decode(obj: dict[str, Any]) -> Any:
    if set(obj) == {"__datetime__"}:
        return dt.datetime.fromisoformat(obj["__datetime__"])
    return obj


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write` to a temp path renamed over `path` (`atomic.atomic_path`: a full disk names the file)."""
    with atomic.atomic_path(path) as tmp:
        write(tmp)


@dataclass(frozen=True)
class ReadFailure:
    """Why one run could not be read, in a form that crosses process boundaries."""

    error: str
    message: str
    where: str


class RunCatalog:
    """Discover runs in every source, re-read only changed ones, and serve per-format tables."""

    def __init__(
        self, cache_dir: Path, sources: Sequence[RunSource], rules: StudyRules = StudyRules(), *, workers: int = 1
    ):
        self.cache_dir = Path(cache_dir)
        self.sources = list(sources)
        self.rules = rules
        #: Processes that read changed runs in parallel (1: always in this process).
        self.workers = max(1, workers)

    @property
    def _index_path(self) -> Path:
        return self.cache_dir / INDEX_NAME

    @functools.cached_property
    def _runs_dir(self) -> Path:
        return self.cache_dir / RUNS_DIR

    def history_path(self, entry: CatalogEntry) -> Path:
        return self._runs_dir / f"{entry.key}-{entry.version}.history.parquet"

    def _entry(self, key: str, record: dict[str, Any]) -> CatalogEntry:
        facts = RunFacts(**record["facts"])
        return CatalogEntry(
            key=key,
            source=record["source"],
            location=record["location"],
            fingerprint=record["fingerprint"],
            run_id=record["run_id"],
            fp8_format=record["fp8_format"],
            facts=facts,
            runs_dir=str(self._runs_dir),
            sha256=record.get("sha256", {}),
        )

    def _read_index(self) -> dict[str, dict[str, Any]]:
        try:
            index = json.loads(self._index_path.read_text(), object_hook=_decode)
        except (OSError, ValueError):
            return {}
        return index["entries"] if index.get("version") == CACHE_VERSION else {}

    def entries_of(self, raw_runs: pl.DataFrame) -> list[CatalogEntry]:
        """The entries behind a `raw_runs` table, as of the last sync and with its run ids: assets
        downstream of raw_runs read the same runs without listing the stores again."""
        index = self._read_index()
        entries = []
        for run_id, source, location in raw_runs.select("run_id", "source", "location").iter_rows():
            key = entry_key(source, location)
            if key in index:
                entries.append(replace(self._entry(key, index[key]), run_id=run_id))
        return entries

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cache_dir / "index.lock", "a") as handle:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _store(self, locator: RunLocator, run: ParsedRun) -> CatalogEntry:
        key = entry_key(locator.source, locator.location)
        row = run_row(run)
        fmt = raw_runs_frame([dict(row)], rules=self.rules).item(0, "fp8_format")
        entry = CatalogEntry(
            key=key,
            source=locator.source,
            location=locator.location,
            fingerprint=locator.fingerprint,
            run_id=run.run_id,
            fp8_format=fmt,
            facts=RunFacts(ended=run.ended, exit_code=run.exit_code, cut_short=run.cut_short, updated_at=row["updated_at"]),
            runs_dir=str(self._runs_dir),
        )
        issues = list(run.issues)
        if fmt == INVALID_FORMAT:
            issues.append(self._invalid_format_issue(locator, run))
        details = {
            "row": row,
            "issues": [i.as_row() | {"run_id": i.run_id or run.run_id, "source": i.source or run.source} for i in issues],
        }
        history = history_with_run_id(run)
        _atomic_write(self.history_path(entry), lambda p: history.write_parquet(p))
        if run.media is not None:
            media = run.media
            _atomic_write(entry.media_path, lambda p: media.write_parquet(p))
        payload = json.dumps(details, default=_encode)
        _atomic_write(entry.details_path, lambda p: p.write_text(payload))
        entry.sha256 = {"history": integrity.sha256_of(self.history_path(entry)), "details": integrity.sha256_of(entry.details_path)}
        if run.media is not None:
            entry.sha256["media"] = integrity.sha256_of(entry.media_path)
        entry._details = details
        return entry

    def _invalid_format_issue(self, locator: RunLocator, run: ParsedRun) -> IngestIssue:
        """Why a run sits in the `invalid_format` partition: its format name could not name a file."""
        value = run.config.get(self.rules.format_key, run.name)
        return IngestIssue(
            location=locator.location,
            source=locator.source,
            run_id=run.run_id,
            kind="invalid_format",
            reason=f"format name {value!r} (config {self.rules.format_key}) is not a safe partition or file name "
            f"(letters, digits, _ + - . up to 64 characters, no leading dot)",
            lost=f"nothing: the run is kept in partition {INVALID_FORMAT}",
        )

    def _files(self, entry: CatalogEntry) -> list[tuple[Path, str | None]]:
        """The run's cache files with their recorded SHA-256: history, details, and its media
        values when they were kept (recorded, or present from an index older than their hash)."""
        files = [(self.history_path(entry), entry.sha256.get("history")), (entry.details_path, entry.sha256.get("details"))]
        if "media" in entry.sha256 or entry.media_path.exists():
            files.append((entry.media_path, entry.sha256.get("media")))
        return files

    def damaged(self, entries: Sequence[CatalogEntry]) -> list[tuple[CatalogEntry, str]]:
        """Entries whose cache files are missing, altered or unreadable, with what is wrong. Files
        written before hashes were kept are checked for readability only."""
        found = []
        for entry in entries:
            for path, expected in self._files(entry):
                why = integrity.problem(path, expected)
                if why is None and expected is None:
                    try:
                        pl.read_parquet_schema(path) if path.suffix == ".parquet" else json.loads(path.read_text())
                    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
                        why = f"{path} is unreadable ({type(exc).__name__})"
                if why is not None:
                    found.append((entry, why))
                    break
        return found

    def heal(self, entries: Sequence[CatalogEntry]) -> list[str]:
        """Move the damaged cache files of these runs aside and drop the runs from the index, so the
        next sync reads them again from their stores; one message per run, naming the file."""
        damaged = self.damaged(entries)
        if not damaged:
            return []
        messages = []
        with self._index_lock():
            index = self._read_index()
            for entry, why in damaged:
                moved = [integrity.quarantine(path, self.cache_dir) for path, _ in self._files(entry)]
                index.pop(entry.key, None)
                where = ", ".join(str(m) for m in moved if m is not None) or "nothing left to move"
                messages.append(f"run cache of {entry.run_id}: {why}; moved aside ({where}), re-reading the run")
            payload = json.dumps({"version": CACHE_VERSION, "entries": index}, default=_encode)
            _atomic_write(self._index_path, lambda p: p.write_text(payload))
        return messages

    def verified_sync(self, entries_of: Callable[[SyncResult], Sequence[CatalogEntry]] | None = None, **options: Any) -> tuple[SyncResult, list[str]]:
        """`sync`, then a check of the cache files of `entries_of(result)` (default: every run): a
        damaged run is re-read from its store at once, and the messages say which files were bad."""
        result = self.sync(**options)
        messages = self.heal(entries_of(result) if entries_of else result.entries)
        if messages:
            result = self.sync(**{k: v for k, v in options.items() if k != "seen_digest"})
        return result, messages

    def _commit(self, stored: list[CatalogEntry], removed: set[str]) -> None:
        """Merge this sync's changes into the index on disk (another sync may have written since)."""
        with self._index_lock():
            index = self._read_index()
            for key in removed:
                index.pop(key, None)
            for entry in stored:
                index[entry.key] = entry.index_record()
            payload = json.dumps({"version": CACHE_VERSION, "entries": index}, default=_encode)
            _atomic_write(self._index_path, lambda p: p.write_text(payload))
            self._remove_superseded(_live_versions(index))

    def live_versions(self) -> set[str]:
        """`<entry key>-<version>` of every run as of the last sync: the stems of cache files in use."""
        return _live_versions(self._read_index())

    def _remove_superseded(self, live: set[str]) -> None:
        cutoff = time.time() - SUPERSEDED_FILE_GRACE_S
        with os.scandir(self._runs_dir) as listing:
            for item in listing:
                stem = item.name.split(".", 1)[0]
                if stem and stem not in live and item.stat().st_mtime < cutoff:
                    Path(item.path).unlink(missing_ok=True)

    def _store_roots(self) -> list[Path] | None:
        """The folders the sources read, when every source is a local store (then a digest of
        their files decides whether anything changed); None with an API or SQL source."""
        roots = [getattr(source, "root", None) for source in self.sources]
        return None if any(root is None for root in roots) else sorted({Path(root) for root in roots})

    def _unchanged_since_last_sync(self, digest: str | None) -> SyncResult | None:
        """The last full sync's result again, if no file under the stores changed since it began."""
        try:
            last = json.loads((self.cache_dir / LAST_SYNC_NAME).read_text())
        except (OSError, ValueError):
            return None
        if digest is None or last.get("version") != CACHE_VERSION or last.get("store_digest") != digest:
            return None
        index = self._read_index()
        if not all(key in index for key in last["keys"]):
            return None  # another sync changed the index: look again
        entries = [self._entry(key, index[key]) for key in last["keys"]]
        issues = [IngestIssue(**issue) for issue in last["issues"]]
        return SyncResult(entries=_unique_run_ids(entries, issues), reread=[], issues=issues)

    def _record_sync(self, digest: str | None, entries: list[CatalogEntry], issues: list[IngestIssue]) -> None:
        if digest is None:
            return
        payload = json.dumps(
            {"version": CACHE_VERSION, "store_digest": digest, "keys": [e.key for e in entries], "issues": [asdict(i) for i in issues]}
        )
        _atomic_write(self.cache_dir / LAST_SYNC_NAME, lambda p: p.write_text(payload))

    def remote_runs_ended_since(self, since: dt.datetime) -> bool:
        """Whether a source without a local folder has a run that ended (or changed once ended)
        after `since` and that the cache does not hold as listed. Sources that cannot narrow their
        listing (or fail to answer) always may; local stores are the digest's business."""
        index = self._read_index()
        for source in self.sources:
            if getattr(source, "root", None) is not None:
                continue
            list_ended = getattr(source, "discover_ended_since", None)
            if list_ended is None:
                return True
            try:
                ended = list_ended(since)
            except Exception:  # noqa: BLE001 - the sync that follows records why the source failed
                return True
            if any(index.get(entry_key(loc.source, loc.location), {}).get("fingerprint") != loc.fingerprint for loc in ended):
                return True
        return False

    def sync(self, *, progress: Callable[[str], None] | None = None, seen_digest: str | None = None) -> SyncResult:
        """Bring the cache up to date with the sources. Never raises for bad input or a failing source:
        a source that cannot be listed keeps its previously cached runs and says why.

        Cost when nothing changed: for local stores, one digest of their files (path, size, mtime)
        and reading the index; with an API or SQL source, each source's `discover()` as well.
        `seen_digest` is a digest of the stores taken before this call (by the sensor's tick, or by
        the tick that launched this run: a run tag), used instead of taking another: the last sync's
        result if it was of that very state (the run builds what the sensor saw; a later change is
        the next tick's), else a sync recorded under it, as under any digest taken before looking."""
        roots = self._store_roots()
        # Taken before looking: a change during the sync is seen by the next one.
        digest = (seen_digest or store_digest(roots)) if roots is not None else None
        if (unchanged := self._unchanged_since_last_sync(digest)) is not None:
            return unchanged
        issues: list[IngestIssue] = []
        #: One slot per run in discovery order; a changed run's slot is filled once it was read.
        slots: list[CatalogEntry | None] = []
        pending: list[tuple[int, RunSource, RunLocator, CatalogEntry | None]] = []
        stored: list[CatalogEntry] = []
        seen_keys: set[str] = set()
        index = self._read_index()
        with shared_walks():
            discovered = [(source, _discover(source)) for source in self.sources]
        for source, locators in discovered:
            if isinstance(locators, Exception):
                issues.append(
                    IngestIssue(
                        location=getattr(source, "label", source.name),
                        source=source.name,
                        kind="source_unavailable",
                        reason=f"could not list runs: {type(locators).__name__}: {locators}",
                        lost="nothing stored: previously ingested runs of this source are kept",
                    )
                )
                for key, record in index.items():
                    if record["source"] == source.name and key not in seen_keys:
                        slots.append(self._entry(key, record))
                        seen_keys.add(key)
                continue
            issues.extend(getattr(source, "discovery_issues", ()))
            for locator in locators:
                key = entry_key(locator.source, locator.location)
                if key in seen_keys:
                    continue
                seen_keys.add(key)
                entry = self._entry(key, index[key]) if key in index else None
                if entry is None or entry.fingerprint != locator.fingerprint:
                    pending.append((len(slots), source, locator, entry))
                slots.append(entry)
        for (slot, _, locator, previous), outcome in zip(pending, self._read_changed(pending), strict=True):
            if isinstance(outcome, ReadFailure):
                issues.append(
                    IngestIssue(
                        location=locator.location,
                        source=locator.source,
                        run_id=locator.run_id_hint,
                        kind="reader_error",
                        reason=f"{outcome.error}: {outcome.message} (at {outcome.where})",
                        lost="the whole run" if previous is None else "the update (previous version kept)",
                    )
                )
                continue
            slots[slot] = outcome
            stored.append(outcome)
            if progress:
                progress(f"read {locator.source} run {outcome.run_id} ({outcome.fp8_format})")
        entries = [entry for entry in slots if entry is not None]
        removed = set(index) - seen_keys
        if stored or removed:
            self._commit(stored, removed)
        self._record_sync(digest, entries, issues)
        return SyncResult(entries=_unique_run_ids(entries, issues), reread=[e.run_id for e in stored], issues=issues)

    def read_and_store(self, source: RunSource, locator: RunLocator) -> CatalogEntry | ReadFailure:
        """Parse one run and write its cache files (not the index): the unit of work of a sync."""
        try:
            run = source.read(locator)
        except Exception as exc:  # noqa: BLE001 - one unreadable run must not stop the others
            return ReadFailure(type(exc).__name__, str(exc), traceback.extract_tb(exc.__traceback__)[-1].name)
        return self._store(locator, run)

    def _read_changed(
        self, pending: Sequence[tuple[int, RunSource, RunLocator, CatalogEntry | None]]
    ) -> list[CatalogEntry | ReadFailure]:
        """The outcome of reading each pending run, in order: in a process pool when it pays."""
        outcomes: list[CatalogEntry | ReadFailure | None] = [None] * len(pending)
        if self.workers > 1 and len(pending) >= PARALLEL_MIN_RUNS and not multiprocessing.current_process().daemon:
            portable = [source if _can_send(source) else None for source in self.sources]
            position = {id(source): i for i, source in enumerate(self.sources)}
            parallel = [i for i, item in enumerate(pending) if portable[position[id(item[1])]] is not None]
            if len(parallel) >= PARALLEL_MIN_RUNS:
                with concurrent.futures.ProcessPoolExecutor(
                    min(self.workers, len(parallel)), mp_context=multiprocessing.get_context("forkserver"),
                    initializer=_start_worker, initargs=(self.cache_dir, portable, self.rules, os.getpid()),
                ) as pool:  # fmt: skip
                    futures = {i: pool.submit(_read_in_worker, position[id(pending[i][1])], pending[i][2]) for i in parallel}
                    for i, future in futures.items():
                        outcomes[i] = future.result()
        for i, (_, source, locator, _) in enumerate(pending):
            if outcomes[i] is None:
                outcomes[i] = self.read_and_store(source, locator)
        return outcomes  # type: ignore[return-value]

    def raw_runs(self, entries: Sequence[CatalogEntry], *, now: dt.datetime | None = None, grace_s: float = 3600.0) -> pl.DataFrame:
        rows = [dict(e.row, run_id=e.run_id, run_version=e.version) for e in entries]
        return raw_runs_frame(rows, rules=self.rules, now=now, grace_s=grace_s)

    @staticmethod
    def states(entries: Sequence[CatalogEntry], *, now: dt.datetime, grace_s: float) -> dict[str, str]:
        """Tracker state per entry key, from the index alone (no run file is opened), by the same
        rule `raw_runs` applies."""
        facts = pl.DataFrame(
            {
                "key": [e.key for e in entries],
                "ended": [e.facts.ended for e in entries],
                "exit_code": [e.facts.exit_code for e in entries],
                "cut_short": [e.facts.cut_short for e in entries],
                "updated_at": [e.facts.updated_at for e in entries],
            },
            schema={"key": pl.String, "ended": pl.Boolean, "exit_code": pl.Int64, "cut_short": pl.Boolean,
                    "updated_at": pl.Datetime("us", "UTC")},
        )  # fmt: skip
        now = now.astimezone(dt.UTC) if now.tzinfo else now.replace(tzinfo=dt.UTC)
        return dict(facts.select("key", state_expr(now, grace_s)).iter_rows())

    def histories(self, entries: Sequence[CatalogEntry]) -> pl.LazyFrame:
        """The long histories of these runs, read lazily from the cache."""
        if not entries:
            return pl.LazyFrame(schema=HISTORY_SCHEMA)
        frames = [
            pl.scan_parquet(self.history_path(e)).with_columns(pl.lit(e.run_id, pl.String).alias("run_id"))
            for e in entries
        ]
        return pl.concat(frames, how="vertical")

    def history_files(self, entries: Sequence[CatalogEntry]) -> tuple[tuple[Path, dict[str, str]], ...]:
        """The cached history files of these runs, each with the run_id its rows read as (a run
        renamed for a duplicate id keeps its first id in the file): `histories` as files, for a
        partition file made by copying their pages (`parquet_concat`)."""
        return tuple((self.history_path(e), {"run_id": e.run_id}) for e in entries)

    def distinct_history_keys(self, entries: Sequence[CatalogEntry]) -> int:
        """How many distinct keys these runs' cached histories hold, as `n_unique` counts them (a
        null is one), read as each file's Parquet dictionary: hashing a partition's 3.5 M key
        strings one by one costs 2.5 times as much (0.28 against 0.11 CPU-s for the bench study)."""
        read = [pq.read_table(self.history_path(e), columns=["key"], read_dictionary=["key"]).column("key").unique() for e in entries]
        return len(pa.chunked_array([keys.cast(pa.large_string()) for keys in read], type=pa.large_string()).unique())

    @staticmethod
    def issues(result: SyncResult) -> pl.DataFrame:
        stored = [row for e in result.entries for row in e.issues]
        return pl.concat(
            [issues_frame(result.issues), pl.DataFrame(stored, schema=issues_frame([]).schema)], how="vertical"
        )


_WORKER_CATALOG: RunCatalog | None = None


def _can_send(source: RunSource) -> bool:
    """Whether a source can be copied into a worker process (an API client usually cannot)."""
    try:
        pickle.dumps(source)
    except Exception:  # noqa: BLE001 - any pickling failure means "read it here"
        return False
    return True


def _start_worker(cache_dir: Path, sources: list[RunSource | None], rules: StudyRules, parent_pid: int) -> None:
    """A pool worker's catalog; `sources` keeps the parent's order, None where a source stays there.
    The worker only parses, so its allocator keeps freed buffers for the next run; it ends with the
    sync that started it."""
    global _WORKER_CATALOG
    reuse_freed_memory()
    die_with_parent(parent_pid)
    _WORKER_CATALOG = RunCatalog(cache_dir, sources, rules)  # type: ignore[arg-type]


def _read_in_worker(source_index: int, locator: RunLocator) -> CatalogEntry | ReadFailure:
    assert _WORKER_CATALOG is not None, "worker started without _start_worker"
    source = _WORKER_CATALOG.sources[source_index]
    assert source is not None, "a source that stays in the parent was sent to a worker"
    return _WORKER_CATALOG.read_and_store(source, locator)


def _live_versions(index: dict[str, dict[str, Any]]) -> set[str]:
    return {f"{key}-{_version(record['fingerprint'])}" for key, record in index.items()}


def _discover(source: RunSource) -> list[RunLocator] | Exception:
    """A source's runs, or why it could not list them: a broken source must not stop the others."""
    try:
        return source.discover()
    except Exception as exc:  # noqa: BLE001 - any listing failure becomes a source_unavailable issue
        return exc


def _unique_run_ids(entries: list[CatalogEntry], issues: list[IngestIssue]) -> list[CatalogEntry]:
    """The same run id from two stores (a local copy and the API, say) stays two rows, told apart."""
    seen: dict[str, CatalogEntry] = {}
    for entry in entries:
        first = seen.get(entry.run_id)
        if first is None:
            seen[entry.run_id] = entry
            continue
        new_id = f"{entry.run_id}@{entry.key[:8]}"
        issues.append(
            IngestIssue(
                location=entry.location,
                source=entry.source,
                run_id=entry.run_id,
                kind="duplicate_run_id",
                reason=f"run id also read from {first.location}; this copy is kept as {new_id}",
                lost="nothing",
            )
        )
        entry.run_id = new_id
        seen[new_id] = entry
    return list(seen.values())

"""A per-run cache of parsed runs, keyed by each run's fingerprint, so that a refresh reads only
runs whose files (or API `updatedAt`) changed and reuses the stored rows of all the others.

Layout under the cache dir: `<key>.history.parquet` (the run's long history) and `<key>.json`
(its `raw_runs` facts, issues and fingerprint), written atomically so a concurrent reader never
sees half a file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from altgrad_pipeline.ingest.model import HISTORY_SCHEMA, IngestIssue, ParsedRun, RunLocator, RunSource, issues_frame
from altgrad_pipeline.ingest.tables import StudyRules, history_with_run_id, raw_runs_frame, run_row

CACHE_VERSION = 1


def entry_key(source: str, location: str) -> str:
    """File-name-safe key of one run location: never the run's own (untrusted) name."""
    return hashlib.sha256(f"{source}\x00{location}".encode()).hexdigest()[:24]


@dataclass
class CatalogEntry:
    """What the catalog knows about one run without loading its history."""

    key: str
    source: str
    location: str
    fingerprint: str
    run_id: str
    fp8_format: str
    ended: bool
    row: dict[str, Any]
    issues: list[dict[str, Any]] = field(default_factory=list)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class RunCatalog:
    """Discover runs in every source, re-read only changed ones, and serve per-format tables."""

    def __init__(self, cache_dir: Path, sources: Sequence[RunSource], rules: StudyRules = StudyRules()):
        self.cache_dir = Path(cache_dir)
        self.sources = list(sources)
        self.rules = rules

    def _meta_path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.json"

    def history_path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.history.parquet"

    def _load_entry(self, key: str) -> CatalogEntry | None:
        try:
            meta = json.loads(self._meta_path(key).read_text(), object_hook=_decode)
        except (OSError, ValueError):
            return None
        if meta.get("version") != CACHE_VERSION or not self.history_path(key).exists():
            return None
        return CatalogEntry(**meta["entry"])

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
            ended=run.ended,
            row=row,
            issues=[i.as_row() | {"run_id": i.run_id or run.run_id, "source": i.source or run.source} for i in run.issues],
        )
        history = history_with_run_id(run)
        _atomic_write(self.history_path(key), lambda p: history.write_parquet(p))
        payload = json.dumps({"version": CACHE_VERSION, "entry": entry.__dict__}, default=_encode)
        _atomic_write(self._meta_path(key), lambda p: p.write_text(payload))
        return entry

    def sync(self, *, progress: Callable[[str], None] | None = None) -> SyncResult:
        """Bring the cache up to date with the sources. Never raises for bad input or a failing source:
        a source that cannot be listed keeps its previously cached runs and says why."""
        issues: list[IngestIssue] = []
        entries: list[CatalogEntry] = []
        reread: list[str] = []
        seen_keys: set[str] = set()
        cached = {p.name.removesuffix(".json"): p for p in self.cache_dir.glob("*.json")} if self.cache_dir.exists() else {}
        for source in self.sources:
            try:
                locators = source.discover()
            except Exception as exc:  # noqa: BLE001 - a broken source must not stop the others
                issues.append(
                    IngestIssue(
                        location=getattr(source, "label", source.name),
                        source=source.name,
                        kind="source_unavailable",
                        reason=f"could not list runs: {type(exc).__name__}: {exc}",
                        lost="nothing stored: previously ingested runs of this source are kept",
                    )
                )
                for key in cached:
                    entry = self._load_entry(key)
                    if entry and entry.source == source.name and key not in seen_keys:
                        entries.append(entry)
                        seen_keys.add(key)
                continue
            for locator in locators:
                key = entry_key(locator.source, locator.location)
                if key in seen_keys:
                    continue
                seen_keys.add(key)
                entry = self._load_entry(key)
                if entry is None or entry.fingerprint != locator.fingerprint:
                    try:
                        run = source.read(locator)
                    except Exception as exc:  # noqa: BLE001 - one unreadable run must not stop the others
                        issues.append(
                            IngestIssue(
                                location=locator.location,
                                source=locator.source,
                                run_id=locator.run_id_hint,
                                kind="reader_error",
                                reason=f"{type(exc).__name__}: {exc} "
                                f"(at {traceback.extract_tb(exc.__traceback__)[-1].name})",
                                lost="the whole run" if entry is None else "the update (previous version kept)",
                            )
                        )
                        if entry is None:
                            continue
                    else:
                        entry = self._store(locator, run)
                        reread.append(entry.run_id)
                        if progress:
                            progress(f"read {locator.source} run {entry.run_id} ({entry.fp8_format})")
                entries.append(entry)
        for key, path in cached.items():
            if key not in seen_keys:
                path.unlink(missing_ok=True)
                self.history_path(key).unlink(missing_ok=True)
        return SyncResult(entries=_unique_run_ids(entries, issues), reread=reread, issues=issues)

    def raw_runs(self, entries: Sequence[CatalogEntry], *, now: dt.datetime | None = None, grace_s: float = 3600.0) -> pl.DataFrame:
        rows = [dict(e.row, run_id=e.run_id) for e in entries]
        return raw_runs_frame(rows, rules=self.rules, now=now, grace_s=grace_s)

    def histories(self, entries: Sequence[CatalogEntry]) -> pl.LazyFrame:
        """The long histories of these runs, read lazily from the cache."""
        if not entries:
            return pl.LazyFrame(schema=HISTORY_SCHEMA)
        frames = [
            pl.scan_parquet(self.history_path(e.key)).with_columns(pl.lit(e.run_id, pl.String).alias("run_id"))
            for e in entries
        ]
        return pl.concat(frames, how="vertical")

    @staticmethod
    def partition_fingerprint(entries: Sequence[CatalogEntry], runs: pl.DataFrame) -> str:
        """Changes exactly when a partition's tables would: a run's files, or its state, changed."""
        states = dict(runs.select("run_id", "state").iter_rows()) if runs.height else {}
        parts = sorted(f"{e.key}:{e.fingerprint}:{states.get(e.run_id)}" for e in entries)
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]

    @staticmethod
    def issues(result: SyncResult) -> pl.DataFrame:
        stored = [row for e in result.entries for row in e.issues]
        return pl.concat(
            [issues_frame(result.issues), pl.DataFrame(stored, schema=issues_frame([]).schema)], how="vertical"
        )


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

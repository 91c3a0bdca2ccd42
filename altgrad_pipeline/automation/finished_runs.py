"""Which format partitions a sensor tick must refresh: those whose set of *finished* runs changed.

A run counts once it is terminal (finished, failed, crashed). Each format gets one digest over its
terminal runs' (location, fingerprint, state); the cursor keeps only those digests (one short hash
per format, whatever the number of runs), the local stores' scan digest, the moment a running
run would pass the crash grace period, and when remote sources were last asked. Running runs are
left out of the digests, so a run still being written changes nothing until it ends.

Remote sources (the W&B API) are asked only for runs that the server updated since the last tick,
less a margin for clock skew, and no longer calls running; the catalog syncs (a full listing) only
when one of those differs from the cache. Runs still being written cost nothing, however often their
heartbeat updates them. A run deleted on the server leaves the tables at the next full listing: any
sync, or the daily schedule.

No Dagster import: plain Python over the run catalog.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from altgrad_pipeline.ingest.listing import store_digest
from altgrad_pipeline.ingest.catalog import CatalogEntry, RunCatalog
from altgrad_pipeline.settings import is_safe_format_name

TERMINAL_STATES = frozenset({"finished", "failed", "crashed"})
#: How far back of the last tick remote sources are asked for updates: the server's clock and ours
#: may disagree. Asking again about a run costs nothing: unchanged fingerprints do not sync.
REMOTE_CLOCK_MARGIN_S = 300.0


@dataclass(frozen=True)
class WatchCursor:
    """What the previous tick saw. Small by design: O(formats), never O(runs)."""

    store_digest: str = ""
    format_digests: dict[str, str] = field(default_factory=dict)
    #: Epoch seconds when the earliest running run would pass the grace period and count as crashed.
    recheck_at: float | None = None
    #: Epoch seconds of the tick that last asked the remote sources (None: never; a full sync is due).
    remote_checked_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(
            {"store": self.store_digest, "formats": self.format_digests, "recheck_at": self.recheck_at,
             "remote_checked_at": self.remote_checked_at},
            sort_keys=True,
        )  # fmt: skip

    @classmethod
    def from_json(cls, text: str | None) -> WatchCursor:
        """An empty or unreadable cursor means "nothing seen yet": every finished format is requested."""
        try:
            raw = json.loads(text or "")
            return cls(raw["store"], dict(raw["formats"]), raw["recheck_at"], raw.get("remote_checked_at"))
        except (ValueError, KeyError, TypeError):
            return cls()


@dataclass(frozen=True)
class TickOutcome:
    #: Format -> digest of its terminal runs, for each format whose terminal runs changed.
    refresh: dict[str, str]
    cursor: WatchCursor
    synced: bool
    rejected_formats: list[str] = field(default_factory=list)


def terminal_digests(entries: Sequence[CatalogEntry], states: dict[str, str]) -> dict[str, str]:
    """Per format, a digest that changes when a terminal run appears, changes, changes state or goes."""
    parts: dict[str, list[str]] = defaultdict(list)
    for entry in entries:
        state = states[entry.key]
        if state in TERMINAL_STATES:
            parts[entry.fp8_format].append(f"{entry.key}:{entry.fingerprint}:{state}")
    return {fmt: hashlib.sha256("\n".join(sorted(p)).encode()).hexdigest()[:16] for fmt, p in parts.items()}


def next_recheck(entries: Sequence[CatalogEntry], states: dict[str, str], grace_s: float) -> float | None:
    """When the first running run, if untouched, turns crashed: the stores may not change then."""
    deadlines = [
        e.facts.updated_at.timestamp() + grace_s
        for e in entries
        if states[e.key] == "running" and e.facts.updated_at is not None
    ]
    return min(deadlines) if deadlines else None


def watch_tick(
    catalog: RunCatalog,
    *,
    local_roots: Sequence[Path],
    has_remote_sources: bool,
    cursor: WatchCursor,
    now: dt.datetime,
    grace_s: float,
) -> TickOutcome:
    """One sensor tick. Unchanged local stores, no remote run ended and no grace deadline due cost
    one directory scan and one narrow listing per remote source; otherwise the catalog syncs,
    re-reading only changed runs."""
    digest = store_digest(local_roots)
    deadline_due = cursor.recheck_at is not None and now.timestamp() >= cursor.recheck_at
    remote_news = has_remote_sources and (
        cursor.remote_checked_at is None
        or catalog.remote_runs_ended_since(dt.datetime.fromtimestamp(cursor.remote_checked_at - REMOTE_CLOCK_MARGIN_S, dt.UTC))
    )
    checked_at = now.timestamp() if has_remote_sources else None
    if digest == cursor.store_digest and not remote_news and not deadline_due:
        return TickOutcome(refresh={}, cursor=replace(cursor, remote_checked_at=checked_at), synced=False)
    result = catalog.sync(seen_digest=digest)
    states = catalog.states(result.entries, now=now, grace_s=grace_s)
    digests = terminal_digests(result.entries, states)
    rejected = sorted(fmt for fmt in digests if not is_safe_format_name(fmt))
    for fmt in rejected:
        del digests[fmt]
    refresh = {fmt: d for fmt, d in sorted(digests.items()) if cursor.format_digests.get(fmt) != d}
    new_cursor = WatchCursor(digest, digests, next_recheck(result.entries, states, grace_s), checked_at)
    return TickOutcome(refresh=refresh, cursor=new_cursor, synced=True, rejected_formats=rejected)

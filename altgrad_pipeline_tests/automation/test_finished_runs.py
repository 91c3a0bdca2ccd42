"""Tick logic without Dagster: a growing JSONL log (a real one, saved at three points in time) is
read incrementally and requests nothing while it is being written; it counts once it ends (here:
untouched past the crash grace period, since the log has no end marker). Bursts give one refresh
per format; the cursor stays O(formats). The W&B API is asked only for runs updated since the
last tick (through the real client and the loopback server)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from altgrad_pipeline.ingest.catalog import RunCatalog
from altgrad_pipeline.ingest.finished_runs import REMOTE_CLOCK_MARGIN_S, WatchCursor, watch_tick
from altgrad_pipeline.ingest.jsonl import JsonlSource
from altgrad_pipeline.ingest.wandb.api import WandbApiSource
from altgrad_pipeline_tests.wandb_server import FakeRun, fake_wandb

GRACE_S = 600.0
SNAPSHOTS = ("snapshot_f2fd811", "snapshot_93eb382", "snapshot_b7e725d")  # each a byte-prefix of the next


def _tick(catalog, root, cursor, now=None):
    return watch_tick(
        catalog, local_roots=[root], has_remote_sources=False, cursor=cursor,
        now=now or dt.datetime.now(dt.UTC), grace_s=GRACE_S,
    )  # fmt: skip


@pytest.mark.corpora
def test_growing_jsonl_run_waits_then_counts_once_it_ends(corpora_dir, tmp_path):
    saved = [(corpora_dir / "Jayluci4__mamba-integer" / s / "scripts" / "metrics.jsonl").read_bytes() for s in SNAPSHOTS]
    assert saved[1].startswith(saved[0]) and saved[2].startswith(saved[1])
    store, log = tmp_path / "store", tmp_path / "store" / "mamba" / "metrics.jsonl"
    log.parent.mkdir(parents=True)
    source = JsonlSource(store, grace_period_s=GRACE_S)
    catalog = RunCatalog(tmp_path / "cache", [source])

    log.write_bytes(saved[0])
    first = _tick(catalog, store, WatchCursor())
    assert first.synced and first.refresh == {}  # running: recently written, no end record

    # The writer is mid-line: the complete lines are read, the partial one waits for its newline.
    cut = saved[1].rfind(b"\n", 0, len(saved[1]) - 1) + 25
    log.write_bytes(saved[1][:cut])
    second = _tick(catalog, store, first.cursor)
    assert second.refresh == {}
    position = source._logs[log].position.offset
    assert position == saved[1].rfind(b"\n", 0, cut) + 1  # read up to the last complete line
    steps = catalog.histories(catalog.sync().entries).collect().get_column("step")
    assert steps.max() == max(int(line.split(b",")[0].split(b":")[1]) for line in saved[1][:position].splitlines())

    log.write_bytes(saved[2])
    third = _tick(catalog, store, second.cursor)
    assert third.refresh == {} and third.cursor.recheck_at is not None
    fresh = RunCatalog(tmp_path / "fresh-cache", [JsonlSource(store)]).sync()
    incremental = catalog.histories(catalog.sync().entries).collect().sort("step", "key")
    assert incremental.equals(RunCatalog(tmp_path / "fresh-cache", []).histories(fresh.entries).collect().sort("step", "key"))

    # Unchanged files: one directory scan, no sync, nothing requested.
    idle = _tick(catalog, store, third.cursor)
    assert not idle.synced and idle.refresh == {}

    # Past the grace period with no write: the run is crashed, i.e. over, and its format refreshes.
    later = dt.datetime.fromtimestamp(third.cursor.recheck_at + 1, dt.UTC)
    ended = _tick(catalog, store, idle.cursor, now=later)
    assert list(ended.refresh) == ["no_format"]  # the log names no FP8 format
    assert _tick(catalog, store, ended.cursor, now=later).refresh == {}


def _jsonl_run(root, name, fmt, finished=True, folder=None):
    lines = [f'{{"type": "dict_config", "value": {{"fp8_format": "{fmt}", "use_fp8": true}}}}']
    lines += [f'{{"step": {i}, "loss": {1.0 / (i + 1)}}}' for i in range(3)]
    if finished:
        lines.append('{"type": "str", "value": "Training time: 1 s"}')
    path = root / (folder or fmt) / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_burst_of_finished_runs_gives_one_refresh_per_format(tmp_path):
    store = tmp_path / "store"
    catalog = RunCatalog(tmp_path / "cache", [JsonlSource(store, grace_period_s=GRACE_S)])
    _jsonl_run(store, "seed", "E5M2")
    start = _tick(catalog, store, WatchCursor())
    assert list(start.refresh) == ["E5M2"]
    for i in range(20):
        _jsonl_run(store, f"run{i}", ("E5M2", "E3M4", "E2M5")[i % 3])
    _jsonl_run(store, "still-writing", "E1M6", finished=False)
    burst = _tick(catalog, store, start.cursor)
    assert sorted(burst.refresh) == ["E2M5", "E3M4", "E5M2"]  # E1M6 is only running
    assert len(burst.cursor.to_json()) < 400
    assert WatchCursor.from_json(burst.cursor.to_json()) == burst.cursor
    assert _tick(catalog, store, WatchCursor.from_json(burst.cursor.to_json())).refresh == {}

    # A changed finished run gives its format a new digest (so a new run key); others stay put.
    rewritten = _jsonl_run(store, "run0", "E5M2")
    rewritten.write_text(rewritten.read_text() + '{"step": 9, "loss": 0.1}\n')
    changed = _tick(catalog, store, burst.cursor)
    assert list(changed.refresh) == ["E5M2"] and changed.refresh["E5M2"] != burst.refresh["E5M2"]


def test_unsafe_format_names_go_to_the_invalid_format_partition(tmp_path):
    store = tmp_path / "store"
    catalog = RunCatalog(tmp_path / "cache", [JsonlSource(store)])
    _jsonl_run(store, "evil", "../../etc", folder="evil")
    _jsonl_run(store, "fine", "E4M3")
    outcome = _tick(catalog, store, WatchCursor())
    assert sorted(outcome.refresh) == ["E4M3", "invalid_format"] and outcome.rejected_formats == []
    [issue] = [i for e in catalog.sync().entries for i in e.issues if i["kind"] == "invalid_format"]
    assert "'../../etc'" in issue["reason"] and issue["run_id"]


def test_the_wandb_api_is_asked_only_for_runs_ended_since_the_last_tick(monkeypatch, tmp_path):
    start = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    runs = [
        FakeRun(id="done", config={"fp8_format": "E5M2"}, history=[{"_step": 0, "loss": 1.0}],
                heartbeat_at="2024-05-01T11:00:00", updated_at="2024-05-01T11:00:00"),
        FakeRun(id="going", state="running", config={"fp8_format": "E3M4"}, history=[{"_step": 0, "loss": 2.0}],
                heartbeat_at="2024-05-01T11:59:00", updated_at="2024-05-01T11:59:00"),
    ]  # fmt: skip
    grace = 1e10  # the runs are dated 2024: nothing may count as crashed by the clock of today
    with fake_wandb(monkeypatch, runs=runs) as server:
        catalog = RunCatalog(tmp_path / "cache", [WandbApiSource("altgrad/fp8", tmp_path / "api", grace_period_s=grace)])

        def tick(cursor, seconds):
            now = start + dt.timedelta(seconds=seconds)
            return watch_tick(catalog, local_roots=[], has_remote_sources=True, cursor=cursor, now=now, grace_s=grace)

        first = tick(WatchCursor(), 0)  # nothing asked before: a full listing
        assert first.synced and list(first.refresh) == ["E5M2"]
        server.clear_requests()

        going = server.run("going")
        going.updated_at = going.heartbeat_at = "2024-05-01T12:00:20"  # still running, logging on
        going.history.append({"_step": 1, "loss": 1.5})
        second = tick(first.cursor, 30)  # one narrow listing, no sync, no history
        assert not second.synced and second.refresh == {}
        listings = [json.loads(r.variables["filters"]) for r in server.requests if r.operation == "Runs"]
        since = (start - dt.timedelta(seconds=REMOTE_CLOCK_MARGIN_S)).replace(tzinfo=None).isoformat()
        assert listings == [{"$and": [{"updatedAt": {"$gt": since}}, {"state": {"$ne": "running"}}]}]
        assert server.count("Run") == 0 and server.count("HistoryPage") == 0

        going.state, going.updated_at, going.heartbeat_at = "finished", "2024-05-01T12:00:45", "2024-05-01T12:00:45"
        going.history.append({"_step": 2, "loss": 1.25})
        third = tick(second.cursor, 60)  # the run ended: listed, the catalog syncs and reads it
        assert third.synced and list(third.refresh) == ["E3M4"]
        assert catalog.histories(catalog.sync().entries).collect().filter(run_id="going")["value"].to_list() == [2.0, 1.5, 1.25]

"""The run catalog re-reads only runs whose fingerprint changed, keeps good data when a source or
a run fails, and keeps run ids unique across stores."""

from __future__ import annotations

from dataclasses import replace

import polars as pl

import altgrad_pipeline.ingest.catalog as catalog_module
from altgrad_pipeline.ingest.catalog import RunCatalog
from altgrad_pipeline.ingest.listing import store_digest
from altgrad_pipeline.ingest.model import HISTORY_SCHEMA, IngestIssue, ParsedRun, RunLocator
from altgrad_pipeline.partition_tables import built_from


class FakeSource:
    """An in-memory source: `runs` maps location -> (fingerprint, config); counts reads."""

    name = "fake"

    def __init__(self, runs: dict[str, tuple[str, dict]]):
        self.runs = runs
        self.reads: list[str] = []
        self.broken = False

    def discover(self) -> list[RunLocator]:
        if self.broken:
            raise ConnectionError("store offline")
        return [RunLocator(self.name, loc, fp, run_id_hint=loc) for loc, (fp, _) in self.runs.items()]

    def read(self, locator: RunLocator) -> ParsedRun:
        self.reads.append(locator.location)
        if locator.location == "explodes":
            raise ValueError("bad bytes")
        fingerprint, config = self.runs[locator.location]
        history = pl.DataFrame(
            {"run_id": [locator.location] * 2, "step": [0, 1], "key": ["loss"] * 2, "value": [2.0, float(len(fingerprint))],
             "text": [None, None], "runtime": [0.0, 1.0], "timestamp": [0.0, 1.0]}, schema=HISTORY_SCHEMA
        )  # fmt: skip
        return ParsedRun(
            run_id=config.get("id", locator.location), source=self.name, location=locator.location, history=history,
            config=config, ended=True, exit_code=0,
            issues=[IngestIssue(location=locator.location, kind="duplicate_step", reason="step 1 twice", lost="1 value")],
        )  # fmt: skip


def test_only_changed_runs_are_reread(tmp_path):
    source = FakeSource({"a": ("1", {"fp8_format": "E5M2"}), "b": ("1", {"fp8_format": "E3M4"})})
    catalog = RunCatalog(tmp_path, [source])
    first = catalog.sync()
    assert sorted(first.reread) == ["a", "b"] and first.formats == ["E3M4", "E5M2"]
    source.reads.clear()
    second = catalog.sync()
    assert second.reread == [] and source.reads == []
    source.runs["b"] = ("22", {"fp8_format": "E3M4"})
    third = catalog.sync()
    assert third.reread == ["b"]
    values = catalog.histories(third.for_format("E3M4")).collect()
    assert values.filter(pl.col("step") == 1).item(0, "value") == 2.0  # the new content, not the cached one


class KeyedSource(FakeSource):
    """Each run logs the keys its config lists (`None`: a null key), one value per key."""

    def read(self, locator: RunLocator) -> ParsedRun:
        parsed = super().read(locator)
        keys = self.runs[locator.location][1]["keys"]
        history = pl.DataFrame({"run_id": [locator.location] * len(keys), "step": list(range(len(keys))), "key": keys,
                                "value": [1.0] * len(keys), "text": [None] * len(keys), "runtime": [0.0] * len(keys),
                                "timestamp": [0.0] * len(keys)}, schema=HISTORY_SCHEMA)  # fmt: skip
        return replace(parsed, history=history)


def test_distinct_history_keys_counts_as_n_unique_over_the_runs(tmp_path):
    source = KeyedSource({"a": ("1", {"keys": ["loss", "acc", "loss"]}), "b": ("1", {"keys": ["lr", "loss"]}), "c": ("1", {"keys": [None, "lr"]})})
    catalog = RunCatalog(tmp_path, [source])
    entries = catalog.sync().entries
    for runs in (entries, entries[:2], entries[2:], []):
        expected = catalog.histories(runs).select(pl.col("key").n_unique()).collect().item()
        assert catalog.distinct_history_keys(runs) == expected
    assert catalog.distinct_history_keys(entries) == 4  # loss, acc, lr and the null


def test_removed_runs_leave_the_catalog(tmp_path):
    source = FakeSource({"a": ("1", {}), "b": ("1", {})})
    catalog = RunCatalog(tmp_path, [source])
    catalog.sync()
    del source.runs["b"]
    assert [e.run_id for e in catalog.sync().entries] == ["a"]
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_a_failing_run_or_source_never_loses_good_data(tmp_path):
    source = FakeSource({"a": ("1", {"fp8_format": "E5M2"}), "explodes": ("1", {})})
    catalog = RunCatalog(tmp_path, [source])
    result = catalog.sync()
    assert [e.run_id for e in result.entries] == ["a"]
    issues = RunCatalog.issues(result)
    assert set(issues.get_column("kind")) == {"reader_error", "duplicate_step"}
    assert "bad bytes" in issues.filter(pl.col("kind") == "reader_error").item(0, "reason")
    source.broken = True
    offline = catalog.sync()
    assert [e.run_id for e in offline.entries] == ["a"]  # cached runs survive a source outage
    assert offline.issues[0].kind == "source_unavailable"


def test_same_run_id_in_two_stores_stays_two_rows(tmp_path):
    source = FakeSource({"x": ("1", {"id": "abc"}), "y": ("1", {"id": "abc"})})
    result = RunCatalog(tmp_path, [source]).sync()
    ids = sorted(e.run_id for e in result.entries)
    assert ids[0] == "abc" and ids[1].startswith("abc@") and len(set(ids)) == 2
    assert any(i.kind == "duplicate_run_id" for i in result.issues)


def test_partition_fingerprint_tracks_files_and_state(tmp_path):
    source = FakeSource({"a": ("1", {})})
    catalog = RunCatalog(tmp_path, [source])
    entries = catalog.sync().entries
    runs = catalog.raw_runs(entries)
    before = built_from(runs)
    assert before == built_from(runs.reverse())
    assert before != built_from(runs.with_columns(pl.lit("crashed").alias("state")))
    assert before != built_from(runs.with_columns(pl.lit("other").alias("run_version")))


class FolderSource(FakeSource):
    """A FakeSource whose runs live under a local folder: the catalog can digest that folder."""

    def __init__(self, root, runs: dict[str, tuple[str, dict]]):
        super().__init__(runs)
        self.root = root
        self.listings = 0

    def discover(self) -> list[RunLocator]:
        self.listings += 1
        return super().discover()


def test_unchanged_local_stores_are_not_listed_again(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "a.log").write_text("1")
    source = FolderSource(store, {"a": ("1", {"fp8_format": "E5M2"}), "explodes": ("1", {}), "dup": ("1", {"id": "a"})})
    catalog = RunCatalog(tmp_path / "cache", [source])
    first = catalog.sync()
    again = catalog.sync()
    assert source.listings == 1 and again.reread == []
    assert [(e.key, e.run_id) for e in again.entries] == [(e.key, e.run_id) for e in first.entries]
    assert [i.kind for i in again.issues] == [i.kind for i in first.issues] == ["reader_error", "duplicate_run_id"]

    (store / "a.log").write_text("22")  # any file of the store changing means looking again
    source.runs["a"] = ("22", {"fp8_format": "E5M2"})
    assert catalog.sync().reread == ["a"] and source.listings == 2


def test_a_sync_given_a_digest_taken_before_it_does_not_digest_again(tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    (store / "a.log").write_text("1")
    source = FolderSource(store, {"a": ("1", {"fp8_format": "E5M2"})})
    catalog = RunCatalog(tmp_path / "cache", [source])
    seen = store_digest([store])  # as the sensor's tick took it
    first = catalog.sync()
    digests = []
    monkeypatch.setattr(catalog_module, "store_digest", lambda roots: digests.append(roots) or store_digest(roots))

    again = catalog.sync(seen_digest=seen)  # the state the last sync saw: its result, nothing listed
    assert source.listings == 1 and [e.key for e in again.entries] == [e.key for e in first.entries]
    (store / "a.log").write_text("22")
    source.runs["a"] = ("22", {"fp8_format": "E5M2"})
    newer = store_digest([store])
    assert catalog.sync(seen_digest=newer).reread == ["a"] and source.listings == 2  # another state: a sync
    assert catalog.sync(seen_digest=newer).reread == [] and source.listings == 2  # recorded under it
    assert digests == []
    assert catalog.sync().reread == [] and source.listings == 2 and len(digests) == 1  # its own digest agrees


def test_a_source_without_a_folder_is_always_listed(tmp_path):
    source = FolderSource(tmp_path / "store", {"a": ("1", {})})
    other = FakeSource({"b": ("1", {})})
    catalog = RunCatalog(tmp_path / "cache", [source, other])
    catalog.sync()
    catalog.sync()
    assert source.listings == 2

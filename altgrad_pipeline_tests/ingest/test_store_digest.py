"""The store scan changes exactly when a run's files change, and survives symlink cycles."""

from __future__ import annotations

import os

from altgrad_pipeline.ingest.listing import store_digest


def test_digest_tracks_added_grown_and_removed_files(tmp_path):
    run = tmp_path / "a.jsonl"
    run.write_text('{"step": 0}\n')
    first = store_digest([tmp_path])
    assert store_digest([tmp_path]) == first
    with run.open("a") as handle:
        handle.write('{"step": 1}\n')
    grown = store_digest([tmp_path])
    assert grown != first
    (tmp_path / "b.jsonl").write_text("{}\n")
    added = store_digest([tmp_path])
    assert added not in (first, grown)
    (tmp_path / "b.jsonl").unlink()
    assert store_digest([tmp_path]) == grown


def test_missing_root_and_symlink_cycle(tmp_path):
    (tmp_path / "store").mkdir()
    os.symlink(tmp_path / "store", tmp_path / "store" / "loop")
    assert store_digest([tmp_path / "store", tmp_path / "absent"]) == store_digest([tmp_path / "store", tmp_path / "absent"])


def test_the_roots_order_and_repeats_do_not_count(tmp_path):
    """The sensor digests the configured roots, the catalog its sources' folders: same stores, same digest."""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.jsonl").write_text("{}\n")
    one, two = tmp_path / "one", tmp_path / "two"
    assert store_digest([one, two]) == store_digest([two, one, two]) != store_digest([one])

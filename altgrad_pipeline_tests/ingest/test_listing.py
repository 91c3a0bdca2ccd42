"""The shared store walk finds what `Path.rglob` finds, and walks a root once per block."""

from __future__ import annotations

import os
from pathlib import Path

from altgrad_pipeline.ingest import listing


def _tree(root: Path) -> None:
    for relative in ["a/x.jsonl", "a/b/y.jsonl", "a/b/metrics.csv", ".hidden/z.jsonl", "dir.jsonl/inner.txt", "top.jsonl"]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text("{}\n")
    outside = root.parent / f"{root.name}-linked"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "w.jsonl").write_text("{}\n")
    os.symlink(outside, root / "link.jsonl")  # a symlinked folder is listed, not entered


def test_matches_path_rglob(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _tree(root)
    for pattern in ["*.jsonl", "metrics.csv", "*", "*.missing"]:
        assert sorted(listing.rglob(root, pattern)) == sorted(root.rglob(pattern)), pattern


def test_a_missing_root_lists_nothing(tmp_path: Path) -> None:
    assert listing.rglob(tmp_path / "absent", "*") == []


def test_one_walk_per_shared_block(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _tree(root)
    with listing.shared_walks():
        before = listing.rglob(root, "*.jsonl")
        (root / "late.jsonl").write_text("{}\n")
        assert listing.rglob(root, "*.jsonl") == before  # served from the block's walk
    assert root / "late.jsonl" in listing.rglob(root, "*.jsonl")  # outside a block: walked afresh

"""Walking local run stores: one listing per catalog sync shared by every reader, and a cheap
digest that says whether anything under the stores changed at all.

Each local reader (JSONL, Lightning CSV, TensorBoard, MLflow, W&B exports) finds its files by
name anywhere under the same root. Six separate `Path.rglob` walks of a 1,000-run W&B store cost
about 0.6 s per sync; one `os.scandir` walk, whose listing the readers then filter by name,
costs about 0.05 s. Inside `shared_walks()` a root is walked once; outside it every call walks
afresh, so a reader used on its own behaves exactly as before.

`store_digest` folds every file's path, size and mtime into one hash (10,000 W&B run folders:
about 0.4 s). Every file counts, the SDK's debug logs included: readers fingerprint those too.
When it matches, no file of any run changed: the sensor and the catalog skip the readers.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

#: root -> (name, path) of everything under it, for the duration of one `shared_walks()` block.
_WALKS: contextvars.ContextVar[dict[str, list[tuple[str, str]]] | None] = contextvars.ContextVar("altgrad_walks", default=None)


def _walk(root: str) -> list[tuple[str, str]]:
    """Every file and folder under `root`, like `Path.rglob("*")` on Python 3.11: symlinked
    folders are listed but not entered (no link cycles), unreadable folders are skipped."""
    found: list[tuple[str, str]] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                for item in listing:
                    found.append((item.name, item.path))
                    try:
                        if item.is_dir(follow_symlinks=False):
                            stack.append(item.path)
                    except OSError:
                        continue
        except OSError:
            continue
    return found


def _paths_under(root: Path) -> list[tuple[str, str]]:
    walks = _WALKS.get()
    key = str(root)
    if walks is None:
        return _walk(key)
    if key not in walks:
        walks[key] = _walk(key)
    return walks[key]


def rglob(root: Path, pattern: str) -> list[Path]:
    """`root.rglob(pattern)` for a name pattern (no '/'), served from the shared walk when one is
    open. Order is unspecified, as for `Path.rglob`: callers sort what they need sorted."""
    matches = re.compile(fnmatch.translate(pattern)).match
    return [Path(path) for name, path in _paths_under(Path(root)) if matches(name)]


@contextlib.contextmanager
def shared_walks() -> Iterator[None]:
    """Walk each root at most once inside this block (one catalog sync)."""
    token = _WALKS.set({})
    try:
        yield
    finally:
        _WALKS.reset(token)


def _first_visit(folder: os.DirEntry, linked: set[str]) -> bool:
    """Symlinked folders are followed once each (W&B's `latest-run` link, a linked store), so a
    link cycle cannot loop the walk."""
    if not folder.is_symlink():
        return True
    target = os.path.realpath(folder.path)
    if target in linked:
        return False
    linked.add(target)
    return True


def store_digest(roots: Iterable[Path]) -> str:
    """A digest of every file's path, size and mtime under the roots (creating a missing root
    counts as a change; the roots' order and repeats do not count). Equal digests mean nothing
    was added, removed, appended to or rewritten."""
    digest = hashlib.blake2b(digest_size=16)
    for root in sorted({Path(root) for root in roots}):
        digest.update(f"root\x00{root}\x00{root.is_dir()}\n".encode())
        stack = [str(root)]
        linked: set[str] = set()
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as listing:
                    items = sorted(listing, key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            for item in items:
                try:
                    if item.is_dir(follow_symlinks=True):
                        if _first_visit(item, linked):
                            stack.append(item.path)
                        continue
                    stat = item.stat(follow_symlinks=True)
                except OSError:  # removed between listing and stat: the next tick sees it gone
                    continue
                digest.update(f"{item.path}\x00{stat.st_size}\x00{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()

"""Is a stored file the one that was written? Content hashes, and quarantine for files that are not.

A Parquet file with a few bytes overwritten can still decode, with wrong values; a truncated one
fails only when read. The IO manager records each file's SHA-256 in its materialization, the
catalog records its cache files' hashes in its index, and both compare before trusting a file.
A file that fails is moved aside (never deleted: it is evidence) and rebuilt from its source.
Files in an object store (an fsspec file system) are checked the same way (`object_problem`).
No Dagster import.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path
from typing import Any

#: Materialization metadata key of the SHA-256 of the file an asset output was written to.
SHA256_KEY = "altgrad/sha256"
QUARANTINE_DIR = "quarantine"

#: (device, inode, size, mtime_ns) -> digest: a file read by several steps of one process is hashed
#: once, and a file hashed under its temporary name is known after the rename that publishes it.
_seen: dict[tuple[int, int, int, int], str] = {}
#: (URL, size, ETag) -> digest, the same for files in an object store.
_seen_objects: dict[tuple[str, int, str], str] = {}


class CorruptFileError(OSError):
    """A stored file that is missing, truncated or altered since it was written; names the file."""


def sha256_of(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (remembered while the file's inode, size and mtime are unchanged)."""
    stat = os.stat(path)
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _seen:
        with open(path, "rb") as handle:
            _seen[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _seen[key]


def problem(path: str | os.PathLike[str], expected: str | None) -> str | None:
    """Why the file at `path` is not the one recorded (`expected` its SHA-256; None: not recorded,
    so only its presence is checked); None when it is."""
    if not os.path.isfile(path):
        return f"{path} is missing"
    if expected is not None and sha256_of(path) != expected:
        return f"{path} is corrupt (its content changed since it was written)"
    return None


def quarantine(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> Path | None:
    """Move a bad file under `<root>/quarantine/<UTC time>/`, keeping its path relative to `root`;
    returns where it went (None when there was no file to move)."""
    path, root = Path(path), Path(root)
    if not path.exists():
        return None
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        relative = Path(path.name)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    target = root / QUARANTINE_DIR / stamp / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


def object_sha256(fs: Any, path: str) -> str:
    """SHA-256 of a file in an object store (`fs` an fsspec file system), streamed, never held
    whole; remembered while the object's ETag (or size and modification time) is unchanged, so a
    file read by several steps of one process is downloaded for hashing once."""
    info = fs.info(path)
    stamp = str(info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or "")
    key = (fs.unstrip_protocol(path), int(info.get("size") or 0), stamp)
    if key not in _seen_objects:
        with fs.open(path, "rb") as handle:
            _seen_objects[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _seen_objects[key]


def object_problem(fs: Any, path: str, expected: str | None) -> str | None:
    """`problem` for a file in an object store, named by its URL."""
    url = fs.unstrip_protocol(path)
    if not fs.isfile(path):
        return f"{url} is missing"
    if expected is not None and object_sha256(fs, path) != expected:
        return f"{url} is corrupt (its content changed since it was written)"
    return None


def quarantine_object(fs: Any, path: str, root: str) -> str | None:
    """`quarantine` for a file in an object store: moved under `<root>/quarantine/<UTC time>/`
    (`root` without its scheme, as `path`); returns its new URL."""
    if not fs.isfile(path):
        return None
    root = root.rstrip("/")
    relative = path[len(root) + 1 :] if path.startswith(root + "/") else path.rsplit("/", 1)[-1]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    target = f"{root}/{QUARANTINE_DIR}/{stamp}/{relative}"
    fs.mv(path, target)
    return fs.unstrip_protocol(target)


def inside(path: str, base: str) -> bool:
    """Whether `path` stays inside `base` once `..`, `.` and (locally) symlinks are resolved."""
    resolve = os.path.realpath if "://" not in base else os.path.normpath
    base_resolved = resolve(base)
    return os.path.commonpath([resolve(path), base_resolved]) == base_resolved

"""Files written whole or not at all: a temp file beside the target, renamed over it once complete,
removed when writing fails, so a kill or a full disk never leaves half a report, figure or table at
its final path. Out-of-space errors name the path and say so; no Dagster import.

`ALTGRAD_TEST_KILL_AT=<point>` (test-only, see `kill_point`) SIGKILLs the process at a named write,
so the tests can interrupt a refresh at exactly one phase boundary.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

#: Test-only: the name of the write point at which the process kills itself (see `kill_point`).
KILL_AT_ENV = "ALTGRAD_TEST_KILL_AT"
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
#: A temp folder's name (`temp_path`): `.<target name>.<pid>-<12 hex>.tmp`.
_TEMP_FOLDER = re.compile(r"\..+\.(?P<pid>[0-9]+)-[0-9a-f]{12}\.tmp")
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "database or disk is full")
#: SQLite says "disk I/O error" (SQLITE_IOERR_*) for some writes that fail for want of space (its
#: WAL index, a journal truncate): with less than this free beside it, that is a full disk.
IO_ERROR_FULL_BELOW_BYTES = 64 * 2**20


class OutOfSpaceError(OSError):
    """The disk (or quota) is full: said plainly, with the file that could not be written (`path`)."""

    path: Path | None = None


def is_out_of_space(exc: BaseException) -> bool:
    """A full disk or quota, whether raised by Python (errno) or by a library that only keeps the text."""
    return (isinstance(exc, OSError) and exc.errno in _NO_SPACE) or any(m in str(exc) for m in _NO_SPACE_TEXT)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding `path` (its nearest existing ancestor)."""
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def disk_full_message(exc: BaseException, database_dir: Path) -> str | None:
    """What a refresh that failed with `exc` (or anything it was raised from) tells its user when
    the disk is full: which path could not be written and how much is free now; None when `exc`
    is not about space. A SQLite error names no file: `database_dir` (the Dagster instance) is the
    path then."""
    for error in _chain(exc):
        if isinstance(error, OutOfSpaceError):
            path, detail = error.path, error.strerror
            break
        if isinstance(error, OSError) and error.errno in _NO_SPACE and error.filename:
            path = Path(os.fsdecode(error.filename))
            detail = f"could not write {path}"
            break
        if type(error).__module__ == "sqlite3":
            text = str(error)
            free = _free_bytes(database_dir)
            full = "database or disk is full" in text
            if full or ("disk I/O error" in text and free is not None and free < IO_ERROR_FULL_BELOW_BYTES):
                path, detail = database_dir, f"could not write the Dagster instance's database in {database_dir} (SQLite: {text})"
                break
    else:  # a library that keeps only the text ("No space left on device (os error 28)")
        error = next((e for e in _chain(exc) if is_out_of_space(e)), None)
        if error is None:
            return None
        path, detail = None, str(error)
    free = _free_bytes(path or database_dir)
    left = "" if free is None else f" ({free / 2**20:.1f} MiB free there now)"
    return (f"the disk is full: {detail}{left}. Free some space and run `altgrad-pipeline refresh` again: "
            "it redoes what this one left unfinished.")  # fmt: skip


def kill_point(name: str) -> None:
    """Test-only hook: SIGKILL this process when ALTGRAD_TEST_KILL_AT equals `name`, to simulate a
    refresh killed at that point (`write:<asset>` before an asset's file, `write:<file name>` before
    a report file, `rename:<file name>` once its temp file is written). Unset (always, outside
    tests) it does nothing."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def temp_path(path: Path) -> Path:
    """Where `path` is written before the rename: a file of the same name in a hidden, unique
    folder beside it (`.<name>.<pid>-<hex>.tmp/<name>`). Same file system, so the final rename is
    atomic; same name, so a writer that reads meaning from the file name (its suffix, its stem) sees
    the real one; the writer's process id, so a folder whose writer was killed can be told
    (`remove_abandoned_temps`)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp") / path.name


def remove_abandoned_temps(root: Path, writer_gone: Callable[[int], bool], *, skip: tuple[str, ...] = ()) -> list[Path]:
    """Remove the temp folders (`temp_path`) under `root` whose writing process is gone
    (`writer_gone(pid)`: `locking.gone_here`, which cannot be imported here since `locking` writes
    with this module): a kill -9 between a temp folder's creation and its rename leaves one, which
    nothing else removes. Folders of live processes (another writer on this machine) stay; so do
    folders under a directory named in `skip`. Returns the folders removed."""
    removed = []
    for folder, subfolders, _ in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in skip]
        for name in list(subfolders):
            match = _TEMP_FOLDER.fullmatch(name)
            if match and writer_gone(int(match["pid"])):
                shutil.rmtree(Path(folder) / name, ignore_errors=True)
                subfolders.remove(name)
                removed.append(Path(folder) / name)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces `path`, on any failure it is removed and a
    full disk is re-raised as `OutOfSpaceError` naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kill_point(f"write:{path.name}")
    tmp = temp_path(path)
    try:
        tmp.parent.mkdir()
        yield tmp
        kill_point(f"rename:{path.name}")
        os.replace(tmp, path)
    except Exception as exc:
        if is_out_of_space(exc):
            error = OutOfSpaceError(errno.ENOSPC, f"out of disk space writing {path}")
            error.path = path
            raise error from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        with contextlib.suppress(OSError):
            tmp.parent.rmdir()


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)

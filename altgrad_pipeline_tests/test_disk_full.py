"""What a refresh that ran out of space says (`atomic.disk_full_message`), for each way a full disk
reaches it: a file this project wrote, a library's OSError, a library that keeps only the text,
and the Dagster instance's SQLite; anything else is left to raise as it is."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from altgrad_pipeline import atomic


def _raised_from(cause: BaseException) -> RuntimeError:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise RuntimeError("step failed") from inner
    except RuntimeError as outer:
        return outer


def test_a_file_that_could_not_be_written_is_named(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "reports" / "format_comparison.html"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(atomic.OutOfSpaceError) as caught, atomic.atomic_path(target) as tmp:
        monkeypatch.setattr(Path, "write_text", full)
        tmp.write_text("<html>")
    assert caught.value.path == target and not target.exists()
    assert list(target.parent.iterdir()) == []  # no temp left
    message = atomic.disk_full_message(_raised_from(caught.value), tmp_path / "dagster_home")
    assert message.startswith(f"the disk is full: out of disk space writing {target} (") and "MiB free there now" in message


@pytest.mark.parametrize(
    ("cause", "names"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/cache/runs/x.parquet"), "could not write /data/cache/runs/x.parquet"),
        (ValueError("failed to write: No space left on device (os error 28)"), "failed to write: No space left on device (os error 28)"),
        (sqlite3.OperationalError("database or disk is full"), "could not write the Dagster instance's database in {home} (SQLite: database or disk is full)"),
    ],
    ids=["os-error", "library-text", "sqlite-full"],
)
def test_every_way_a_full_disk_arrives_is_said_plainly(tmp_path: Path, cause: BaseException, names: str) -> None:
    home = tmp_path / "dagster_home"
    message = atomic.disk_full_message(_raised_from(cause), home)
    assert message is not None and message.startswith(f"the disk is full: {names.format(home=home)}")
    assert message.endswith("Free some space and run `altgrad-pipeline refresh` again: it redoes what this one left unfinished.")


def test_a_sqlite_io_error_is_a_full_disk_only_when_the_disk_is_nearly_full(tmp_path: Path, monkeypatch) -> None:
    error = _raised_from(sqlite3.OperationalError("disk I/O error"))
    monkeypatch.setattr(atomic, "_free_bytes", lambda path: 10 * 2**30)
    assert atomic.disk_full_message(error, tmp_path) is None
    monkeypatch.setattr(atomic, "_free_bytes", lambda path: 2**20)
    assert atomic.disk_full_message(error, tmp_path).startswith(f"the disk is full: could not write the Dagster instance's database in {tmp_path}")
    assert atomic.disk_full_message(_raised_from(KeyError("x")), tmp_path) is None

"""The refresh lock across machines: a fresh lease record of another host is waited for even when
the `flock` is free (a file system that does not share locks between machines), a stale one (a
lease not renewed, a dead pid of this host) is taken over at once, and the holder renews its lease
and clears it on release. Other hosts are records written as another machine would write them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from altgrad_pipeline import locking

LEASE_S = 1.5


def _record(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _write(path: Path, record: dict) -> None:
    """As another machine's refresh writes its record: whole, by a rename."""
    tmp = path.with_name(".other.tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def _other_host(renewed_ago: float) -> dict:
    now = time.time()
    return {"host": "other-machine", "pid": 4242, "pid_started": 0.0, "since": now - 100, "renewed": now - renewed_ago}


def test_a_fresh_lease_of_another_host_is_waited_for(tmp_path):
    lease = tmp_path / locking.LEASE_NAME
    _write(lease, _other_host(renewed_ago=0.0))
    said: list[str] = []
    entered = threading.Event()

    def refresh() -> None:
        with locking.refresh_lock(tmp_path, said.append, lease_s=LEASE_S):
            entered.set()

    thread = threading.Thread(target=refresh)
    thread.start()
    for _ in range(3):  # the other machine keeps renewing: the lock stays taken
        time.sleep(LEASE_S / 2)
        _write(lease, _other_host(renewed_ago=0.0))
        assert not entered.is_set()
    lease.unlink()  # the other machine's refresh ends and clears its record
    thread.join(timeout=10)
    assert entered.is_set()
    assert said[0].startswith("Another refresh of this data dir is running (pid 4242 on other-machine since ")
    assert f"lock {tmp_path / locking.LOCK_NAME}" in said[0] and said[-1] == "The other refresh finished: continuing"
    assert not lease.exists()  # released: cleared


def test_an_expired_lease_of_another_host_is_taken_over(tmp_path):
    lease = tmp_path / locking.LEASE_NAME
    _write(lease, _other_host(renewed_ago=LEASE_S + 1))
    said: list[str] = []
    started = time.monotonic()
    with locking.refresh_lock(tmp_path, said.append, lease_s=LEASE_S):
        record = _record(lease)
        assert time.monotonic() - started < LEASE_S
    assert said == []
    assert (record["host"], record["pid"]) == (locking.this_process()["host"], int(locking.this_process()["pid"]))


def test_a_dead_process_of_this_host_does_not_hold_the_lock(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    me = locking.this_process()
    lease = tmp_path / locking.LEASE_NAME
    _write(lease, {"host": me["host"], "pid": int(dead.stdout), "pid_started": 1.0, "since": 1.0, "renewed": time.time()})
    said: list[str] = []
    with locking.refresh_lock(tmp_path, said.append, lease_s=LEASE_S):
        assert _record(lease)["pid"] == int(me["pid"])
    assert said == []


def test_the_holder_renews_its_lease_and_clears_it_on_release(tmp_path):
    lease = tmp_path / locking.LEASE_NAME
    with locking.refresh_lock(tmp_path, pytest.fail, lease_s=LEASE_S):
        first = _record(lease)["renewed"]
        time.sleep(LEASE_S * 0.8)
        renewed = _record(lease)["renewed"]
        assert LEASE_S / 3 <= renewed - first <= LEASE_S  # renewed every third of the lease
        assert locking.other_holder(_record(lease), {**_record(lease), "host": "other-machine"}, time.time(), LEASE_S) is not None
    assert not lease.exists()


def test_an_exited_process_counts_as_gone_before_its_parent_reaps_it():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while not locking.gone_here(child.pid):  # exited, not yet waited for: a zombie
        assert time.monotonic() < deadline, "the exited child never counted as gone"
        time.sleep(0.05)
    assert child.poll() == 0  # reaped only now
    assert locking.gone_here(child.pid)
    assert not locking.gone_here(os.getpid())


def test_without_proc_a_process_is_gone_when_its_pid_answers_no_signal(monkeypatch, tmp_path):
    monkeypatch.setattr(locking, "PROC", tmp_path / "no-proc")  # macOS: no process table to read
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid answers nothing
    assert locking.gone_here(child.pid)
    assert not locking.gone_here(os.getpid())

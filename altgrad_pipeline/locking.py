"""One refresh at a time per data dir, and whether the process behind a run is still alive.

The refresh lock lives in the local state dir (for a local data dir, the data dir itself), held two
ways so that it holds across machines sharing the data dir over a network file system:

- an advisory `flock` on `refresh.lock`, which the kernel drops when its holder dies however it
  dies (and which NFSv4 clients share with each other);
- a lease record, `refresh.lease` (host, pid, start time, last renewal; replaced whole by a rename,
  never seen half-written), that the holder renews every `LEASE_S / 3` seconds. Where the file system does not share locks between machines, a refresh
  that got the `flock` still waits while another host's record is fresh. A record is stale when
  its host is this one and its pid is gone, or when it was not renewed for `LEASE_S` (a machine
  that died is waited for that long). A record is written, then read back after `SETTLE_S`: of
  two machines writing at once, the one whose record did not stay waits.

An object-store data dir's state dir is local to each machine: there the lock is per machine.
No Dagster import.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from altgrad_pipeline import atomic

LOCK_NAME = "refresh.lock"
LEASE_NAME = "refresh.lease"
#: Seconds a lease record stays valid without renewal (the holder renews it every third of that).
LEASE_S = 60.0
#: Seconds between writing a lease record and reading it back.
SETTLE_S = 0.2
#: Linux's process table, where a process's start time and state are read.
PROC = Path("/proc")


def process_started_at(pid: int) -> float | None:
    """Epoch seconds when process `pid` started (Linux /proc), None when there is no such process
    or it has exited and waits to be reaped (a zombie: a killed refresh whose parent has not waited
    for it yet). With the pid, it names one process: a pid reused later has a later start."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        boot = next(float(line.split()[1]) for line in (PROC / "stat").read_text().splitlines() if line.startswith("btime"))
    except (OSError, StopIteration, ValueError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the parenthesised command name: field 3 on
    if fields[0] in ("Z", "X"):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22


def gone_here(pid: int) -> bool:
    """Whether process `pid` of this machine has exited (a zombie included): for the files and
    folders a process names with its pid, and for workers watching the process they serve. Without
    /proc (macOS), whether the pid answers a signal (a zombie then counts as alive)."""
    if PROC.is_dir():
        return process_started_at(pid) is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    return False


def this_process() -> dict[str, str]:
    """Who this process is, as run tags: enough for another process to tell whether it still lives."""
    started = process_started_at(os.getpid())
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "pid_started": f"{started or 0:.2f}"}


def is_alive(host: str, pid: int, started: float | None) -> bool | None:
    """Whether that process still runs: None when it is on another host (nothing can be known here).
    A process with the pid that started more than 2 s after `started` is another process."""
    if host != socket.gethostname():
        return None
    now_started = process_started_at(pid)
    if now_started is None:
        return False
    return started is None or started <= 0 or now_started <= started + 2.0


def _read_record(path: Path) -> dict[str, Any] | None:
    """The lease record in the lock file, read afresh (a new open: NFS revalidates on open)."""
    try:
        record = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"host", "pid", "since", "renewed"} <= set(record) else None


def _write_record(path: Path, record: dict[str, Any] | None) -> None:
    """Replace the lease record whole (a reader on any machine sees the old one or the new one), or remove it."""
    if record is None:
        path.unlink(missing_ok=True)
    else:
        atomic.write_text(path, json.dumps(record))


def describe(record: dict[str, Any]) -> str:
    since = dt.datetime.fromtimestamp(record["since"], dt.UTC)
    return f"pid {record['pid']} on {record['host']} since {since:%Y-%m-%d %H:%M:%S} UTC"


def other_holder(record: dict[str, Any] | None, mine: dict[str, Any], now: float, lease_s: float) -> dict[str, Any] | None:
    """The record of another refresh that holds the lock, or None when the lock is free: no
    record, our own, a dead process of this host, or a lease not renewed for `lease_s`."""
    if record is None or (record["host"], record["pid"], record["since"]) == (mine["host"], mine["pid"], mine["since"]):
        return None
    if record["host"] == mine["host"]:
        return record if is_alive(record["host"], int(record["pid"]), record.get("pid_started")) else None
    return record if now - float(record["renewed"]) <= lease_s else None


@contextlib.contextmanager
def refresh_lock(state_dir: Path, echo: Callable[[str], None], *, lease_s: float = LEASE_S) -> Iterator[None]:
    """Hold the data dir's refresh lock (see the module docstring); when another refresh holds it,
    say who and wait for it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path, lease = state_dir / LOCK_NAME, state_dir / LEASE_NAME
    me = this_process()
    mine = {"host": me["host"], "pid": int(me["pid"]), "pid_started": float(me["pid_started"]), "since": time.time()}
    waiting = False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(lease)
            echo(f"Another refresh of this data dir is running ({describe(holder) if holder else 'unknown'}; lock {path}): waiting for it to finish")
            waiting = True
            fcntl.flock(handle, fcntl.LOCK_EX)
        while True:  # the flock is ours; on a file system that does not share it, so may another host's
            holder = other_holder(_read_record(lease), mine, time.time(), lease_s)
            if holder is None:
                mine["renewed"] = time.time()
                _write_record(lease, mine)
                time.sleep(SETTLE_S)
                if _read_record(lease) == mine:
                    break
                continue
            if not waiting:
                echo(f"Another refresh of this data dir is running ({describe(holder)}, lease renewed "
                     f"{time.time() - float(holder['renewed']):.0f} s ago; lock {path}): waiting for it to finish")  # fmt: skip
                waiting = True
            time.sleep(min(lease_s / 3, 5.0))
        if waiting:
            echo("The other refresh finished: continuing")
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(lease_s / 3):
                if _read_record(lease) == mine:  # never overwrite a record that is not ours
                    mine["renewed"] = time.time()
                    _write_record(lease, mine)

        renewer = threading.Thread(target=renew, name="refresh-lock-lease", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            if _read_record(lease) == mine:
                _write_record(lease, None)

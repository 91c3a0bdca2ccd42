"""One refresh at a time per data dir, and whether the process behind a run is still alive.

The refresh lock is an advisory `flock` on `<local state dir>/refresh.lock`, which also holds the
holder's pid, host and start time so a second refresh can say whom it waits for. The kernel drops
the lock when its holder dies, however it dies, so a killed refresh never blocks the next one.
No Dagster import.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_NAME = "refresh.lock"


def process_started_at(pid: int) -> float | None:
    """Epoch seconds when process `pid` started (Linux /proc), None when there is no such process.
    With the pid, it names one process: a pid reused later has a later start."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    except (OSError, StopIteration, ValueError):
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the parenthesised command name
    return boot + ticks / os.sysconf("SC_CLK_TCK")


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


@contextlib.contextmanager
def refresh_lock(state_dir: Path, echo: Callable[[str], None]) -> Iterator[None]:
    """Hold the data dir's refresh lock; when another refresh holds it, say who and wait for it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            echo(f"Another refresh of this data dir is running ({holder}; lock {path}): waiting for it to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
            echo("The other refresh finished: continuing")
        me = this_process()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {me['pid']} on {me['host']} since {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()

"""Real servers for the scale tier, on loopback, each started in its own session and stopped by
process group (SIGTERM, then SIGKILL after a bound): PostgreSQL (as the `postgres` user, since
initdb refuses root), moto's S3 server, Redis, Celery workers and dagster-daemon."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
BIN = Path(sys.executable).parent
START_S = 30.0
STOP_S = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(ready: Callable[[], bool], what: str, process: subprocess.Popen, log: Path, timeout: float = START_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        if ready():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL if it is still there after STOP_S."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_S)
            except ProcessLookupError:
                pass
        try:  # children that outlived the leader (run workers, celery pool processes)
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start(name: str, command: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> Server:
    handle = log.open("wb")
    process = subprocess.Popen(
        list(command), stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
    )
    handle.close()
    return Server(name, process, log)


def missing_binaries() -> list[str]:
    wanted = {"PostgreSQL 15": PG_BIN / "postgres", "redis-server": shutil.which("redis-server"), "runuser": shutil.which("runuser")}
    return [name for name, path in wanted.items() if not path or not Path(path).exists()]


def start_postgres(root: Path) -> tuple[Server, int]:
    """A throwaway cluster owned by `postgres`, trust auth on 127.0.0.1, database `dagster`.
    `root` must be reachable by `postgres` (pytest's temporary folders are private to root)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.chown(root, "postgres")
    data = root / "data"
    subprocess.run(
        ["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    server = start(
        "postgres",
        ["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port),
         "-k", str(root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        root / "postgres.log",
    )  # fmt: skip

    def accepts() -> bool:
        probe = subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True)
        return probe.returncode == 0

    wait_until(accepts, "postgres", server.process, server.log)
    subprocess.run(
        [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "CREATE DATABASE dagster"],
        check=True, capture_output=True,
    )  # fmt: skip
    return server, port


def start_moto(root: Path) -> tuple[Server, int]:
    port = free_port()
    server = start("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], root / "moto.log")
    wait_until(lambda: port_open(port), "moto_server", server.process, server.log)
    return server, port


def start_redis(root: Path) -> tuple[Server, int]:
    port = free_port()
    server = start(
        "redis",
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        root / "redis.log",
    )
    wait_until(lambda: port_open(port), "redis-server", server.process, server.log)
    return server, port


def start_worker(name: str, root: Path, env: dict[str, str]) -> Server:
    """`altgrad-pipeline worker` with one pool process; ready once Celery logs "ready"."""
    return start_workers([name], root, env)[0]


def start_workers(names: Sequence[str], root: Path, env: dict[str, str]) -> list[Server]:
    """`start_worker` for each name, all launched before any is waited for: each spends seconds
    importing the project, and they do so side by side. Stopped again if one never gets ready."""
    workers = [
        start(name, [str(BIN / "altgrad-pipeline"), "worker", "--concurrency", "1", "--name", name], root / f"worker-{name}.log", env=env)
        for name in names
    ]
    try:
        for worker in workers:
            wait_until(lambda: b" ready." in worker.log.read_bytes(), f"celery worker {worker.name}", worker.process, worker.log, timeout=60.0)
    except BaseException:
        for worker in workers:
            worker.stop()
        raise
    return workers


def process_tree(pid: int) -> set[int]:
    """`pid` and every live descendant, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = set(), [pid]
    while todo:
        current = todo.pop()
        tree.add(current)
        todo.extend(children.get(current, []))
    return tree

"""Parse workers tune glibc's allocator (elsewhere the call is a harmless no) and notice their sync is gone."""

from __future__ import annotations

import multiprocessing
import os
import platform
import subprocess
import sys
import time

import pytest

from altgrad_pipeline.ingest import parse_process
from altgrad_pipeline.ingest.parse_process import reuse_freed_memory


def _tuned_in_child(queue: multiprocessing.Queue) -> None:
    queue.put(reuse_freed_memory())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_parse_process_keeps_freed_memory_on_glibc() -> None:
    context = multiprocessing.get_context("spawn")  # never tune the test runner's own process
    queue = context.Queue()
    child = context.Process(target=_tuned_in_child, args=(queue,))
    child.start()
    assert queue.get(timeout=60) is True
    child.join()


def test_an_exited_process_counts_as_gone_before_its_parent_reaps_it():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while not parse_process.process_gone(child.pid):  # exited, not yet waited for: a zombie
        assert time.monotonic() < deadline, "the exited child never counted as gone"
        time.sleep(0.05)
    assert child.poll() == 0  # reaped only now
    assert parse_process.process_gone(child.pid)
    assert not parse_process.process_gone(os.getpid())

"""Parse workers tune glibc's allocator; elsewhere the call is a harmless no."""

from __future__ import annotations

import multiprocessing
import platform

import pytest

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

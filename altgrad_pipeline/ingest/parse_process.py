"""Processes that exist to parse runs keep freed memory for the next run.

Reading one 44 MB `.wandb` log allocates some 65 MB of short-lived buffers. glibc returns large
allocations to the kernel when they are freed, so every run pays for the same pages again: about
16,000 page faults per run, 20 % of the reader's CPU time over 10 M values (1.26 of 6.1 CPU-s,
measured with `bench/ingest_speed.py`). Raising glibc's mmap and trim thresholds keeps those pages
in the heap, where the next run reuses them: the reader then needs 4.4 CPU-s for the same values.
Resident memory stays at the largest run's peak instead of dropping between runs, so this is done
only in processes that parse and nothing else (the catalog's worker pool), never in a host
application's process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time

from altgrad_pipeline import locking

#: glibc `mallopt` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Allocations below this come from the heap and are reused; above it they are mapped afresh.
MMAP_THRESHOLD_BYTES = 256 * 1024 * 1024
#: Freed heap memory is given back to the kernel only beyond this much.
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024


def reuse_freed_memory() -> bool:
    """Tune this process's allocator for parsing run after run; False where it is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


#: How often a parse worker checks that the process that started it is still there.
PARENT_CHECK_SECONDS = 0.5


def die_with_parent(parent_pid: int) -> None:
    """End this worker as soon as `parent_pid` (the process whose sync it serves) is gone: a killed
    refresh must not leave workers parsing and writing cache files behind it, even while its own
    parent has not reaped it yet. The pool's workers are children of the forkserver, not of the
    sync, so a watchdog thread looks for the sync itself."""
    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_SECONDS)
            if locking.gone_here(parent_pid):
                os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()

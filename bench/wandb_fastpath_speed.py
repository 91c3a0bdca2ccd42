"""Where a `.wandb` read spends its CPU time, fast path against protobuf only, on one file
(default: the first run of `bench/ingest_speed.py`'s store; write it first with that script).
Best of N in-process runs of `time.process_time()`; the phases are nested inside the total.

    python bench/wandb_fastpath_speed.py [path/to/run-x.wandb] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from altgrad_pipeline.ingest.wandb import fastpath as wandb_fastpath
from altgrad_pipeline.ingest.wandb import history as wandb_history
from altgrad_pipeline.ingest.wandb import log as wandb_log

#: (owner, attribute, phase): what each phase of a read is, by the function that does it.
PHASES = (
    (wandb_log.WandbLogReader, "_frame", "framing: chunk walk, CRC-32, payloads moved together"),
    (wandb_fastpath, "_scan_messages_c", "decode: the compiled scan (messages, steps, items, names, history values)"),
    (wandb_fastpath, "_item_lists", "decode: item lists (tag scan, chains)"),
    (wandb_fastpath, "_items", "decode: item template (name/value spans)"),
    (wandb_fastpath, "_binary", "decode: names/texts copied into Arrow arrays"),
    (wandb_fastpath.DecodedRecords, "replay", "summary fold (last value per key) + slow records"),
    (wandb_fastpath, "decode_records", "decode: all of it"),
    (wandb_history, "_step_and_key_order", "table build: (step, key) order (grid placement, else radix sorts)"),
    (wandb_log.WandbLogReader, "_history_frame", "table build: steps, sort, de-duplication, columns"),
)


def timed(totals: dict[str, float], phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            totals[phase] += time.process_time() - started

    return wrapper


def best_read(path: Path, repeat: int, min_bytes: int) -> tuple[float, dict[str, float], int]:
    """Best total CPU time of `repeat` reads, with the phases of that read."""
    wandb_log.FASTPATH_MIN_BYTES = min_bytes
    best: tuple[float, dict[str, float], int] | None = None
    for _ in range(repeat):
        totals: dict[str, float] = defaultdict(float)
        originals = [(owner, name, getattr(owner, name)) for owner, name, _ in PHASES]
        for (owner, name, phase), (_, _, function) in zip(PHASES, originals, strict=True):
            setattr(owner, name, timed(totals, phase, function))
        try:
            started = time.process_time()
            log = wandb_log.read_wandb_log(path)
            total = time.process_time() - started
        finally:
            for owner, name, function in originals:
                setattr(owner, name, function)
        if best is None or total < best[0]:
            best = (total, dict(totals), log.history.height)
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = next(iter(sorted((Path(tempfile.gettempdir()) / "altgrad-ingest-bench").glob("*/wandb_runs/wandb/offline-run-*/run-*.wandb"))), None)
    parser.add_argument("path", type=Path, nargs="?", default=default)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if args.path is None:
        sys.exit("no .wandb file given and none in the ingest_speed store")
    data = args.path.read_bytes()
    started = time.process_time()
    zlib.crc32(data)
    crc_s = time.process_time() - started
    results: dict[str, Any] = {"file": str(args.path), "bytes": len(data), "crc32_of_whole_file_s": round(crc_s, 4)}
    for label, min_bytes in (("fast_path", wandb_log.FASTPATH_MIN_BYTES), ("protobuf_only", 1 << 62)):
        total, phases, values = best_read(args.path, args.repeat, min_bytes)
        results[label] = {
            "values": values,
            "cpu_s": round(total, 4),
            "values_per_cpu_s": round(values / total),
            "phases_s": {phase: round(seconds, 4) for phase, seconds in phases.items()},
        }
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()

"""Values per CPU-second of the vectorised `.wandb` decoder (`wandb_fastpath`) against the current
`WandbLogReader`, on one real SDK-written file (default: the first run of `bench/ingest_speed.py`'s
store; write it first with that script). Best of N in-process runs of `time.process_time()`.

    python bench/wandb_fastpath_speed.py [path/to/run-x.wandb] [--repeat 7]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from altgrad_pipeline.ingest import wandb_fastpath as fp
from altgrad_pipeline.ingest.wandb_log import WandbLogReader, read_wandb_log


class FastReader(WandbLogReader):
    """The reader with the fast path wired in as the integration patch does it: framing as now,
    records batched, `decode_records` on the batch, slow records through `_decode` in order."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self._batch: list[bytes | memoryview] = []
        self._offsets: list[int] = []
        self._merged: fp.HistoryBatch | None = None

    def _decode(self, payload: bytes | memoryview, offset: int) -> None:
        self._batch.append(payload)
        self._offsets.append(offset)

    def decode_batch(self) -> None:
        lengths = np.fromiter((len(p) for p in self._batch), dtype=np.int64, count=len(self._batch))
        ends = np.cumsum(lengths)
        decoded = fp.decode_records(b"".join(self._batch), ends - lengths, ends)
        slow_rows: list[tuple[int, list[bytes], list[bytes], int | None]] = []

        def slow(record: int) -> None:
            rows, items = len(self._row_counts), len(self._keys)
            WandbLogReader._decode(self, self._batch[record], self._offsets[record])
            if len(self._row_counts) > rows:
                slow_rows.append((record, self._keys[items:], self._texts[items:], self._row_step_nums[-1]))

        decoded.replay(self._summary, slow)
        self._merged = fp.merge_history(decoded.history, fp.HistoryBatch.from_rows(slow_rows))
        self._row_counts = self._merged.row_counts.tolist()

    def _history_frame(self, run_id: str) -> Any:
        return fp.history_frame(self._merged, run_id=run_id, location=self.location, source=self.source)


def fast_read(path: Path) -> Any:
    reader = FastReader(str(path))
    reader.feed_file(path)
    reader.decode_batch()
    return reader.result()


def best(fn: Any, repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        started = time.process_time()
        out = fn()
        times.append(time.process_time() - started)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = next(iter(sorted((Path(tempfile.gettempdir()) / "altgrad-ingest-bench").glob("*/wandb_runs/wandb/*/run-*.wandb"))), None)
    parser.add_argument("path", type=Path, nargs="?", default=default)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if args.path is None:
        sys.exit("no .wandb file given and none in the ingest_speed store")
    records: list[bytes] = []

    class Collect(WandbLogReader):
        def _decode(self, payload: bytes | memoryview, offset: int) -> None:
            records.append(payload)

    def frame_only() -> None:
        records.clear()
        Collect(str(args.path)).feed_file(args.path)

    reference = read_wandb_log(args.path)
    values = reference.history.height
    frame_s, _ = best(frame_only, args.repeat)
    lengths = np.asarray([len(p) for p in records], dtype=np.int64)
    ends = np.cumsum(lengths)
    buffer = b"".join(records)
    decode_s, decoded = best(lambda: fp.decode_records(buffer, ends - lengths, ends), args.repeat)
    history_s, _ = best(lambda: fp.history_frame(decoded.history, run_id="r", location="l", source="s"), args.repeat)
    current_s, _ = best(lambda: read_wandb_log(args.path), args.repeat)
    fast_s, fast = best(lambda: fast_read(args.path), args.repeat)
    assert fast.history.equals(reference.history) and fast.summary == reference.summary
    items = len(decoded.history.keys) + len(decoded.summary.keys)
    rate = lambda s: f"{values / s / 1e6:.2f} M values/CPU-s"  # noqa: E731
    print(f"{args.path}: {values:,} history values, {items:,} history+summary items, {len(records):,} records")
    print(f"  current WandbLogReader            {current_s * 1e3:7.1f} ms  {rate(current_s)}")
    print(f"  fast path: decode_records alone   {decode_s * 1e3:7.1f} ms  {rate(decode_s)}")
    print(f"  framing alone (current _frame)    {frame_s * 1e3:7.1f} ms")
    print(f"  history_frame (table build)       {history_s * 1e3:7.1f} ms")
    print(f"  whole reader with the fast path   {fast_s * 1e3:7.1f} ms  {rate(fast_s)}")


if __name__ == "__main__":
    main()

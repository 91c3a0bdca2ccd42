"""Reading rate by row shape: this project's `.wandb` and JSONL readers against the usual ways.

For 12, 60 and 1,000 keys per row (4 x 20,000, 4 x 5,000 and 2 x 500 rows), writes runs with the
real wandb SDK (offline; cached in `--store`) and the same values as JSON lines (Python's `json`,
NaN every 97 steps), then reads every run of a shape twice in a fresh process and times the second
read (the first pays imports and lazy initialisation), best of `--repeat` processes, and prints
M logged values per CPU-second (CPU of all threads, `resource.getrusage`):
  - this project: `LocalWandbSource` and `JsonlSource`, discover + read, one run at a time
    (`wandb`: its compiled wire scan when built; `wandb-worker`: the same in a process whose
    allocator is set up as the catalog's parse workers' are, `parse_process.reuse_freed_memory`,
    which is how a sync reads runs; `wandb-numpy`: the numpy passes it falls back to);
  - plain protobuf reader: the `.wandb` framing walked in Python, each record parsed with wandb's
    `wandb_internal_pb2`, each history value `json.loads`-ed;
  - `json.loads` per line; `polars.read_ndjson` after mapping NaN to null (it rejects NaN);
    `pandas.read_json(lines=True)`.
Compare ratios within one run: the development machine is shared and its speed drifts.

    python bench/reader_shapes.py [--store /tmp/altgrad-reader-shapes] [--repeat 3] [--readers wandb,wandb-numpy]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import random
import resource
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_speed import write_wandb_store  # noqa: E402

SHAPES = ((12, 4, 20_000), (60, 4, 5_000), (1000, 2, 500))
NAN_EVERY = 97
READERS = ("wandb", "wandb-worker", "wandb-numpy", "protobuf", "jsonl", "json.loads", "polars", "pandas")
WANDB_BLOCK, WANDB_HEADER, CHUNK_HEADER = 32 * 1024, 7, 7


def row_of(run: int, step: int, keys: int) -> dict[str, float]:
    rnd = random.Random(run * 1_000_003 + step)
    row = {f"layer{k:04d}/grad_norm": rnd.random() for k in range(keys)}
    if step % NAN_EVERY == 0:
        row["layer0000/grad_norm"] = math.nan
    return row


def write_store(root: Path, keys: int, runs: int, steps: int) -> None:
    """SDK runs under root/wandb, the same rows as root/jsonl/*.jsonl (written once, then reused)."""
    write_wandb_store(root / "wandb_runs", runs, steps, keys, row=row_of)
    (root / "jsonl").mkdir(parents=True, exist_ok=True)
    for run in range(runs):
        path = root / "jsonl" / f"bench{run:04d}.jsonl"
        if not path.exists():
            lines = (json.dumps({"step": step, **row_of(run, step, keys)}) for step in range(steps))
            path.with_suffix(".partial").write_text("\n".join(lines) + "\n")
            path.with_suffix(".partial").rename(path)


def wandb_records(data: bytes):
    """Record payloads of a `.wandb` file: LevelDB log chunks in 32 KiB blocks after a 7-byte header."""
    pos, pending = WANDB_HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < CHUNK_HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        payload = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 1:
            yield payload
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            yield pending + payload
        elif kind == 0:
            break


def read_values(reader: str, root: Path) -> int:
    """Values read by one contender from every run of the store (a sanity check of the reading)."""
    if reader in ("wandb", "jsonl"):
        if reader == "wandb":
            from altgrad_pipeline.ingest.wandb.local import LocalWandbSource as Source

            source = Source(root / "wandb_runs")
        else:
            from altgrad_pipeline.ingest.jsonl import JsonlSource as Source

            source = Source(root / "jsonl", grace_period_s=0)
        return sum(source.read(locator).history.height for locator in source.discover())
    if reader == "protobuf":
        from wandb.proto import wandb_internal_pb2 as pb

        values = 0
        for path in sorted((root / "wandb_runs").rglob("*.wandb")):
            record = pb.Record()
            for payload in wandb_records(path.read_bytes()):
                record.ParseFromString(payload)
                if record.WhichOneof("record_type") == "history":
                    values += sum(1 for item in record.history.item if json.loads(item.value_json) is not None)
        return values
    paths = sorted((root / "jsonl").glob("*.jsonl"))
    if reader == "json.loads":
        return sum(len(json.loads(line)) for path in paths for line in path.read_bytes().splitlines())
    if reader == "polars":
        import polars as pl

        return sum(
            pl.read_ndjson(io.BytesIO(path.read_bytes().replace(b"NaN", b"null"))).select(pl.all().count()).sum_horizontal().item()
            for path in paths
        )
    import pandas as pd

    return sum(int(pd.read_json(path, lines=True).count().sum()) for path in paths)


def _child(reader: str, root: str, queue: multiprocessing.Queue) -> None:
    if reader == "wandb-worker":  # a process set up as the catalog's parse workers are
        from altgrad_pipeline.ingest.parse_process import reuse_freed_memory

        reuse_freed_memory()
        reader = "wandb"
    if reader == "wandb-numpy":
        os.environ["ALTGRAD_WANDB_DECODER"] = "numpy"  # fastpath.DECODER_ENV
        reader = "wandb"

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    read_values(reader, Path(root))  # pays imports and lazy initialisation, fills the page cache
    started = cpu()
    values = read_values(reader, Path(root))
    queue.put((values, cpu() - started))


def measure(reader: str, root: Path, repeat: int) -> tuple[int, float]:
    """(values, best CPU seconds) over `repeat` fresh processes."""
    ctx = multiprocessing.get_context("spawn")
    best: tuple[int, float] | None = None
    for _ in range(repeat):
        queue = ctx.Queue()
        child = ctx.Process(target=_child, args=(reader, str(root), queue))
        child.start()
        result = queue.get()
        child.join()
        best = result if best is None or result[1] < best[1] else best
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "altgrad-reader-shapes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/reader_shapes.json"))
    parser.add_argument("--readers", default=",".join(READERS), help="comma-separated subset of " + ", ".join(READERS))
    args = parser.parse_args()
    readers = [r for r in READERS if r in args.readers.split(",")]
    results = {}
    for keys, runs, steps in SHAPES:
        root = args.store / f"{keys}x{runs}x{steps}"
        write_store(root, keys, runs, steps)
        row = {}
        logged = keys * runs * steps  # every rate counts the values logged (NaN included)
        for reader in readers:
            values, cpu_s = measure(reader, root, args.repeat)
            rate = logged / cpu_s / 1e6
            row[reader] = {"values_read": values, "cpu_s": round(cpu_s, 3), "m_values_per_cpu_s": round(rate, 2)}
            print(f"{keys:>5} keys  {reader:10s} {values:>10,} values read  {rate:6.2f} M/CPU-s", flush=True)
        results[f"{keys} keys x {runs}x{steps:,} rows"] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n| shape | " + " | ".join(readers) + " |\n|---|" + "---|" * len(readers))
    for shape, row in results.items():
        print(f"| {shape} | " + " | ".join(f"{row[r]['m_values_per_cpu_s']:.2f}" for r in readers) + " |")


if __name__ == "__main__":
    main()

"""Values/s and peak memory of the TensorBoard and MLflow readers against the tools' own readers,
on generated stores of about 2 M values each. Each measurement runs in a fresh subprocess, so peak
RSS (minus the process's RSS after imports) is that reader's alone. Memory is also given as a ratio
to the size of the table our reader hands back (its long history, `estimated_size()`), the same
yardstick for every reader of a store (the issue's goal for TensorBoard: under 2x).

    python bench/foreign_sources_speed.py [--values 2000000]

Prints a table and writes bench/results/foreign_sources.json.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import resource
import sqlite3
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "foreign_sources.json"
TAGS = [f"grad_norm_l2/model.layers.{i}.mlp.weight" for i in range(20)]


def make_tensorboard(folder: Path, values: int) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    folder.mkdir(parents=True)
    with open(folder / "events.out.tfevents.1.bench.1.0", "wb") as handle:
        writer = RecordWriter(handle)
        writer.write(event_pb2.Event(wall_time=1.7e9, file_version="brain.Event:2").SerializeToString())
        protos = [
            event_pb2.Event(summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=t, simple_value=0)]))
            for t in TAGS
        ]
        for step in range(values // len(TAGS)):
            for i, event in enumerate(protos):
                event.step, event.wall_time = step, 1.7e9 + step * 0.01
                event.summary.value[0].simple_value = step * 1e-3 + i
                writer.write(event.SerializeToString())


def make_mlflow_file(store: Path, values: int) -> str:
    """A run created by MLflow's client (so its own reader accepts it), whose metric files are
    then filled with lines in the client's format."""
    import os

    import mlflow

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    mlflow.set_tracking_uri("file:" + str(store))
    with mlflow.start_run() as active:
        for tag in TAGS:
            mlflow.log_metric(tag, 0.0, step=0)
    run = next(store.glob(f"*/{active.info.run_id}"))
    per_tag = values // len(TAGS)
    for i, tag in enumerate(TAGS):
        (run / "metrics" / tag).write_text("".join(f"{1700000000000 + s} {s * 1e-3 + i!r} {s}\n" for s in range(per_tag)))
    return active.info.run_id


def make_sqlite(db: Path, values: int) -> None:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    with mlflow.start_run() as active:
        mlflow.log_metric("warmup", 0.0, step=0)
    per_tag = values // len(TAGS)
    rows = ((t, s * 1e-3 + i, 1700000000000 + s, active.info.run_id, s, 0) for i, t in enumerate(TAGS) for s in range(per_tag))
    with sqlite3.connect(db) as con:
        con.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,?)", rows)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _read_all(source) -> tuple[int, int]:
    """(values, bytes of the history tables) of every run of `source`."""
    histories = [source.read(loc).history for loc in source.discover()]
    return sum(h.height for h in histories), sum(h.estimated_size() for h in histories)


def _ours_tensorboard(path: str) -> tuple[int, int]:
    from altgrad_pipeline.ingest.tensorboard import TensorBoardSource

    return _read_all(TensorBoardSource(Path(path)))


def _event_accumulator(path: str) -> int:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(path, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return sum(len(acc.Scalars(t)) for t in acc.Tags()["scalars"])


def _tbparse(path: str) -> int:
    from tbparse import SummaryReader

    return len(SummaryReader(path).scalars)


def _ours_mlflow_file(path: str) -> tuple[int, int]:
    from altgrad_pipeline.ingest.mlflow_store import MlflowFileSource

    return _read_all(MlflowFileSource(Path(path)))


def _mlflow_client_file(path: str) -> int:
    import os

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="file:" + path + "/mlruns")
    [run] = client.search_runs(["0"])
    return sum(len(client.get_metric_history(run.info.run_id, t)) for t in TAGS)


def _ours_sqlite(path: str) -> tuple[int, int]:
    from altgrad_pipeline.ingest.mlflow_store import MlflowSqlSource

    return _read_all(MlflowSqlSource(f"sqlite:///{path}"))


def _sqlite_rows(path: str) -> int:
    with sqlite3.connect(path) as con:
        return sum(1 for _ in con.execute("SELECT key, step, value, is_nan, timestamp FROM metrics"))


def _measure(name: str, path: str, queue: mp.Queue) -> None:
    import altgrad_pipeline.ingest.mlflow_store  # noqa: F401 - imports outside the measured part
    import altgrad_pipeline.ingest.tensorboard  # noqa: F401

    base = _rss_mb()
    start = time.perf_counter()
    try:
        outcome = globals()[name](path)
    except Exception as exc:  # noqa: BLE001 - a missing optional reader is reported, not fatal
        queue.put({"error": f"{type(exc).__name__}: {exc}"})
        return
    seconds = time.perf_counter() - start
    count, output_bytes = outcome if isinstance(outcome, tuple) else (outcome, None)
    result = {"values": count, "seconds": seconds, "values_per_s": count / seconds, "peak_mb": _rss_mb() - base}
    if output_bytes is not None:
        result["output_mb"] = output_bytes / 2**20
    queue.put(result)


def measure(name: str, path: Path) -> dict:
    queue: mp.Queue = mp.get_context("fork").Queue()
    process = mp.get_context("fork").Process(target=_measure, args=(name, str(path), queue))
    process.start()
    result = queue.get(timeout=600)
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--values", type=int, default=2_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_tensorboard(work / "tb" / "run", args.values)
        make_mlflow_file(work / "mlflow" / "mlruns", args.values)
        make_sqlite(work / "mlruns.db", args.values)
        cases = [
            ("tensorboard", "ours", "_ours_tensorboard", work / "tb"),
            ("tensorboard", "EventAccumulator(size_guidance=0)", "_event_accumulator", work / "tb" / "run"),
            ("tensorboard", "tbparse", "_tbparse", work / "tb" / "run"),
            ("mlflow file store", "ours", "_ours_mlflow_file", work / "mlflow"),
            ("mlflow file store", "MlflowClient.get_metric_history", "_mlflow_client_file", work / "mlflow"),
            ("mlflow sqlite", "ours", "_ours_sqlite", work / "mlruns.db"),
            ("mlflow sqlite", "sqlite3 row iteration", "_sqlite_rows", work / "mlruns.db"),
        ]
        results = []
        for store, reader, function, path in cases:
            try:
                result = measure(function, path)
            except Exception as exc:  # noqa: BLE001 - a missing optional reader is reported, not fatal
                result = {"error": f"{type(exc).__name__}: {exc}"}
            results.append({"store": store, "reader": reader, **result})
    # Our reader comes first for each store: its output table is the yardstick for the store's readers.
    output_mb: dict[str, float] = {}
    for r in results:
        output_mb.setdefault(r["store"], r.get("output_mb", 0.0))
        if "peak_mb" in r and output_mb[r["store"]]:
            r["peak_over_output"] = r["peak_mb"] / output_mb[r["store"]]
    print(f"{'store':<20}{'reader':<36}{'values':>10}{'s':>8}{'values/s':>12}{'peak MB':>9}{'output MB':>11}{'peak/out':>10}")
    for r in results:
        if "error" in r:
            print(f"{r['store']:<20}{r['reader']:<36}  {r['error']}")
        else:
            print(f"{r['store']:<20}{r['reader']:<36}{r['values']:>10}{r['seconds']:>8.2f}{r['values_per_s']:>12,.0f}"
                  f"{r['peak_mb']:>9.0f}{output_mb[r['store']]:>11.0f}{r.get('peak_over_output', math.nan):>10.2f}")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"values": args.values, "results": results}, indent=2))


if __name__ == "__main__":
    main()

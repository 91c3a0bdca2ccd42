"""Values per CPU-second and peak memory of the TensorBoard and MLflow readers against the tools'
own readers, on generated stores of about 2 M values each: the issue's goals are per core, and CPU
time (`time.process_time`, every thread of the process) is far steadier than wall time on a shared
machine.

Each read runs in a newly started interpreter (spawn): its CPU time covers the read alone (discover
and read, not imports or store generation), its peak RSS is taken above the RSS after imports, and
nothing of the parent's memory is inherited. A fast reader is read `--repeats` times, each in its own
process, and both the best and the median rate are kept. Memory is also given as a ratio to the
size of the table our reader hands back (its long history, `estimated_size()`), the same yardstick
for every reader of a store (the issue's goal for TensorBoard: under 2x).

    python bench/foreign_sources_speed.py [--values 2000000] [--repeats 3]

Prints a table and writes bench/results/foreign_sources.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing as mp
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from queue import Empty

RESULTS = Path(__file__).parent / "results" / "foreign_sources.json"
TAGS = [f"grad_norm_l2/model.layers.{i}.mlp.weight" for i in range(20)]
#: A reader taking longer than this is measured once (the library readers: 20-50 s each).
SLOW_READER_S = 10.0
#: Our SQLite reader uses the columnar driver of the optional `fast-sql` extra when installed.
FAST_SQL = " (fast-sql: ADBC)" if importlib.util.find_spec("adbc_driver_sqlite") else ""


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


def _status_mb(field: str) -> float:
    """A memory figure (VmRSS, VmHWM) of this process from /proc, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _start_peak() -> float:
    """Resets this process's peak RSS to its current RSS (Linux: `clear_refs` 5), so the peak
    seen afterwards is the measured reader's and not that of the imports; returns that RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


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


def _ours_sqlite_stdlib(path: str) -> tuple[int, int]:
    """Our SQLite reader without the optional columnar driver."""
    from altgrad_pipeline.ingest import mlflow_store

    mlflow_store.adbc_sqlite = None
    return _ours_sqlite(path)


def _sqlite_rows(path: str) -> int:
    with sqlite3.connect(path) as con:
        return sum(1 for _ in con.execute("SELECT key, step, value, is_nan, timestamp FROM metrics"))


def _measure(name: str, path: str, queue: mp.Queue) -> None:
    """One read in this fresh process: CPU seconds of the reader alone (imports are done first)
    and its peak RSS above the process's RSS after those imports."""
    import altgrad_pipeline.ingest.mlflow_store  # noqa: F401 - imports outside the measured part
    import altgrad_pipeline.ingest.tensorboard  # noqa: F401

    base = _start_peak()
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        outcome = globals()[name](path)
    except Exception as exc:  # noqa: BLE001 - a missing optional reader is reported, not fatal
        queue.put({"error": f"{type(exc).__name__}: {exc}"})
        return
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    count, output_bytes = outcome if isinstance(outcome, tuple) else (outcome, None)
    result = {"values": count, "cpu_s": cpu, "wall_s": wall, "peak_mb": _status_mb("VmHWM") - base}
    if output_bytes is not None:
        result["output_mb"] = output_bytes / 2**20
    queue.put(result)


def measure_once(name: str, path: Path) -> dict:
    """`_measure` in a newly started interpreter (spawn, not fork: nothing of this process's
    memory is inherited); a child that dies is reported, not waited for."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(name, str(path), queue))
    process.start()
    result = None
    while result is None:
        try:
            result = queue.get(timeout=5)
        except Empty:
            if not process.is_alive():
                try:
                    result = queue.get(timeout=1)
                except Empty:
                    result = {"error": f"the measuring process exited with code {process.exitcode}"}
    process.join()
    return result


def measure(name: str, path: Path, repeats: int) -> dict:
    """Best and median of `repeats` fresh-process reads (one only for readers slower than
    SLOW_READER_S, whose figure is not near any goal). Rates are values per CPU-second."""
    runs = [measure_once(name, path)]
    if "error" in runs[0]:
        return runs[0]
    if runs[0]["cpu_s"] < SLOW_READER_S:
        runs += [measure_once(name, path) for _ in range(repeats - 1)]
    runs = [r for r in runs if "error" not in r]
    cpu = sorted(r["cpu_s"] for r in runs)
    result = {
        "values": runs[0]["values"],
        "runs": len(runs),
        "cpu_s": cpu,
        "values_per_cpu_s": runs[0]["values"] / cpu[0],
        "median_values_per_cpu_s": runs[0]["values"] / statistics.median(cpu),
        "wall_s": min(r["wall_s"] for r in runs),
        "peak_mb": max(r["peak_mb"] for r in runs),
    }
    if "output_mb" in runs[0]:
        result["output_mb"] = runs[0]["output_mb"]
    return result


#: The issue's goals for our readers: values per CPU-second, and TensorBoard's peak memory.
GOALS = {"tensorboard": 1_000_000, "mlflow file store": 3_000_000, "mlflow sqlite": 1_000_000}
TENSORBOARD_MEMORY_GOAL = 2.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--values", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process reads per fast reader (best and median)")
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
            ("mlflow sqlite", "ours" + FAST_SQL, "_ours_sqlite", work / "mlruns.db"),
            ("mlflow sqlite", "sqlite3 row iteration", "_sqlite_rows", work / "mlruns.db"),
        ]
        if FAST_SQL:
            stdlib = ("mlflow sqlite", "ours, sqlite3 driver (no fast-sql)", "_ours_sqlite_stdlib", work / "mlruns.db")
            cases.insert(-1, stdlib)
        results = [
            {"store": store, "reader": reader, **measure(function, path, args.repeats)}
            for store, reader, function, path in cases
        ]
    # Our reader comes first for each store: its output table is the yardstick for the store's readers.
    output_mb: dict[str, float] = {}
    for r in results:
        output_mb.setdefault(r["store"], r.get("output_mb", 0.0))
        if "peak_mb" in r and output_mb[r["store"]]:
            r["peak_over_output"] = r["peak_mb"] / output_mb[r["store"]]
        if r["reader"].startswith("ours") and "values" in r:
            r["goal_values_per_cpu_s"] = GOALS[r["store"]]
            r["goal_met"] = r["values_per_cpu_s"] >= GOALS[r["store"]] and (
                r["store"] != "tensorboard" or r["peak_over_output"] < TENSORBOARD_MEMORY_GOAL
            )
    print(f"{'store':<18}{'reader':<34}{'values':>9}{'runs':>5}{'CPU s':>7}{'values/CPU-s':>14}{'median':>11}"
          f"{'peak MB':>8}{'out MB':>7}{'peak/out':>9}  goal")  # fmt: skip
    for r in results:
        if "error" in r:
            print(f"{r['store']:<18}{r['reader']:<34}  {r['error']}")
            continue
        goal = "" if "goal_met" not in r else ("met" if r["goal_met"] else "NOT met")
        print(f"{r['store']:<18}{r['reader']:<34}{r['values']:>9}{r['runs']:>5}{r['cpu_s'][0]:>7.2f}"
              f"{r['values_per_cpu_s']:>14,.0f}{r['median_values_per_cpu_s']:>11,.0f}{r['peak_mb']:>8.0f}"
              f"{output_mb[r['store']]:>7.0f}{r.get('peak_over_output', math.nan):>9.2f}  {goal}")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"values": args.values, "repeats": args.repeats, "results": results}, indent=2))


if __name__ == "__main__":
    main()

"""Example runs written through the wandb SDK (offline), a SIGKILLed run, cloned run folders, and
the whole example study with its `EXPECTED.json`.

wandb-core behaviour when the client dies (measured with wandb 0.31.0): the service is started
with `--pid <client>` and watches it; when the client is SIGKILLed it logs "parent process
exited, terminating service process" and does a forced shutdown. It writes no exit record and
does not flush the pending row: W&B commits the row of step s only when step s+1 is logged (or
at finish), so a run killed after logging steps 0..N-1 stores rows 0..N-2. Rows also reach the
`.wandb` file only when wandb-core flushes it (every `x_transaction_log_flush_interval`, 15 s by
default, or when a buffer fills); a forced shutdown loses whatever was not flushed. The example
runs flush every 0.5 s, and the killed run is killed only once its rows are in the file, so its
last stored step is exact.

`write_run` and `write_example_runs` start processes with the spawn method: a script calling
them must guard its entry point with `if __name__ == "__main__":`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from altgrad_pipeline import locking
from altgrad_pipeline.examples.curves import simulate_history
from altgrad_pipeline.examples.failure_report import write_failure_report
from altgrad_pipeline.examples.specs import ExampleRunSpec, default_study
from altgrad_pipeline.examples.truth import StudyTruth
from altgrad_pipeline.ingest.wandb.names import RUN_FOLDER

#: How often wandb-core flushes the `.wandb` file; short, so a killed run's rows land promptly.
_FLUSH_INTERVAL_SECONDS = 0.5


@dataclass(frozen=True)
class WrittenRun:
    """Where `write_run` put a run and what it cost."""

    run_name: str
    run_id: str
    run_dir: str  # relative to the store root
    logged_values: int  # values passed to run.log (the store holds fewer for a killed run)
    seconds: float
    failure_report: str | None = None  # relative to the store root


def _init_run(root: Path, spec: ExampleRunSpec):
    import wandb

    return wandb.init(
        mode="offline",
        dir=str(root),
        project="altgrad",
        name=spec.run_name,
        config=spec.config(),
        tags=spec.tags,
        settings=wandb.Settings(
            silent=True,
            console="off",
            x_disable_stats=True,
            x_disable_meta=True,  # no host name, user or e-mail in a shareable store
            x_save_requirements=False,
            disable_git=True,
            disable_code=True,
            save_code=False,
            x_transaction_log_flush_interval=_FLUSH_INTERVAL_SECONDS,
        ),
    )


def _log_history(run, history: Sequence[Mapping[str, float | int]]) -> None:
    for step, metrics in enumerate(history):
        run.log(dict(metrics), step=step)


def _log_until_killed(root: str, spec: ExampleRunSpec, all_logged) -> None:
    """Child process of a killed run: log steps 0..N-1, send the run directory, wait for SIGKILL."""
    run = _init_run(Path(root), spec)
    _log_history(run, simulate_history(spec))
    all_logged.put(run.settings.sync_dir)
    time.sleep(3600)


def _wandb_file(run_dir: Path) -> Path:
    return next(run_dir.glob("run-*.wandb"))


def wandb_records(path: Path) -> list[Any]:
    """Decode the complete records of a `.wandb` file (LevelDB-style log: 7-byte file header,
    32 KiB blocks, 7-byte chunk headers crc32/length/type; FULL=1, FIRST=2, MIDDLE=3, LAST=4).
    A truncated tail (a file still being written, or cut by a kill) is ignored."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    block = 32 * 1024
    records: list[Any] = []
    pending = b""
    pos = 7
    while pos + 7 <= len(data):
        left_in_block = block - pos % block
        if left_in_block < 7:
            pos += left_in_block
            continue
        _crc, length, chunk_type = struct.unpack("<IHB", data[pos : pos + 7])
        if chunk_type == 0 or pos + 7 + length > len(data):
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if chunk_type in (1, 2) else pending + chunk
        if chunk_type in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _stored_history_steps(path: Path) -> list[int]:
    return [r.history.step.num for r in wandb_records(path) if r.WhichOneof("record_type") == "history"]


def _has_exit_record(path: Path) -> bool:
    return any(r.WhichOneof("record_type") == "exit" for r in wandb_records(path))


def _service_pids(client_pid: int) -> list[int]:
    """Child processes of the client (its wandb-core service), from /proc (empty elsewhere)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(entry.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == client_pid:
            pids.append(int(entry.parent.name))
    return pids


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _write_killed_run(root: Path, spec: ExampleRunSpec) -> Path:
    """Run the training loop in a spawned child, SIGKILL it once its rows reached the file,
    and check that the store holds rows 0..N-2 and no exit record."""
    context = multiprocessing.get_context("spawn")
    all_logged = context.SimpleQueue()
    child = context.Process(target=_log_until_killed, args=(str(root), spec, all_logged), daemon=True)
    child.start()
    try:
        _wait_for(lambda: not all_logged.empty() or not child.is_alive(), 120, f"{spec.run_name} to log its steps")
        if all_logged.empty():
            raise RuntimeError(f"{spec.run_name}: the child process died with code {child.exitcode} before logging")
        run_dir = Path(all_logged.get())
        wandb_file = _wandb_file(run_dir)

        def stored_up_to_last_committed_row() -> bool:
            stored = _stored_history_steps(wandb_file)
            return bool(stored) and stored[-1] >= spec.stored_last_step

        _wait_for(stored_up_to_last_committed_row, 60, f"{spec.run_name}'s rows to reach {wandb_file.name}")
        services = _service_pids(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
        _wait_for(lambda: all(locking.gone_here(pid) for pid in services), 30, "wandb-core to shut down")
    finally:
        if child.is_alive():
            child.kill()
            child.join(timeout=30)
    stored = _stored_history_steps(wandb_file)
    if stored[-1] != spec.stored_last_step or _has_exit_record(wandb_file):
        raise RuntimeError(
            f"{spec.run_name}: expected rows up to step {spec.stored_last_step} and no exit record; "
            f"found last step {stored[-1]}, exit record {_has_exit_record(wandb_file)}"
        )
    return run_dir


def write_run(root: Path, spec: ExampleRunSpec) -> WrittenRun:
    """Write one run under `<root>/wandb/` through the wandb SDK, exactly as altgrad logs it.

    A NaN run stops after `nan_patience - 1` NaN losses and finishes normally (exit code 0, as
    upstream's Trainer does) and gets a runner failure report. A killed run (`kill_after_steps`)
    is logged by a spawned child process that is SIGKILLed; see the module docstring for what
    wandb-core then keeps.
    """
    start = time.monotonic()
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    history = simulate_history(spec)
    if spec.kill_after_steps is not None:
        run_dir = _write_killed_run(root, spec)
    else:
        run = _init_run(root, spec)
        _log_history(run, history)
        run.finish(exit_code=0)
        run_dir = Path(run.settings.sync_dir)
    report = write_failure_report(root, spec, history) if spec.first_nan_step is not None else None
    return WrittenRun(
        run_name=spec.run_name,
        run_id=RUN_FOLDER.match(run_dir.name)["id"],
        run_dir=str(run_dir.relative_to(root)),
        logged_values=sum(len(row) for row in history),
        seconds=round(time.monotonic() - start, 3),
        failure_report=str(report.relative_to(root)) if report else None,
    )


@dataclass(frozen=True)
class ExampleStudy:
    """A written store: where it is, what was asked for, what was written, and the truths."""

    root: Path
    specs: list[ExampleRunSpec]
    written: list[WrittenRun]
    truth: StudyTruth
    seconds_to_write: float

    @property
    def logged_values(self) -> int:
        return sum(run.logged_values for run in self.written)

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            return json.loads(json.dumps(value, default=lambda v: dict(v) if isinstance(v, Mapping) else str(v)))

        return {
            "description": "Example altgrad runs written by altgrad_pipeline.examples; the truths an analysis should recover.",
            "runs_written": len(self.written),
            "logged_values": self.logged_values,
            "seconds_to_write": self.seconds_to_write,
            "truth": plain(dataclasses.asdict(self.truth)),
            "written": [dataclasses.asdict(run) for run in self.written],
            "specs": plain([dataclasses.asdict(spec) for spec in self.specs]),
        }


def clone_run(template: Path, store: Path, run_id: str, *, hard_link: bool = False) -> Path:
    """A copy of a written run folder under a new run id (folder and `.wandb` file renamed), for
    stores of thousands of runs in tests and benchmarks without writing each through the SDK;
    `hard_link` shares the bytes with the template instead of copying them."""
    match = RUN_FOLDER.match(template.name)
    old_id = match["id"]
    target = store / "wandb" / f"{template.name[: match.start('id')]}{run_id}"
    shutil.copytree(template, target, copy_function=os.link if hard_link else shutil.copy2)
    (target / f"run-{old_id}.wandb").rename(target / f"run-{run_id}.wandb")
    return target


def write_example_runs(root: Path, specs: Sequence[ExampleRunSpec] | None = None, workers: int = 2) -> ExampleStudy:
    """Write `specs` (default: `default_study()`) under `root` and `<root>/EXPECTED.json`.

    Runs are written by a spawn-context process pool of `workers` (1 writes in this process);
    a killed run is always written from this process, since it spawns and kills its own child.
    Refuses a root that already holds a store, so truths and runs cannot get mixed.
    """
    root = Path(root).resolve()
    specs = list(default_study() if specs is None else specs)
    truth = StudyTruth.of(specs)
    if (root / "EXPECTED.json").exists() or (root / "wandb").exists():
        raise FileExistsError(f"{root} already holds a run store; write example runs into a new directory")
    root.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    ordinary = [s for s in specs if s.kill_after_steps is None]
    killed = [s for s in specs if s.kill_after_steps is not None]
    written: dict[str, WrittenRun] = {}
    if workers > 1 and len(ordinary) > 1:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(write_run, root, spec) for spec in ordinary]
            for spec in killed:
                written[spec.run_name] = write_run(root, spec)
            for future in futures:
                run = future.result()
                written[run.run_name] = run
    else:
        for spec in [*ordinary, *killed]:
            written[spec.run_name] = write_run(root, spec)
    study = ExampleStudy(
        root=root,
        specs=specs,
        written=[written[s.run_name] for s in specs],
        truth=truth,
        seconds_to_write=round(time.monotonic() - start, 2),
    )
    (root / "EXPECTED.json").write_text(json.dumps(study.to_json(), indent=2, allow_nan=True) + "\n")
    return study

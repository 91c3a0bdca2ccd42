"""End to end: `dagster-daemon run` on a temporary DAGSTER_HOME picks up a newly finished run by
itself (sensor tick -> partition run -> declarative automation of the analysis and reports), and
`format_comparison.md` then reflects it.

The daemon is started in its own session and stopped by process group (SIGTERM, then SIGKILL
after a bound), since dagster maps SIGTERM onto its SIGINT handling and children can linger.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from altgrad_pipeline.examples import ExampleRunSpec, write_run

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAEMON = Path(sys.executable).parent / "dagster-daemon"
WAIT_S = 240.0
STOP_S = 15.0
FORMAT = "E2M5"


def reflects_new_run(data_dir: Path, run_id: str) -> bool:
    """The format's partition holds the run and the ANAL-01 report ranks its (new) format."""
    partition = data_dir / "assets" / "raw_runs" / f"{FORMAT}.parquet"
    report = data_dir / "reports" / "format_comparison.md"
    return (
        partition.exists()
        and run_id in pl.read_parquet(partition).get_column("run_id").to_list()
        and report.exists()
        and f"| {FORMAT} |" in report.read_text()
    )


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_S)
    except ProcessLookupError:
        pass
    try:  # run workers the daemon launched share its group
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.daemon
def test_daemon_refreshes_the_partition_of_a_new_finished_run(tmp_path):
    home, store, data = tmp_path / "dagster_home", tmp_path / "runs", tmp_path / "data"
    for folder in (home, store, data):
        folder.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = os.environ | {
        "DAGSTER_HOME": str(home),
        "ALTGRAD_RUNS": str(store),
        "ALTGRAD_DATA_DIR": str(data),
        "ALTGRAD_SENSOR_INTERVAL_SECONDS": "5",
        "ALTGRAD_AUTOMATION_INTERVAL_SECONDS": "5",
    }
    log = (tmp_path / "daemon.log").open("wb")
    process = subprocess.Popen(
        [str(DAEMON), "run", "-w", str(PROJECT_ROOT / "workspace.yaml")],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        written = write_run(store, ExampleRunSpec(format_name=FORMAT, optimizer="adamw", seed=7, max_steps=12))
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not reflects_new_run(data, written.run_id):
            assert process.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            time.sleep(1.0)
        assert reflects_new_run(data, written.run_id), (tmp_path / "daemon.log").read_text()[-3000:]
    finally:
        _stop(process)
        log.close()

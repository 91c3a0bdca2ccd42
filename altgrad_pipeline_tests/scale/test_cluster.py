"""The scale tier: Postgres instance, S3 data dir, Celery workers and dagster-daemon, all real
servers on loopback. A refresh on the cluster gives the same tables as on one machine, both
workers take steps, and the daemon's sensor materializes a new format through the cluster."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import multiprocessing
import os
import subprocess
import time
from collections.abc import Iterator

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from altgrad_pipeline.defs import executor
from altgrad_pipeline.examples import ExampleRunSpec, write_run
from altgrad_pipeline.refresh import refresh
from altgrad_pipeline_tests.scale import servers
from altgrad_pipeline_tests.scale.conftest import PROJECT_ROOT, STUDY, Cluster

pytestmark = pytest.mark.scale

REFRESH_TIMEOUT_S = 240
DAEMON_WAIT_S = 150.0


def _s3(cluster: Cluster):
    import s3fs

    env = cluster.env
    return s3fs.S3FileSystem(
        key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=env["AWS_ENDPOINT_URL"], client_kwargs={"region_name": env["AWS_REGION"]},
    )  # fmt: skip


def _tables(read: dict[str, bytes]) -> dict[str, pl.DataFrame]:
    """Every asset table by path under `assets/`, except report manifests (they name files)."""
    tables = {name: pl.read_parquet(io.BytesIO(data)) for name, data in read.items()}
    return {name: frame for name, frame in tables.items() if "html_path" not in frame.columns}


@pytest.fixture(scope="module")
def cluster_refresh(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`altgrad-pipeline refresh` on the cluster (a subprocess, as a user runs it) and the same
    refresh on one machine (in-process executor, local folder, temporary SQLite instance), the
    latter while the cluster's runs are under way."""
    started = time.time()
    output = {name: cluster.root / f"refresh.{name}" for name in ("stdout", "stderr")}
    with output["stdout"].open("w") as stdout, output["stderr"].open("w") as stderr:  # files: no pipe to fill meanwhile
        on_cluster = subprocess.Popen([str(servers.BIN / "altgrad-pipeline"), "refresh"], env=cluster.env, stdout=stdout, stderr=stderr, cwd=cluster.root)
    try:
        local_data = tmp_path_factory.mktemp("local-data")
        with dg.instance_for_test() as instance:
            assert refresh(runs=str(cluster.study_store), data_dir=str(local_data), instance=instance, echo=lambda _: None).ok
        on_cluster.wait(timeout=REFRESH_TIMEOUT_S)
    finally:
        if on_cluster.poll() is None:
            on_cluster.kill()
            on_cluster.wait()
    stdout, stderr = (output[name].read_text() for name in ("stdout", "stderr"))
    assert on_cluster.returncode == 0, stdout[-3000:] + stderr[-3000:]
    fs = _s3(cluster)
    remote_root = cluster.data_url("refresh").removeprefix("s3://")
    remote = {p.removeprefix(f"{remote_root}/assets/"): fs.cat_file(p) for p in fs.find(f"{remote_root}/assets")}
    local = {p.relative_to(local_data / "assets").as_posix(): p.read_bytes() for p in (local_data / "assets").rglob("*.parquet")}
    reports = sorted(p.removeprefix(f"{remote_root}/reports/") for p in fs.find(f"{remote_root}/reports"))
    return {"stdout": stdout, "stderr": stderr, "remote": _tables(remote), "local": _tables(local), "reports": reports, "started": started}


def test_cluster_refresh_gives_the_same_tables_as_one_machine(cluster_refresh):
    remote, local = cluster_refresh["remote"], cluster_refresh["local"]
    assert sorted(remote) == sorted(local)
    for fmt in {s.format_name for s in STUDY}:
        assert f"raw_runs/{fmt}.parquet" in remote
    assert remote["raw_runs/E5M2.parquet"].height == 4
    for name in sorted(local):
        # Row order of some analysis tables follows group_by order, and a float mean may differ in
        # its last bits with Polars' summation order: neither depends on where the step ran.
        assert_frame_equal(remote[name], local[name], check_row_order=False, rel_tol=1e-12, abs_tol=1e-15)
    assert "Warning" not in cluster_refresh["stdout"] + cluster_refresh["stderr"]  # e.g. Celery's per-step task warning


def test_cluster_refresh_publishes_the_reports_to_the_object_store(cluster: Cluster, cluster_refresh):
    reports = cluster_refresh["reports"]
    for name in ("index.md", "index.html", "format_comparison.md", "failure_modes.md", "manifold_comparison.md"):
        assert name in reports
    assert any(name.startswith("figures/") and name.endswith(".png") for name in reports)
    with _instance(cluster) as instance:
        metadata = instance.get_latest_materialization_event(dg.AssetKey("format_comparison_report")).asset_materialization.metadata
    assert metadata["report_path"].value == f"{cluster.data_url('refresh')}/reports/format_comparison.md"


@contextlib.contextmanager
def _instance(cluster: Cluster) -> Iterator[dg.DagsterInstance]:
    """The cluster's Postgres instance (its dagster.yaml reads the DAGSTER_PG_* variables)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in cluster.env.items():
            if name.startswith("DAGSTER_PG_"):
                patch.setenv(name, value)
        with dg.DagsterInstance.from_config(cluster.env["DAGSTER_HOME"]) as instance:
            yield instance


def _step_pids(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, int]:
    """`<run>:<step>` -> the pid that executed the step (from its STEP_START event)."""
    return {
        f"{run_id[:8]}:{entry.step_key}": entry.dagster_event.pid
        for run_id in run_ids
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    }


def test_steps_ran_on_both_celery_workers(cluster: Cluster, cluster_refresh):
    """Every step of the refresh's runs ran in a worker's process tree, and each worker took some."""
    trees = {worker.name: servers.process_tree(worker.process.pid) for worker in cluster.workers}
    with _instance(cluster) as instance:
        step_pids = _step_pids(instance, [r.run_id for r in instance.get_runs() if r.job_name == "refresh_format"])
    assert len(step_pids) >= 5 * 4  # four formats: ingest, layer_metrics and checks per run
    by_worker = {name: sorted(step for step, pid in step_pids.items() if pid in tree) for name, tree in trees.items()}
    elsewhere = sorted(step for step, pid in step_pids.items() if not any(pid in tree for tree in trees.values()))
    assert elsewhere == [], f"steps outside the workers: {elsewhere}"
    assert all(by_worker.values()), f"steps per worker: {by_worker}"


def test_daemon_sensor_materializes_a_new_format_through_the_cluster(cluster: Cluster, cluster_refresh, tmp_path):
    """dagster-daemon on the Postgres instance: a finished run of a format no partition has yet
    (E2M5) is noticed by the sensor, which registers the partition and launches its run; the run's
    steps go to the Celery workers and its Parquet lands on S3.

    The workers load the code location with their own ALTGRAD_RUNS / ALTGRAD_DATA_DIR, so the daemon
    shares the cluster's configuration, as every machine of a deployment must."""
    env = cluster.env | {"ALTGRAD_SENSOR_INTERVAL_SECONDS": "3", "ALTGRAD_AUTOMATION_INTERVAL_SECONDS": "3600"}
    daemon = servers.start(
        "dagster-daemon", [str(servers.BIN / "dagster-daemon"), "run", "-w", str(PROJECT_ROOT / "workspace.yaml")],
        tmp_path / "daemon.log", env=env, cwd=PROJECT_ROOT,
    )  # fmt: skip
    fs = _s3(cluster)
    partition = f"{cluster.data_url('refresh').removeprefix('s3://')}/assets/raw_runs/E2M5.parquet"
    try:
        written = write_run(cluster.study_store, ExampleRunSpec(format_name="E2M5", optimizer="adamw", seed=3, max_steps=12))
        deadline = time.monotonic() + DAEMON_WAIT_S
        while time.monotonic() < deadline and not fs.exists(partition):
            assert daemon.process.poll() is None, daemon.log.read_text()[-3000:]
            time.sleep(1.0)
            fs.invalidate_cache()
        assert fs.exists(partition), daemon.log.read_text()[-3000:]
        assert pl.read_parquet(io.BytesIO(fs.cat_file(partition))).get_column("run_id").to_list() == [written.run_id]
    finally:
        daemon.stop()
    with _instance(cluster) as instance:
        assert "E2M5" in instance.get_dynamic_partitions("fp8_format")
        sensor_runs = [
            r for r in instance.get_runs()
            if r.tags.get("altgrad/trigger") == "finished_runs" and r.tags.get("dagster/partition") == "E2M5"
        ]  # fmt: skip
        assert sensor_runs
        trees = set().union(*(servers.process_tree(w.process.pid) for w in cluster.workers))
        step_pids = set(_step_pids(instance, [sensor_runs[0].run_id]).values())
        assert step_pids and step_pids <= trees


def _create_pool_at_once(env: dict[str, str], pool: str, start: multiprocessing.synchronize.Barrier) -> str:
    os.environ.update(env)
    with dg.DagsterInstance.get() as instance:
        start.wait()
        try:
            executor.create_pools(instance, [pool])
        except Exception as exc:  # reported to the test, which names it
            return f"{type(exc).__name__}: {exc}"
    return "ok"


def test_processes_creating_a_pool_together_on_postgres_all_succeed(cluster: Cluster):
    """Dagster's own first claim of a pool fails in all but one of several processes on PostgreSQL
    (measured: 10 of 10 trials of 6 processes); `create_pools` lets the losers find the winner's row."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Barrier(4)
        with concurrent.futures.ProcessPoolExecutor(4, mp_context=context) as pool:
            outcomes = list(pool.map(_create_pool_at_once, [cluster.env] * 4, ["raced_pool"] * 4, [start] * 4))
    assert outcomes == ["ok"] * 4
    with _instance(cluster) as instance:
        assert instance.event_log_storage.get_concurrency_info("raced_pool").slot_count == 2  # deploy/postgres default

"""Scale-out configuration without servers: object-store data dirs, the executor choice, the
Celery worker's command line, report publishing, and the parallel ingest of a catalog sync."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from fsspec.implementations.memory import MemoryFileSystem
from polars.testing import assert_frame_equal

from altgrad_pipeline import execution, settings
from altgrad_pipeline.cli import worker_command
from altgrad_pipeline.defs import executor
from altgrad_pipeline.defs.resources import ReportFiles, RunStores
from altgrad_pipeline.ingest.catalog import PARALLEL_MIN_RUNS, RunCatalog
from altgrad_pipeline.ingest.model import ParsedRun, RunLocator

AWS = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_REGION": "eu-west-1"}


def test_an_object_store_data_dir_keeps_its_cache_and_instance_on_local_disk(monkeypatch, tmp_path):
    monkeypatch.delenv(settings.CACHE_DIR_ENV, raising=False)
    url = settings.absolute_data_dir("s3://bucket/study/")
    assert url == "s3://bucket/study" and settings.is_url(url) and not settings.is_url("file:///x")
    state = settings.local_state_dir(url)
    assert state.parent == Path("~/.cache/altgrad-pipeline").expanduser() and len(state.name) == 16
    assert settings.local_state_dir(url) == state  # the same on every call and every machine
    assert RunStores(data_dir=url).cache_dir == state / "cache"
    assert settings.example_store_dir(url) == state / "example_runs"
    monkeypatch.setenv(settings.CACHE_DIR_ENV, str(tmp_path / "cache"))
    assert RunStores(data_dir=url).cache_dir == tmp_path / "cache"
    local = str(tmp_path / "data")
    monkeypatch.delenv(settings.CACHE_DIR_ENV)
    assert RunStores(data_dir=local).cache_dir == tmp_path / "data" / "cache"
    assert ReportFiles(data_dir=local).reports_dir == tmp_path / "data" / "reports"


def test_s3_options_come_from_the_standard_variables(monkeypatch):
    for name, value in AWS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    fsspec_options = settings.fsspec_storage_options("s3://bucket/x")
    assert fsspec_options == {
        "endpoint_url": "http://127.0.0.1:9000", "key": "id", "secret": "secret", "client_kwargs": {"region_name": "eu-west-1"},
    }  # fmt: skip
    assert settings.polars_storage_options(fsspec_options) == {
        "aws_endpoint_url": "http://127.0.0.1:9000", "aws_access_key_id": "id", "aws_secret_access_key": "secret",
        "aws_region": "eu-west-1", "aws_allow_http": "true",
    }  # fmt: skip
    assert settings.fsspec_storage_options("gs://bucket/x") == {}


def test_the_executor_is_chosen_by_altgrad_executor(monkeypatch):
    monkeypatch.delenv(settings.EXECUTOR_ENV, raising=False)
    assert settings.executor_choice() == settings.ExecutorChoice("in_process", settings.DEFAULT_CELERY_URL, settings.DEFAULT_CELERY_URL)
    assert executor.executor_from_env() is dg.in_process_executor
    monkeypatch.setenv(settings.EXECUTOR_ENV, "multiprocess")
    assert executor.executor_from_env().name == "multiprocess"
    assert executor.MULTIPROCESS_CONFIG == {"start_method": {"forkserver": {"preload_modules": ["altgrad_pipeline.definitions"]}}}
    monkeypatch.setenv(settings.EXECUTOR_ENV, "dask")
    with pytest.raises(ValueError, match="in_process, multiprocess, celery"):
        settings.executor_choice()
    monkeypatch.setenv(settings.EXECUTOR_ENV, "celery")
    monkeypatch.setenv(settings.CELERY_BROKER_ENV, "redis://broker:6379/0")
    monkeypatch.setenv(settings.CELERY_BACKEND_ENV, "redis://broker:6379/1")
    assert settings.executor_choice() == settings.ExecutorChoice("celery", "redis://broker:6379/0", "redis://broker:6379/1")
    assert execution.runs_in_parallel(settings.executor_choice())


def test_the_worker_command_carries_the_configuration_and_the_interpreter_path(tmp_path):
    environ = {
        "PATH": "/usr/bin", settings.DATA_DIR_ENV: str(tmp_path / "data"), "DAGSTER_HOME": str(tmp_path / "home"),
        settings.CELERY_BROKER_ENV: "redis://10.0.0.5:6379/0", settings.CELERY_BACKEND_ENV: "redis://10.0.0.5:6379/1",
    }  # fmt: skip
    args = argparse.Namespace(concurrency=3, name="gpu-box", queue=["dagster"], loglevel="WARNING")
    command, env = worker_command(args, environ)
    assert Path(command[0]).name == "dagster-celery" and command[1:3] == ["worker", "start"]
    assert command[command.index("-A") + 1] == "dagster_celery.app"
    assert command[command.index("-i") + 1] == "altgrad_pipeline.definitions"
    assert command[-2:] == ["--", "--concurrency=3"] and command[command.index("-n") : command.index("-n") + 2] == ["-n", "gpu-box"]
    assert env["PATH"].split(os.pathsep)[0] == str(Path(command[0]).parent)
    assert env[settings.EXECUTOR_ENV] == "celery" and env["DAGSTER_HOME"] == str(tmp_path / "home")
    config = yaml.safe_load(Path(command[command.index("-y") + 1]).read_text())
    assert config == {"execution": {"config": {"broker": "redis://10.0.0.5:6379/0", "backend": "redis://10.0.0.5:6379/1"}}}


def test_reports_written_during_a_step_are_published_and_older_ones_are_not(monkeypatch, tmp_path):
    monkeypatch.setattr(settings, "LOCAL_STATE_ROOT", tmp_path / "state")
    MemoryFileSystem.store.clear()
    files = ReportFiles(data_dir="memory://bucket/study")
    old = files.reports_dir / "stale.md"
    old.parent.mkdir(parents=True)
    old.write_text("from an earlier run on this machine")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    since = time.time() - 1.0
    (files.reports_dir / "figures").mkdir()
    (files.reports_dir / "index.md").write_text("# index")
    (files.reports_dir / "figures" / "loss.png").write_bytes(b"\x89PNG")
    assert files.publish(since=since) == ["figures/loss.png", "index.md"]
    memory = MemoryFileSystem()
    assert memory.cat_file("/bucket/study/reports/index.md") == b"# index"
    assert not memory.exists("/bucket/study/reports/stale.md")
    # The UI points at the published copy, not at this machine's staging folder.
    assert files.location(files.reports_dir / "figures" / "loss.png") == "memory://bucket/study/reports/figures/loss.png"
    local = ReportFiles(data_dir=str(tmp_path / "data"))
    assert local.location(local.reports_dir / "index.md") == (tmp_path / "data" / "reports" / "index.md").resolve().as_uri()


class ManyRuns:
    """A picklable source of `n` runs (module-level, so a worker process can receive it)."""

    name = "many"

    def __init__(self, n: int):
        self.n = n
        self.reader_pids: list[int] = []

    def discover(self) -> list[RunLocator]:
        return [RunLocator(self.name, f"run{i:03d}", "v1", run_id_hint=f"run{i:03d}") for i in range(self.n)]

    def read(self, locator: RunLocator) -> ParsedRun:
        self.reader_pids.append(os.getpid())
        if locator.location == "run005":
            raise ValueError("bad bytes")
        index = int(locator.location[3:])
        history = pl.DataFrame(
            {"run_id": [locator.location] * 3, "step": [0, 1, 2], "key": ["loss"] * 3, "value": [3.0, 2.0, float(index)],
             "runtime": [0.0, 1.0, 2.0], "timestamp": [0.0, 1.0, 2.0], "pid": [os.getpid()] * 3}
        ).drop("pid")  # fmt: skip
        return ParsedRun(
            run_id=locator.location, source=self.name, location=locator.location, history=history,
            config={"fp8_format": "E5M2" if index % 2 else "E3M4", "seed": index}, ended=True, exit_code=0,
        )  # fmt: skip


def test_a_parallel_sync_stores_what_a_serial_one_does(tmp_path):
    runs = 3 * PARALLEL_MIN_RUNS
    serial_source, parallel_source = ManyRuns(runs), ManyRuns(runs)
    serial = RunCatalog(tmp_path / "serial", [serial_source], workers=1)
    parallel = RunCatalog(tmp_path / "parallel", [parallel_source], workers=2)
    one, two = serial.sync(), parallel.sync()
    assert parallel_source.reader_pids == []  # every run was read in a worker process
    assert serial_source.reader_pids == [os.getpid()] * runs
    assert two.reread == one.reread and len(two.reread) == runs - 1
    assert [e.run_id for e in two.entries] == [e.run_id for e in one.entries]
    assert [(i.kind, i.location, i.reason) for i in two.issues] == [(i.kind, i.location, i.reason) for i in one.issues]
    assert two.issues[0].reason.startswith("ValueError: bad bytes")
    for fmt in ("E3M4", "E5M2"):
        assert_frame_equal(parallel.raw_runs(two.for_format(fmt)), serial.raw_runs(one.for_format(fmt)))
        assert_frame_equal(parallel.histories(two.for_format(fmt)).collect(), serial.histories(one.for_format(fmt)).collect())
    assert parallel.sync().reread == []  # the index the parent merged is complete


def test_pools_get_their_default_limit_before_runs_start_and_only_once():
    with dg.instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 2}}}) as instance:
        executor.create_pools(instance, [settings.WANDB_API_POOL])
        assert instance.event_log_storage.get_concurrency_info(settings.WANDB_API_POOL).slot_count == 2
        instance.event_log_storage.set_concurrency_slots(settings.WANDB_API_POOL, 5)  # set apart by a user
        executor.create_pools(instance, [settings.WANDB_API_POOL])
        assert instance.event_log_storage.get_concurrency_info(settings.WANDB_API_POOL).slot_count == 5
    with dg.instance_for_test() as instance:  # no default limit: pools stay unlimited, no row
        executor.create_pools(instance, [settings.WANDB_API_POOL])
        assert settings.WANDB_API_POOL not in instance.event_log_storage.get_concurrency_keys()

"""`finished_runs_sensor` against a real Dagster instance and real SDK-written runs: one request per
changed format, a partition add for a new format, nothing for unchanged stores or running runs, a
cursor that survives a restart, and a new run key whenever a format's finished runs change."""

from __future__ import annotations

import datetime as dt
import json
import logging

import dagster as dg
import polars as pl
import pytest

import altgrad_pipeline.ingest.catalog as catalog_module
from altgrad_pipeline.definitions import CODE_LOCATION_NAME, build_defs
from altgrad_pipeline.defs.ingest import STORE_DIGEST_TAG
from altgrad_pipeline.defs.partitions import fp8_format_partitions
from altgrad_pipeline.defs.sensors import finished_runs_sensor
from altgrad_pipeline.ingest.finished_runs import WatchCursor
from altgrad_pipeline.refresh import refresh
from altgrad_pipeline_tests.automation.conftest import copy_run, wandb_file
from altgrad_pipeline_tests.conftest import write_punctuated_id_runs

FORMAT_ASSETS = {"raw_runs", "run_histories", "layer_metrics", "run_media", "media_tables", "histograms", "media_issues", "run_summaries"}


# ##### FIXTURES


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture
def defs(store, tmp_path):
    return build_defs(runs=str(store), data_dir=str(tmp_path / "data"))


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def tick(defs, instance, cursor=None):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources={"run_stores": defs.resources["run_stores"]}
    )
    result = finished_runs_sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def partition_requests(result):
    return sorted(r.partition_key for r in result.run_requests if r.partition_key)


# ##### TESTS


def test_a_finished_run_requests_exactly_its_format(defs, instance, store, template_runs):
    instance.add_dynamic_partitions(fp8_format_partitions.name, ["E5M2", "E3M4"])
    copy_run(template_runs["E2M5"], store, "newfmt01")
    result = tick(defs, instance)
    assert partition_requests(result) == ["E2M5"]
    request = next(r for r in result.run_requests if r.partition_key)
    job = defs.resolve_job_def(request.job_name)
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == FORMAT_ASSETS
    [add] = result.dynamic_partitions_requests
    assert add.partitions_def_name == fp8_format_partitions.name and list(add.partition_keys) == ["E2M5"]
    assert len(json.loads(result.cursor)["formats"]) == 1

    unchanged = tick(defs, instance, result.cursor)
    assert unchanged.run_requests == [] and not unchanged.dynamic_partitions_requests

    # Restart: a new context from the stored cursor sees nothing new either.
    restarted = tick(defs, instance, WatchCursor.from_json(result.cursor).to_json())
    assert restarted.run_requests == []


def test_the_first_tick_after_refresh_requests_nothing(store, tmp_path, template_runs):
    """A new `dg dev` starts the sensor with no cursor: what `refresh` built is not news. A run
    that finishes after that is, and so is a format whose partition is stale at the first tick."""
    copy_run(template_runs["E5M2"], store, "built001")
    copy_run(template_runs["E3M4"], store, "built002")
    data = tmp_path / "data"
    with dg.instance_for_test() as instance:
        assert refresh(runs=str(store), data_dir=str(data), instance=instance, echo=lambda _: None).ok
        runs = instance.get_runs()
        assert {r.job_name for r in runs} == {"refresh_format", "refresh_analysis"}
        assert {r.remote_job_origin.location_name for r in runs} == {CODE_LOCATION_NAME}
        defs = build_defs(runs=str(store), data_dir=str(data))
        first = tick(defs, instance)
        assert first.run_requests == [] and not first.dynamic_partitions_requests

        copy_run(template_runs["E3M4"], store, "late0001")
        assert partition_requests(tick(defs, instance)) == ["E3M4"]  # no cursor, but E3M4 is stale
        assert partition_requests(tick(defs, instance, first.cursor)) == ["E3M4"]


def test_a_running_run_waits_until_it_finishes(defs, instance, store, template_runs):
    first = tick(defs, instance)
    assert first.run_requests == []
    run_dir = copy_run(template_runs["E5M2"], store, "live0001")
    full = wandb_file(run_dir).read_bytes()
    wandb_file(run_dir).write_bytes(full[: len(full) // 2])  # no exit record yet, fresh mtime
    running = tick(defs, instance, first.cursor)
    assert running.run_requests == [] and not running.dynamic_partitions_requests
    assert tick(defs, instance, running.cursor).run_requests == []

    wandb_file(run_dir).write_bytes(full)  # the exit record lands
    finished = tick(defs, instance, running.cursor)
    assert partition_requests(finished) == ["E5M2"]
    assert [list(r.partition_keys) for r in finished.dynamic_partitions_requests] == [["E5M2"]]


def test_burst_of_twenty_runs_gives_one_request_per_format(defs, instance, store, template_runs):
    formats = ["E5M2", "E3M4", "E2M5"]
    for i in range(20):
        copy_run(template_runs[formats[i % 3]], store, f"burst{i:03d}")
    result = tick(defs, instance)
    assert partition_requests(result) == sorted(formats)
    assert sorted(result.dynamic_partitions_requests[0].partition_keys) == sorted(formats)
    run_keys = {r.partition_key: r.run_key for r in result.run_requests if r.partition_key}

    # One more finished E3M4 run: only E3M4 again, under a new run key.
    copy_run(template_runs["E3M4"], store, "late0001")
    again = tick(defs, instance, result.cursor)
    assert partition_requests(again) == ["E3M4"]
    assert next(r.run_key for r in again.run_requests if r.partition_key) != run_keys["E3M4"]
    assert not again.dynamic_partitions_requests


def test_runs_with_punctuated_ids_are_seen(defs, instance, store):
    """Ids with '-', '_' and '.' (`e5m2-adamw-s1`, ...) written by the SDK request their formats."""
    write_punctuated_id_runs(store, max_steps=5)
    result = tick(defs, instance)
    assert partition_requests(result) == ["BF16", "E3M4", "E5M2"]
    assert sorted(result.dynamic_partitions_requests[0].partition_keys) == ["BF16", "E3M4", "E5M2"]


def test_a_requested_partition_materializes(defs, instance, store, tmp_path, template_runs, monkeypatch):
    """The request is runnable as is: the partition's Parquet holds the new run. The run carries the
    store digest the tick synced, so its ingest does not digest the stores again."""
    run_dir = copy_run(template_runs["E2M5"], store, "mat00001")
    result = tick(defs, instance)
    request = next(r for r in result.run_requests if r.partition_key == "E2M5")
    assert request.tags[STORE_DIGEST_TAG] == WatchCursor.from_json(result.cursor).store_digest
    digests = []
    monkeypatch.setattr(catalog_module, "store_digest", lambda roots: digests.append(roots) or "")
    job = defs.resolve_job_def(request.job_name)
    outcome = job.execute_in_process(partition_key="E2M5", instance=instance, tags=request.tags)
    assert outcome.success and digests == []
    runs = pl.read_parquet(tmp_path / "data" / "assets" / "raw_runs" / "E2M5.parquet")
    assert runs.get_column("state").to_list() == ["finished"]
    assert runs.item(0, "location").startswith(str(run_dir))


def test_a_sensor_run_rebuilds_an_altered_partition_file_instead_of_reusing_it(defs, instance, store, tmp_path, template_runs):
    """A sensor's run is not assessed by `refresh` first: before reusing the stored partition's rows
    it checks the file's SHA-256 itself. An altered file is named, quarantined and rebuilt."""
    copy_run(template_runs["E5M2"], store, "keep0001")
    first = tick(defs, instance)
    [request] = [r for r in first.run_requests if r.partition_key == "E5M2"]
    job = defs.resolve_job_def(request.job_name)
    assert job.execute_in_process(partition_key="E5M2", instance=instance, tags=request.tags).success
    partition = tmp_path / "data" / "assets" / "run_histories" / "E5M2.parquet"
    clean = pl.read_parquet(partition)
    # Still a valid Parquet file with the run versions of the build, but other values.
    metadata = pl.read_parquet_metadata(partition)
    clean.with_columns(pl.col("value") + 1.0).write_parquet(partition, metadata=metadata)

    copy_run(template_runs["E5M2"], store, "new00002")
    second = tick(defs, instance, first.cursor)
    [request] = [r for r in second.run_requests if r.partition_key == "E5M2"]
    outcome = job.execute_in_process(partition_key="E5M2", instance=instance, tags=request.tags)
    assert outcome.success
    warnings = [e.user_message for e in instance.all_logs(outcome.run_id) if e.level == logging.WARNING]
    assert [w for w in warnings if w.startswith(f"{partition} is corrupt")], warnings
    [quarantined] = (tmp_path / "data" / "quarantine").rglob("E5M2.parquet")
    assert quarantined.parent.name == "run_histories"
    rebuilt = pl.read_parquet(partition)
    [kept] = clean.get_column("run_id").unique()
    assert rebuilt.filter(pl.col("run_id") == kept).equals(clean)  # the true values, not the altered ones
    assert rebuilt.get_column("run_id").n_unique() == 2


def test_schedule_refreshes_only_stale_formats(defs, instance, store, template_runs):
    from altgrad_pipeline.defs.schedules import stale_formats_schedule

    copy_run(template_runs["E3M4"], store, "sched001")
    context = dg.build_schedule_context(
        instance=instance, repository_def=defs.get_repository_def(), resources={"run_stores": defs.resources["run_stores"]},
        scheduled_execution_time=dt.datetime(2026, 1, 1, 4, tzinfo=dt.UTC),
    )  # fmt: skip
    [request] = stale_formats_schedule(context)
    assert request.partition_key == "E3M4"
    job = defs.resolve_job_def(stale_formats_schedule.job_name)
    assert job.execute_in_process(partition_key="E3M4", instance=instance).success
    assert isinstance(stale_formats_schedule(context), dg.SkipReason)


def test_every_tick_gives_the_api_pool_its_row_before_any_run_claims_it(defs):
    """Even a tick with nothing to do: a backfill launched from the UI must find the row in place
    (steps of runs starting together race to create it on PostgreSQL)."""
    with dg.instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 2}}}) as instance:
        assert tick(defs, instance).run_requests == []
        assert instance.event_log_storage.get_concurrency_info("wandb_api").slot_count == 2

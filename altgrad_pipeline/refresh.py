"""`altgrad-pipeline refresh`: discover runs, register format partitions, and materialize what is
stale in the persistent Dagster instance, so `dg dev` shows the same history afterwards.

Each format partition is one Dagster run, executed as ALTGRAD_EXECUTOR says (`execution.py`); with
Celery, several partition runs are kept in flight (one orchestrating process each) so every worker
has steps to take."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.instance.ref import InstanceRef

from altgrad_pipeline import atomic, execution, locking, settings
from altgrad_pipeline.definitions import ASSETS, build_resources
from altgrad_pipeline.defs.executor import create_pools
from altgrad_pipeline.defs.instance_storage import open_instance
from altgrad_pipeline.defs.jobs import refresh_analysis_job, refresh_format_job
from altgrad_pipeline.defs.orphaned_runs import fail_orphaned_runs, process_tags
from altgrad_pipeline.defs.partitions import fp8_format_partitions, register_formats
from altgrad_pipeline.defs.resources import RunStores
from altgrad_pipeline.defs.schedules import assess, damaged_files
from altgrad_pipeline.ingest.sources import no_runs_message

#: Dagster's console logger prints every step event at DEBUG; the CLI shows progress, not the event log.
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
#: Partition runs in flight at once when steps run on Celery workers (each run's own process only
#: orchestrates; the workers do the work).
PARALLEL_PARTITION_RUNS = 4

INSTANCE_YAML = """\
# Written by altgrad-pipeline. Standard Dagster instance config: edit freely.
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 1
run_monitoring:
  enabled: true
  start_timeout_seconds: 300
  cancel_timeout_seconds: 300
"""
#: Tags of the analysis runs `refresh` executes: which partitions (`analysis_basis`) they read.
ANALYSIS_KIND_TAG = "altgrad/kind"
ANALYSIS_BASIS_TAG = "altgrad/analysis_of"


def instance_dir(data_dir: str) -> Path:
    """DAGSTER_HOME if set, else `<data dir>/dagster_home` (for an object-store data dir, the local
    state dir beside it)."""
    return Path(os.environ.get("DAGSTER_HOME") or settings.local_state_dir(data_dir) / "dagster_home").resolve()


def dagster_home(data_dir: str) -> Path:
    """The instance dir (`instance_dir`), created with a small dagster.yaml."""
    home = instance_dir(data_dir)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    return home


def _partitioned(asset: dg.AssetsDefinition) -> bool:
    return asset.partitions_def is not None


def _asset_keys(assets: list[dg.AssetsDefinition]) -> list[dg.AssetKey]:
    return [key for a in assets for key in a.keys]


@dataclass
class RefreshReport:
    formats: list[str] = field(default_factory=list)
    refreshed_formats: list[str] = field(default_factory=list)
    new_formats: list[str] = field(default_factory=list)
    analysis_refreshed: bool = False
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def analysis_basis(wanted: dict[str, str]) -> str:
    """One hash of every partition's fingerprint: what an analysis run read."""
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:32]


def analysis_owed(
    instance: dg.DagsterInstance, data_dir: str, keys: Sequence[dg.AssetKey], basis: str, echo: Callable[[str], None]
) -> str | None:
    """Why the analysis must run again (None: its last run succeeded on these partitions and its
    files are intact)."""
    if any(instance.get_latest_materialization_event(k) is None for k in keys):
        return "never built"
    damaged = damaged_files(instance, data_dir, keys, None, echo)
    last = instance.get_runs(dg.RunsFilter(tags={ANALYSIS_KIND_TAG: "analysis"}), limit=1)
    if not last:
        return "no analysis run of refresh recorded"
    if last[0].status != dg.DagsterRunStatus.SUCCESS:
        return f"its last run {last[0].run_id} did not succeed ({last[0].status.value})"
    if last[0].tags.get(ANALYSIS_BASIS_TAG) != basis:
        return "the partitions changed since its last run"
    return "damaged files" if damaged else None


def refresh(
    *,
    runs: str | None = None,
    data_dir: str | None = None,
    full: bool = False,
    echo: Callable[[str], None] = print,
    instance: dg.DagsterInstance | None = None,
) -> RefreshReport:
    """Bring every asset up to date with the run stores; returns what was done. Raises
    `settings.RunStoreError` before doing anything when a local store is missing or unreadable."""
    data_dir = settings.absolute_data_dir(data_dir)
    runs = settings.run_stores_value() if runs is None else runs
    entries = settings.parse_run_stores(runs)
    settings.check_local_stores(entries)
    with locking.refresh_lock(settings.local_state_dir(data_dir), echo):  # one refresh per data dir at a time
        if instance is not None:
            return _refresh(runs, data_dir, full=full, echo=echo, instance=instance, example=not entries)
        with open_instance(dagster_home(data_dir)) as own:
            return _refresh(runs, data_dir, full=full, echo=echo, instance=own, example=not entries)


def _refresh(
    runs: str, data_dir: str, *, full: bool, echo: Callable[[str], None], instance: dg.DagsterInstance, example: bool
) -> RefreshReport:
    if abandoned := atomic.remove_abandoned_temps(settings.local_state_dir(data_dir), locking.gone_here, skip=("dagster_home", "quarantine")):
        echo(f"Removed {len(abandoned)} temp folder(s) left by a killed writer")
    if example:
        ensure_example_store(data_dir, echo)
    resources = build_resources(runs=runs, data_dir=data_dir)
    run_stores: RunStores = resources["run_stores"]  # type: ignore[assignment]
    echo(f"Run stores: {', '.join(e.label for e in run_stores.store_entries())}")
    echo(f"Dagster instance: {instance.root_directory}")

    if orphans := fail_orphaned_runs(instance):
        echo(f"Marked failed {len(orphans)} run(s) whose process was gone (a killed refresh?): {', '.join(orphans)}")
    report = RefreshReport()
    partitioned = [a for a in ASSETS if _partitioned(a)]
    found = assess(run_stores, instance, data_dir, _asset_keys(partitioned), echo)
    formats, stale = found.formats, found.stale
    known = set(fp8_format_partitions.get_partition_keys(dynamic_partitions_store=instance))
    report.formats = formats
    if not formats:
        echo(no_runs_message([e.label for e in run_stores.store_entries()]))
    report.new_formats = [f for f in formats if f not in known]
    if report.new_formats:
        register_formats(instance, report.new_formats)
        echo(f"New format partitions: {', '.join(report.new_formats)}")
    todo = formats if full else stale
    unpartitioned = [a for a in ASSETS if not _partitioned(a)]
    job = execution.reconstructable_refresh_job(runs, data_dir, refresh_format_job.name)
    choice = settings.executor_choice()
    if choice.name != "in_process":
        echo(f"Executor: {choice.name}")
    parallel = execution.runs_in_parallel(choice) and len(todo) > 1
    create_pools(instance)  # steps of out-of-process runs claim it together
    for fmt in todo:
        echo(f"Materializing format partition {fmt} ({', '.join(k.to_user_string() for k in _asset_keys(partitioned))})")
        if not parallel:
            outcome = _run(instance, job, fmt)
            _record(report, fmt, outcome, echo, instance)
    if parallel:
        for fmt, outcome in _run_partitions_in_parallel(instance, runs, data_dir, todo):
            _record(report, fmt, outcome, echo, instance)
    # Read against partitions that failed to build, the analysis is owed again next time.
    basis = "incomplete" if report.failed else analysis_basis(found.wanted)
    owed = analysis_owed(instance, data_dir, _asset_keys(unpartitioned), basis, echo)
    if todo or full or owed:
        reason = f" (owed: {owed})" if owed and not todo and not full else ""
        echo(f"Materializing analysis and reports ({len(_asset_keys(unpartitioned))} assets){reason}")
        analysis_job = execution.reconstructable_refresh_job(runs, data_dir, refresh_analysis_job.name)
        success, run_id = _run(instance, analysis_job, None, {ANALYSIS_KIND_TAG: "analysis", ANALYSIS_BASIS_TAG: basis})
        report.analysis_refreshed = True
        if not success:
            report.failed.append("analysis")
            echo(f"  FAILED: see run {run_id} in the Dagster UI")
            _echo_step_failures(instance, run_id, echo)
    else:
        echo("Everything is up to date.")
    echo(f"Assets: {_child(data_dir, 'assets')}")
    echo(f"Reports: {_child(data_dir, 'reports')}")
    return report


def _child(data_dir: str, name: str) -> str:
    return f"{data_dir}/{name}" if settings.is_url(data_dir) else str(Path(data_dir) / name)


def _echo_step_failures(instance: dg.DagsterInstance, run_id: str, echo: Callable[[str], None]) -> None:
    """Say which steps failed and why, so a failed refresh is readable without opening the UI."""
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records:
        event = record.event_log_entry.dagster_event
        error = event.step_failure_data.error if event and event.step_failure_data else None
        while error is not None and error.cause is not None:  # Dagster wraps the user's exception
            error = error.cause
        message = error.message.strip().splitlines()[0] if error and error.message.strip() else "no error message"
        echo(f"    {event.step_key if event else '?'}: {message}")


def _record(
    report: RefreshReport, fmt: str, outcome: tuple[bool, str], echo: Callable[[str], None], instance: dg.DagsterInstance
) -> None:
    success, run_id = outcome
    if not success:
        report.failed.append(f"partition {fmt}")
        echo(f"  FAILED: partition {fmt}, see run {run_id} in the Dagster UI")
        _echo_step_failures(instance, run_id, echo)
    report.refreshed_formats.append(fmt)


def _run(instance: dg.DagsterInstance, job: ReconstructableJob, fmt: str | None, extra_tags: dict[str, str] | None = None) -> tuple[bool, str]:
    """(success, run id) of one run of a refresh job: one format partition, or the unpartitioned assets.
    Tagged with this process, so a later refresh can tell the run was orphaned if it is killed."""
    tags = ({"dagster/partition": fmt} if fmt else {}) | process_tags() | (extra_tags or {})
    result = execution.execute(job, instance, tags=tags, run_config=QUIET_RUN_CONFIG)
    return result.success, result.run_id


def _run_partition_from_ref(instance_ref: InstanceRef, runs: str, data_dir: str, fmt: str) -> tuple[bool, str]:
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        return _run(instance, execution.reconstructable_refresh_job(runs, data_dir, refresh_format_job.name), fmt)


def _run_partitions_in_parallel(
    instance: dg.DagsterInstance, runs: str, data_dir: str, formats: Sequence[str]
) -> list[tuple[str, tuple[bool, str]]]:
    """Up to PARALLEL_PARTITION_RUNS partition runs at once, each orchestrated by its own process:
    Dagster's run setup configures `logging` globally, so runs cannot share a process's threads."""
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(min(PARALLEL_PARTITION_RUNS, len(formats)), mp_context=context) as pool:
        futures = [pool.submit(_run_partition_from_ref, instance.get_ref(), runs, data_dir, fmt) for fmt in formats]
        return [(fmt, future.result()) for fmt, future in zip(formats, futures, strict=True)]


def ensure_example_store(data_dir: str, echo: Callable[[str], None]) -> Path:
    """With no ALTGRAD_RUNS, the pipeline runs on the bundled example study (written once)."""
    from altgrad_pipeline.examples import write_example_runs

    store = settings.example_store_dir(data_dir)
    if not (store / "EXPECTED.json").exists():
        echo(f"No ALTGRAD_RUNS set: writing the example runs to {store} with the wandb SDK (offline)")
        write_example_runs(store)
    return store

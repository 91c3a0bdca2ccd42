"""The refresh's instance (`defs.instance_storage`): Dagster's SQLite files written through one kept
connection per file and read back by a plain Dagster instance in another process (as the UI and the
daemon read them); DEBUG lines of `context.log` not stored, Dagster's events all stored; a
dagster.yaml's own storage and log level left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from altgrad_pipeline.defs.instance_storage import (
    PooledSqliteEventLogStorage,
    PooledSqliteRunStorage,
    _Engines,
    _event_log_migrations,
    instance_ref,
    open_instance,
)
from altgrad_pipeline.refresh import INSTANCE_YAML

# ##### FIXTURES


@dg.asset(partitions_def=dg.DynamicPartitionsDefinition(name="pooled_test_format"))
def partitioned_numbers(context) -> dg.MaterializeResult:
    context.log.info("logged through the event log")
    context.log.debug("a debug line, as Dagster's UPathIOManager logs for every file")
    return dg.MaterializeResult(metadata={"rows": 3})


@dg.asset_check(asset=partitioned_numbers)
def numbers_are_fine() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    return home


@pytest.fixture
def connections_opened():
    """DBAPI connections every SQLAlchemy engine of this process opens, counted."""
    opened = [0]

    def count(*_):
        opened[0] += 1

    sa.event.listen(sa.engine.Engine, "connect", count)
    yield opened
    sa.event.remove(sa.engine.Engine, "connect", count)


def _read_in_another_process(home, run_id: str) -> dict:
    """What a plain Dagster instance (Dagster's own storage classes) reads from `home`, in a new
    process; it also registers a partition, as the sensor of `dg dev` would."""
    code = f"""
        import json
        import dagster as dg
        with dg.DagsterInstance.from_config({str(home)!r}) as instance:
            run = instance.get_run_by_id({run_id!r})
            records = instance.get_records_for_run({run_id!r}, limit=10_000).records
            event = instance.get_latest_materialization_event(dg.AssetKey("partitioned_numbers"))
            check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [dg.AssetCheckKey(dg.AssetKey("partitioned_numbers"), "numbers_are_fine")])
            instance.add_dynamic_partitions("pooled_test_format", ["E3M4"])
            print(json.dumps({{
                "storage": instance.get_ref().storage_data.class_name,
                "status": run.status.value,
                "events": len(records),
                "messages": [r.event_log_entry.user_message for r in records if not r.event_log_entry.is_dagster_event],
                "step_starts": sum(r.event_log_entry.dagster_event_type == dg.DagsterEventType.STEP_START for r in records),
                "materialized": event.asset_materialization.partition,
                "rows": event.asset_materialization.metadata["rows"].value,
                "checks": len(check),
            }}))
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


# ##### TESTS


def test_events_written_through_kept_connections_read_back_by_a_plain_instance(home, connections_opened):
    with open_instance(home) as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        assert isinstance(instance.run_storage, PooledSqliteRunStorage)
        instance.add_dynamic_partitions("pooled_test_format", ["E5M2"])
        before = connections_opened[0]
        result = dg.materialize([partitioned_numbers, numbers_are_fine], instance=instance, partition_key="E5M2")
        opened = connections_opened[0] - before
        events = len(instance.get_records_for_run(result.run_id, limit=10_000).records)
        assert result.success and events >= 15
        # one connection per database file (runs.db, the index, the run's own file), not one per event
        assert opened <= 4, (opened, events)

        read = _read_in_another_process(home, result.run_id)
        assert read == {
            "storage": "DagsterSqliteStorage",
            "status": "SUCCESS",
            "events": events,
            "messages": ["logged through the event log"],
            "step_starts": 2,  # Dagster logs its events at DEBUG: every one is stored
            "materialized": "E5M2",
            "rows": 3,
            "checks": 1,
        }
        # what the other process wrote is seen through the connections kept open here
        assert instance.has_dynamic_partition("pooled_test_format", "E3M4")


def test_a_plain_instance_opens_a_connection_per_statement(tmp_path, home, connections_opened):
    """The cost the pooled storage removes (if Dagster pooled itself one day, it could go)."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("pooled_test_format", ["E5M2"])
        before = connections_opened[0]
        result = dg.materialize([partitioned_numbers], instance=instance, partition_key="E5M2")
        events = len(instance.get_records_for_run(result.run_id, limit=10_000).records)
        assert connections_opened[0] - before >= events


def test_a_dagster_yaml_that_chooses_its_storage_or_log_level_keeps_them(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        f"{INSTANCE_YAML}storage:\n  sqlite:\n    base_dir: {tmp_path / 'elsewhere'}\n"
        "python_logs:\n  python_log_level: DEBUG\n  managed_python_loggers: [my_logger]\n"
    )
    ref = instance_ref(home)
    assert ref.storage_data.class_name == "DagsterSqliteStorage"
    assert ref.settings["python_logs"] == {"python_log_level": "DEBUG", "managed_python_loggers": ["my_logger"]}
    (home / "dagster.yaml").write_text("python_logs:\n  managed_python_loggers: [my_logger]\n")
    ref = instance_ref(home)
    assert ref.storage_data.class_name == "PooledSqliteStorage"
    assert ref.settings["python_logs"] == {"python_log_level": "INFO", "managed_python_loggers": ["my_logger"]}
    (home / "dagster.yaml").unlink()  # an instance without a dagster.yaml gets both defaults
    ref = instance_ref(home)
    assert (ref.storage_data.class_name, ref.settings["python_logs"]) == (
        "PooledSqliteStorage",
        {"python_log_level": "INFO"},
    )


def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_open(tmp_path):
    engines = _Engines()
    url = f"sqlite:///{tmp_path / 'fork.db'}"
    parent = engines.get(url)
    with parent.connect() as conn, conn.begin():
        conn.execute(sa.text("create table t (x integer)"))
    pid = os.fork()
    if pid == 0:  # the child: a new engine, its own connection, written and committed
        child = engines.get(url)
        with child.connect() as conn, conn.begin():
            conn.execute(sa.text("insert into t values (2)"))
        os._exit(0 if child is not parent else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert engines.get(url) is parent
    with parent.connect() as conn, conn.begin():  # the parent's pooled connection still works
        conn.execute(sa.text("insert into t values (1)"))
        assert sorted(conn.execute(sa.text("select x from t")).scalars()) == [1, 2]
    engines.dispose()


def _database(path) -> tuple[list[tuple], list[str], str]:
    """A SQLite file's schema (every table, index and its SQL), stamped migration and journal mode."""
    with sa.create_engine(f"sqlite:///{path}").connect() as conn:
        schema = [tuple(row) for row in conn.execute(sa.text("select type, name, tbl_name, sql from sqlite_master order by name"))]
        stamped = list(conn.execute(sa.text("select version_num from alembic_version")).scalars())
        journal = conn.execute(sa.text("pragma journal_mode")).scalar()
    return schema, stamped, journal


def test_a_runs_new_database_is_created_as_dagster_creates_it(tmp_path):
    dagster_own, pooled = SqliteEventLogStorage(str(tmp_path / "dagster")), PooledSqliteEventLogStorage(str(tmp_path / "pooled"))
    for storage in (dagster_own, pooled):
        for _ in range(2):  # the second connection finds the database made
            with storage.run_connection("a-run") as conn:
                conn.execute(sa.text("select 1"))
    made = _database(tmp_path / "pooled" / "a-run.db")
    assert made == _database(tmp_path / "dagster" / "a-run.db")
    assert made[1] == [_event_log_migrations().get_current_head()] and made[2] == "wal"
    pooled.dispose()
    dagster_own.dispose()

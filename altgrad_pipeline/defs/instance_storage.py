"""The Dagster instance of `altgrad-pipeline refresh`: Dagster's SQLite storage with one database
connection kept per file, and `context.log` stored from INFO up (`instance_ref`).

Dagster's SQLite run and event-log storages build a SQLAlchemy engine without a pool for every
statement: each of the ~720 events of a first refresh creates an engine, opens the file, commits,
closes it and disposes the engine (`SqliteEventLogStorage._connect`, `SqliteRunStorage.connect`),
and `has_table` opens one more before every partition look-up and asset event: about 6 of the
9-10 CPU-s a first refresh spent in Dagster's storage. Dagster offers no setting for this
(`DAGSTER_EVENT_BATCH_SIZE` batches a few event kinds only). These subclasses keep one engine
(SQLAlchemy's default queue pool) per database file instead; the files, tables, WAL journal and rows
are Dagster's own, so the UI, the daemon and a plain instance read and write them as before,
concurrently.

Only `refresh` uses them: the instance's dagster.yaml is never changed, so every existing instance
works as it did and `dg dev`'s webserver and daemon keep Dagster's classes. A process that forks
drops the engines it inherited (without closing its parent's connections) and opens its own; a
killed process leaves what any killed SQLite writer leaves, a WAL the next opener recovers.

A run's new database is created as Dagster creates it (its tables, WAL, the migration head
stamped), with Dagster's migration scripts read once per process: Dagster's `_initdb` reads all of
them twice for every run (six new run databases: 0.41 CPU-s that way, 0.19–0.23 this way).

They override methods of Dagster 1.13 that are private or undocumented (`_connect`, `_initdb`,
`connect`, `has_table`) and replace the storages `DagsterSqliteStorage` builds: if Dagster renames them, these
classes fall back to the old per-statement engines (`test_instance_storage.py` checks that pooled
connections are the ones used).
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from dagster._core.instance.config import dagster_instance_config
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.event_log import schema as event_log_schema
from dagster._core.storage.event_log.sqlite import sqlite_event_log
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.sql import get_alembic_config, safe_commit
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory, _runs_directory
from dagster._serdes import ConfigurableClassData

#: Instance config keys that choose a storage: an instance that sets one keeps it.
STORAGE_KEYS = ("storage", "run_storage", "event_log_storage", "schedule_storage")


class _Engines:
    """One SQLAlchemy engine per connection string, for this process only: after a fork the child
    forgets its parent's engines (their connections belong to the parent) and opens its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._engines: dict[str, sa.Engine] = {}

    def get(self, conn_string: str) -> sa.Engine:
        with self._lock:
            if self._pid != os.getpid():
                for engine in self._engines.values():
                    engine.dispose(close=False)
                self._engines, self._pid = {}, os.getpid()
            engine = self._engines.get(conn_string)
            if engine is None:
                engine = sa.create_engine(conn_string, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
                self._engines[conn_string] = engine
            return engine

    def dispose(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for engine in self._engines.values():
                    engine.dispose()
            self._engines = {}


@functools.cache
def _event_log_migrations() -> ScriptDirectory:
    """Dagster's event-log migration scripts (the ones its SQLite event log stamps), read once per process."""
    return ScriptDirectory.from_config(get_alembic_config(sqlite_event_log.__file__))


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's run-sharded event log (a file per run plus the index), an engine kept per file."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines = _Engines()
        super().__init__(base_dir, inst_data)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[sa.Connection]:
        with self._db_lock:
            engine = self._engines.get(self.conn_string_for_shard(shard))
            if shard not in self._initialized_dbs:  # creates the run's file, as Dagster's `_connect` does
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def _initdb(self, engine: sa.Engine, for_index_shard: bool = False) -> None:
        """A run's database, new, gets Dagster's tables, the WAL journal and the migration head
        stamped, as Dagster's `_initdb` does, without reading the migration scripts again. The
        index database, and a run's database that another process is creating at the same moment
        (a locked file, a table already there), take Dagster's own path and its retries."""
        if for_index_shard:
            super()._initdb(engine, for_index_shard=True)
            return
        try:
            with engine.connect() as connection:
                migrations = MigrationContext.configure(connection)
                if migrations.get_current_revision() is None:
                    event_log_schema.SqlEventLogStorageMetadata.create_all(engine)
                    connection.execute(sa.text("PRAGMA journal_mode=WAL;"))
                    migrations.stamp(_event_log_migrations(), "head")
                    safe_commit(connection)
        except (sa.exc.DatabaseError, sqlite3.DatabaseError):
            super()._initdb(engine)

    def has_table(self, table_name: str) -> bool:
        """Asked before every partition look-up and asset event (Dagster opens an engine for it)."""
        engine = self._engines.get(self.conn_string_for_shard(INDEX_SHARD_NAME))
        with engine.connect() as conn:
            return bool(engine.dialect.has_table(conn, table_name))

    def dispose(self) -> None:
        super().dispose()
        self._engines.dispose()


class PooledSqliteRunStorage(SqliteRunStorage):
    """Dagster's run storage (runs.db), its engine kept."""

    def __init__(self, conn_string: str, inst_data: ConfigurableClassData | None = None):
        self._engines = _Engines()
        super().__init__(conn_string, inst_data)

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        with self._engines.get(self._conn_string).connect() as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        super().dispose()
        self._engines.dispose()


class PooledSqliteStorage(DagsterSqliteStorage):
    """The default SQLite instance storage (same `base_dir` layout), with the pooled run and event
    log storages in place of Dagster's; schedules (rarely written by a refresh) keep Dagster's class."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir, inst_data)
        self._run_storage = PooledSqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = PooledSqliteEventLogStorage(_event_logs_directory(base_dir))

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: dict[str, str]
    ) -> PooledSqliteStorage:
        return cls.from_local(inst_data=inst_data, **config_value)


def instance_ref(home: Path) -> InstanceRef:
    """The instance in `home` as its dagster.yaml says, with two defaults of its own where the file
    sets none:

    - `PooledSqliteStorage` in place of the default SQLite storage (a dagster.yaml naming a storage,
      Postgres say, keeps it);
    - Python log level INFO for the runs' `context.log`: Dagster's `UPathIOManager` logs a DEBUG line
      for every file it writes or loads ("Writing file at: <path> using PolarsParquetIOManager...",
      78 of the 721 events of a first refresh), which the materialization's `path` metadata and the
      LOADED_INPUT event already say. Dagster's own events are stored at any level.
    """
    config, _ = dagster_instance_config(str(home))
    overrides: dict[str, object] = {}
    if not any(key in config for key in STORAGE_KEYS):
        pooled = {"module": __name__, "class": PooledSqliteStorage.__name__, "config": {"base_dir": str(home)}}
        overrides["storage"] = {"custom": pooled}
    if "python_log_level" not in (config.get("python_logs") or {}):
        overrides["python_logs"] = {**(config.get("python_logs") or {}), "python_log_level": "INFO"}
    return InstanceRef.from_dir(str(home), overrides=overrides)


def open_instance(home: Path) -> dg.DagsterInstance:
    """The instance in `home` for a refresh (`instance_ref`)."""
    return dg.DagsterInstance.from_ref(instance_ref(home))

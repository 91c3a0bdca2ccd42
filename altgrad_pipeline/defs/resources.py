"""The run stores and the report folder as Dagster resources: configured from ALTGRAD_RUNS /
ALTGRAD_DATA_DIR, they hand out the run catalog that every ingest asset, sensor and check reads
through, and the folder the reports are written to."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from pydantic import PrivateAttr
from upath import UPath

from altgrad_pipeline import settings
from altgrad_pipeline.defs.io_manager import previous_build
from altgrad_pipeline.ingest.catalog import RunCatalog
from altgrad_pipeline.ingest.sources import build_sources
from altgrad_pipeline.partition_tables import Rebuilt, rebuild


class RunStores(dg.ConfigurableResource):
    """Where runs live (`runs`: ALTGRAD_RUNS syntax) and where the ingest cache goes.

    With `runs` empty, the bundled example store under the data dir is used (written by
    `altgrad-pipeline refresh` or `altgrad-pipeline example-runs`).
    """

    runs: str = ""
    data_dir: str = settings.DEFAULT_DATA_DIR
    crash_grace_seconds: float = settings.DEFAULT_GRACE_SECONDS

    def store_entries(self) -> list[settings.RunStoreEntry]:
        entries = settings.parse_run_stores(self.runs)
        return entries or [settings.RunStoreEntry("local", str(settings.example_store_dir(self.data_dir)))]

    @property
    def cache_dir(self) -> Path:
        """Local on every machine, even when the data dir is an object-store URL (see settings)."""
        return settings.cache_dir(self.data_dir)

    def catalog(self) -> RunCatalog:
        sources = build_sources(
            self.store_entries(),
            api_cache_dir=self.cache_dir / "wandb_api",
            grace_period_s=self.crash_grace_seconds,
        )
        return RunCatalog(self.cache_dir / "runs", sources, workers=settings.ingest_workers())

    def rebuild_partition(
        self,
        context: dg.AssetExecutionContext,
        asset: str,
        partition: str,
        versions: Mapping[str, str],
        built_with: str,
        compute: Callable[[list[str]], pl.DataFrame | pl.LazyFrame],
        *,
        streamed: bool = False,
        describe: Callable[[pl.LazyFrame], dict[str, Any]] | None = None,
    ) -> Rebuilt:
        """A partition table computed run by run, reusing the stored partition's unchanged runs
        (see `partition_tables`) when its SHA-256 is still the recorded one (`previous_build`); the
        asset returns `.table` for the IO manager to store. With `streamed`, a first build is
        computed run by run while the IO manager writes it (`partition_tables.rebuild`)."""
        previous = previous_build(self.data_dir, asset, partition, context.instance, context.log.warning)
        return rebuild(previous, versions, built_with, compute, streamed=streamed, describe=describe)

    def local_roots(self) -> list[Path]:
        return [Path(e.target) for e in self.store_entries() if e.kind == "local"]


class ReportFiles(dg.ConfigurableResource):
    """Where report files go: `<data dir>/reports/` (figures in `reports/figures/`).

    The report writers need a local folder (matplotlib, relative links). For an object-store data
    dir they write to `<local state dir>/reports`, a path that is the same on every machine, so the
    index links reports another worker wrote; when the step ends, the files written during it are
    uploaded to `<data dir>/reports/`, and only those, so an older local copy never overwrites a
    newer report from another machine.
    """

    data_dir: str = settings.DEFAULT_DATA_DIR
    _started_at: float = PrivateAttr(default=0.0)

    @property
    def is_remote(self) -> bool:
        return settings.is_url(self.data_dir)

    @property
    def reports_dir(self) -> Path:
        return settings.local_state_dir(self.data_dir) / "reports"

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # A second of slack: file systems store mtimes coarser than time.time().
        self._started_at = time.time() - 1.0

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self.is_remote:
            self.publish(since=self._started_at)

    def location(self, path: Path) -> str:
        """Where a user opens a report file: its published URL for an object-store data dir (the
        local copy is a worker's staging folder), else its file:// URL (the UI shows a URL as a link)."""
        if not self.is_remote:
            return Path(path).resolve().as_uri()
        return f"{self.data_dir.rstrip('/')}/reports/{path.relative_to(self.reports_dir).as_posix()}"

    def publish(self, *, since: float = 0.0) -> list[str]:
        """Upload the report files modified at or after `since` (epoch seconds); returns their
        paths relative to the reports folder."""
        if not self.reports_dir.is_dir():
            return []
        target = UPath(self.data_dir, **settings.fsspec_storage_options(self.data_dir)) / "reports"
        uploaded = []
        for path in sorted(self.reports_dir.rglob("*")):
            if path.is_file() and path.stat().st_mtime >= since:
                relative = path.relative_to(self.reports_dir).as_posix()
                (target / relative).write_bytes(path.read_bytes())
                uploaded.append(relative)
        return uploaded

"""The run stores as a Dagster resource: configured from ALTGRAD_RUNS / ALTGRAD_DATA_DIR, it hands
out the run catalog that every ingest asset, sensor and check reads through."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from altgrad_pipeline import settings
from altgrad_pipeline.ingest.catalog import RunCatalog
from altgrad_pipeline.ingest.sources import build_sources


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
        return Path(self.data_dir) / "cache"

    def catalog(self) -> RunCatalog:
        sources = build_sources(
            self.store_entries(),
            api_cache_dir=self.cache_dir / "wandb_api",
            grace_period_s=self.crash_grace_seconds,
        )
        return RunCatalog(self.cache_dir / "runs", sources)

    def local_roots(self) -> list[Path]:
        return [Path(e.target) for e in self.store_entries() if e.kind == "local"]


class ReportFiles(dg.ConfigurableResource):
    """Where report files go: `<data dir>/reports/` (figures in `reports/figures/`)."""

    data_dir: str = settings.DEFAULT_DATA_DIR

    @property
    def reports_dir(self) -> Path:
        return Path(self.data_dir) / "reports"

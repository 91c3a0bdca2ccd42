"""Which readers look at which configured store.

Every local root is searched by each local reader (W&B run folders, JSONL logs, Lightning CSV logs,
TensorBoard event files, MLflow file stores, W&B history exports): a reader that finds nothing of
its kind lists no runs. A root holding an Aim repository (`.aim`) gets a notice source instead of a
reader (see `AimRepositoryNotice`). `wandb://entity/project` uses the W&B API; a SQLAlchemy URL
(`sqlite:///path/mlruns.db`, `postgresql://...`) is an MLflow SQL store.
"""

from __future__ import annotations

from pathlib import Path

from altgrad_pipeline.ingest.jsonl import JsonlSource
from altgrad_pipeline.ingest.lightning_csv import LightningCsvSource
from altgrad_pipeline.ingest.mlflow_store import MlflowFileSource, MlflowSqlSource
from altgrad_pipeline.ingest.model import ParsedRun, RunLocator, RunSource
from altgrad_pipeline.ingest.tensorboard import TensorBoardSource
from altgrad_pipeline.ingest.wandb.api import WandbApiSource
from altgrad_pipeline.ingest.wandb.export import WandbExportSource
from altgrad_pipeline.ingest.wandb.local import LocalWandbSource
from altgrad_pipeline.settings import RunStoreEntry

AIM_REPOSITORY = ".aim"
#: What the local readers look for: said when a store holds none of it.
LOCAL_RUN_FILES = (
    "W&B run folders (wandb/run-*, wandb/offline-run-*, with their .wandb logs), *.jsonl logs, "
    "Lightning metrics.csv, TensorBoard events.out.tfevents.*, MLflow mlruns/ folders (MLflow SQLite: "
    "a sqlite:/// entry) and W&B history exports (*.parquet)"
)


def no_runs_message(labels: list[str]) -> str:
    """The one line for run stores that hold no runs: where was looked, and for what."""
    return f"No runs found under {', '.join(labels)}. Looked for {LOCAL_RUN_FILES}."


class AimReaderUnavailable(RuntimeError):
    """Raised by `AimRepositoryNotice.discover`: the catalog turns it into one `source_unavailable` issue."""


class AimRepositoryNotice:
    """Says, once per sync, that the Aim runs of a root were not read.

    Aim is not supported: its last release is from May 2025, it has no Python 3.13 wheels and it
    pins filelock<4, which conflicts with this project's dependencies. Listing fails with that
    reason, so the user sees which runs are missing and why instead of an unexplained gap.
    """

    name = "aim"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.label = str(self.root / AIM_REPOSITORY)

    def discover(self) -> list[RunLocator]:
        raise AimReaderUnavailable(
            f"{self.label} is an Aim repository; its runs were not read: the Aim reader is not available "
            "(aim's last release is from May 2025, has no Python 3.13 wheels and pins filelock<4). "
            "Export the runs (e.g. to TensorBoard or MLflow) to include them"
        )

    def read(self, locator: RunLocator) -> ParsedRun:
        raise AimReaderUnavailable(f"{locator.location}: the Aim reader is not available")


def build_sources(entries: list[RunStoreEntry], *, api_cache_dir: Path, grace_period_s: float) -> list[RunSource]:
    sources: list[RunSource] = []
    for entry in entries:
        if entry.kind == "wandb":
            sources.append(WandbApiSource(entry.target, cache_dir=api_cache_dir, grace_period_s=grace_period_s))
            continue
        if entry.kind == "mlflow-sql":
            sources.append(MlflowSqlSource(entry.target, grace_period_s=grace_period_s))
            continue
        root = Path(entry.target)
        sources.extend(
            [
                LocalWandbSource(root, grace_period_s=grace_period_s),
                JsonlSource(root, grace_period_s=grace_period_s),
                LightningCsvSource(root, grace_period_s=grace_period_s),
                TensorBoardSource(root, grace_period_s=grace_period_s),
                MlflowFileSource(root, grace_period_s=grace_period_s),
                WandbExportSource(root, grace_period_s=grace_period_s),
            ]
        )
        if (root / AIM_REPOSITORY).is_dir():
            sources.append(AimRepositoryNotice(root))
    return sources

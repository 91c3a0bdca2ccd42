"""Which readers look at which configured store: every local root is searched by each local reader
(W&B run folders, JSONL logs, Lightning CSV logs); a `wandb://entity/project` entry uses the API."""

from __future__ import annotations

from pathlib import Path

from altgrad_pipeline.ingest.jsonl import JsonlSource
from altgrad_pipeline.ingest.lightning_csv import LightningCsvSource
from altgrad_pipeline.ingest.model import RunSource
from altgrad_pipeline.ingest.wandb_api import WandbApiSource
from altgrad_pipeline.ingest.wandb_local import LocalWandbSource
from altgrad_pipeline.settings import RunStoreEntry


def build_sources(entries: list[RunStoreEntry], *, api_cache_dir: Path, grace_period_s: float) -> list[RunSource]:
    sources: list[RunSource] = []
    for entry in entries:
        if entry.kind == "wandb":
            sources.append(WandbApiSource(entry.target, cache_dir=api_cache_dir, grace_period_s=grace_period_s))
            continue
        root = Path(entry.target)
        sources.extend(
            [
                LocalWandbSource(root, grace_period_s=grace_period_s),
                JsonlSource(root, grace_period_s=grace_period_s),
                LightningCsvSource(root, grace_period_s=grace_period_s),
            ]
        )
    return sources

"""Media values of the runs the catalog lists, cached per run version.

The run catalog keeps only numeric history (its Parquet is what every analysis scans), so the
media values are read here, once per run version, from the same run folders: a local run's
`.wandb` logs (or SDK 0.8 `wandb-history.jsonl`) are decoded again by the same reader, which
keeps every media value's JSON, and the result is cached as
`<cache dir>/media/<entry key>-<version>.parquet`, the version being the catalog's (a hash of
the run's file fingerprint). A refresh therefore re-reads only runs whose files changed, like
the catalog, without widening the catalog's history files for every consumer.

Sources without W&B media (JSONL, CSV, TensorBoard, MLflow) contribute no rows; W&B API runs
have their tables read from their artifacts (`ingest.wandb_media_api`), not from here.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from altgrad_pipeline.ingest.catalog import CatalogEntry
from altgrad_pipeline.ingest.wandb_local import SOURCE_NAME as LOCAL_SOURCE
from altgrad_pipeline.ingest.wandb_local import read_run_media
from altgrad_pipeline.media.values import MEDIA_VALUES_SCHEMA

MEDIA_CACHE_DIR = "media"
#: A superseded cache file is removed only after this long (a concurrent reader may hold it).
SUPERSEDED_FILE_GRACE_S = 600.0


def _cached_path(cache_dir: Path, entry: CatalogEntry) -> Path:
    return cache_dir / MEDIA_CACHE_DIR / f"{entry.key}-{entry.version}.parquet"


def _read_local(entry: CatalogEntry) -> pl.DataFrame:
    media = read_run_media(Path(entry.location))
    return media.select(
        pl.lit(entry.run_id, pl.String).alias("run_id"),
        pl.lit(entry.source, pl.String).alias("source"),
        "step",
        "key",
        "value_json",
        "files_dir",
    )


def media_values(entries: Sequence[CatalogEntry], cache_dir: Path) -> pl.DataFrame:
    """Media values (`MEDIA_VALUES_SCHEMA`) of the local W&B runs among `entries`, read once per
    run version and cached."""
    frames = [pl.DataFrame(schema=MEDIA_VALUES_SCHEMA)]
    for entry in entries:
        if entry.source != LOCAL_SOURCE:
            continue
        path = _cached_path(Path(cache_dir), entry)
        if path.exists():
            frames.append(pl.read_parquet(path).with_columns(pl.lit(entry.run_id, pl.String).alias("run_id")))
            continue
        frame = _read_local(entry)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            frame.write_parquet(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        frames.append(frame)
    return pl.concat(frames, how="vertical").cast(MEDIA_VALUES_SCHEMA)  # type: ignore[arg-type]


def remove_superseded(all_entries: Sequence[CatalogEntry], cache_dir: Path) -> None:
    """Delete cached media of run versions the catalog no longer lists, once old enough."""
    folder = Path(cache_dir) / MEDIA_CACHE_DIR
    if not folder.is_dir():
        return
    live = {f"{e.key}-{e.version}.parquet" for e in all_entries}
    cutoff = time.time() - SUPERSEDED_FILE_GRACE_S
    for path in folder.glob("*.parquet"):
        if path.name not in live and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)

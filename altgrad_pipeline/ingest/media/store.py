"""Media values of the runs the catalog lists, cached per run version.

The run catalog's history Parquet holds numeric and string values only (it is what every analysis
scans); the media values (tables, histograms, images, ...) of a local W&B run are found by the same
decode of its `.wandb` logs (or SDK 0.8 `wandb-history.jsonl`) and kept beside that history, as
`runs/<entry key>-<version>.media.parquet` in the catalog's cache (`CatalogEntry.media_path`), so
this stage reads that file and never decodes the logs again. A run the catalog cached before it
kept media is decoded here once (`read_run_media`) and the result cached as
`<cache dir>/media/<entry key>-<version>.parquet`. Either way a refresh reads only runs whose
files changed, like the catalog.

W&B API runs (`wandb://` stores) are read through the catalog's `WandbApiSource`: their media
values from the server's history of the run's media keys, cached the same way, and their tables
from the run's artifacts (`ingest.wandb.media_api`), whose files are kept by SHA-256 under
`<cache dir>/media/tables/`. A run the server cannot answer for becomes an issue, and is asked
again on the next refresh. Sources without W&B media (JSONL, CSV, TensorBoard, MLflow)
contribute no rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from altgrad_pipeline import atomic
from altgrad_pipeline.ingest.catalog import CatalogEntry
from altgrad_pipeline.ingest.media import tables
from altgrad_pipeline.ingest.media.values import MEDIA_VALUES_SCHEMA
from altgrad_pipeline.ingest.model import IngestIssue, RunSource
from altgrad_pipeline.ingest.wandb import media_api as wandb_media_api
from altgrad_pipeline.ingest.wandb.api import WandbApiSource
from altgrad_pipeline.ingest.wandb.local import SOURCE_NAME as LOCAL_SOURCE
from altgrad_pipeline.ingest.wandb.local import read_run_media

MEDIA_CACHE_DIR = "media"
#: Table files of API runs, by SHA-256, under the media cache.
TABLE_FILES_DIR = "tables"
#: A superseded cache file is removed only after this long (a concurrent reader may hold it).
SUPERSEDED_FILE_GRACE_S = 600.0


def _cached_path(cache_dir: Path, entry: CatalogEntry) -> Path:
    return cache_dir / MEDIA_CACHE_DIR / f"{entry.key}-{entry.version}.parquet"


def _read_local(entry: CatalogEntry) -> pl.DataFrame:
    media = read_run_media(Path(entry.location))
    return _with_run(entry, media)


def _with_run(entry: CatalogEntry, media: pl.DataFrame) -> pl.DataFrame:
    return media.select(
        pl.lit(entry.run_id, pl.String).alias("run_id"),
        pl.lit(entry.source, pl.String).alias("source"),
        "step",
        "key",
        "value_json",
        "files_dir",
    )


class ApiRuns:
    """The `wandb.Api` runs behind the catalog's `wandb://` entries, each fetched once."""

    def __init__(self, sources: Sequence[RunSource]):
        self._sources = [source for source in sources if isinstance(source, WandbApiSource)]
        self._runs: dict[str, Any] = {}

    def source_of(self, entry: CatalogEntry) -> WandbApiSource | None:
        return next((source for source in self._sources if source.owns(entry.location)), None)

    def run(self, entry: CatalogEntry) -> Any:
        if entry.location not in self._runs:
            source = self.source_of(entry)
            assert source is not None, "only entries of a configured wandb:// store reach here"
            self._runs[entry.location] = source.api_run(entry.location)
        return self._runs[entry.location]


def _read_api(entry: CatalogEntry, api_runs: ApiRuns) -> pl.DataFrame:
    keys = wandb_media_api.media_keys(entry.row.get("non_scalar_keys"))
    if not keys:
        return pl.DataFrame(schema=MEDIA_VALUES_SCHEMA)
    values = wandb_media_api.media_values(api_runs.run(entry), run_id=entry.run_id, source=entry.source, keys=keys)
    source = api_runs.source_of(entry)
    return values if source is None else source.redact_frame(values, ("key", "value_json"))


def media_values(
    entries: Sequence[CatalogEntry], cache_dir: Path, api_runs: ApiRuns | None = None
) -> tuple[pl.DataFrame, list[IngestIssue]]:
    """Media values (`MEDIA_VALUES_SCHEMA`) of the local W&B runs among `entries` and, with
    `api_runs`, of the W&B API runs, read once per run version and cached; and the API runs
    whose media values the server did not give."""
    frames = [pl.DataFrame(schema=MEDIA_VALUES_SCHEMA)]
    issues: list[IngestIssue] = []
    for entry in entries:
        source = api_runs.source_of(entry) if api_runs is not None else None
        if entry.source != LOCAL_SOURCE and source is None:
            continue
        if source is None and entry.media_path.exists():  # kept by the catalog when it read the run
            frames.append(_with_run(entry, pl.read_parquet(entry.media_path)))
            continue
        path = _cached_path(Path(cache_dir), entry)
        if path.exists():
            frames.append(pl.read_parquet(path).with_columns(pl.lit(entry.run_id, pl.String).alias("run_id")))
            continue
        if source is None:
            frame = _read_local(entry)
        else:
            try:
                frame = _read_api(entry, api_runs)  # type: ignore[arg-type]
            except Exception as exc:  # network, auth, rate limit after retries, a deleted run, ...
                issues.append(
                    IngestIssue(location=entry.location, kind="api_error", reason=f"W&B API request failed: {source.redact(f'{type(exc).__name__}: {exc}')}",
                                lost="the run's media (tables, histograms, ...)", run_id=entry.run_id, source=entry.source)  # fmt: skip
                )
                continue
        with atomic.atomic_path(path) as tmp:
            frame.write_parquet(tmp)
        frames.append(frame)
    return pl.concat(frames, how="vertical").cast(MEDIA_VALUES_SCHEMA), issues  # type: ignore[arg-type]


def read_tables(
    run_media: pl.DataFrame, entries: Sequence[CatalogEntry], cache_dir: Path, api_runs: ApiRuns | None = None
) -> tables.ReadTables:
    """The tables of `run_media` rows of `entries`: a local run's from its files, an API run's
    from its artifacts (with `api_runs`)."""
    sources = {entry.run_id: entry.source for entry in entries}
    result = tables.read_tables(
        run_media.filter(pl.col("run_id").is_in([e.run_id for e in entries if e.source == LOCAL_SOURCE])),
        tables.read_local_file,
        sources=sources,
    )
    cache = wandb_media_api.TableFileCache(Path(cache_dir) / MEDIA_CACHE_DIR / TABLE_FILES_DIR)
    for entry in entries:
        source = api_runs.source_of(entry) if api_runs is not None else None
        rows = run_media.filter(pl.col("run_id") == entry.run_id)
        if source is None or rows.is_empty():
            continue
        read = wandb_media_api.read_run_tables(
            lambda entry=entry: api_runs.run(entry), rows, source=entry.source, cache=cache, redact=source.redact  # type: ignore[union-attr]
        )
        result.tables.extend(read.tables)
        result.issues.extend(read.issues)
    return result


def remove_superseded(live_versions: set[str], cache_dir: Path) -> None:
    """Delete cached media of run versions the catalog no longer lists (`live_versions`: its
    `<entry key>-<version>` stems), once old enough."""
    folder = Path(cache_dir) / MEDIA_CACHE_DIR
    if not folder.is_dir():
        return
    cutoff = time.time() - SUPERSEDED_FILE_GRACE_S
    for path in folder.glob("*.parquet"):
        if path.name.removesuffix(".parquet") not in live_versions and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)

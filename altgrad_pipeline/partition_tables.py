"""Partition tables rebuilt run by run: a refresh after one new run computes that run only.

A format partition's histories, layer metrics and run summaries are unions of per-run pieces that
depend on nothing but that run's files. Each stored partition file carries, in its Parquet
key-value metadata, the version of every run it covers (the catalog's hash of the run's files)
and the recipe it was computed with. The next build keeps the rows of runs whose version is
unchanged and computes only the others, so a refresh after one new run reads one file instead
of recomputing every run. Rows and versions live in one file, written at once: they never
disagree.

The recipe is the source of the modules that compute the rows plus any settings (a run-summaries
threshold, say): changing either rebuilds from scratch, so a kept row is never one an upgraded or
reconfigured pipeline would compute differently.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import polars as pl

from altgrad_pipeline import atomic, locking

#: Parquet key-value metadata: `{run_id: run_version}` of the runs a file covers, and its recipe.
RUN_VERSIONS_KEY = "altgrad.run_versions"
RECIPE_KEY = "altgrad.recipe"


def recipe(*modules: ModuleType, **settings: Any) -> str:
    """What, besides the runs, decides a table's rows: its modules' source and its settings."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def run_versions(raw_runs: pl.DataFrame) -> dict[str, str]:
    """run_id -> run_version of a `raw_runs` partition. A table written before versions existed
    gives each run a one-off version, so nothing is reused from a build that cannot be checked."""
    once = uuid.uuid4().hex
    if "run_version" not in raw_runs.columns:
        return {run: once for run in raw_runs.get_column("run_id")}
    return dict(raw_runs.select("run_id", pl.col("run_version").fill_null(once)).iter_rows())


#: Materialization metadata of every format-partitioned asset: `built_from` of the runs it was built
#: from. A partition is complete when each of its assets carries the fingerprint its runs have now.
CATALOG_FINGERPRINT = "catalog_fingerprint"


def built_from(raw_runs: pl.DataFrame) -> str:
    """Changes exactly when a partition's tables would: a run's files (its version), its state, or
    which runs are in it. Computed from `raw_runs` alone, so every asset downstream of it can say
    which runs it was built from."""
    if not raw_runs.height:
        return hashlib.sha256(b"").hexdigest()[:32]
    parts = raw_runs.select(
        pl.concat_str(["source", "location", "run_version", "state"], separator="\x00", ignore_nulls=False).fill_null("")
    ).to_series()
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class RunVersionedFrame:
    """A partition table with the run versions and recipe it was built from; the IO manager
    stores the three in one Parquet file. A lazy `frame` is streamed to the file, and `spill`
    (the folder of its per-run pieces, see `rebuild`) removed once it is written."""

    frame: pl.DataFrame | pl.LazyFrame
    versions: dict[str, str]
    recipe: str
    spill: Path | None = None

    def parquet_metadata(self) -> dict[str, str]:
        return {RUN_VERSIONS_KEY: json.dumps(self.versions, sort_keys=True), RECIPE_KEY: self.recipe}


def read_build(path: str, storage_options: dict[str, str] | None = None) -> RunVersionedFrame | None:
    """The partition file as last stored; None when absent, unreadable or written without
    versions (then the next build computes every run)."""
    try:
        metadata = pl.read_parquet_metadata(path, storage_options=storage_options)
        versions, built_with = json.loads(metadata[RUN_VERSIONS_KEY]), metadata[RECIPE_KEY]
        return RunVersionedFrame(pl.read_parquet(path, storage_options=storage_options), versions, built_with)
    except (OSError, KeyError, ValueError, pl.exceptions.PolarsError):
        return None


def _insert_runs(kept: pl.DataFrame, fresh: pl.DataFrame) -> pl.DataFrame:
    """Both sorted by run_id, no run in both: each fresh run goes in whole where it sorts, as
    slices (no copy, no comparison of a million keys as `merge_sorted` would do)."""
    fresh_runs = fresh.get_column("run_id")
    starts = fresh_runs.search_sorted(fresh_runs.unique(maintain_order=True), side="left").to_list()
    ends = [*starts[1:], fresh.height]
    positions = kept.get_column("run_id").search_sorted(fresh_runs.gather(starts), side="left").to_list()
    pieces, taken = [], 0
    for position, start, end in zip(positions, starts, ends, strict=True):
        pieces += [kept.slice(taken, position - taken), fresh.slice(start, end - start)]
        taken = position
    return pl.concat([*pieces, kept.slice(taken)], rechunk=False)


@dataclass(frozen=True)
class Rebuilt:
    table: RunVersionedFrame
    #: Runs whose rows were computed in this build (new or changed), in run_id order.
    computed: list[str]
    #: How many runs' rows were taken from the previous build unchanged.
    reused: int


def rebuild(
    previous: RunVersionedFrame | None,
    versions: Mapping[str, str],
    built_with: str,
    compute: Callable[[list[str]], pl.DataFrame | pl.LazyFrame],
    spill: Path | None = None,
) -> Rebuilt:
    """The table for the runs in `versions` (run_id -> version), reusing `previous` where it can.

    `compute(run_ids)` returns the rows of just those runs, sorted by `run_id` first (whatever
    order within a run); the result keeps that order, so it equals `compute(all run ids)`. It is
    called one run at a time: memory is one run's working set, and Polars groups and sorts a run's
    rows faster than a partition's. With `spill` (an empty folder), a build with nothing to keep
    writes each run's rows there and returns a lazy table over them, so a first build never holds
    the partition in memory; a `compute` returning a LazyFrame (rows already on disk) is not copied.
    """
    covered = previous.versions if previous is not None and previous.recipe == built_with else {}
    unchanged = [run for run, version in versions.items() if covered.get(run) == version]
    changed = sorted(run for run, version in versions.items() if covered.get(run) != version)
    if spill is not None and changed and not unchanged:
        pieces = [_spilled(compute([run]), spill / f"{index:06d}.parquet") for index, run in enumerate(changed)]
        table = RunVersionedFrame(pl.concat(pieces, how="vertical_relaxed"), dict(versions), built_with, spill)
        return Rebuilt(table, computed=changed, reused=0)
    fresh = pl.concat([compute([run]).lazy().collect() for run in changed], how="vertical_relaxed") if changed else None
    if previous is None or not unchanged:
        frame = compute([]).lazy().collect() if fresh is None else fresh
    else:
        kept = previous.frame.lazy().collect().filter(pl.col("run_id").is_in(unchanged))
        frame = kept if fresh is None or fresh.is_empty() else _insert_runs(kept, fresh.cast(kept.schema))
    return Rebuilt(RunVersionedFrame(frame, dict(versions), built_with, spill), computed=changed, reused=len(unchanged))


def spill_folder(root: Path, asset: str) -> Path:
    """A new, empty folder for one build's per-run pieces (`rebuild`'s `spill`), under `root` (a
    local cache dir), named with this process's pid; first the folders of processes that are gone
    (a killed or crashed build) are removed, so their pieces never pile up on the disk."""
    root.mkdir(parents=True, exist_ok=True)
    me = locking.this_process()
    for folder in root.iterdir():
        pid = folder.name.rsplit("-", 2)[-2] if folder.name.count("-") >= 2 else ""
        if folder.is_dir() and pid.isdigit() and locking.gone_here(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{asset}-{me['pid']}-", dir=root))


def _spilled(rows: pl.DataFrame | pl.LazyFrame, path: Path) -> pl.LazyFrame:
    """One run's rows as a scan: computed rows are written to `path` (lz4: written once, read once),
    atomically, so a full disk leaves no truncated piece and is said like any other full disk."""
    if isinstance(rows, pl.LazyFrame):
        return rows
    with atomic.atomic_path(path) as tmp:
        rows.write_parquet(tmp, compression="lz4")
    return pl.scan_parquet(path)

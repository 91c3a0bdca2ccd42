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
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import polars as pl
from polars.io.plugins import register_io_source

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
    stores the three in one Parquet file. A lazy `frame` is streamed to the file (a streamed build
    is computed only then, see `rebuild`), so what an asset says about its rows is `describe`d
    from the table as written: the IO manager adds it to the materialization's metadata.

    `copied_from` names Parquet files whose rows, in order, are `frame`'s, each with String columns
    to read as one value (`{"run_id": run}`): the IO manager copies their pages into the partition
    file (`parquet_concat`) instead of decoding and encoding every row."""

    frame: pl.DataFrame | pl.LazyFrame
    versions: dict[str, str]
    recipe: str
    describe: Callable[[pl.LazyFrame], dict[str, Any]] | None = None
    copied_from: tuple[tuple[Path, Mapping[str, str]], ...] = ()

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
    *,
    streamed: bool = False,
    describe: Callable[[pl.LazyFrame], dict[str, Any]] | None = None,
) -> Rebuilt:
    """The table for the runs in `versions` (run_id -> version), reusing `previous` where it can.

    `compute(run_ids)` returns the rows of just those runs, sorted by `run_id` first (whatever
    order within a run); the result keeps that order, so it equals `compute(all run ids)`. It is
    called one run at a time: memory is one run's working set, and Polars groups and sorts a run's
    rows faster than a partition's. With `streamed`, a build with nothing to keep is a lazy table
    that computes each run only as it is written (`_computed_while_read`): a first build never
    holds the partition in memory, and its rows are encoded once, into the partition file; a
    `compute` returning a LazyFrame (rows already on disk) is concatenated as it is. `describe` is
    handed on to the table (`RunVersionedFrame`).
    """
    covered = previous.versions if previous is not None and previous.recipe == built_with else {}
    unchanged = [run for run, version in versions.items() if covered.get(run) == version]
    changed = sorted(run for run, version in versions.items() if covered.get(run) != version)
    if streamed and changed and not unchanged:
        columns = compute([])
        if isinstance(columns, pl.LazyFrame):
            frame = pl.concat([compute([run]).lazy() for run in changed], how="vertical_relaxed")
        else:
            frame = _computed_while_read(compute, changed, columns.schema)
        return Rebuilt(RunVersionedFrame(frame, dict(versions), built_with, describe), computed=changed, reused=0)
    fresh = pl.concat([compute([run]).lazy().collect() for run in changed], how="vertical_relaxed") if changed else None
    if previous is None or not unchanged:
        frame = compute([]).lazy().collect() if fresh is None else fresh
    else:
        kept = previous.frame.lazy().collect().filter(pl.col("run_id").is_in(unchanged))
        frame = kept if fresh is None or fresh.is_empty() else _insert_runs(kept, fresh.cast(kept.schema))
    return Rebuilt(RunVersionedFrame(frame, dict(versions), built_with, describe), computed=changed, reused=len(unchanged))


def _computed_while_read(compute: Callable[[list[str]], pl.DataFrame | pl.LazyFrame], runs: list[str], schema: pl.Schema) -> pl.LazyFrame:
    """`compute` of each of `runs` in turn (its rows cast to `schema`), as a lazy frame whose
    reader (a Polars IO source) computes a run when the one before it has been consumed: a sink
    into a file holds one run's rows, however many runs there are."""

    def rows(columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, _batch_size: int | None) -> Iterator[pl.DataFrame]:
        left = n_rows
        for run in runs:
            piece = compute([run]).lazy().cast(dict(schema))
            if predicate is not None:
                piece = piece.filter(predicate)
            if columns is not None:
                piece = piece.select(columns)
            frame = (piece if left is None else piece.head(left)).collect()
            yield frame
            if left is not None and (left := left - frame.height) <= 0:
                return

    return register_io_source(rows, schema=schema)

"""Parquet IO manager: every asset is a Parquet file any tool can read, at
`<base>/assets/<asset>/<partition>.parquet` (unpartitioned: `<base>/assets/<asset>.parquet`).

Hand-written on Dagster's `UPathIOManager` because dagster-polars 0.27.12 fails on Polars 2
(`scan_parquet` lost `rechunk`) and dagster-duckdb-polars fails on DuckDB 2 (`.arrow()` is gone).
Downstream assets that take many partitions get one frame (lazy if annotated `pl.LazyFrame`),
not a dict of frames: analysis reads every format through a single `scan_parquet`. With no format
partition built yet (an empty store) that frame is empty, with the asset's columns
(`partitions.PARTITIONED_SCHEMAS`), so every downstream asset runs and says there are no runs.

`base_dir` may be an object-store URL: files are written through fsspec (UPath) and scanned by
Polars' own object-store reader, both with the credentials and endpoint of the standard `AWS_*`
variables (`settings.fsspec_storage_options`), so a lazy scan over S3 reads only the row groups
and columns a query needs. Every file's SHA-256 is recorded with its materialization and checked
before it is read, local or not (an object is streamed through the hash once per ETag and process).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import polars as pl
from upath import UPath

from altgrad_pipeline import atomic, integrity, parquet_concat, settings
from altgrad_pipeline.defs.partitions import PARTITIONED_SCHEMAS
from altgrad_pipeline.partition_tables import RunVersionedFrame, read_build
from altgrad_pipeline.study import is_safe_format_name

#: Parquet codec of every stored asset: zstd at level 1 encodes the 1x benchmark study's histories
#: and layer metrics in 2.75 CPU-s against 3.6 at Polars' default level 3, at the same size (95 and
#: 81 MB: their floats barely compress at any level).
PARQUET_COMPRESSION: dict[str, Any] = {"compression": "zstd", "compression_level": 1}


def _write_copied(pieces: tuple[tuple[Path, Mapping[str, str]], ...], out: str | io.BytesIO, metadata: dict[str, str] | None) -> bool:
    """A partition file made of `pieces`' pages (`RunVersionedFrame.copied_from`); False, with
    nothing usable written, when they cannot be joined by copying (the rows are then encoded)."""
    try:
        with open(out, "wb") if isinstance(out, str) else contextlib.nullcontext(out) as file:
            parquet_concat.concatenate(pieces, file, metadata or {}, PARQUET_COMPRESSION)
    except parquet_concat.UnsupportedParquetError:
        return False
    return True


def _row_count(written: pl.LazyFrame) -> dict[str, Any]:
    """The row count of a lazy table as written, for the UI (the Parquet footer holds it: nothing is
    decoded), where the asset returning it cannot count rows it never holds."""
    return {"dagster/row_count": written.select(pl.len()).collect().item()}


#: (asset, partition, device, inode, size, mtime_ns) of local files found to be the ones their latest
#: materialization recorded: a file that several steps of one process read is looked up and checked
#: once (the look-ups took 1.0 CPU-s of a 1x first refresh). A new materialization writes a new file
#: (an atomic rename: another inode and mtime), so it is never taken for one checked before.
_checked_files: set[tuple[str, str | None, int, int, int, int]] = set()


def _storage_path(base_dir: str) -> UPath:
    return UPath(base_dir, **settings.fsspec_storage_options(base_dir)) / "assets"


def _is_local(path: UPath) -> bool:
    return path.protocol in ("", "file")


def asset_path(base_dir: str, asset: str, partition: str | None) -> UPath:
    """Where the IO manager keeps an asset's file (one partition's, or an unpartitioned asset's)."""
    folder = _storage_path(base_dir)
    extension = PolarsParquetIOManager.extension
    return folder / asset / f"{partition}{extension}" if partition else folder / f"{asset}{extension}"


def file_problem(path: UPath, expected: str | None) -> str | None:
    """Why a stored file is not the one written (`integrity.problem`), on local disk or in an
    object store; None when it is."""
    return integrity.problem(str(path), expected) if _is_local(path) else integrity.object_problem(path.fs, path.path, expected)


def quarantine_file(path: UPath, base_dir: str) -> str | None:
    """Move a damaged stored file to `<data dir>/quarantine/`; where it went (None: nothing to move)."""
    if _is_local(path):
        moved = integrity.quarantine(str(path), base_dir)
        return None if moved is None else str(moved)
    return integrity.quarantine_object(path.fs, path.path, UPath(base_dir, **settings.fsspec_storage_options(base_dir)).path)


def previous_build(
    base_dir: str, asset: str, partition: str, instance: dg.DagsterInstance, warn: Callable[[str], None]
) -> RunVersionedFrame | None:
    """A partition as this IO manager last stored it, with its run versions (`partition_tables`),
    when it is still the file written: one that no longer has the SHA-256 its latest
    materialization recorded is named (`warn`), moved to quarantine and not reused, so a run that
    no refresh assessed first (a sensor's, a backfill's) rebuilds it from the runs."""
    path = asset_path(base_dir, asset, partition)
    if path.exists():
        expected = recorded_sha256(instance, dg.AssetKey(asset), partition)
        if (why := file_problem(path, expected)) is not None:
            moved = quarantine_file(path, base_dir)
            warn(f"{why}: moved to {moved}; computing every run of it again")
            return None
    options = settings.polars_storage_options(dict(path.storage_options))
    return read_build(str(path), options or None)


def recorded_sha256(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str | None) -> str | None:
    """The SHA-256 the latest materialization of this asset (partition) recorded for its file."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get(integrity.SHA256_KEY)
    return None if value is None else value.value


def _checked_file_key(path: UPath, asset_key: dg.AssetKey, partition: str | None) -> tuple[str, str | None, int, int, int, int] | None:
    """The key of `_checked_files` for a local file as it is now (None: not local, or missing)."""
    if not _is_local(path):
        return None
    try:
        stat = os.stat(str(path))
    except FileNotFoundError:
        return None
    return (asset_key.to_user_string(), partition, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _wants_lazy(context: dg.InputContext) -> bool:
    return context.dagster_type.typing_type is pl.LazyFrame


class PolarsParquetIOManager(dg.ConfigurableIOManager, dg.UPathIOManager):
    """Stores Polars frames as Parquet under `base_dir` (a local path or an fsspec URL)."""

    base_dir: str
    extension: ClassVar[str] = ".parquet"

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._base_path = _storage_path(self.base_dir)

    def _inside(self, path: UPath) -> UPath:
        """Every path this IO manager builds is proven to stay under `<base_dir>/assets`."""
        if not integrity.inside(str(path), str(_storage_path(self.base_dir))):
            raise ValueError(f"refusing to use {path}: it is outside {_storage_path(self.base_dir)}")
        return path

    def make_safe_partition_path(self, base_path: UPath, partition: str) -> UPath:
        """Partition keys name files: only keys passing `study.is_safe_format_name` are used."""
        if not is_safe_format_name(partition):
            raise ValueError(f"partition key {partition!r} is not a safe file name (study.is_safe_format_name)")
        return self._inside(base_path / partition)

    def _get_path(self, context: dg.InputContext | dg.OutputContext) -> UPath:
        return self._inside(super()._get_path(context))

    def dump_to_path(
        self, context: dg.OutputContext, obj: pl.DataFrame | pl.LazyFrame | RunVersionedFrame, path: UPath
    ) -> None:
        """A `RunVersionedFrame` keeps its run versions in the same file, as Parquet metadata, and
        has its `describe` metadata read from the table as written (a plain lazy table its row count),
        and one with `copied_from` files is made of those files' pages. A local file is written atomically (a
        lazy frame streamed into it, never held whole in memory) and its SHA-256 recorded with the
        materialization, so a later read or refresh can tell it from a damaged one."""
        metadata = obj.parquet_metadata() if isinstance(obj, RunVersionedFrame) else None
        frame = obj.frame if isinstance(obj, RunVersionedFrame) else obj
        describe = obj.describe if isinstance(obj, RunVersionedFrame) else _row_count if isinstance(obj, pl.LazyFrame) else None
        copied = obj.copied_from if isinstance(obj, RunVersionedFrame) else ()
        atomic.kill_point(f"write:{context.asset_key.to_user_string()}" if context.has_asset_key else "write")
        if _is_local(path):
            with atomic.atomic_path(str(path)) as tmp:  # readers (sensors, other runs) never see half a file
                if copied and _write_copied(copied, str(tmp), metadata):
                    written = pl.scan_parquet(str(tmp))
                elif isinstance(frame, pl.LazyFrame):
                    frame.sink_parquet(str(tmp), metadata=metadata, **PARQUET_COMPRESSION)
                    written = pl.scan_parquet(str(tmp))
                else:
                    frame.write_parquet(str(tmp), metadata=metadata, **PARQUET_COMPRESSION)
                    written = frame.lazy()
                described = describe(written) if describe is not None else {}
                digest = integrity.sha256_of(tmp)
        else:  # an object store's PUT is atomic already; the bytes are hashed as they are sent
            buffer = io.BytesIO()
            if copied and _write_copied(copied, buffer, metadata):
                collected = pl.read_parquet(io.BytesIO(buffer.getvalue())) if describe is not None else None
            else:
                buffer = io.BytesIO()
                collected = frame.lazy().collect()
                collected.write_parquet(buffer, metadata=metadata, **PARQUET_COMPRESSION)
            described = describe(collected.lazy()) if describe is not None and collected is not None else {}
            digest = hashlib.sha256(buffer.getbuffer()).hexdigest()
            path.write_bytes(buffer.getvalue())
        context.add_output_metadata({integrity.SHA256_KEY: digest, **described})

    def _scan(self, path: UPath) -> pl.LazyFrame:
        if not path.exists():
            raise FileNotFoundError(str(path))
        options = settings.polars_storage_options(dict(path.storage_options))
        return pl.scan_parquet(str(path), storage_options=options or None)

    @staticmethod
    def _verify(context: dg.InputContext, path: UPath, partition: str | None) -> None:
        """A file must hash to what its latest materialization recorded, on local disk or in an
        object store (files written before hashes were recorded are trusted)."""
        if not context.has_asset_key:
            return
        try:
            instance = context.instance
        except Exception:  # noqa: BLE001 - a context built without an instance (direct IO manager use)
            return
        checked = _checked_file_key(path, context.asset_key, partition)
        if checked is not None and checked in _checked_files:
            return
        if (why := file_problem(path, recorded_sha256(instance, context.asset_key, partition))) is not None:
            raise integrity.CorruptFileError(f"{why}; the next `altgrad-pipeline refresh` moves it aside and rebuilds it")
        if checked is not None:
            _checked_files.add(checked)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pl.DataFrame | pl.LazyFrame:
        self._verify(context, path, context.asset_partition_key if context.has_asset_partitions else None)
        lazy = self._scan(path)
        return lazy if _wants_lazy(context) else lazy.collect()

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | pl.LazyFrame | Any:
        """Dagster hands None to an input of a partitioned asset with no partitions at all: an
        empty table instead, so the type check passes and the asset reports "no runs"."""
        if context.has_asset_key and context.has_asset_partitions and not context.asset_partition_keys:
            return self._empty(context)
        return super().load_input(context)

    def load_partitions(self, context: dg.InputContext) -> pl.DataFrame | pl.LazyFrame:
        """All requested partitions as one frame; partitions not materialized yet are skipped."""
        paths = {key: path for key, path in self._get_paths_for_partitions(context).items() if path.exists()}
        for key, path in paths.items():
            self._verify(context, path, key)
        scans = [self._scan(p) for p in paths.values()]
        if not scans:
            return self._empty(context)
        lazy = scans[0] if len(scans) == 1 else pl.concat(scans, how="diagonal_relaxed")
        return lazy if _wants_lazy(context) else lazy.collect()

    @staticmethod
    def _empty(context: dg.InputContext) -> pl.DataFrame | pl.LazyFrame:
        asset = context.asset_key.path[-1]
        context.log.info(f"{asset}: no format partition built yet (no runs found): loaded as an empty table")
        lazy = pl.LazyFrame(schema=PARTITIONED_SCHEMAS[asset])
        return lazy if _wants_lazy(context) else lazy.collect()

    def get_metadata(self, context: dg.OutputContext, obj: Any) -> dict[str, Any]:
        if isinstance(obj, RunVersionedFrame) and obj.describe is not None:
            return {}  # it says its row count itself
        frame = obj.frame if isinstance(obj, RunVersionedFrame) else obj
        # a lazy table is counted as written (`dump_to_path`); a partition table's asset counts its rows
        return {"dagster/row_count": frame.height} if isinstance(frame, pl.DataFrame) else {}

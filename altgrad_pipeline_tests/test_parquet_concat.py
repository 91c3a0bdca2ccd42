"""Parquet files joined by copying their pages read back as the rows written one after another."""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from altgrad_pipeline import parquet_concat
from altgrad_pipeline.ingest.model import HISTORY_SCHEMA

CODEC = {"compression": "zstd", "compression_level": 1}


def _history(run_id: str, steps: int, keys: int) -> pl.DataFrame:
    """A cached history as the catalog writes one: (step, key) order, a String run_id."""
    return pl.DataFrame(
        {
            "run_id": [run_id] * (steps * keys),
            "step": [s for s in range(steps) for _ in range(keys)],
            "key": [f"train/k{k}" for _ in range(steps) for k in range(keys)],
            "value": [float(s * keys + k) / 7 for s in range(steps) for k in range(keys)],
            "text": [None] * (steps * keys),
            "runtime": [s * 0.5 for s in range(steps) for _ in range(keys)],
            "timestamp": [1.7e9 + s for s in range(steps) for _ in range(keys)],
        },
        schema=HISTORY_SCHEMA,
    )


def _write(frame: pl.DataFrame, path: Path, row_group_size: int) -> Path:
    frame.write_parquet(path, row_group_size=row_group_size)
    return path


def test_joined_files_read_as_their_rows_in_order_with_run_ids_replaced(tmp_path: Path) -> None:
    first = _write(_history("a", 40, 5), tmp_path / "a.parquet", 64)
    second = _write(_history("b", 30, 3), tmp_path / "b.parquet", 50)  # a renamed duplicate: its rows read as "b@2"
    out = tmp_path / "joined.parquet"
    with open(out, "wb") as file:
        parquet_concat.concatenate([(first, {"run_id": "a"}), (second, {"run_id": "b@2"})], file, {"altgrad.x": "1"}, CODEC)

    expected = pl.concat([_history("a", 40, 5), _history("b", 30, 3).with_columns(run_id=pl.lit("b@2"))])
    joined = pl.read_parquet(out)
    assert joined.equals(expected)
    assert joined.schema == expected.schema
    assert pq.read_table(out).replace_schema_metadata(None).equals(expected.to_arrow())
    assert pq.read_schema(out).remove_metadata() == pq.read_schema(first).remove_metadata()
    assert pl.read_parquet_metadata(out)["altgrad.x"] == "1"
    # each file's row groups stay whole: 200 rows in 64s, 90 in 50s
    metadata = pq.ParquetFile(out).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [64, 64, 64, 8, 50, 40]
    # run_id statistics are the replaced value, so a per-run filter reads only that run's row groups
    assert {metadata.row_group(i).column(0).statistics.max for i in range(4, 6)} == {"b@2"}
    assert pl.scan_parquet(out).filter(pl.col("run_id") == "b@2").select(pl.len()).collect().item() == 90
    assert pl.scan_parquet(out).filter(pl.col("run_id") == "b").select(pl.len()).collect().item() == 0


def test_a_joined_file_is_the_same_in_memory(tmp_path: Path) -> None:
    first = _write(_history("a", 10, 4), tmp_path / "a.parquet", 16)
    buffer = io.BytesIO()
    parquet_concat.concatenate([(first, {}), (first, {"run_id": "c"})], buffer, {}, CODEC)
    expected = pl.concat([_history("a", 10, 4), _history("c", 10, 4)])
    assert pl.read_parquet(io.BytesIO(buffer.getvalue())).equals(expected)


def test_files_whose_schemas_differ_are_not_joined(tmp_path: Path) -> None:
    first = _write(_history("a", 4, 2), tmp_path / "a.parquet", 8)
    other = _write(_history("b", 4, 2).with_columns(pl.col("step").cast(pl.Int32)), tmp_path / "b.parquet", 8)
    with pytest.raises(parquet_concat.UnsupportedParquetError):
        parquet_concat.concatenate([(first, {}), (other, {})], io.BytesIO(), {}, CODEC)
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_bytes(b"not a parquet file at all")
    with pytest.raises(parquet_concat.UnsupportedParquetError):
        parquet_concat.concatenate([(not_parquet, {})], io.BytesIO(), {}, CODEC)


def test_the_io_manager_encodes_the_rows_when_files_cannot_be_joined(tmp_path: Path) -> None:
    from altgrad_pipeline.defs.io_manager import _write_copied

    good = _write(_history("a", 4, 2), tmp_path / "a.parquet", 8)
    broken = tmp_path / "b.parquet"
    broken.write_bytes(b"PAR1 truncated")
    assert not _write_copied(((good, {}), (broken, {"run_id": "b"})), str(tmp_path / "out.parquet"), {"k": "v"})
    assert _write_copied(((good, {"run_id": "z"}),), str(tmp_path / "out.parquet"), {"k": "v"})
    assert pl.read_parquet(tmp_path / "out.parquet").equals(_history("z", 4, 2))


def _page_index_faults(data: bytes) -> list[str]:
    """Each offset-index entry of a file that does not point at a data page header of its chunk,
    or a row group whose sizes are not its chunks' sums: what a reader seeking pages by the index
    would trip on."""
    footer, _ = parquet_concat._footer_of(data, "joined")
    faults = []
    for group_number, group in enumerate(parquet_concat._get(footer, parquet_concat._FILE_ROW_GROUPS)[1]):
        chunks = parquet_concat._get(group, parquet_concat._ROW_GROUP_COLUMNS)[1]
        metas = [parquet_concat._get(chunk, parquet_concat._CHUNK_META) for chunk in chunks]
        compressed = sum(parquet_concat._get(meta, parquet_concat._META_TOTAL_COMPRESSED) for meta in metas)
        if parquet_concat._get(group, parquet_concat._ROW_GROUP_COMPRESSED) not in (None, compressed):
            faults.append(f"row group {group_number}: compressed size is not its chunks' sum")
        if parquet_concat._get(group, parquet_concat._ROW_GROUP_FILE_OFFSET) not in (None, parquet_concat._pages_start(chunks[0])):
            faults.append(f"row group {group_number}: file_offset is not its first chunk's first page")
        for column, (chunk, meta) in enumerate(zip(chunks, metas, strict=True)):
            index_at = parquet_concat._get(chunk, parquet_concat._CHUNK_OFFSET_INDEX)
            if index_at is None:
                faults.append(f"row group {group_number} column {column}: no offset index")
                continue
            index = parquet_concat._Reader(data[index_at:]).struct()
            locations = parquet_concat._get(index, parquet_concat._OFFSET_INDEX_PAGES)[1]
            pages_end = parquet_concat._pages_start(chunk) + parquet_concat._get(meta, parquet_concat._META_TOTAL_COMPRESSED)
            if parquet_concat._get(locations[0], 1) != parquet_concat._get(meta, parquet_concat._META_DATA_PAGE):
                faults.append(f"row group {group_number} column {column}: first page not at data_page_offset")
            for location in locations:
                offset, size = parquet_concat._get(location, 1), parquet_concat._get(location, 2)
                header = parquet_concat._Reader(data[offset:])
                fields = header.struct()
                page_type, compressed = parquet_concat._get(fields, 1), parquet_concat._get(fields, 3)
                if page_type not in (0, 3) or header.at + compressed != size or offset + size > pages_end:
                    faults.append(f"row group {group_number} column {column}: page at {offset} is not a data page of {size} bytes")
    return faults


def test_a_joined_file_s_page_index_points_at_its_own_pages(tmp_path: Path) -> None:
    first = _write(_history("a", 300, 6), tmp_path / "a.parquet", 700)
    second = _write(_history("b", 200, 4), tmp_path / "b.parquet", 500)
    assert _page_index_faults(first.read_bytes()) == []  # Polars writes a page index: the joined file must keep it true
    buffer = io.BytesIO()
    parquet_concat.concatenate([(first, {}), (second, {"run_id": "b@2"}), (first, {"run_id": "a@3"})], buffer, {}, CODEC)
    data = buffer.getvalue()
    assert _page_index_faults(data) == []
    expected = pl.concat([_history("a", 300, 6), _history("b@2", 200, 4), _history("a@3", 300, 6)])
    assert pl.read_parquet(io.BytesIO(data)).equals(expected)

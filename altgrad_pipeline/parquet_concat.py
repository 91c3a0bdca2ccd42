"""Parquet files of one schema joined into one file by copying their pages.

A first build of a `run_histories` partition is its runs' cached history files one after another.
Decoding them and encoding the rows again cost ≈ 2 CPU-s of a first refresh at 1× (14 M values,
most of it hashing every row's `run_id` and `key` to rebuild dictionaries the cached files already
hold). Here each file's pages are copied as they are and a new footer lists every file's row groups,
their page offsets moved to where the pages now sit: readers see the same schema, rows, row groups,
statistics and codecs as the files' own. A column to read as one value instead (a run's id, when
the catalog renamed a duplicate) gets chunks of its own, encoded from a one-entry dictionary.

The footer is Thrift's compact protocol (the Parquet format's `FileMetaData`), read and written
field by field without a Thrift library; only offsets, sizes, row counts, ordinals, the replaced
chunks' entries and the key-value metadata change. Each chunk's offset index lists its pages'
absolute positions, so it is written anew after the chunk's file with the moved positions (the
copied original stays behind as bytes no footer entry points at).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MAGIC = b"PAR1"

# Thrift compact protocol type codes.
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)

# Field ids of the Parquet format's footer structs (parquet.thrift).
_FILE_SCHEMA, _FILE_NUM_ROWS, _FILE_ROW_GROUPS, _FILE_KEY_VALUES = 2, 3, 4, 5
_SCHEMA_NAME, _SCHEMA_CHILDREN = 4, 5
_ROW_GROUP_COLUMNS, _ROW_GROUP_BYTES, _ROW_GROUP_NUM_ROWS = 1, 2, 3
_ROW_GROUP_FILE_OFFSET, _ROW_GROUP_COMPRESSED, _ROW_GROUP_ORDINAL = 5, 6, 7
_CHUNK_FILE_PATH, _CHUNK_FILE_OFFSET, _CHUNK_META, _CHUNK_OFFSET_INDEX, _CHUNK_COLUMN_INDEX = 1, 2, 3, 4, 6
_META_TOTAL_UNCOMPRESSED, _META_TOTAL_COMPRESSED = 6, 7
_META_DATA_PAGE, _META_INDEX_PAGE, _META_DICTIONARY_PAGE, _META_BLOOM_FILTER = 9, 10, 11, 14
_OFFSET_INDEX_PAGES, _PAGE_LOCATION_OFFSET = 1, 1
_KEY_VALUE_KEY, _KEY_VALUE_VALUE = 1, 2

#: A decoded struct: its fields in file order, as (field id, type code, value).
Struct = list[tuple[int, int, object]]


class UnsupportedParquetError(ValueError):
    """A file this module cannot join by copying (encrypted, not Parquet, or schemas that differ)."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def byte(self) -> int:
        self.at += 1
        return self.data[self.at - 1]

    def varint(self) -> int:
        shift = result = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, kind: int) -> object:
        if kind in (_TRUE, _FALSE):  # a bool in a list is a byte of its own
            return self.byte() == _TRUE
        if kind == _BYTE:
            return self.byte()
        if kind in (_I16, _I32, _I64):
            return self.zigzag()
        if kind == _DOUBLE:
            self.at += 8
            return self.data[self.at - 8 : self.at]
        if kind == _BINARY:
            size = self.varint()
            self.at += size
            return self.data[self.at - size : self.at]
        if kind in (_LIST, _SET):
            header = self.byte()
            size, element = header >> 4, header & 0x0F
            if size == 15:
                size = self.varint()
            return (element, [self.value(element) for _ in range(size)])
        if kind == _STRUCT:
            return self.struct()
        raise UnsupportedParquetError(f"Thrift type {kind} in a Parquet footer")

    def struct(self) -> Struct:
        fields: Struct = []
        last = 0
        while (header := self.byte()) != 0:
            delta, kind = header >> 4, header & 0x0F
            field = last + delta if delta else self.zigzag()
            value = kind == _TRUE if kind in (_TRUE, _FALSE) else self.value(kind)
            fields.append((field, kind, value))
            last = field
        return fields


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


def _encode_value(kind: int, value: object, out: bytearray) -> None:
    if kind in (_TRUE, _FALSE):
        out.append(_TRUE if value else _FALSE)
    elif kind == _BYTE:
        out.append(value)  # type: ignore[arg-type]
    elif kind in (_I16, _I32, _I64):
        out += _zigzag(value)  # type: ignore[arg-type]
    elif kind == _DOUBLE:
        out += value  # type: ignore[operator]
    elif kind == _BINARY:
        out += _varint(len(value)) + value  # type: ignore[arg-type, operator]
    elif kind in (_LIST, _SET):
        element, items = value  # type: ignore[misc]
        out.append((len(items) << 4 | element) if len(items) < 15 else (0xF0 | element))
        if len(items) >= 15:
            out += _varint(len(items))
        for item in items:
            _encode_value(element, item, out)
    else:
        _encode_struct(value, out)  # type: ignore[arg-type]


def _encode_struct(fields: Struct, out: bytearray) -> None:
    last = 0
    for field, kind, value in fields:
        wire_kind = (_TRUE if value else _FALSE) if kind in (_TRUE, _FALSE) else kind
        if 0 < field - last <= 15:
            out.append((field - last) << 4 | wire_kind)
        else:
            out.append(wire_kind)
            out += _zigzag(field)
        if kind not in (_TRUE, _FALSE):
            _encode_value(kind, value, out)
        last = field
    out.append(0)


def _get(fields: Struct, field: int) -> object | None:
    return next((value for f, _, value in fields if f == field), None)


def _with(fields: Struct, field: int, kind: int, value: object) -> Struct:
    """`fields` with `field` set to `value` (added in field order when absent)."""
    kept = [(f, k, v) for f, k, v in fields if f != field]
    return sorted([*kept, (field, kind, value)], key=lambda item: item[0])


def _shifted(fields: Struct, offsets: set[int], by: int) -> Struct:
    return [(f, k, v + by if f in offsets else v) for f, k, v in fields]  # type: ignore[operator]


def _footer_of(data: bytes, name: object) -> tuple[Struct, int]:
    """A Parquet file's decoded `FileMetaData` (from its last bytes) and where its footer starts."""
    if len(data) < 12:
        raise UnsupportedParquetError(f"{name} is not a Parquet file")
    (length,) = struct.unpack("<I", data[-8:-4])
    if data[-4:] != MAGIC or length + 8 > len(data):
        raise UnsupportedParquetError(f"{name} is not a plain (unencrypted) Parquet file")
    return _Reader(data[-8 - length : -8]).struct(), len(data) - 8 - length


def _footer(file: BinaryIO, name: object) -> tuple[Struct, int]:
    """The decoded footer of the open Parquet `file` and where it starts. The caller copies the
    pages through the same handle: a cache file replaced meanwhile (a rename by another sync)
    cannot give a footer of one version and pages of another."""
    size = file.seek(0, 2)
    file.seek(max(size - 8, 0))
    tail = file.read(8)
    length = struct.unpack("<I", tail[:4])[0] if len(tail) == 8 else 0
    file.seek(max(size - 8 - length, 0))
    footer, start = _footer_of(file.read(), name)
    return footer, start + max(size - 8 - length, 0)


_CHUNK_OFFSETS = {_CHUNK_FILE_OFFSET, _CHUNK_OFFSET_INDEX, _CHUNK_COLUMN_INDEX}
_META_OFFSETS = {_META_DATA_PAGE, _META_INDEX_PAGE, _META_DICTIONARY_PAGE, _META_BLOOM_FILTER}


def _moved_chunk(chunk: Struct, by: int) -> Struct:
    """A column chunk whose bytes moved `by`: every absolute offset in its footer entry with them."""
    if _get(chunk, _CHUNK_FILE_PATH) is not None:
        raise UnsupportedParquetError("a column chunk kept in another file")
    meta = _shifted(_get(chunk, _CHUNK_META), _META_OFFSETS, by)  # type: ignore[arg-type]
    return [(f, k, meta if f == _CHUNK_META else v) for f, k, v in _shifted(chunk, _CHUNK_OFFSETS, by)]


def _rebased(chunk: Struct, moves: Sequence[tuple[int, int, int]]) -> Struct:
    """A column chunk's footer entry with each offset inside one of the `moves`' byte ranges
    (start, length, position) of its file moved to where those bytes are written (position)."""

    def moved_offset(offset: int) -> int:
        return next((offset - start + position for start, length, position in moves if start <= offset < start + length), offset)

    def moved(fields: Struct, offsets: set[int]) -> Struct:
        return [(f, k, moved_offset(v) if f in offsets else v) for f, k, v in fields]  # type: ignore[arg-type]

    meta = moved(_get(chunk, _CHUNK_META), _META_OFFSETS)  # type: ignore[arg-type]
    return [(f, k, meta if f == _CHUNK_META else v) for f, k, v in moved(chunk, _CHUNK_OFFSETS)]


def _chunk_ranges(chunk: Struct) -> list[tuple[int, int]]:
    """(start, length) of a column chunk's pages and of its column index, in its file (its offset
    index holds page positions: `_write_offset_index` writes it anew)."""
    ranges = [(_pages_start(chunk), _get(_get(chunk, _CHUNK_META), _META_TOTAL_COMPRESSED))]  # type: ignore[arg-type]
    if _get(chunk, _CHUNK_COLUMN_INDEX) is not None:
        ranges.append((_get(chunk, _CHUNK_COLUMN_INDEX), _get(chunk, _CHUNK_COLUMN_INDEX + 1)))  # type: ignore[arg-type]
    return ranges  # type: ignore[return-value]


def _moved_offset_index(raw: bytes, by: int) -> bytes:
    """A column chunk's offset index (its pages' absolute positions) for pages moved `by` bytes."""
    index = _Reader(raw).struct()
    kind, locations = _get(index, _OFFSET_INDEX_PAGES)  # type: ignore[misc]
    moved = [_shifted(location, {_PAGE_LOCATION_OFFSET}, by) for location in locations]
    encoded = bytearray()
    _encode_struct(_with(index, _OFFSET_INDEX_PAGES, _LIST, (kind, moved)), encoded)
    return bytes(encoded)


def _write_offset_index(chunk: Struct, raw: bytes, by: int, out: BinaryIO, position: int) -> tuple[Struct, int]:
    """Write the chunk's offset index `raw`, its page positions moved `by`, at `position`; the chunk
    entry pointing at it, and the position after it. Copied as it is, it would send readers that
    seek pages by the index (arrow-rs, DuckDB, Spark) to the page positions of the file it came from."""
    moved = _moved_offset_index(raw, by)
    out.write(moved)
    chunk = _with(_with(chunk, _CHUNK_OFFSET_INDEX, _I64, position), _CHUNK_OFFSET_INDEX + 1, _I32, len(moved))
    return chunk, position + len(moved)


def _pages_start(chunk: Struct) -> int:
    meta = _get(chunk, _CHUNK_META)
    return min(v for f, _, v in meta if f in (_META_DATA_PAGE, _META_DICTIONARY_PAGE))  # type: ignore[union-attr, type-var]


def _constant_string_chunk(name: str, value: str, rows: int, codec: Mapping[str, object]) -> tuple[bytes, Struct, Struct]:
    """A Parquet file of one String column `name` holding `value` in `rows` rows (one row group), as
    pyarrow writes it from a one-entry dictionary (no row hashed): its bytes, its column chunk's
    footer entry and its schema element."""
    column = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array([value], pa.string()))
    buffer = io.BytesIO()
    pq.write_table(pa.table({name: column}), buffer, row_group_size=max(rows, 1), store_schema=False, write_page_index=True, **codec)
    data = buffer.getvalue()
    footer, _ = _footer_of(data, f"a {name} column")
    row_groups = _get(footer, _FILE_ROW_GROUPS)[1]  # type: ignore[index]
    if len(row_groups) != 1:
        raise UnsupportedParquetError(f"a row group of {rows} rows")
    (chunk,) = _get(row_groups[0], _ROW_GROUP_COLUMNS)[1]  # type: ignore[index]
    return data, chunk, _get(footer, _FILE_SCHEMA)[1][1]  # type: ignore[index]


def _key_values(fields: Struct) -> dict[bytes, bytes]:
    listed = _get(fields, _FILE_KEY_VALUES)
    return {} if listed is None else {_get(kv, _KEY_VALUE_KEY): _get(kv, _KEY_VALUE_VALUE) or b"" for kv in listed[1]}  # type: ignore[index, misc]


def concatenate(
    pieces: Sequence[tuple[Path, Mapping[str, str]]], out: BinaryIO, metadata: Mapping[str, str], codec: Mapping[str, object]
) -> None:
    """Write the rows of the `pieces`' files (Parquet files of one schema), in order, to `out` as
    one Parquet file whose key-value metadata is the first file's updated with `metadata`. Every
    column chunk is copied byte for byte, except the String columns a piece names: their every
    row becomes the given value (a chunk encoded anew with `codec`: pyarrow's `compression`
    and `compression_level`). `UnsupportedParquetError` when the schemas differ or a file cannot be joined."""
    if not pieces:
        raise UnsupportedParquetError("nothing to join")
    out.write(MAGIC)
    position = len(MAGIC)
    first: Struct | None = None
    row_groups: list[object] = []
    num_rows = 0
    encoded_constants: dict[tuple[str, str, object], tuple[bytes, Struct, Struct]] = {}
    for path, constants in pieces:
        with open(path, "rb") as file:
            footer, pages_end = _footer(file, path)
            if first is None:
                first = footer
            elif _get(footer, _FILE_SCHEMA) != _get(first, _FILE_SCHEMA) or _key_values(footer).get(b"ARROW:schema") != _key_values(first).get(b"ARROW:schema"):
                raise UnsupportedParquetError(f"{path}: its schema differs from {pieces[0][0]}'s")
            schema = _get(footer, _FILE_SCHEMA)[1]  # type: ignore[index]
            names = [_get(element, _SCHEMA_NAME).decode() for element in schema[1:]]  # type: ignore[union-attr]
            if any(name not in names for name in constants) or any(_get(e, _SCHEMA_CHILDREN) for e in schema[1:]):
                raise UnsupportedParquetError(f"{path}: not a flat table with columns {sorted(constants)}")
            file.seek(len(MAGIC))
            remaining = pages_end - len(MAGIC)
            while remaining > 0:
                block = file.read(min(remaining, 1 << 24))
                if not block:
                    raise UnsupportedParquetError(f"{path} changed while being joined")
                out.write(block)
                remaining -= len(block)
            shift = position - len(MAGIC)
            position += pages_end - len(MAGIC)
            listed = _get(footer, _FILE_ROW_GROUPS)
            for row_group in listed[1] if listed is not None else []:  # type: ignore[index]
                element, chunks = _get(row_group, _ROW_GROUP_COLUMNS)  # type: ignore[misc]
                moved = []
                grown = {_ROW_GROUP_BYTES: 0, _ROW_GROUP_COMPRESSED: 0}  # by the chunks replaced
                for name, schema_element, chunk in zip(names, schema[1:], chunks, strict=True):
                    if name not in constants:
                        copied = _moved_chunk(chunk, shift)
                        if (index_at := _get(chunk, _CHUNK_OFFSET_INDEX)) is not None:
                            file.seek(index_at)  # type: ignore[arg-type]
                            raw = file.read(_get(chunk, _CHUNK_OFFSET_INDEX + 1))  # type: ignore[arg-type]
                            copied, position = _write_offset_index(copied, raw, shift, out, position)
                        moved.append(copied)
                        continue
                    rows = _get(row_group, _ROW_GROUP_NUM_ROWS)
                    if (name, constants[name], rows) not in encoded_constants:  # a run's row groups are of one or two sizes
                        encoded_constants[name, constants[name], rows] = _constant_string_chunk(name, constants[name], rows, codec)  # type: ignore[arg-type]
                    data, new_chunk, new_element = encoded_constants[name, constants[name], rows]
                    if new_element != schema_element:
                        raise UnsupportedParquetError(f"{path}: its {name} column is not a String column as Polars writes it")
                    if _get(_get(new_chunk, _CHUNK_META), _META_BLOOM_FILTER) is not None:  # type: ignore[arg-type]
                        raise UnsupportedParquetError(f"a {name} column with a bloom filter")
                    moves = []
                    for start, length in _chunk_ranges(new_chunk):
                        out.write(data[start : start + length])
                        moves.append((start, length, position))
                        position += length
                    # a chunk's file_offset says where its pages end (where old writers put its metadata)
                    _, pages_length, pages_position = moves[0]
                    replaced = _with(_rebased(new_chunk, moves), _CHUNK_FILE_OFFSET, _I64, pages_position + pages_length)
                    if (index_at := _get(new_chunk, _CHUNK_OFFSET_INDEX)) is not None:
                        raw = data[index_at : index_at + _get(new_chunk, _CHUNK_OFFSET_INDEX + 1)]  # type: ignore[operator]
                        replaced, position = _write_offset_index(replaced, raw, pages_position - _pages_start(new_chunk), out, position)
                    old_meta, new_meta = _get(chunk, _CHUNK_META), _get(new_chunk, _CHUNK_META)
                    for total, size in ((_ROW_GROUP_BYTES, _META_TOTAL_UNCOMPRESSED), (_ROW_GROUP_COMPRESSED, _META_TOTAL_COMPRESSED)):
                        grown[total] += _get(new_meta, size) - _get(old_meta, size)  # type: ignore[arg-type, operator]
                    moved.append(replaced)
                group = [(f, k, (element, moved) if f == _ROW_GROUP_COLUMNS else v) for f, k, v in row_group]
                group = [(f, k, v + grown[f] if f in grown else v) for f, k, v in group]  # type: ignore[operator]
                if _get(group, _ROW_GROUP_FILE_OFFSET) is not None:  # where the row group's first chunk's pages start
                    group = _with(group, _ROW_GROUP_FILE_OFFSET, _I64, _pages_start(moved[0]))
                if _get(group, _ROW_GROUP_ORDINAL) is not None:
                    group = _with(group, _ROW_GROUP_ORDINAL, _I16, len(row_groups))
                row_groups.append(group)
        num_rows += _get(footer, _FILE_NUM_ROWS)  # type: ignore[operator]
    assert first is not None
    key_values = _key_values(first) | {key.encode(): value.encode() for key, value in metadata.items()}
    listed_key_values = (_STRUCT, [[(_KEY_VALUE_KEY, _BINARY, k), (_KEY_VALUE_VALUE, _BINARY, v)] for k, v in key_values.items()])
    footer = _with(_with(_with(first, _FILE_ROW_GROUPS, _LIST, (_STRUCT, row_groups)), _FILE_NUM_ROWS, _I64, num_rows), _FILE_KEY_VALUES, _LIST, listed_key_values)
    encoded = bytearray()
    _encode_struct(footer, encoded)
    out.write(bytes(encoded) + struct.pack("<I", len(encoded)) + MAGIC)

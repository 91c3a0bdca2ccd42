"""`Event` records of one event file, decoded: the common scalar layout for all records at once
with numpy, every other record through protobuf (`EventFile`, read incrementally).

Memory: the file is decoded CHUNK_BYTES at a time into numpy columns of the narrowest exact types,
which the history table then takes without a copy when the points are already in (step, tag)
order, as a scalar log's are: the peak stays under twice the history table.

Restarts: a `SessionLog.START` at step s (also what `SummaryWriter(purge_step=s)` writes) means
every point read before it at a step >= s was orphaned by a crash: those points are dropped, as
TensorBoard drops them, and an issue says how many. Out-of-order steps without a START are kept
(TF2 writers living across several trainings restart at 0 that way).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2, types_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from altgrad_pipeline.ingest.growing import ANCHOR_BYTES, ReadPosition
from altgrad_pipeline.ingest.model import IngestIssue
from altgrad_pipeline.ingest.tensorboard.framing import (
    FOOTER_BYTES,
    HEADER_BYTES,
    SHORT_LENGTH_CRCS,
    gather_le,
    length_crcs,
    masked_crc,
    record_crcs,
    record_starts,
    simple_value_crcs,
)

SOURCE_NAME = "tensorboard"
KNOWN_FILE_VERSIONS = ("brain.Event:1", "brain.Event:2")
SCALARS_PLUGIN = "scalars"
HPARAMS_PLUGIN = "hparams"
TEXT_PLUGIN = "text"
#: Bytes decoded at a time: memory beyond the decoded columns stays near this, and the per-chunk
#: overhead is negligible (about 200,000 records of a scalar log).
CHUNK_BYTES = 16 << 20
#: Summary value kinds that are not scalars, by the protobuf `oneof` field name.
NON_SCALAR_KINDS = {"image": "image", "histo": "histogram", "audio": "audio", "obsolete_old_style_histogram": "histogram"}
#: Points as decoded, in read order, before restarts and rewrites are resolved: the narrowest
#: dtypes that hold every value exactly (float64 value: float64 tensor scalars). A text summary
#: is a point whose `text` is its index in the run's list of strings (NO_TEXT for numbers).
POINT_DTYPES: dict[str, type] = {
    "step": np.int64,
    "tag": np.uint32,
    "value": np.float64,
    "timestamp": np.float64,
    "text": np.int32,
}
NO_TEXT = -1
#: Zero bytes kept after the data in the decode buffer: the layout probes of a record that does
#: not match may reach this far past its start, and never need clipping.
DECODE_SLACK = 512


def _varints(padded: np.ndarray, positions: np.ndarray, max_bytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Protobuf varints starting at `positions`: (values as int64, byte lengths, complete)."""
    byte = padded[positions]
    value = (byte & 0x7F).astype(np.int64)
    length = np.ones(positions.size, dtype=np.int64)
    active = byte >= 0x80
    for i in range(1, max_bytes):
        if not active.any():
            break
        byte = padded[positions + i]
        value |= ((byte & 0x7F).astype(np.int64) << (7 * i)) * active
        length += active
        active &= byte >= 0x80
    return value, length, ~active


def _short_lengths(padded: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-byte varint lengths (< 128) at `positions`, and which were one byte: the fast layout
    only takes short summaries, longer ones go through protobuf."""
    byte = padded[positions]
    return byte.astype(np.int64), byte < 0x80


@dataclass
class FastEvents:
    """Records of the common `simple_value` layout, decoded in bulk; `ok` marks which matched."""

    ok: np.ndarray
    wall_time: np.ndarray
    step: np.ndarray
    step_bytes: np.ndarray
    value: np.ndarray
    tag_start: np.ndarray
    tag_end: np.ndarray


def decode_simple_value_events(padded: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> FastEvents:
    """Recognise Event{1: wall_time, [2: step], 5: summary{1: value{1: tag, 2: simple_value}}} with
    nothing else in it, for all records at once. Records that differ in any byte of that
    layout get `ok` False and are left to protobuf. `padded` has DECODE_SLACK bytes after the
    last record, so the probes of a record that does not match stay inside it."""
    ends = starts + lengths
    ok = padded[starts] == 0x09
    wall_time = gather_le(padded, starts + 1, 8, "<f8")
    p = starts + 9
    has_step = padded[p] == 0x10
    step_raw, step_len, step_complete = _varints(padded, p + 1, 10)
    ok &= ~has_step | step_complete
    step = np.where(has_step, step_raw, 0)
    step_bytes = np.where(has_step, step_len, 0)
    p = p + np.where(has_step, 1 + step_len, 0)
    ok &= padded[p] == 0x2A
    summary_len, short = _short_lengths(padded, p + 1)
    ok &= short
    p = p + 2
    summary_end = p + summary_len
    ok &= summary_end == ends
    ok &= padded[p] == 0x0A
    value_len, short = _short_lengths(padded, p + 1)
    ok &= short
    p = p + 2
    ok &= p + value_len == summary_end
    ok &= padded[p] == 0x0A
    tag_len, short = _short_lengths(padded, p + 1)
    ok &= short
    tag_start = p + 2
    tag_end = tag_start + tag_len
    ok &= padded[tag_end] == 0x15
    ok &= tag_end + 5 == summary_end
    value = gather_le(padded, tag_end + 1, 4, "<f4")
    return FastEvents(ok, wall_time, step, step_bytes, value, tag_start, tag_end)


def tags_at(buffer: np.ndarray, tag_start: np.ndarray, tag_end: np.ndarray) -> tuple[np.ndarray, list[bytes]]:
    """The tag bytes of many records as (codes into a list of distinct tags, that list), without
    a Python object per record: the slices are interleaved with the gaps between them into one
    Arrow binary array over the buffer (offsets increase because records are in file order)."""
    if tag_start.size == 0:
        return np.zeros(0, dtype=np.int32), []
    offsets = np.empty(2 * tag_start.size, dtype=np.int64)
    offsets[0::2] = tag_start
    offsets[1::2] = tag_end
    slices = pa.Array.from_buffers(
        pa.large_binary(), offsets.size - 1, [None, pa.py_buffer(offsets), pa.py_buffer(buffer)]
    )
    every_other = np.arange(0, offsets.size - 1, 2)
    tags = slices.take(pa.Array.from_buffers(pa.int64(), every_other.size, [None, pa.py_buffer(every_other)]))
    encoded = pc.dictionary_encode(tags)
    # Read from the Arrow buffer directly: `to_numpy` would import pandas (30 MB) on first use.
    indices = encoded.indices
    codes = np.frombuffer(indices.buffers()[1], dtype=np.int32, count=len(indices), offset=4 * indices.offset)
    return codes.copy(), encoded.dictionary.to_pylist()


def _scalar_from_tensor(tensor: Any) -> float | None:
    """A rank-0 float/double tensor's value, from float_val/double_val or tensor_content."""
    if tensor.tensor_shape.dim:
        return None
    if tensor.dtype == types_pb2.DT_FLOAT:
        if tensor.float_val:
            return float(tensor.float_val[0])
        return float(np.frombuffer(tensor.tensor_content, "<f4")[0]) if len(tensor.tensor_content) == 4 else None
    if tensor.dtype == types_pb2.DT_DOUBLE:
        if tensor.double_val:
            return float(tensor.double_val[0])
        return float(np.frombuffer(tensor.tensor_content, "<f8")[0]) if len(tensor.tensor_content) == 8 else None
    return None


def _text_from_tensor(tensor: Any) -> str:
    """A text summary's string: the one string of a scalar tensor, else the strings as a JSON
    array of the tensor's shape (TensorBoard shows those as a table)."""
    strings = [b.decode("utf-8", errors="replace") for b in tensor.string_val]
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    if not shape and len(strings) == 1:
        return strings[0]
    if shape and math.prod(shape) == len(strings):
        return json.dumps(np.array(strings, dtype=object).reshape(shape).tolist(), ensure_ascii=False)
    return json.dumps(strings, ensure_ascii=False)


def _plain_value(value: Any) -> Any:
    """A `google.protobuf.Value` from the hparams plugin as a Python value."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


@dataclass
class Points:
    """Scalar points in read order, as numpy columns in pieces (one per decoded chunk)."""

    pieces: dict[str, list[np.ndarray]] = field(default_factory=lambda: {name: [] for name in POINT_DTYPES})
    rows: int = 0

    def append(self, columns: dict[str, np.ndarray]) -> None:
        for name, dtype in POINT_DTYPES.items():
            self.pieces[name].append(np.asarray(columns[name], dtype=dtype))
        self.rows += len(columns["step"])

    def columns(self) -> dict[str, np.ndarray]:
        """Each column as one array; the pieces are joined once and kept joined, a column at a
        time, so joining never holds two copies of every column."""
        for name, dtype in POINT_DTYPES.items():
            pieces = self.pieces[name]
            if len(pieces) != 1:
                self.pieces[name] = [np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)]
        return {name: pieces[0] for name, pieces in self.pieces.items()}


@dataclass
class EventFile:
    """One event file as read so far: decoded points in columns, restart markers, hparams and
    issues. `update()` reads only what was appended since the last call (a torn last record
    waits for its end); a file that was truncated or replaced is read again from its start."""

    path: Path
    #: Distinct tags of the run, shared by all its files, so tag codes agree between files.
    tags: dict[str, int]
    tag_plugins: dict[str, str]
    #: Strings of the run's text summaries, shared by all its files like `tags`.
    texts: list[str]
    position: ReadPosition = field(default_factory=ReadPosition)
    records: int = 0
    points: Points = field(default_factory=Points)
    #: (row of `points` before which it came, step) of each SessionLog.START.
    starts: list[tuple[int, int]] = field(default_factory=list)
    first_wall_time: float | None = None
    file_version: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    value_types: dict[str, str] = field(default_factory=dict)
    issues: list[IngestIssue] = field(default_factory=list)
    torn_tail: int = 0
    framing_lost: bool = False

    def continues(self) -> bool:
        """Whether the file still holds what was read so far (it may have grown); False when it
        was truncated or replaced, and must be read again as a new file."""
        anchor = self.position.anchor
        with self.path.open("rb") as handle:
            handle.seek(self.position.offset - len(anchor))
            return handle.read(len(anchor)) == anchor

    def update(self) -> None:
        """Decode what was appended since the last call (the caller has checked `continues()`).

        The file is read into one buffer of at most CHUNK_BYTES, decoded, and the incomplete
        record at its end moved to its front for the next read: memory stays near the decoded
        columns however large the file. A record larger than the buffer grows it."""
        if self.framing_lost:
            return
        with self.path.open("rb") as handle:
            offset = self.position.offset
            handle.seek(offset)
            capacity = max(1, min(CHUNK_BYTES, os.fstat(handle.fileno()).st_size - offset))
            buffer = np.zeros(capacity + DECODE_SLACK, dtype=np.uint8)
            held = 0
            while not self.framing_lost:
                size = held + handle.readinto(memoryview(buffer)[held:capacity])
                if size == held:
                    break
                buffer[size : size + DECODE_SLACK] = 0
                used = self._feed(buffer, size, base=offset)
                anchor = (self.position.anchor + buffer[max(0, used - ANCHOR_BYTES) : used].tobytes())[-ANCHOR_BYTES:]
                offset += used
                self.position = ReadPosition(offset, anchor)
                held = size - used
                buffer[:held] = buffer[used:size]
                if used == 0 and size == capacity:
                    needed = self._whole_record_bytes(buffer, base=offset)
                    if needed is None:
                        break
                    capacity = max(needed, 2 * capacity)
                    grown = np.zeros(capacity + DECODE_SLACK, dtype=np.uint8)
                    grown[:held] = buffer[:held]
                    buffer = grown
            if held >= HEADER_BYTES and not self.framing_lost:
                self._whole_record_bytes(buffer, base=offset)
        self.torn_tail = 0 if self.framing_lost else held

    def _whole_record_bytes(self, buffer: np.ndarray, *, base: int) -> int | None:
        """The size of the record at the front of `buffer`, or None (and framing lost) when its
        length fails its CRC: a corrupt length must not be waited for, nor grow the buffer."""
        length = int(gather_le(buffer, np.zeros(1, dtype=np.int64), 8, "<u8")[0])
        stored = int(gather_le(buffer, np.full(1, 8, dtype=np.int64), 4, "<u4")[0])
        if int(length_crcs(buffer, np.zeros(1, dtype=np.int64))[0]) == stored:
            return HEADER_BYTES + length + FOOTER_BYTES
        self._issue(
            "corrupt_record_length",
            "a record's length does not match its CRC: the records after it cannot be located",
            f"everything from byte {base} of the file on",
            position=f"record {self.records}",
        )
        self.framing_lost = True
        return None

    def _issue(self, kind: str, reason: str, lost: str, position: str | None = None) -> None:
        self.issues.append(IngestIssue(str(self.path), kind, reason, lost, position=position, source=SOURCE_NAME))

    def _feed(self, buffer: np.ndarray, size: int, *, base: int) -> int:
        """Decode the whole records among the first `size` bytes of `buffer` (followed by
        DECODE_SLACK zero bytes); returns the bytes used."""
        starts, used = record_starts(memoryview(buffer)[:size], size)
        if not starts.size:
            return 0
        lengths = gather_le(buffer, starts, 8, "<u8").astype(np.int64)
        stored_length_crc = gather_le(buffer, starts + 8, 4, "<u4")
        short = lengths.max() < SHORT_LENGTH_CRCS.size
        computed_length_crc = SHORT_LENGTH_CRCS[lengths] if short else length_crcs(buffer, starts)
        bad_length = np.flatnonzero(computed_length_crc != stored_length_crc)
        if bad_length.size:
            first = int(bad_length[0])
            self._issue(
                "corrupt_record_length",
                "a record's length does not match its CRC: the records after it cannot be located",
                f"everything from byte {base + int(starts[first])} of the file on",
                position=f"record {self.records + first}",
            )
            starts, lengths = starts[:first], lengths[:first]
            used = int(starts[-1] + HEADER_BYTES + lengths[-1] + FOOTER_BYTES) if first else 0
            self.framing_lost = True
        data_starts = starts + HEADER_BYTES
        fast = decode_simple_value_events(buffer, data_starts, lengths)
        if self.first_wall_time is None and starts.size:
            # The first event (usually file_version) is read through protobuf below.
            fast.ok[0] = False
        matched = np.flatnonzero(fast.ok)
        codes, distinct = tags_at(buffer, fast.tag_start[matched], fast.tag_end[matched])
        computed = np.empty(starts.size, dtype=np.uint32)
        if matched.size:
            computed[matched] = simple_value_crcs(
                buffer, data_starts[matched], lengths[matched], fast.step_bytes[matched], codes
            )
        others = np.flatnonzero(~fast.ok)
        computed[others] = record_crcs(buffer, data_starts[others], lengths[others])
        good = masked_crc(computed) == gather_le(buffer, data_starts + lengths, 4, "<u4")
        if not good.all():
            bad = np.flatnonzero(~good)
            self._issue(
                "crc_mismatch",
                f"{bad.size} records fail their data CRC (corrupted on disk or in transfer); skipped",
                f"{bad.size} events (their values, if any)",
                position=f"record {self.records + int(bad[0])}",
            )
        indices = np.arange(self.records, self.records + starts.size, dtype=np.int64)
        self.records += starts.size
        fast_rows, fast_columns = self._take_fast(fast, matched, codes, distinct, good[matched])
        slow = np.flatnonzero(good & ~fast.ok)
        slow_records, slow_columns, starts = self._take_slow(buffer, data_starts[slow], lengths[slow], indices[slow])
        self._append_in_read_order(indices[fast_rows], fast_columns, slow_records, slow_columns, starts)
        return used

    def _tag_code(self, tag: str) -> int:
        return self.tags.setdefault(tag, len(self.tags))

    def _take_fast(
        self, fast: FastEvents, matched: np.ndarray, codes: np.ndarray, distinct: list[bytes], good: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(record positions in the chunk, point columns) of the simple_value records that pass
        their CRC, for tags that are scalars."""
        names = [tag.decode("utf-8", errors="replace") for tag in distinct]
        # A tag first seen as a tensor of another plugin keeps that plugin: only scalars count.
        scalar_tag = np.array([self.tag_plugins.get(n, SCALARS_PLUGIN) == SCALARS_PLUGIN for n in names], dtype=bool)
        keep = good & scalar_tag[codes] if names else np.zeros(0, dtype=bool)
        # Only tags of kept points get a code in the run: a tag seen only in corrupt records is no key.
        used_tags = np.bincount(codes[keep], minlength=len(names)) > 0
        run_codes = np.array(
            [self._tag_code(name) if used else 0 for name, used in zip(names, used_tags.tolist(), strict=True)],
            dtype=np.uint32,
        )
        rows = matched[keep]
        return rows, {
            "step": fast.step[rows],
            "tag": run_codes[codes[keep]],
            "value": fast.value[rows],
            "timestamp": fast.wall_time[rows],
            "text": np.full(rows.size, NO_TEXT, dtype=np.int32),
        }

    def _take_slow(
        self, buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, indices: np.ndarray
    ) -> tuple[list[int], dict[str, list[Any]], list[tuple[int, int]]]:
        """Records of any other layout through protobuf: (record index of each point, point
        columns, (record index, step) of each SessionLog.START)."""
        view = memoryview(buffer)
        columns: dict[str, list[Any]] = {name: [] for name in POINT_DTYPES}
        records: list[int] = []
        session_starts: list[tuple[int, int]] = []
        undecodable = 0
        for start, length, index in zip(starts.tolist(), lengths.tolist(), indices.tolist(), strict=True):
            event = event_pb2.Event()
            try:
                event.ParseFromString(view[start : start + length])
            except DecodeError:
                undecodable += 1
                continue
            if self.first_wall_time is None:
                self.first_wall_time = event.wall_time
            kind = event.WhichOneof("what")
            if kind == "file_version":
                self._check_version(event.file_version, index)
            elif kind == "session_log" and event.session_log.status == event_pb2.SessionLog.START:
                session_starts.append((index, event.step))
            elif kind == "summary":
                for value in event.summary.value:
                    point = self._summary_value(value)
                    if point is None:
                        continue
                    records.append(index)
                    columns["step"].append(event.step)
                    columns["tag"].append(self._tag_code(value.tag))
                    columns["timestamp"].append(event.wall_time)
                    if isinstance(point, str):
                        columns["value"].append(math.nan)
                        columns["text"].append(len(self.texts))
                        self.texts.append(point)
                    else:
                        columns["value"].append(point)
                        columns["text"].append(NO_TEXT)
        if undecodable:
            self._issue(
                "undecodable_event",
                f"{undecodable} records pass their CRC but are not Event protobufs",
                f"{undecodable} events",
            )
        return records, columns, session_starts

    def _append_in_read_order(
        self,
        fast_records: np.ndarray,
        fast_columns: dict[str, np.ndarray],
        slow_records: list[int],
        slow_columns: dict[str, list[Any]],
        session_starts: list[tuple[int, int]],
    ) -> None:
        """Adds a chunk's points in record order (fast and protobuf-decoded records interleave),
        and places each START before the points of the records after it."""
        if not slow_records:
            columns, records = fast_columns, fast_records
        else:
            records = np.concatenate([fast_records, np.array(slow_records, dtype=np.int64)])
            order = np.argsort(records, kind="stable")
            records = records[order]
            columns = {
                name: np.concatenate([fast_columns[name], np.asarray(slow_columns[name], dtype=dtype)])[order]
                for name, dtype in POINT_DTYPES.items()
            }
        for index, step in session_starts:
            self.starts.append((self.points.rows + int(np.searchsorted(records, index)), step))
        if records.size:
            self.points.append(columns)

    def _check_version(self, version: str, index: int) -> None:
        self.file_version = version
        if version not in KNOWN_FILE_VERSIONS:
            self._issue(
                "unknown_file_version",
                f"file_version {version!r} is not one of {', '.join(KNOWN_FILE_VERSIONS)}; read as brain.Event:2",
                "nothing (values whose layout changed with that version may be misread)",
                position=f"record {index}",
            )

    def _summary_value(self, value: Any) -> float | str | None:
        """The scalar or text of one summary value, or None after noting what else it holds."""
        if value.HasField("metadata") and value.metadata.plugin_data.plugin_name:
            self.tag_plugins.setdefault(value.tag, value.metadata.plugin_data.plugin_name)
        plugin = self.tag_plugins.get(value.tag, "")
        kind = value.WhichOneof("value")
        if kind == "simple_value":
            return float(value.simple_value) if plugin in ("", SCALARS_PLUGIN) else None
        if plugin == HPARAMS_PLUGIN:
            self._take_hparams(value)
            return None
        if kind == "tensor" and plugin == TEXT_PLUGIN and value.tensor.dtype == types_pb2.DT_STRING:
            return _text_from_tensor(value.tensor)
        if kind == "tensor" and plugin == SCALARS_PLUGIN:
            number = _scalar_from_tensor(value.tensor)
            if number is not None:
                return number
            self.value_types.setdefault(value.tag, f"tensor:{types_pb2.DataType.Name(value.tensor.dtype)}")
            return None
        if kind is not None:
            self.value_types.setdefault(value.tag, plugin or NON_SCALAR_KINDS.get(kind, kind))
        return None

    def _take_hparams(self, value: Any) -> None:
        data = plugin_data_pb2.HParamsPluginData()
        try:
            data.ParseFromString(value.metadata.plugin_data.content)
        except DecodeError:
            self._issue("bad_hparams", f"hparams summary {value.tag!r} is not HParamsPluginData", "the hyperparameters")
            return
        if data.WhichOneof("data") == "session_start_info":
            self.hparams.update({k: _plain_value(v) for k, v in data.session_start_info.hparams.items()})

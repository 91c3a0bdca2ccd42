"""TensorBoard event files: a directory that directly holds `events.out.tfevents.*` files is one
run (nested directories are separate runs, as TensorBoard shows them; files of one directory are
read in name order, as TensorBoard does).

File format: TFRecord framing (u64 length, masked CRC-32C of the length, the data, masked CRC-32C
of the data) around `Event` protobufs. Scalars arrive two ways:
- `simple_value` (float32: TF1, PyTorch `SummaryWriter`, Lightning, tensorboardX);
- rank-0 tensors of the `scalars` plugin (TF2 `tf.summary.scalar`, float32 or float64, in
  `float_val`/`double_val` or `tensor_content`); the plugin metadata may be written only on a
  tag's first event, so the plugin of a tag is remembered across events and files.

Speed: most records of a scalar log have one fixed layout, Event{wall_time, step,
summary{value{tag, simple_value}}}. Records are located with a tight framing walk, and that layout
is recognised, CRC-checked (by the linearity of CRC-32C: one C `crc32c` call per tag, table
lookups for the bytes that vary) and decoded for all records at once with numpy; only the other
records (file_version, session logs, tensors, images, hparams, several values per event) go
through protobuf, their CRCs one C call each. A CRC library has no call for many records, and one
call per record was half of the reading time.

Memory: the file is decoded CHUNK_BYTES at a time into numpy columns of the narrowest exact types,
which the history table then takes without a copy when the points are already in (step, tag)
order, as a scalar log's are: the peak stays under twice the history table.

Restarts: a `SessionLog.START` at step s (also what `SummaryWriter(purge_step=s)` writes) means
every point read before it at a step >= s was orphaned by a crash: those points are dropped, as
TensorBoard drops them, and an issue says how many. Out-of-order steps without a START are kept
(TF2 writers living across several trainings restart at 0 that way).

Event files name no project: a string `project` hyperparameter (altgrad's TrainConfig and many
trainers log the tracker project among their settings) is taken as the run's project, so runs of
one study logged to W&B and to TensorBoard are compared as one study.

A file still being written is read up to its last whole record; the next read of the grown file
continues from there. `ended` is always False: event files never record an end, so the file age
against the grace period decides between running and stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2, types_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from altgrad_pipeline.ingest import listing
from altgrad_pipeline.ingest.growing import ANCHOR_BYTES, ReadPosition
from altgrad_pipeline.ingest.jsonl import file_stamp, load_config_file, mtime_utc, relative_posix, stable_run_id, utc_from_epoch
from altgrad_pipeline.ingest.model import HISTORY_SCHEMA, IngestIssue, ParsedRun, RunLocator

SOURCE_NAME = "tensorboard"
EVENT_FILE_GLOB = "events.out.tfevents.*"
KNOWN_FILE_VERSIONS = ("brain.Event:1", "brain.Event:2")
SCALARS_PLUGIN = "scalars"
HPARAMS_PLUGIN = "hparams"
#: Lightning writes its hyperparameters beside the event file as well.
LIGHTNING_HPARAMS = "hparams.yaml"
#: The hyperparameter that names the run's project (see the module docstring).
PROJECT_HPARAM = "project"
HEADER_BYTES = 12  # u64 length + u32 masked CRC of the length
FOOTER_BYTES = 4  # u32 masked CRC of the data
RECORD_LENGTH = struct.Struct("<Q")
#: Record starts predicted at once when record lengths repeat with a period (see `record_starts`).
SPECULATED_RECORDS = 16384
FIRST_GUESS_RECORDS = 256
LONGEST_PERIOD = 64
#: Bytes decoded at a time: memory beyond the decoded columns stays near this, and the per-chunk
#: overhead is negligible (about 200,000 records of a scalar log).
CHUNK_BYTES = 16 << 20
#: Summary value kinds that are not scalars, by the protobuf `oneof` field name.
NON_SCALAR_KINDS = {"image": "image", "histo": "histogram", "audio": "audio", "obsolete_old_style_histogram": "histogram"}
#: Points as decoded, in read order, before restarts and rewrites are resolved: the narrowest
#: dtypes that hold every value exactly (float64 value: float64 tensor scalars).
POINT_DTYPES: dict[str, type] = {"step": np.int64, "tag": np.uint32, "value": np.float64, "timestamp": np.float64}


def _period(lengths: list[int]) -> int:
    """The shortest period with which the whole window of recent record lengths repeats, or 0."""
    if len(lengths) < 2 * LONGEST_PERIOD:
        return 0
    for period in range(1, LONGEST_PERIOD + 1):
        if lengths[period:] == lengths[:-period]:
            return period
    return 0


def record_starts(data: memoryview, limit: int) -> tuple[np.ndarray, int]:
    """Offsets of the whole TFRecords at the start of `data` (stopping once `limit` bytes are
    covered) and the offset just after the last of them.

    Finding records is a pointer chase (each length gives the next offset). Scalar logs repeat
    the same sequence of record lengths (one per tag, each step), so once the last lengths repeat
    with some period, the next few thousand starts are predicted by continuing that pattern and
    checked all at once: a prediction is accepted up to the first record whose stored length
    differs. By induction from a known start every accepted start is exact, so nothing is guessed;
    where lengths do not repeat, records are walked one by one."""
    size = len(data)
    as_bytes = np.frombuffer(data, dtype=np.uint8)
    found: list[np.ndarray] = []
    walked: list[int] = []
    recent: list[int] = []
    offset = 0
    guess = FIRST_GUESS_RECORDS
    read_length = RECORD_LENGTH.unpack_from
    while offset + HEADER_BYTES <= size and offset < limit:
        period = _period(recent)
        if period:
            pattern = np.array(recent[-period:], dtype=np.int64) + HEADER_BYTES + FOOTER_BYTES
            spans = np.tile(pattern, max(1, guess // period))
            ends = offset + np.cumsum(spans)
            begins = ends - spans
            inside = ends <= size
            stored = _gather_le(as_bytes, np.minimum(begins, size - 8), 8, "<u8").astype(np.int64)
            good = inside & (stored + HEADER_BYTES + FOOTER_BYTES == spans)
            accepted = int(good.size if good.all() else np.argmin(good))
            if accepted:
                if walked:
                    found.append(np.array(walked, dtype=np.int64))
                    walked = []
                found.append(begins[:accepted])
                offset = int(ends[accepted - 1])
            if accepted == good.size:
                guess = min(2 * guess, SPECULATED_RECORDS)
                continue
            # The pattern broke: walk until the recent lengths show a full period again.
            guess = FIRST_GUESS_RECORDS
            recent = []
            if offset + HEADER_BYTES > size or offset >= limit:
                break
        (length,) = read_length(data, offset)
        if offset + HEADER_BYTES + length + FOOTER_BYTES > size:
            break
        walked.append(offset)
        recent.append(length)
        if len(recent) > 2 * LONGEST_PERIOD:
            del recent[0]
        offset += HEADER_BYTES + length + FOOTER_BYTES
    if walked:
        found.append(np.array(walked, dtype=np.int64))
    return (np.concatenate(found) if found else np.zeros(0, dtype=np.int64)), offset


def _crc32c_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


CRC32C_TABLE = _crc32c_table()


def masked_crc(crc: np.ndarray | int) -> np.ndarray | int:
    """TFRecord's CRC mask: rotate right by 15 bits and add a constant (mod 2**32)."""
    if isinstance(crc, int):
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    crc = crc.astype(np.uint64)
    return ((((crc >> np.uint64(15)) | (crc << np.uint64(17))) + np.uint64(0xA282EAD8)) & np.uint64(0xFFFFFFFF)).astype(
        np.uint32
    )


def length_crcs(padded: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Masked CRC-32C of the 8 length bytes of every record at once (table-driven, vectorised)."""
    crc = np.full(starts.size, 0xFFFFFFFF, dtype=np.uint32)
    for i in range(8):
        crc = CRC32C_TABLE[(crc ^ padded[starts + i]) & 0xFF] ^ (crc >> np.uint32(8))
    return masked_crc(crc ^ np.uint32(0xFFFFFFFF))


#: Masked length CRCs of every record length below 2**16, looked up instead of computed.
SHORT_LENGTH_CRCS = length_crcs(np.arange(1 << 16, dtype="<u8").view(np.uint8), np.arange(0, 8 << 16, 8))


def _zero_byte_shifts(longest: int) -> np.ndarray:
    """`[k, b]`: the CRC-32C register (no initial value, no final xor) after byte b and k zero
    bytes. The CRC is linear over GF(2), so a record's CRC is the XOR of one such term per byte."""
    shifts = np.empty((longest, 256), dtype=np.uint32)
    shifts[0] = CRC32C_TABLE
    for k in range(1, longest):
        shifts[k] = CRC32C_TABLE[shifts[k - 1] & 0xFF] ^ (shifts[k - 1] >> np.uint32(8))
    return shifts


#: The longest record of the simple_value layout: every length byte < 128, a 10-byte step varint.
LONGEST_SIMPLE_RECORD = 1 + 8 + 1 + 10 + 2 + 2 + 2 + 127 + 5
ZERO_BYTE_SHIFTS = _zero_byte_shifts(LONGEST_SIMPLE_RECORD).reshape(-1)
#: Zero bytes kept after the data in the decode buffer: the layout probes of a record that does
#: not match may reach this far past its start, and never need clipping.
DECODE_SLACK = 512
#: Step varints are at most 10 bytes, so (tag, step length) pairs number tags * 11.
STEP_LENGTHS = 11
WALL_TIME_BYTES = range(1, 9)
STEP_OFFSET = 10
VALUE_BYTES = 4


def record_crcs(padded: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Unmasked CRC-32C of each record's data: one C call per record, for records of any layout."""
    view = memoryview(padded)
    slices = map(slice, starts.tolist(), (starts + lengths).tolist())
    return np.fromiter(map(crc32c.crc32c, map(view.__getitem__, slices)), dtype=np.uint32, count=starts.size)


def simple_value_crcs(
    padded: np.ndarray, starts: np.ndarray, lengths: np.ndarray, step_bytes: np.ndarray, tag_codes: np.ndarray
) -> np.ndarray:
    """Unmasked CRC-32C of records of the simple_value layout, computed for all at once.

    Records with the same tag and step length share every byte except wall_time, step and value.
    By linearity, a record's CRC is the CRC of one such record with those bytes zeroed (one C call
    per (tag, step length)) XOR the terms of its own wall_time, step and value bytes (table
    lookups). This is the exact CRC of the bytes on disk: a flipped byte anywhere changes it."""
    group = tag_codes.astype(np.int64) * STEP_LENGTHS + step_bytes
    representative = np.full(int(group.max()) + 1, -1, dtype=np.int64)
    representative[group] = np.arange(group.size)
    group_crc = np.zeros(representative.size, dtype=np.uint32)
    for code in np.flatnonzero(representative >= 0).tolist():
        first = int(starts[representative[code]])
        record = bytearray(padded[first : first + int(lengths[representative[code]])].tobytes())
        step_end = STEP_OFFSET + code % STEP_LENGTHS
        record[WALL_TIME_BYTES.start : WALL_TIME_BYTES.stop] = bytes(len(WALL_TIME_BYTES))
        record[STEP_OFFSET:step_end] = bytes(step_end - STEP_OFFSET)
        record[-VALUE_BYTES:] = bytes(VALUE_BYTES)
        group_crc[code] = crc32c.crc32c(record)
    crc = group_crc[group]
    last = lengths - 1
    for position in WALL_TIME_BYTES:
        crc ^= ZERO_BYTE_SHIFTS[(last - position) * 256 + padded[starts + position]]
    for i in range(int(step_bytes.max(initial=0))):
        position = STEP_OFFSET + i
        byte = np.where(step_bytes > i, padded[starts + position], 0)
        crc ^= ZERO_BYTE_SHIFTS[np.maximum(last - position, 0) * 256 + byte]
    value_end = starts + last
    for k in range(VALUE_BYTES):
        crc ^= ZERO_BYTE_SHIFTS[k * 256 + padded[value_end - k].astype(np.int64)]
    return crc


def _gather_le(padded: np.ndarray, positions: np.ndarray, width: int, dtype: str) -> np.ndarray:
    """Little-endian fixed-width numbers at `positions` (each `width` bytes), as `dtype`: rows of
    a sliding-window view are gathered, so no index matrix is built."""
    windows = np.lib.stride_tricks.as_strided(padded, shape=(padded.size - width + 1, width), strides=(1, 1))
    return windows[positions].view(dtype).reshape(-1)


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
    wall_time = _gather_le(padded, starts + 1, 8, "<f8")
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
    value = _gather_le(padded, tag_end + 1, 4, "<f4")
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
        length = int(_gather_le(buffer, np.zeros(1, dtype=np.int64), 8, "<u8")[0])
        stored = int(_gather_le(buffer, np.full(1, 8, dtype=np.int64), 4, "<u4")[0])
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
        lengths = _gather_le(buffer, starts, 8, "<u8").astype(np.int64)
        stored_length_crc = _gather_le(buffer, starts + 8, 4, "<u4")
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
        good = masked_crc(computed) == _gather_le(buffer, data_starts + lengths, 4, "<u4")
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
                    number = self._summary_value(value)
                    if number is not None:
                        records.append(index)
                        columns["step"].append(event.step)
                        columns["tag"].append(self._tag_code(value.tag))
                        columns["value"].append(number)
                        columns["timestamp"].append(event.wall_time)
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

    def _summary_value(self, value: Any) -> float | None:
        """The scalar of one summary value, or None after noting what else it holds."""
        if value.HasField("metadata") and value.metadata.plugin_data.plugin_name:
            self.tag_plugins.setdefault(value.tag, value.metadata.plugin_data.plugin_name)
        plugin = self.tag_plugins.get(value.tag, "")
        kind = value.WhichOneof("value")
        if kind == "simple_value":
            return float(value.simple_value) if plugin in ("", SCALARS_PLUGIN) else None
        if plugin == HPARAMS_PLUGIN:
            self._take_hparams(value)
            return None
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


def _superseded(step: np.ndarray, starts: list[tuple[int, int]]) -> np.ndarray:
    """Which points a later SessionLog.START orphaned: read before a START at a step <= theirs.
    Points are in read order, and each START is given as the row it came before."""
    if not starts:
        return np.zeros(step.size, dtype=bool)
    start_row = np.array([s for s, _ in starts], dtype=np.int64)
    start_step = np.array([t for _, t in starts], dtype=np.int64)
    order = np.argsort(start_row, kind="stable")
    start_row, start_step = start_row[order], start_step[order]
    # The lowest START step among the STARTs after each one (inclusive).
    lowest_after = np.minimum.accumulate(start_step[::-1])[::-1]
    following = np.searchsorted(start_row, np.arange(step.size), side="right")
    has_following = following < start_row.size
    threshold = np.where(has_following, lowest_after[np.minimum(following, start_row.size - 1)], np.iinfo(np.int64).max)
    return step >= threshold


class TensorBoardRun:
    """The event files of one run directory, read incrementally and combined in name order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.tags: dict[str, int] = {}
        self.tag_plugins: dict[str, str] = {}
        self.files: dict[Path, EventFile] = {}

    def update(self, paths: list[Path]) -> None:
        for path in paths:
            events = self.files.get(path)
            if events is None or not events.continues():
                events = self.files[path] = EventFile(path, self.tags, self.tag_plugins)
            events.update()
        for gone in set(self.files) - set(paths):
            del self.files[gone]

    def parsed_run(self, run_id: str, paths: list[Path]) -> ParsedRun:
        issues: list[IngestIssue] = []
        pieces, starts, offset = [], [], 0
        first_wall_time = None
        hparams: dict[str, Any] = {}
        value_types: dict[str, str] = {}
        for path in paths:
            events = self.files[path]
            pieces.append(events.points.columns())
            starts.extend((row + offset, step) for row, step in events.starts)
            offset += events.points.rows
            if first_wall_time is None:
                first_wall_time = events.first_wall_time
            hparams.update(events.hparams)
            for tag, kind in events.value_types.items():
                value_types.setdefault(tag, kind)
            issues.extend(events.issues)
            if events.torn_tail:
                issues.append(
                    IngestIssue(
                        str(path),
                        "torn_record",
                        "the last record is incomplete (the file is still being written); it is read once complete",
                        f"{events.torn_tail} bytes, for now",
                        position=f"byte {events.position.offset}",
                        source=SOURCE_NAME,
                    )
                )
        # One file (the usual case) is used as it is, without a copy.
        if len(pieces) == 1:
            points = pieces[0]
        else:
            points = {name: np.concatenate([piece[name] for piece in pieces]) for name in POINT_DTYPES}
        points, restart_issues = self._apply_restarts(points, starts)
        issues.extend(restart_issues)
        history, duplicate_issues = self._history(points, run_id, first_wall_time)
        issues.extend(duplicate_issues)
        return ParsedRun(
            run_id=run_id,
            source=SOURCE_NAME,
            location=str(self.directory),
            history=history,
            name=self.directory.name,
            config=hparams,
            started_at=utc_from_epoch(first_wall_time) if first_wall_time is not None else None,
            last_write=max((t for t in (mtime_utc(p) for p in paths) if t is not None), default=None),
            value_types=value_types,
            issues=[dataclasses.replace(issue, run_id=run_id) for issue in issues],
        )

    def _apply_restarts(
        self, points: dict[str, np.ndarray], starts: list[tuple[int, int]]
    ) -> tuple[dict[str, np.ndarray], list[IngestIssue]]:
        dropped = _superseded(points["step"], starts)
        if not dropped.any():
            return points, []
        gone = points["step"][dropped]
        restart_steps = sorted({step for _, step in starts})
        issue = IngestIssue(
            str(self.directory),
            "restart_superseded",
            f"SessionLog.START at step(s) {restart_steps[:10]} (a restart from a checkpoint): points logged "
            f"before it at that step or later were orphaned and are replaced by the restarted run's",
            f"{gone.size} values at steps {gone.min()}..{gone.max()}",
            source=SOURCE_NAME,
        )
        return {name: column[~dropped] for name, column in points.items()}, [issue]

    def _history(
        self, points: dict[str, np.ndarray], run_id: str, first_wall_time: float | None
    ) -> tuple[pl.DataFrame, list[IngestIssue]]:
        """Long history sorted by (step, key): a (step, key) logged twice keeps its last value.
        Points already in that order (a scalar log's usual case) are neither sorted nor copied."""
        step, tag = points["step"], points["tag"]
        later = (step[1:] > step[:-1]) | ((step[1:] == step[:-1]) & (tag[1:] >= tag[:-1]))
        if not later.all():
            order = np.lexsort((tag, step))  # stable: writes of one (step, tag) stay in read order
            points = {name: column[order] for name, column in points.items()}
            step, tag = points["step"], points["tag"]
        last_of_group = np.ones(step.size, dtype=bool)
        last_of_group[:-1] = (step[1:] != step[:-1]) | (tag[1:] != tag[:-1])
        issues = []
        if not last_of_group.all():
            value = points["value"]
            differs = np.zeros(step.size, dtype=bool)
            differs[:-1] = ~last_of_group[:-1] & ~((value[1:] == value[:-1]) | (np.isnan(value[1:]) & np.isnan(value[:-1])))
            if differs.any():
                first = int(np.flatnonzero(differs)[0])
                names = {code: name for name, code in self.tags.items()}
                issues.append(
                    IngestIssue(
                        str(self.directory),
                        "duplicate_step",
                        f"{int(differs.sum())} values logged again at a (step, tag) already written, with a "
                        f"different value (first: {names[int(tag[first])]!r} at step {int(step[first])}); the last "
                        f"write is kept",
                        f"{int(differs.sum())} earlier values",
                        source=SOURCE_NAME,
                    )
                )
            points = {name: column[last_of_group] for name, column in points.items()}
        names = pl.Series("key", sorted(self.tags, key=self.tags.__getitem__), dtype=pl.String)
        origin = first_wall_time if first_wall_time is not None else math.nan
        # The numpy columns are taken by Polars without a copy.
        kept = pl.DataFrame({name: points[name] for name in ("step", "value", "timestamp")})
        history = kept.select(
            pl.lit(run_id, pl.String).alias("run_id"),
            "step",
            names.gather(pl.Series(points["tag"])).alias("key") if names.len() else pl.lit(None, pl.String).alias("key"),
            "value",
            pl.lit(None, pl.String).alias("text"),
            (pl.col("timestamp") - origin).alias("runtime"),
            "timestamp",
        )
        return history.cast(HISTORY_SCHEMA), issues  # type: ignore[arg-type]


def event_file_groups(root: Path) -> dict[Path, list[Path]]:
    """Run directory -> its event files in name order (TensorBoard's reading order)."""
    groups: dict[Path, list[Path]] = {}
    for path in listing.rglob(root, EVENT_FILE_GLOB):
        if path.is_file():
            groups.setdefault(path.parent, []).append(path)
    return {folder: sorted(files, key=lambda p: p.name) for folder, files in sorted(groups.items())}


class TensorBoardSource:
    """Every directory under `root` that directly holds event files is one run."""

    name = SOURCE_NAME

    def __init__(self, root: Path, grace_period_s: float = 3600) -> None:
        self.root = Path(root)
        self.grace_period_s = grace_period_s
        self.label = str(self.root)
        self._runs: dict[Path, TensorBoardRun] = {}

    def run_id(self, directory: Path) -> str:
        relative = relative_posix(directory, self.root)
        readable = re.sub(r"^\.$", self.root.name, relative).replace("/", "_")
        return stable_run_id(readable, SOURCE_NAME.encode(), relative.encode())

    def discover(self) -> list[RunLocator]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"run store folder {self.root} does not exist")
        locators = []
        for directory, files in event_file_groups(self.root).items():
            hparams = directory / LIGHTNING_HPARAMS
            stamps = [file_stamp(p) for p in files] + ([file_stamp(hparams)] if hparams.is_file() else [])
            locators.append(
                RunLocator(
                    source=self.name,
                    location=str(directory),
                    fingerprint=";".join(stamps),
                    run_id_hint=self.run_id(directory),
                    parts=tuple(str(p) for p in files),
                )
            )
        return locators

    def read(self, locator: RunLocator) -> ParsedRun:
        directory = Path(locator.location)
        files = sorted((p for p in directory.glob(EVENT_FILE_GLOB) if p.is_file()), key=lambda p: p.name)
        reader = self._runs.setdefault(directory, TensorBoardRun(directory))
        reader.update(files)
        run = reader.parsed_run(self.run_id(directory), files)
        if not run.config and (directory / LIGHTNING_HPARAMS).is_file():
            config, issues = load_config_file(directory / LIGHTNING_HPARAMS, source=SOURCE_NAME)
            run.config = config or {}
            run.issues.extend(dataclasses.replace(issue, run_id=run.run_id) for issue in issues)
        project = run.config.get(PROJECT_HPARAM)
        run.project = project if isinstance(project, str) and project else None
        run.fingerprint = locator.fingerprint
        return run

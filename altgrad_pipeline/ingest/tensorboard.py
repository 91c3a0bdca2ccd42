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
summary{value{tag, simple_value}}}. Records are located with a tight framing walk, their CRCs
checked with the C `crc32c`, and that layout is recognised and decoded for all records at once with
numpy; only the other records (file_version, session logs, tensors, images, hparams, several
values per event) go through protobuf.

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
#: Bytes read per step of a large file, so memory stays near the size of the decoded columns.
CHUNK_BYTES = 64 << 20
#: Summary value kinds that are not scalars, by the protobuf `oneof` field name.
NON_SCALAR_KINDS = {"image": "image", "histo": "histogram", "audio": "audio", "obsolete_old_style_histogram": "histogram"}
#: Rows decoded so far, in read order (`seq`), before restarts and rewrites are resolved.
POINTS_SCHEMA: dict[str, pl.DataType] = {
    "seq": pl.Int64(),
    "step": pl.Int64(),
    "tag": pl.UInt32(),
    "value": pl.Float64(),
    "timestamp": pl.Float64(),
}


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
    value: np.ndarray
    tag_start: np.ndarray
    tag_end: np.ndarray


def decode_simple_value_events(padded: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> FastEvents:
    """Recognise Event{1: wall_time, [2: step], 5: summary{1: value{1: tag, 2: simple_value}}} with
    nothing else in it, for all records at once. Records that differ in any byte of that
    layout get `ok` False and are left to protobuf. Positions are clipped so a record that does
    not match never reads outside the buffer."""
    limit = padded.size - 16
    ends = starts + lengths

    def at(pos: np.ndarray) -> np.ndarray:
        return np.minimum(pos, limit)

    ok = padded[starts] == 0x09
    wall_time = _gather_le(padded, at(starts + 1), 8, "<f8")
    p = starts + 9
    has_step = padded[at(p)] == 0x10
    step_raw, step_len, step_complete = _varints(padded, at(p + 1), 10)
    ok &= ~has_step | step_complete
    step = np.where(has_step, step_raw, 0)
    p = p + np.where(has_step, 1 + step_len, 0)
    ok &= padded[at(p)] == 0x2A
    summary_len, short = _short_lengths(padded, at(p + 1))
    ok &= short
    p = p + 2
    summary_end = p + summary_len
    ok &= summary_end == ends
    ok &= padded[at(p)] == 0x0A
    value_len, short = _short_lengths(padded, at(p + 1))
    ok &= short
    p = p + 2
    ok &= p + value_len == summary_end
    ok &= padded[at(p)] == 0x0A
    tag_len, short = _short_lengths(padded, at(p + 1))
    ok &= short
    tag_start = p + 2
    tag_end = tag_start + tag_len
    ok &= padded[at(tag_end)] == 0x15
    ok &= tag_end + 5 == summary_end
    value = _gather_le(padded, at(tag_end + 1), 4, "<f4")
    return FastEvents(ok, wall_time, step, value, tag_start, tag_end)


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
    encoded = pc.dictionary_encode(slices.take(pa.array(np.arange(0, offsets.size - 1, 2))))
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32), encoded.dictionary.to_pylist()


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
    chunks: list[pl.DataFrame] = field(default_factory=list)
    #: (record index, step) of each SessionLog.START.
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
        """Decode what was appended since the last call, CHUNK_BYTES at a time (the caller has
        checked `continues()`)."""
        if self.framing_lost:
            return
        with self.path.open("rb") as handle:
            handle.seek(self.position.offset)
            pending = b""
            while not self.framing_lost:
                block = handle.read(CHUNK_BYTES)
                if not block:
                    break
                data = pending + block
                view = memoryview(data)
                consumed = 0
                while not self.framing_lost:
                    used = self._feed(view[consumed:], base=self.position.offset + consumed)
                    if not used:
                        break
                    consumed += used
                anchor = (self.position.anchor + data[max(0, consumed - ANCHOR_BYTES) : consumed])[-ANCHOR_BYTES:]
                self.position = ReadPosition(self.position.offset + consumed, anchor)
                del view
                pending = data[consumed:]
        self.torn_tail = 0 if self.framing_lost else len(pending)

    def _issue(self, kind: str, reason: str, lost: str, position: str | None = None) -> None:
        self.issues.append(IngestIssue(str(self.path), kind, reason, lost, position=position, source=SOURCE_NAME))

    def _feed(self, data: memoryview, *, base: int) -> int:
        """Decode the whole records at the start of `data`, about CHUNK_BYTES of them (at least
        one record when one is complete); returns the bytes used."""
        starts, offset = record_starts(data, CHUNK_BYTES)
        if not starts.size:
            return 0
        padded = np.zeros(offset + 24, dtype=np.uint8)
        padded[:offset] = np.frombuffer(data[:offset], dtype=np.uint8)
        lengths = _gather_le(padded, starts, 8, "<u8").astype(np.int64)
        stored_length_crc = _gather_le(padded, starts + 8, 4, "<u4")
        bad_length = np.flatnonzero(length_crcs(padded, starts) != stored_length_crc)
        used = offset
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
        view = memoryview(padded)
        slices = map(slice, data_starts.tolist(), (data_starts + lengths).tolist())
        computed = np.fromiter(map(crc32c.crc32c, map(view.__getitem__, slices)), dtype=np.uint32, count=starts.size)
        stored = _gather_le(padded, data_starts + lengths, 4, "<u4")
        good = masked_crc(computed) == stored
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
        fast = decode_simple_value_events(padded, data_starts, lengths)
        fast.ok &= good
        if self.first_wall_time is None and starts.size:
            # The first event (usually file_version) is read through protobuf below.
            fast.ok[0] = False
        self._take_fast(padded, fast, indices)
        slow = np.flatnonzero(good & ~fast.ok)
        self._take_slow(view, data_starts[slow], lengths[slow], indices[slow])
        return used

    def _tag_code(self, tag: str) -> int:
        return self.tags.setdefault(tag, len(self.tags))

    def _take_fast(self, padded: np.ndarray, fast: FastEvents, indices: np.ndarray) -> None:
        matched = np.flatnonzero(fast.ok)
        if not matched.size:
            return
        codes, distinct = tags_at(padded, fast.tag_start[matched], fast.tag_end[matched])
        names = [tag.decode("utf-8", errors="replace") for tag in distinct]
        # A tag first seen as a tensor of another plugin keeps that plugin: only scalars count.
        keep_tag = np.array([self.tag_plugins.get(n, SCALARS_PLUGIN) == SCALARS_PLUGIN for n in names], dtype=bool)
        global_codes = np.array([self._tag_code(n) for n in names], dtype=np.uint32)
        keep = keep_tag[codes] if names else np.zeros(0, dtype=bool)
        rows = matched[keep]
        self.chunks.append(
            pl.DataFrame(
                {
                    "seq": indices[rows],
                    "step": fast.step[rows],
                    "tag": global_codes[codes[keep]],
                    "value": fast.value[rows].astype(np.float64),
                    "timestamp": fast.wall_time[rows],
                },
                schema=POINTS_SCHEMA,
            )
        )

    def _take_slow(self, view: memoryview, starts: np.ndarray, lengths: np.ndarray, indices: np.ndarray) -> None:
        columns: dict[str, list[Any]] = {name: [] for name in POINTS_SCHEMA}
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
                self.starts.append((index, event.step))
            elif kind == "summary":
                for value in event.summary.value:
                    number = self._summary_value(value)
                    if number is not None:
                        columns["seq"].append(index)
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
        if columns["seq"]:
            self.chunks.append(pl.DataFrame(columns, schema=POINTS_SCHEMA))

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

    def points(self) -> pl.DataFrame:
        return pl.concat(self.chunks) if self.chunks else pl.DataFrame(schema=POINTS_SCHEMA)


def _superseded(seq: np.ndarray, step: np.ndarray, starts: list[tuple[int, int]]) -> np.ndarray:
    """Which points a later SessionLog.START orphaned: read before a START at a step <= theirs."""
    if not starts:
        return np.zeros(seq.size, dtype=bool)
    start_seq = np.array([s for s, _ in starts], dtype=np.int64)
    start_step = np.array([t for _, t in starts], dtype=np.int64)
    order = np.argsort(start_seq, kind="stable")
    start_seq, start_step = start_seq[order], start_step[order]
    # The lowest START step among the STARTs after each one (inclusive).
    lowest_after = np.minimum.accumulate(start_step[::-1])[::-1]
    following = np.searchsorted(start_seq, seq, side="right")
    has_following = following < start_seq.size
    threshold = np.where(has_following, lowest_after[np.minimum(following, start_seq.size - 1)], np.iinfo(np.int64).max)
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
        frames, starts, offset = [], [], 0
        first_wall_time = None
        hparams: dict[str, Any] = {}
        value_types: dict[str, str] = {}
        for path in paths:
            events = self.files[path]
            frames.append(events.points().with_columns(pl.col("seq") + offset))
            starts.extend((index + offset, step) for index, step in events.starts)
            offset += events.records
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
        points = pl.concat(frames) if frames else pl.DataFrame(schema=POINTS_SCHEMA)
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
        self, points: pl.DataFrame, starts: list[tuple[int, int]]
    ) -> tuple[pl.DataFrame, list[IngestIssue]]:
        dropped = _superseded(points.get_column("seq").to_numpy(), points.get_column("step").to_numpy(), starts)
        if not dropped.any():
            return points, []
        gone = points.filter(pl.Series(dropped))
        restart_steps = sorted({step for _, step in starts})
        issue = IngestIssue(
            str(self.directory),
            "restart_superseded",
            f"SessionLog.START at step(s) {restart_steps[:10]} (a restart from a checkpoint): points logged "
            f"before it at that step or later were orphaned and are replaced by the restarted run's",
            f"{gone.height} values at steps {gone.get_column('step').min()}..{gone.get_column('step').max()}",
            source=SOURCE_NAME,
        )
        return points.filter(~pl.Series(dropped)), [issue]

    def _history(
        self, points: pl.DataFrame, run_id: str, first_wall_time: float | None
    ) -> tuple[pl.DataFrame, list[IngestIssue]]:
        """Long history sorted by (step, key): a (step, key) logged twice keeps its last value."""
        ordered = points.sort("step", "tag", "seq")
        step = ordered.get_column("step").to_numpy()
        tag = ordered.get_column("tag").to_numpy()
        last_of_group = np.ones(step.size, dtype=bool)
        last_of_group[:-1] = (step[1:] != step[:-1]) | (tag[1:] != tag[:-1])
        issues = []
        rewritten = int(step.size - last_of_group.sum())
        if rewritten:
            value = ordered.get_column("value").to_numpy()
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
        kept = ordered.filter(pl.Series(last_of_group))
        names = pl.Series("key", sorted(self.tags, key=self.tags.__getitem__), dtype=pl.String)
        origin = first_wall_time if first_wall_time is not None else math.nan
        history = kept.select(
            pl.lit(run_id, pl.String).alias("run_id"),
            "step",
            names.gather(kept.get_column("tag")).alias("key") if names.len() else pl.lit(None, pl.String).alias("key"),
            "value",
            (pl.col("timestamp") - origin).alias("runtime"),
            "timestamp",
        )
        return history.cast(HISTORY_SCHEMA), issues  # type: ignore[arg-type]


def event_file_groups(root: Path) -> dict[Path, list[Path]]:
    """Run directory -> its event files in name order (TensorBoard's reading order)."""
    groups: dict[Path, list[Path]] = {}
    for path in root.rglob(EVENT_FILE_GLOB):
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

"""Decode one W&B `.wandb` transaction log into run facts, a long history and `IngestIssue`s.

The file is LevelDB-log framed (32 KiB blocks of CRC-checked chunks) protobuf `Record`s from the
installed wandb SDK. wandb 0.17.0-0.17.5's opt-in Go writer (`wandb.require("core")`) started its
blocks after the 7-byte file header, 7 bytes later than every other SDK: the layout is told from
the bytes (the SDK version may be missing) by framing the first blocks both ways. Real logs end
in every possible way (cut on a block boundary, mid-record, a bare chunk header, 0 bytes), so
framing damage becomes an issue and the good records are kept.
`WandbLogReader` can be fed again from `offset` when the file grows, so a live run is re-read
from where the last complete record ended. A large feed's clean stretch of chunks (usually all of
it) is framed in bulk (`_frame_bulk`: chunk headers walked by the compiled scan, else block by
block in lockstep with numpy; the record structure checked with array operations; the chunks'
CRCs predicted per block, in C or numpy, and checked with one zlib-ng call per block:
`framing.first_crc_mismatch`); the chunk loop frames
the rest from the first chunk it must treat specially. Large logs' history and summary records are
decoded by `wandb_fastpath` (its compiled wire scan, else numpy passes: `compiled.py`); everything
else, and whatever it declines, by upb through `_decode`, with the same result either way.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import polars as pl
from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2 as wandb_pb

from altgrad_pipeline.ingest.model import IngestIssue, empty_history
from altgrad_pipeline.ingest.wandb import fastpath as wandb_fastpath
from altgrad_pipeline.ingest.wandb.compiled import compiled_scan
from altgrad_pipeline.ingest.wandb.framing import (
    BLOCK_ORIGIN,
    BLOCK_SIZE,
    CHUNK_FIRST,
    CHUNK_FULL,
    CHUNK_HEADER,
    CHUNK_LAST,
    CHUNK_MIDDLE,
    LAYOUT_CORE_017,
    LAYOUT_PROBE_BYTES,
    LAYOUT_STANDARD,
    LOG_HEADER,
    TYPE_CRC,
    first_crc_mismatch,
    first_damage,
)
from altgrad_pipeline.ingest.wandb.history import HistoryTable, empty_media, gather, history_table, text_series
from altgrad_pipeline.ingest.wandb.records import (
    RUNTIME_KEY,
    STEP_KEY,
    TIMESTAMP_KEY,
    FlatItems,
    build_tree,
    item_path,
    loads_json,
    record_view,
    remove_path,
    set_path,
    single_names,
    timestamp_utc,
)

#: Bytes of history and summary records framed in one `feed` from which on they are decoded by
#: `wandb_fastpath` (numpy over the wire format, no Python object per value); fewer go through
#: upb one by one, which is faster for a live tail or a small run (numpy's cost per call).
FASTPATH_MIN_BYTES = 2 << 20
#: Bytes of records the fast path decodes at a time: its per-item arrays stay a few MB.
FASTPATH_GROUP_BYTES = 16 << 20
DEFAULT_SOURCE = "wandb-local"


@dataclass
class WandbLog:
    """What one `.wandb` file says about its run (one segment, for resumed runs)."""

    location: str
    run_id: str | None = None
    entity: str | None = None
    project: str | None = None
    name: str | None = None
    group: str | None = None
    notes: str | None = None
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    started_at: dt.datetime | None = None
    sdk_version: str | None = None
    #: Block layout of the file (`LAYOUT_STANDARD`, `LAYOUT_CORE_017`); None when it has no header.
    log_layout: str | None = None
    ended: bool = False
    exit_code: int | None = None
    history: pl.DataFrame = field(default_factory=empty_history)
    value_types: dict[str, str] = field(default_factory=dict)
    #: Media values of the history (`MEDIA_SCHEMA`): tables, histograms, images, ...
    media: pl.DataFrame = field(default_factory=empty_media)
    issues: list[IngestIssue] = field(default_factory=list)
    #: Host names and the like this run recorded: never shown, only removed from what is shown.
    private_strings: set[str] = field(default_factory=set)
    #: Byte offset just past the last complete record: where to resume when the file grows.
    complete_until: int = 0
    #: Bytes at the end that did not (yet) form a complete record.
    partial_tail_bytes: int = 0


class WandbLogReader:
    """Incremental reader of one `.wandb` file: `feed` the bytes from `offset` on, then `result()`."""

    def __init__(self, location: str, *, source: str = DEFAULT_SOURCE, grace_period_s: float = 3600.0):
        self.location = location
        self.source = source
        self.grace_period_s = grace_period_s
        self.offset = 0
        self._view_class = record_view()
        self._issues: list[IngestIssue] = []
        self._tail_issue: IngestIssue | None = None
        self._partial_tail_bytes = 0
        self._header_seen = False
        #: Block layout once the bytes have told it; until then framed as standard (the two
        #: read the same up to the first place where they disagree, which settles it).
        self._layout: str | None = None
        self._run: Any = None
        self._config: FlatItems = {}
        self._summary: FlatItems = {}
        self._header_version: str | None = None
        self._exit: Any = None
        #: History items in write order (UTF-8 bytes), and per row its item count and
        #: `HistoryRecord.step.num` (None when absent); `_step` items are resolved in `result()`.
        self._keys: list[bytes] = []
        self._texts: list[bytes] = []
        self._row_counts: list[int] = []
        self._row_step_nums: list[int | None] = []
        #: Rows decoded by `wandb_fastpath`, one batch per framed batch of records, and for the
        #: rows in the lists above the index of their record: both count records from the start
        #: of the log (`_records_seen`), so `_history_frame` merges them in log order.
        self._fast_history: list[wandb_fastpath.HistoryBatch] = []
        self._row_records: list[int] = []
        self._records_seen = 0
        #: Records framed but not decoded yet: their payloads' (start, end) in `_buffer` (the
        #: chunks of the last `feed`, reassembled) and their file offsets.
        self._buffer = np.zeros(0, dtype=np.uint8)
        self._batch: list[tuple[int, int, int] | np.ndarray] = []

    def _issue(self, kind: str, reason: str, lost: str, position: str | None = None) -> IngestIssue:
        return IngestIssue(
            location=self.location, source=self.source, kind=kind, reason=reason, lost=lost, position=position
        )

    def feed_file(self, path: Path) -> None:
        """Read whatever the file holds past `offset` (the whole file on the first call).

        Read into memory, not memory-mapped: a run folder truncated or deleted while it is read
        would kill a mapped reader with SIGBUS, taking the sensor or the whole run down with it.
        """
        try:
            with open(path, "rb", buffering=0) as handle:
                stat = os.fstat(handle.fileno())
                handle.seek(self.offset)
                # Into a numpy array, not `bytes`: numpy asks for huge pages, so a 44 MB log costs
                # hundreds of page faults instead of ten thousand; the padding is the decoder's.
                data = np.empty(max(stat.st_size - self.offset, 0) + wandb_fastpath.PADDING, dtype=np.uint8)
                size = handle.readinto(memoryview(data)[: len(data) - wandb_fastpath.PADDING])
        except OSError as exc:
            self._issues.append(self._issue("unreadable_file", f"cannot read the log: {exc}", "the whole log"))
            return
        self._take(data, size or 0, file_age_s=max(0.0, time.time() - stat.st_mtime))

    def feed(self, data: bytes | memoryview, *, file_age_s: float | None = None) -> None:
        """Decode `data`, the file's bytes from `offset` to its current end."""
        array = np.zeros(len(data) + wandb_fastpath.PADDING, dtype=np.uint8)
        array[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        self._take(array, len(data), file_age_s=file_age_s)

    def _take(self, data: np.ndarray, size: int, *, file_age_s: float | None) -> None:
        """Check the header, frame `data[:size]` (the file's bytes from `offset`: see `feed`) and
        decode its records. `data` is the batch buffer too: framing moves each record's payload
        down over the chunk headers, and at least `wandb_fastpath.PADDING` bytes follow `size`."""
        base = self.offset
        if not self._header_seen:
            if size < len(LOG_HEADER):
                kind = "empty_log" if not size else "truncated_tail"
                self._tail_issue = self._issue(
                    kind, f"the log has {size} bytes, not even its {len(LOG_HEADER)}-byte header", "the whole log"
                )
                self._partial_tail_bytes = size
                return
            if data[: len(LOG_HEADER)].tobytes() != LOG_HEADER:
                self._tail_issue = self._issue(
                    "bad_header", f"not a W&B transaction log (starts with {data[:7].tobytes()!r})", f"the whole log ({size} bytes)"
                )
                self._partial_tail_bytes = size
                return
            self._header_seen = True
            self.offset = len(LOG_HEADER)
        self._buffer = data
        stop = self._settle_layout(memoryview(data), base, base + size)
        self._frame(data, size, base, file_age_s, stop)
        self._flush_batch()
        self._buffer = np.zeros(0, dtype=np.uint8)  # the decoded records' bytes are not needed again

    @property
    def _origin(self) -> int:
        """Where block 0 starts in the layout framed (standard while the layout is open)."""
        return BLOCK_ORIGIN[self._layout or LAYOUT_STANDARD]

    def _settle_layout(self, view: memoryview, base: int, end: int) -> int:
        """Settle the block layout from the bytes up to `end` if it is still open; return the file
        offset up to which this feed may frame. Standard unless framing it finds damage that the
        wandb-core 0.17 layout reads past with a good CRC; damage both layouts find is the file's
        own. When the bytes end before either tells, framing stops at the disputed chunk."""
        if self._layout is not None:
            return end
        window = min(end, len(LOG_HEADER) + LAYOUT_PROBE_BYTES)
        damage, _ = first_damage(view, base, self.offset, window, BLOCK_ORIGIN[LAYOUT_STANDARD])
        if damage is None:
            if window < end:
                self._layout = LAYOUT_STANDARD
            return end
        shifted_damage, shifted_checked = first_damage(view, base, self.offset, window, BLOCK_ORIGIN[LAYOUT_CORE_017])
        if shifted_checked > damage:
            self._layout = LAYOUT_CORE_017
        elif shifted_damage is not None:
            self._layout = LAYOUT_STANDARD
        else:
            return damage
        return end

    def _frame(self, data: np.ndarray, size: int, base: int, file_age_s: float | None, stop: int) -> None:
        """Walk the chunks of `data[:size]` (`base` is data[0]'s file offset) up to file offset
        `stop`; move each complete record's payload down to the end of the previous one (a
        chunk's bytes are read before anything is written over them: the write position trails by
        at least a chunk header) and queue the record for `_flush_batch`, or decode it at once
        when `data` is small. Bytes from `stop` on wait for the next feed, like a partial tail."""
        size_end, end = base + size, min(base + size, stop)
        origin = self._origin
        pos = self.offset
        view = memoryview(data)  # slicing and copying a memoryview costs a fraction of numpy's
        # Too few bytes for the fast path: decode each record as it completes (no batch).
        direct, records, rows = size < FASTPATH_MIN_BYTES, 0, len(self._row_counts)
        used = 0  # bytes of `data` holding records (complete, or the one being assembled)
        in_record = False
        self._tail_issue = None
        if not direct and self._layout is not None:
            # The clean leading stretch of the chunks (most or all of a log) framed with numpy;
            # the loop below frames the rest from the record boundary where it stopped.
            bulk = self._frame_bulk(data, view, base, end)
            if bulk is not None:
                pos, used = bulk
                self.offset = pos
        record_start = pos  # file offset of the record being assembled
        record_from = used  # where it starts in `data`
        while True:
            in_block = (pos - origin) % BLOCK_SIZE
            if BLOCK_SIZE - in_block < CHUNK_HEADER.size:
                if pos + (BLOCK_SIZE - in_block) > end:
                    break  # the block trailer itself is not data
                trailer, pos = view[pos - base : pos + BLOCK_SIZE - in_block - base], pos + BLOCK_SIZE - in_block
                # Writers zero-fill a trailer; while the layout is open, other bytes there may be
                # a chunk of the other layout: the next feed resumes before them.
                if not in_record and (self._layout is not None or not any(trailer)):
                    record_start = pos
                    self.offset = pos
                continue
            if pos + CHUNK_HEADER.size > end:
                break
            crc, length, kind = CHUNK_HEADER.unpack_from(view, pos - base)
            payload_start = pos + CHUNK_HEADER.size
            block_end = pos - in_block + BLOCK_SIZE
            if kind == 0 and length == 0:
                pos = payload_start
                if not in_record:
                    record_start = pos
                    self.offset = pos
                continue
            if kind == 0 or kind > CHUNK_LAST or payload_start + length > block_end:
                pos = self._skip_block(pos, block_end, end, in_record, record_start, "bad_chunk", f"chunk header claims type {kind} and {length} bytes")
                in_record, used = False, record_from
                record_start = self.offset = pos
                continue
            if payload_start + length > end:
                break
            payload = view[payload_start - base : payload_start - base + length]
            if zlib.crc32(payload, TYPE_CRC[kind]) != crc:
                pos = self._skip_block(pos, block_end, end, in_record, record_start, "crc_mismatch", "chunk CRC-32 does not match its bytes")
                in_record, used = False, record_from
                record_start = self.offset = pos
                continue
            next_pos = payload_start + length
            if kind in (CHUNK_FULL, CHUNK_FIRST):
                if in_record:
                    self._orphan(record_start, pos, "a record's first chunk was not followed by its last")
                    used = record_from
                in_record, record_start, record_from = True, pos, used
            elif not in_record:
                self._orphan(pos, next_pos, "a continuation chunk without the start of its record")
                pos = self.offset = record_start = next_pos
                continue
            view[used : used + length] = payload  # overlapping ranges: memoryview copies safely
            used += length
            pos = next_pos
            if kind in (CHUNK_FULL, CHUNK_LAST):
                if direct:
                    self._decode(view[record_from:used], record_start)
                    used, records = 0, records + 1
                else:
                    self._batch.append((record_from, used, record_start))
                in_record = False
                record_start = self.offset = pos
        if direct:  # these rows keep their order; the index places them among other feeds' rows
            self._row_records.extend([self._records_seen] * (len(self._row_counts) - rows))
            self._records_seen += records
        trailer = BLOCK_SIZE - (self.offset - origin) % BLOCK_SIZE
        in_trailer = trailer < CHUNK_HEADER.size and size_end <= self.offset + trailer
        self._partial_tail_bytes = 0 if in_trailer else max(0, size_end - self.offset)
        if self._partial_tail_bytes:
            self._tail_issue = self._truncated_tail(self._partial_tail_bytes, file_age_s)

    def _frame_bulk(self, data: np.ndarray, view: memoryview, base: int, end: int) -> tuple[int, int] | None:
        """Frame in bulk (`_clean_chunks`: C, else numpy) the complete records from `offset` on up to the first chunk the
        loop of `_frame` would treat specially (zero padding chunk, bad type or length, CRC
        mismatch, a record's chunks out of order, a chunk past `end`): return the file offset
        just past the last record framed and the bytes of `data` its records use, or None when
        there is none. A record's continuation chunks are moved down onto the end of its first
        chunk (overwriting only its own headers and block trailer); the records stay where
        they are (between them: chunk headers), which is all the batch decoding needs."""
        origin, header = self._origin, CHUNK_HEADER.size
        pos0 = self.offset
        if pos0 + header > end or pos0 < origin:
            return None
        compiled = compiled_scan()
        chunks = _clean_chunks_c(compiled, data, base, pos0, end, origin) if compiled else _clean_chunks(data, base, pos0, end, origin)
        if chunks is None:
            return None
        at, length, kind, crc = chunks
        # Record structure: FULL or FIRST outside a record, MIDDLE or LAST inside one.
        opens = (kind == CHUNK_FIRST) | (kind == CHUNK_MIDDLE)
        inside_before = np.zeros(len(kind), dtype=bool)
        inside_before[1:] = opens[:-1]
        starts_record = (kind == CHUNK_FULL) | (kind == CHUNK_FIRST)
        wrong = np.flatnonzero(starts_record == inside_before)
        if len(wrong):
            keep = int(wrong[0])
            at, length, kind, crc = at[:keep], length[:keep], kind[:keep], crc[:keep]
            starts_record = starts_record[:keep]
        payload = at + header - base
        mismatch = first_crc_mismatch(view, base, at, length, kind, crc, origin)
        if mismatch is not None:
            keep = mismatch
            at, length, kind, payload, starts_record = at[:keep], length[:keep], kind[:keep], payload[:keep], starts_record[:keep]
        if compiled:
            records = np.empty((len(at), 3), dtype=np.int64)
            used, count = compiled.assemble(data, base, at, length, kind, records)
            if not count:
                return None
            self._batch.append(records[:count])
            return int(at[used - 1] + header + length[used - 1]), int(records[count - 1, 1])
        ends_record = np.flatnonzero((kind == CHUNK_FULL) | (kind == CHUNK_LAST))
        if not len(ends_record):
            return None
        keep = int(ends_record[-1]) + 1
        at, length, kind, payload, starts_record = at[:keep], length[:keep], kind[:keep], payload[:keep], starts_record[:keep]
        first = np.flatnonzero(starts_record)
        record_of = np.cumsum(starts_record) - 1
        before = np.cumsum(length) - length  # payload bytes before each chunk
        dest = payload[first][record_of] + before - before[first][record_of]
        moved = np.flatnonzero(~starts_record)
        for d, s, n in zip(dest[moved].tolist(), payload[moved].tolist(), length[moved].tolist()):
            view[d : d + n] = view[s : s + n]  # overlapping ranges: memoryview copies safely
        record_starts = payload[first]
        record_ends = record_starts + np.add.reduceat(length, first)
        self._batch.append(np.stack([record_starts, record_ends, at[first]], axis=1))
        return int(at[-1] + header + length[-1]), int(record_ends[-1])

    def _truncated_tail(self, lost: int, file_age_s: float | None) -> IngestIssue:
        if file_age_s is not None and file_age_s < self.grace_period_s:
            why = f"the log ends inside a record; it was written {file_age_s:.0f} s ago, so the run may still be writing it"
        else:
            why = "the log ends inside a record (a bare chunk header or part of a payload): the writer stopped mid-record"
        return self._issue("truncated_tail", why, f"{lost} bytes at the end", position=f"byte {self.offset}")

    def _skip_block(
        self, pos: int, block_end: int, end: int, in_record: bool, record_start: int, kind: str, reason: str
    ) -> int:
        """Drop the rest of a damaged block (and the record it was part of); resume at the next."""
        self._flush_batch()  # issues stay in file order
        start = record_start if in_record else pos
        stop = min(block_end, end)
        self._issues.append(
            self._issue(
                kind,
                f"{reason}; skipped to the next block",
                f"{stop - start} bytes (offsets {start}-{stop}, block {(pos - self._origin) // BLOCK_SIZE})",
                position=f"byte {pos}",
            )
        )
        return block_end

    def _orphan(self, start: int, stop: int, reason: str) -> None:
        self._flush_batch()  # issues stay in file order
        self._issues.append(
            self._issue("broken_record", reason, f"{stop - start} bytes (offsets {start}-{stop})", position=f"byte {start}")
        )

    def _take_batch(self) -> np.ndarray:
        """The records framed but not decoded yet, taken out of `_batch`: one row per record,
        (payload start in `_buffer`, payload end, file offset), int64."""
        batch, self._batch = self._batch, []
        parts: list[np.ndarray] = []
        single: list[tuple[int, int, int]] = []
        for item in batch:  # arrays framed by `_frame_bulk`, tuples by the loop of `_frame`
            if isinstance(item, np.ndarray):
                if single:
                    parts.append(np.asarray(single, dtype=np.int64).reshape(-1, 3))
                    single = []
                parts.append(item)
            else:
                single.append(item)
        if single:
            parts.append(np.asarray(single, dtype=np.int64).reshape(-1, 3))
        if not parts:
            return np.zeros((0, 3), dtype=np.int64)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _flush_batch(self) -> None:
        """Decode the records framed so far: with `FASTPATH_MIN_BYTES` of history and summary
        records, those with `wandb_fastpath` and every record it leaves (other kinds, unusual or
        damaged ones) with `_decode`, in record order; with fewer, all with `_decode`."""
        table = self._take_batch()
        if not len(table):
            return
        records = memoryview(self._buffer)
        starts, ends, offsets = table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy()
        base = self._records_seen
        self._records_seen += len(starts)
        if not self._worth_fast_path(starts, ends):
            rows = len(self._row_counts)
            for start, stop, offset in table.tolist():
                self._decode(records[start:stop], offset)
            # Rows of one protobuf-decoded batch keep their order; `base` places them among batches.
            self._row_records.extend([base] * (len(self._row_counts) - rows))
            return
        # Groups of a few MB: the decoder's per-item arrays stay small (and its peak memory low).
        group_ends = np.searchsorted(ends, np.arange(FASTPATH_GROUP_BYTES, int(ends[-1]), FASTPATH_GROUP_BYTES), side="right")
        bounds = sorted({0, *group_ends.tolist(), len(starts)})
        for lo, hi in zip(bounds, bounds[1:]):

            def decode_slow(index: int, lo: int = lo) -> None:
                record = lo + index
                self._decode_one(records[starts[record] : ends[record]], int(offsets[record]), base + record)

            decoded = wandb_fastpath.decode_records(self._buffer, starts[lo:hi], ends[lo:hi])
            decoded.replay(self._summary, decode_slow)
            fast = decoded.history
            fast.records = fast.records + base + lo
            self._fast_history.append(fast)

    def _worth_fast_path(self, starts: np.ndarray, ends: np.ndarray) -> bool:
        """Whether the records hold `FASTPATH_MIN_BYTES` of plain history and summary records;
        counted in the first few MB first, which usually settles it without reading every header."""
        if ends[-1] - starts[0] < FASTPATH_MIN_BYTES:
            return False
        prefix = int(np.searchsorted(ends, starts[0] + 2 * FASTPATH_MIN_BYTES, side="right"))
        if prefix < len(starts) and wandb_fastpath.plain_record_bytes(self._buffer, starts[:prefix], ends[:prefix]) >= FASTPATH_MIN_BYTES:
            return True
        return wandb_fastpath.plain_record_bytes(self._buffer, starts, ends) >= FASTPATH_MIN_BYTES

    def _decode_one(self, payload: bytes | memoryview, offset: int, record: int) -> None:
        rows = len(self._row_counts)
        self._decode(payload, offset)
        self._row_records.extend([record] * (len(self._row_counts) - rows))

    def _decode(self, payload: bytes | memoryview, offset: int) -> None:
        try:
            # A fresh message per record: re-parsing into one reused message grows its arena
            # and is ~10x slower with upb.
            view = self._view_class.FromString(payload)
        except DecodeError as exc:
            self._issues.append(
                self._issue("bad_record", f"record is not a valid protobuf Record: {exc}", f"{len(payload)} bytes", position=f"byte {offset}")
            )
            return
        try:  # the lenient view can accept what the full messages reject (e.g. invalid UTF-8)
            if view.HasField("history"):
                self._history(view.history, payload)
            elif view.HasField("summary"):
                self._fold_summary(view.summary, payload)
            elif view.HasField("config"):
                self._fold_items(self._config, wandb_pb.ConfigRecord.FromString(view.config))
            elif view.HasField("run"):
                run = wandb_pb.RunRecord.FromString(view.run)
                self._fold_items(self._config, run.config)
                self._run = run
            elif view.HasField("exit"):
                self._exit = wandb_pb.RunExitRecord.FromString(view.exit)
            elif view.HasField("header"):
                self._header_version = wandb_pb.HeaderRecord.FromString(view.header).version_info.producer or None
        except DecodeError as exc:
            self._issues.append(
                self._issue("bad_record", f"record does not decode as its declared type: {exc}", f"{len(payload)} bytes", position=f"byte {offset}")
            )


    def _history(self, history: Any, payload: bytes | memoryview) -> None:
        names = single_names(history.item)
        if names is None:
            slow_names, slow_texts = self._history_slow(payload)
            self._keys.extend(slow_names)
            self._texts.extend(slow_texts)
            self._row_counts.append(len(slow_names))
        else:
            # Slicing copies a repeated field out of upb in one C call (faster than iterating it).
            self._keys.extend(names[:])
            self._texts.extend(history.item.value_json[:])
            self._row_counts.append(len(names))
        self._row_step_nums.append(history.step.num if history.HasField("step") else None)

    def _history_slow(self, payload: bytes | memoryview) -> tuple[list[bytes], list[bytes]]:
        """Items with nested paths (0.19+ histograms, tables, dicts): rebuild each tree on its
        first path element, so `["h", "_type"]` never becomes a metric named `h/_type`."""
        names: list[bytes] = []
        values: list[bytes] = []
        trees: dict[str, dict[str, Any]] = {}
        for item in wandb_pb.Record.FromString(payload).history.item:
            path = item_path(item)
            if len(path) == 1:
                names.append(path[0].encode())
                values.append(item.value_json.encode())
            else:
                set_path(trees.setdefault(path[0], {}), path[1:], loads_json(item.value_json))
        for name, tree in trees.items():
            names.append(name.encode())
            values.append(json.dumps(tree).encode())
        return names, values

    def _fold_summary(self, summary: Any, payload: bytes | memoryview) -> None:
        names = single_names(summary.update)
        if names is not None and not len(summary.remove.key) and not len(summary.remove.nested_key):
            self._summary.update(zip(names[:], summary.update.value_json[:]))
            return
        self._fold_items(self._summary, wandb_pb.Record.FromString(payload).summary)

    @staticmethod
    def _fold_items(flat: FlatItems, record: Any) -> None:
        """Apply a config/summary record's updates then removes, in order (one-element names
        as bytes, the form the fast summary fold uses, so both folds write the same entries)."""
        for item in record.update:
            path = item_path(item)
            flat[path[0].encode() if len(path) == 1 else path] = item.value_json
        for item in record.remove:
            remove_path(flat, item_path(item))

    def result(self) -> WandbLog:
        run = self._run
        log = WandbLog(location=self.location, complete_until=self.offset, partial_tail_bytes=self._partial_tail_bytes)
        log.issues = list(self._issues) + ([self._tail_issue] if self._tail_issue else [])
        if self._header_seen and run is None and not self._row_counts and not any(len(b.records) for b in self._fast_history):
            log.issues.append(
                self._issue("no_run_record", "the log holds no run record and no history", "nothing (there was nothing to read)")
            )
        if run is not None:
            log.run_id = run.run_id or None
            log.entity = run.entity or None
            log.project = run.project or None
            log.name = run.display_name or None
            log.group = run.run_group or None
            log.notes = run.notes or None
            log.tags = list(run.tags)
            log.started_at = timestamp_utc(run.start_time)
            log.private_strings = {run.host} - {""}
        version = self._header_version or (run.telemetry.cli_version if run is not None else "")
        log.sdk_version = version.split("+", 1)[0] or None
        log.log_layout = (self._layout or LAYOUT_STANDARD) if self._header_seen else None
        log.config = build_tree(self._config)
        log.summary = build_tree(self._summary)
        if self._exit is not None:
            log.ended = True
            log.exit_code = self._exit.exit_code
        table = self._history_frame(log.run_id or "")
        log.history, log.value_types, log.media = table.history, table.value_types, table.media
        log.issues.extend(table.issues)
        return log

    def _history_frame(self, run_id: str) -> HistoryTable:
        """The rows read so far as the long table. Each row's step, runtime and timestamp come
        from its first `_step`, `_runtime` and `_timestamp` items, found for all rows at once;
        the step falls back to `HistoryRecord.step.num`, and a row with neither is dropped."""
        if not self._row_counts and not self._fast_history:
            return HistoryTable(empty_history(), {}, empty_media(), [])
        slow_names, slow_codes = wandb_fastpath.encode_keys(text_series(self._keys) if self._keys else pl.Series([], dtype=pl.String))
        slow = wandb_fastpath.HistoryBatch(
            records=np.asarray(self._row_records, dtype=np.int64),
            step_nums=np.asarray([0 if n is None else n for n in self._row_step_nums], dtype=np.int64),
            has_step_num=np.asarray([n is not None for n in self._row_step_nums], dtype=bool),
            row_counts=np.asarray(self._row_counts, dtype=np.int64),
            names=slow_names,
            codes=slow_codes,
            texts=text_series(self._texts) if self._texts else pl.Series([], dtype=pl.String),
        )
        rows = wandb_fastpath.merge_history(*self._fast_history, slow)
        if not len(rows.row_counts):
            return HistoryTable(empty_history(), {}, empty_media(), [])
        names, codes, texts, counts = rows.names, rows.codes, rows.texts, rows.row_counts
        if 16 * len(counts) > len(texts):
            # Narrow rows: the per-row gathers below are many, and Polars gathers several times
            # faster from one chunk than from a batch per decode group; wide rows skip the copy.
            texts = texts.rechunk()
        row_step_nums = pl.Series(rows.step_nums, dtype=pl.Int64).zip_with(
            pl.Series(rows.has_step_num), pl.Series([None], dtype=pl.Int64).new_from_index(0, len(counts))
        )
        item_rows = np.repeat(np.arange(len(counts)), counts)
        # Every text parsed as a number once: the values, and the rows' runtimes and timestamps.
        numbers = texts.cast(pl.Float64, strict=False)

        def first_in_row(key: str, column: pl.Series) -> pl.Series:
            code = np.flatnonzero((names == key).to_numpy())  # names are distinct: one code or none
            positions = np.flatnonzero(codes == code[0]) if len(code) else np.zeros(0, dtype=np.int64)
            rows_with = item_rows[positions]  # in row order: a row's first item is where its row starts
            first = np.ones(len(rows_with), dtype=bool)
            first[1:] = rows_with[1:] != rows_with[:-1]
            if len(rows_with) == len(counts) and first.all():  # once in every row (the SDK's rows)
                return gather(column, positions)
            return pl.Series([None], dtype=column.dtype).new_from_index(0, len(counts)).scatter(rows_with[first], gather(column, positions[first]))

        step_texts = first_in_row(STEP_KEY, texts)
        steps = step_texts.cast(pl.Int64, strict=False)
        if steps.null_count() > step_texts.null_count():  # steps written as floats ("6.0")
            steps = steps.fill_null(step_texts.cast(pl.Float64, strict=False).cast(pl.Int64, strict=False))
        steps = steps.fill_null(row_step_nums)
        runtimes = first_in_row(RUNTIME_KEY, numbers)
        timestamps = first_in_row(TIMESTAMP_KEY, numbers)
        missing = steps.is_null().to_numpy()
        issues = [
            self._issue("missing_step", "history row has neither a `_step` item nor a step number", f"{count} values")
            for count in counts[missing]
        ]
        if issues:
            kept_items = ~missing[item_rows]
            codes, texts, numbers = codes[kept_items], texts.filter(pl.Series(kept_items)), numbers.filter(pl.Series(kept_items))
            kept_rows = pl.Series(~missing)
            counts = counts[~missing]
            steps, runtimes, timestamps = steps.filter(kept_rows), runtimes.filter(kept_rows), timestamps.filter(kept_rows)
            if not len(counts):
                return HistoryTable(empty_history(), {}, empty_media(), issues)
        table = history_table(
            names,
            codes,
            texts,
            numbers=numbers,
            row_steps=steps.to_numpy(),
            row_counts=counts,
            row_runtimes=runtimes,
            row_timestamps=timestamps,
            run_id=run_id,
            location=self.location,
            source=self.source,
        )
        table.issues[:0] = issues
        return table

def _clean_chunks(data: np.ndarray, base: int, pos0: int, end: int, origin: int) -> tuple[np.ndarray, ...] | None:
    """The chunks `_frame_bulk` frames (file offset, payload length, type, stored CRC), in file
    order from `pos0` up to the first one the loop of `_frame` treats specially, found with numpy
    (the blocks walked in lockstep); None when there is none."""
    header = CHUNK_HEADER.size
    first_block, last_block = (pos0 - origin) // BLOCK_SIZE, (end - 1 - origin) // BLOCK_SIZE
    p = origin + np.arange(first_block, last_block + 1, dtype=np.int64) * BLOCK_SIZE
    block_end = p + BLOCK_SIZE
    p[0] = pos0
    blocks = np.arange(len(p))
    cutoff = end  # file offset from which the loop frames
    found: list[tuple[np.ndarray, ...]] = []
    # Each chunk header (CRC u32, length u16, type u8) read as one little-endian u64 (its 8th
    # byte is the next one's: masked off); `data` is padded, so the read stays inside it.
    octets = np.ndarray((len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))
    while blocks.size:
        at = p[blocks]
        clean = block_end[blocks] - at < header  # the block ends in a trailer (the loop skips it)
        if clean.any():
            # A trailer running past `end` is where the loop stops.
            past = clean & (block_end[blocks] > end)
            if past.any():
                cutoff = min(cutoff, int(at[past].min()))
            blocks, at = blocks[~clean], at[~clean]
            if not blocks.size:
                break
        inside = at + header <= end
        headers = octets[np.where(inside, at - base, 0)]
        kind = (headers >> 48) & 0xFF
        nxt = at + header + ((headers >> 32) & 0xFFFF).astype(np.int64)
        bad = ~inside | (kind == 0) | (kind > CHUNK_LAST) | (nxt > block_end[blocks]) | (nxt > end)
        if bad.any():
            cutoff = min(cutoff, int(at[bad].min()))
            good = ~bad
            blocks, at, headers, nxt = blocks[good], at[good], headers[good], nxt[good]
        found.append((at, headers))
        p[blocks] = nxt
    if not found:
        return None
    at, headers = (np.concatenate(column) for column in zip(*found))
    length = ((headers >> 32) & 0xFFFF).astype(np.int64)
    kind = ((headers >> 48) & 0xFF).astype(np.uint8)
    crc = (headers & 0xFFFFFFFF).astype(np.uint32)
    order = np.argsort(at, kind="stable")
    at, length, kind, crc = at[order], length[order], kind[order], crc[order]
    keep = int(np.searchsorted(at, cutoff))
    return at[:keep], length[:keep], kind[:keep], crc[:keep]


def _clean_chunks_c(compiled: ModuleType, data: np.ndarray, base: int, pos0: int, end: int, origin: int) -> tuple[np.ndarray, ...] | None:
    """`_clean_chunks` by `_wirescan.frame`: one sequential walk. The arrays are sized for chunks
    of 64 bytes or more on average; more chunks take a second call with the exact count."""
    capacity = (end - pos0) // 64 + 16
    while True:
        at, length, kind, crc = np.empty(capacity, dtype=np.int64), np.empty(capacity, dtype=np.int64), np.empty(capacity, dtype=np.uint8), np.empty(capacity, dtype=np.uint32)
        count = compiled.frame(data, base, pos0, end, origin, BLOCK_SIZE, CHUNK_LAST, at, length, kind, crc)
        if count <= capacity:
            break
        capacity = count
    return (at[:count], length[:count], kind[:count], crc[:count]) if count else None


def read_wandb_log(path: Path, *, source: str = DEFAULT_SOURCE, grace_period_s: float = 3600.0) -> WandbLog:
    """Read one `.wandb` file whole; never raises on bad content (it becomes issues)."""
    reader = WandbLogReader(str(path), source=source, grace_period_s=grace_period_s)
    reader.feed_file(path)
    return reader.result()

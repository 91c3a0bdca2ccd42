"""Vectorised decoding of `.wandb` history and summary records: numpy over the protobuf wire format.

Why it exists. `WandbLogReader` decodes every record with upb into a columnar view; that still
creates several Python objects per history value (key, value text, and, from wandb-core 0.19 on,
the incremental summary record that mirrors every history row), which caps the reader at about
1.2-1.5 M values per CPU-second. This module reads the protobuf wire format of many records at
once with numpy and builds Arrow/Polars columns directly from byte offsets: no Python object per
value, per item or per record.

How. The caller frames the log (it already reassembles chunked records) and hands over one
buffer plus the (start, end) offsets of each record's `Record` payload. Each nesting level
(`Record` -> `HistoryRecord`/`SummaryRecord` -> `HistoryItem`/`SummaryItem`) is tokenised by
walking all its messages in lockstep: round k reads every message's k-th field (tag varint, then
a length or varint value), so the number of numpy rounds is the largest field count of one
message, not the number of values. Key and `value_json` bytes are gathered into one contiguous
Arrow buffer and validated as UTF-8 once per column. Field numbers come from the installed
`wandb.proto` descriptors, never hard-coded.

Contract: the fast path decodes the common case only and says which records it did not decode.
`decode_records` takes every record of a batch (any kind, in log order) and returns the history
rows and summary updates it decoded plus `slow_records`: the records the caller must decode with
its protobuf path (`WandbLogReader._decode`), in record order. A record is slow (never guessed at)
when anything in it is not the plain shape:
  - another record kind, or malformed wire data: a varint too long, a length or field past the
    message end, field number 0, group or reserved wire types, more than 16 top-level fields;
  - a `Record` whose history (summary) field is not there exactly once as a length-delimited
    field, or that also has another field the reader's upb view declares (run, config, ...);
  - `HistoryRecord`: a field other than `item`, one `step` and `_info`; `HistoryStep`: anything
    but one varint `num`; `SummaryRecord`: a `remove`, or a field other than `update`/`_info`;
  - a history item that is not exactly one name (`key` or a one-element `nested_key`) plus one
    `value_json` (multi-element nested keys = split histograms/tables of SDK >= 0.19, empty
    names or values which proto3 omits, extra or unknown fields), a record mixing `key` and
    `nested_key` items (the reader decodes those item by item), names or values not UTF-8;
  - a very wide record in a small batch: after `min_rounds` lockstep rounds, when fewer than
    `min_active` records are still being walked, they are left to upb (per-round numpy overhead
    would cost more than upb): a batch of a few records mostly comes back slow.
Summary records whose only oddity is their item names (`["_wandb", "runtime"]`, which wandb-core
writes after every row; mixed `key`/`nested_key`) are not left to the caller: they are parsed
with protobuf here (they are small) and folded exactly as `WandbLogReader._fold_items` would.
For every record it decodes, the fast path yields exactly what `WandbLogReader._decode` yields
for it (tested record by record on SDK-written and all corpus files, and on random bytes).
`DecodedRecords.replay` interleaves the summary fold with the caller's slow decoding in record
order; `merge_history` puts the slow records' history rows between the fast ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2 as wandb_pb

from altgrad_pipeline.ingest.model import IngestIssue

_RECORD = wandb_pb.Record.DESCRIPTOR.fields_by_name
F_RECORD_HISTORY = _RECORD["history"].number
F_RECORD_SUMMARY = _RECORD["summary"].number
#: `Record` fields the reader's upb view declares: a record holding one of them next to its
#: history/summary field is left to that view.
F_RECORD_DECLARED = tuple(_RECORD[name].number for name in ("history", "summary", "run", "config", "exit", "header"))
_HISTORY = wandb_pb.HistoryRecord.DESCRIPTOR.fields_by_name
F_HISTORY_ITEM = _HISTORY["item"].number
F_HISTORY_STEP = _HISTORY["step"].number
F_HISTORY_INFO = _HISTORY["_info"].number
F_STEP_NUM = wandb_pb.HistoryStep.DESCRIPTOR.fields_by_name["num"].number
_SUMMARY = wandb_pb.SummaryRecord.DESCRIPTOR.fields_by_name
F_SUMMARY_UPDATE = _SUMMARY["update"].number
F_SUMMARY_REMOVE = _SUMMARY["remove"].number
F_SUMMARY_INFO = _SUMMARY["_info"].number
_HITEM = wandb_pb.HistoryItem.DESCRIPTOR.fields_by_name
_SITEM = wandb_pb.SummaryItem.DESCRIPTOR.fields_by_name
F_ITEM_KEY, F_ITEM_NESTED_KEY, F_ITEM_VALUE_JSON = (_HITEM[n].number for n in ("key", "nested_key", "value_json"))
if (F_ITEM_KEY, F_ITEM_NESTED_KEY, F_ITEM_VALUE_JSON) != tuple(_SITEM[n].number for n in ("key", "nested_key", "value_json")):
    raise ImportError("wandb.proto: HistoryItem and SummaryItem name their fields differently; the fast path assumes they agree")

STEP_KEY, RUNTIME_KEY, TIMESTAMP_KEY = "_step", "_runtime", "_timestamp"
WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_I32 = 0, 1, 2, 5
KIND_OTHER, KIND_HISTORY, KIND_SUMMARY = 0, 1, 2
MIN_ACTIVE, MIN_ROUNDS = 16, 64


# --------------------------------------------------------------------------------------------
# Wire-format tokeniser
# --------------------------------------------------------------------------------------------


def _varint(u8: np.ndarray, p: np.ndarray, lim: np.ndarray, max_bytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one varint at each position `p` (which must end before `lim`): value (uint64), end
    position, ok. Not ok: runs past `lim`, longer than `max_bytes`, or a 10th byte above 1."""
    last = len(u8) - 1
    b = u8[np.minimum(p, last)]
    ok = p < lim
    value = (b & 0x7F).astype(np.uint64)
    end = p + 1
    more = b >= 0x80
    if more.any():
        idx = np.flatnonzero(more & ok)
        for i in range(1, max_bytes):
            if not idx.size:
                break
            q = p[idx] + i
            inside = q < lim[idx]
            if not inside.all():
                ok[idx[~inside]] = False
                idx, q = idx[inside], q[inside]
            b = u8[q]
            if i == 9:
                bad = b > 1
                ok[idx[bad]] = False
            value[idx] |= (b & 0x7F).astype(np.uint64) << np.uint64(7 * i)
            end[idx] = q + 1
            idx = idx[b >= 0x80]
        ok[idx] = False
    return value, end, ok


@dataclass
class _Fields:
    """Every field of a set of messages: message-major (a message's fields in wire order) when
    walked with `ordered=True`, else in no particular order."""

    msg: np.ndarray  # int64 index of the message
    field: np.ndarray  # int64 field number
    wire: np.ndarray  # int64 wire type
    start: np.ndarray  # int64: payload start (LEN), value start (others)
    end: np.ndarray  # int64: payload / value end
    value: np.ndarray  # uint64 varint value (wire type 0), else 0
    refused: np.ndarray  # bool per message: malformed, or left to the slow path


def _round_general(u8: np.ndarray, p: np.ndarray, lim: np.ndarray) -> tuple[np.ndarray, ...]:
    """One field at each position: ok, field, wire, start, end, value (any wire type)."""
    tag, p, ok = _varint(u8, p, lim, 5)
    ok &= (tag < (1 << 32)) & (tag >= 8)
    tag = tag.astype(np.int64)
    field, wire = tag >> 3, tag & 7
    start, end = p.copy(), p.copy()
    value = np.zeros(len(p), dtype=np.uint64)
    is_len = (wire == WIRE_LEN) & ok
    if is_len.any():
        i = np.flatnonzero(is_len)
        length, q, ok_len = _varint(u8, p[i], lim[i], 5)
        ok[i] &= ok_len & (length < (1 << 31))
        start[i] = q
        end[i] = q + length.astype(np.int64)
    is_var = (wire == WIRE_VARINT) & ok
    if is_var.any():
        i = np.flatnonzero(is_var)
        v, q, ok_var = _varint(u8, p[i], lim[i], 10)
        ok[i] &= ok_var
        value[i] = v
        end[i] = q
    end[wire == WIRE_I64] += 8
    end[wire == WIRE_I32] += 4
    ok &= ((wire <= WIRE_LEN) | (wire == WIRE_I32)) & (end <= lim)
    return ok, field, wire, start, end, value


#: One-byte tags of length-delimited fields (the short path of `_walk`).
_SHORT_LEN_TAG = (np.arange(256) & 0x87) == WIRE_LEN


def _walk(
    u8: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    *,
    ordered: bool = False,
    min_active: int = MIN_ACTIVE,
    min_rounds: int = MIN_ROUNDS,
) -> _Fields:
    """Tokenise messages [starts, ends) in lockstep: round k reads every live message's k-th
    field. A round where every field has a one-byte tag, wire type LEN and a one-byte length
    (the usual item list) takes a short path; any other round the general one. After
    `min_rounds` rounds, fewer than `min_active` live messages are refused (left to upb)."""
    n = len(starts)
    last = len(u8) - 1
    pos = starts.astype(np.int64, copy=True)
    ends = ends.astype(np.int64, copy=False)
    refused = np.zeros(n, dtype=bool)
    active = np.flatnonzero(pos < ends)
    out: list[tuple[np.ndarray, ...]] = []
    k = 0
    while active.size:
        if k >= min_rounds and active.size < min_active:
            refused[active] = True
            break
        p, lim = pos[active], ends[active]
        b0 = u8[p]
        b1 = u8.take(p + 1, mode="clip")
        if _SHORT_LEN_TAG[b0].all() and b1.max() < 0x80:
            # Field number 0 and a payload past the end are checked once, after the walk: the
            # message stops here either way (its end is not below `lim`).
            start = p + 2
            end = start + b1
            out.append((active, b0, None, start, end, None, k))
        else:
            ok, field, wire, start, end, value = _round_general(u8, p, lim)
            if not ok.all():
                refused[active[~ok]] = True
                active, field, wire, start, end, value, lim = (a[ok] for a in (active, field, wire, start, end, value, lim))
            out.append((active, field, wire, start, end, value, k))
        pos[active] = end
        active = active[end < lim]
        k += 1
    if not out:
        empty = np.zeros(0, dtype=np.int64)
        return _Fields(empty, empty, empty, empty, empty, np.zeros(0, dtype=np.uint64), refused)
    sizes = [len(o[0]) for o in out]
    msg = np.concatenate([o[0] for o in out])
    field = np.concatenate([(o[1] >> 3).astype(np.int64) if o[2] is None else o[1] for o in out])
    start = np.concatenate([o[3] for o in out])
    end = np.concatenate([o[4] for o in out])
    general = any(o[2] is not None for o in out)
    if general:
        wire = np.concatenate([np.full(size, WIRE_LEN, dtype=np.int64) if o[2] is None else o[2] for o, size in zip(out, sizes, strict=True)])
        value = np.concatenate([np.zeros(size, dtype=np.uint64) if o[5] is None else o[5] for o, size in zip(out, sizes, strict=True)])
    if ordered and len(out) > 1:
        # Round-major to message-major: a message's k-th field is found in round k, so its
        # place is (fields of the messages before it) + k. Scattered, not sorted.
        counts = np.bincount(msg, minlength=n)
        first = np.zeros(n, dtype=np.int64)
        np.cumsum(counts[:-1], out=first[1:])
        dest = first[msg]
        dest += np.repeat(np.asarray([o[6] for o in out], dtype=np.int64), sizes)
        msg = np.repeat(np.arange(n, dtype=np.int64), counts)

        def scatter(a: np.ndarray) -> np.ndarray:
            out_a = np.empty_like(a)
            out_a[dest] = a
            return out_a

        field, start, end = scatter(field), scatter(start), scatter(end)
        if general:
            wire, value = scatter(wire), scatter(value)
    if not general:
        wire = np.full(len(msg), WIRE_LEN, dtype=np.int64)
        value = np.zeros(len(msg), dtype=np.uint64)
    # The short path's deferred checks: field number 0, a payload running past its message.
    bad = (field == 0) | (end > ends[msg])
    if bad.any():
        refused[msg[bad]] = True
    return _Fields(msg, field, wire, start, end, value, refused)


def _count(fields: _Fields, mask: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(fields.msg[mask], minlength=n)


def _check_spans(buffer: bytes | bytearray | memoryview, starts: Sequence[int] | np.ndarray, ends: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u8 = np.frombuffer(buffer, dtype=np.uint8)
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    ends = np.asarray(ends, dtype=np.int64).reshape(-1)
    if starts.shape != ends.shape:
        raise ValueError("starts and ends differ in length")
    if len(starts) and ((starts < 0).any() or (ends < starts).any() or (ends > len(u8)).any()):
        raise ValueError("record spans must satisfy 0 <= start <= end <= len(buffer)")
    return u8, starts, ends


def _top_level(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per `Record`: its kind and the span of its history/summary payload (0, 0 for others).
    Plain history (summary): that field exactly once, length-delimited, and none of the other
    fields the reader's view declares. More than 16 top-level fields: not plain."""
    n = len(starts)
    top = _walk(u8, starts, ends, min_rounds=16, min_active=n + 1)
    kinds = np.full(n, KIND_OTHER, dtype=np.int8)
    payload_start = np.zeros(n, dtype=np.int64)
    payload_end = np.zeros(n, dtype=np.int64)
    declared = _count(top, np.isin(top.field, F_RECORD_DECLARED), n)
    for number, kind in ((F_RECORD_HISTORY, KIND_HISTORY), (F_RECORD_SUMMARY, KIND_SUMMARY)):
        target = (top.field == number) & (top.wire == WIRE_LEN)
        plain = ~top.refused & (_count(top, target, n) == 1) & (declared == 1)
        kinds[plain] = kind
        sel = target & plain[top.msg]
        payload_start[top.msg[sel]], payload_end[top.msg[sel]] = top.start[sel], top.end[sel]
    may_fold_summary = top.refused | (_count(top, top.field == F_RECORD_SUMMARY, n) > 0)
    return kinds, payload_start, payload_end, may_fold_summary


def classify_records(buffer: bytes | bytearray | memoryview, starts: Sequence[int] | np.ndarray, ends: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per `Record` span: KIND_HISTORY / KIND_SUMMARY when it is a plain history / summary
    record the fast path can try, else KIND_OTHER (other record types, malformed or ambiguous
    records: the protobuf view decodes those, and reports the malformed ones)."""
    u8, starts, ends = _check_spans(buffer, starts, ends)
    return _top_level(u8, starts, ends)[0]


# --------------------------------------------------------------------------------------------
# Items and columns
# --------------------------------------------------------------------------------------------


def _tag_bytes(field_number: int, wire: int) -> bytes:
    tag, out = (field_number << 3) | wire, bytearray()
    while tag >= 0x80:
        out.append(tag & 0x7F | 0x80)
        tag >>= 7
    out.append(tag)
    return bytes(out)


_NAME_TAGS = (_tag_bytes(F_ITEM_KEY, WIRE_LEN), _tag_bytes(F_ITEM_NESTED_KEY, WIRE_LEN))
_VALUE_TAG = _tag_bytes(F_ITEM_VALUE_JSON, WIRE_LEN)


def _items_general(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray, **walk: int) -> tuple[np.ndarray, ...]:
    n = len(starts)
    f = _walk(u8, starts, ends, **walk)
    is_len = f.wire == WIRE_LEN
    name = ((f.field == F_ITEM_KEY) | (f.field == F_ITEM_NESTED_KEY)) & is_len
    value = (f.field == F_ITEM_VALUE_JSON) & is_len
    ok = ~f.refused & (np.bincount(f.msg, minlength=n) == 2) & (_count(f, name, n) == 1) & (_count(f, value, n) == 1)
    name_start, name_end, value_start, value_end = (np.zeros(n, dtype=np.int64) for _ in range(4))
    name_start[f.msg[name]], name_end[f.msg[name]] = f.start[name], f.end[name]
    value_start[f.msg[value]], value_end[f.msg[value]] = f.start[value], f.end[value]
    nested_name = np.zeros(n, dtype=bool)
    nested_name[f.msg[name]] = f.field[name] == F_ITEM_NESTED_KEY
    return ok, name_start, name_end, value_start, value_end, nested_name


def _items(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray, **walk: int) -> tuple[np.ndarray, ...]:
    """Items (`HistoryItem`/`SummaryItem`) in the plain shape: one name (`key` or a one-element
    `nested_key`) and one `value_json`. Returns ok per item, the name and value spans, and
    whether the name is a `nested_key`.

    Items as the SDK writes them (name, then value; a name under 128 bytes, a value under 16 KiB)
    are matched byte by byte against that template in a few whole-array operations; the others
    are tokenised with the general lockstep walk."""
    n = len(starts)
    if n == 0 or len(u8) < 4 or len(_VALUE_TAG) > 2 or len(_NAME_TAGS[0]) != 1 or len(_NAME_TAGS[1]) != 1:
        return _items_general(u8, starts, ends, **walk)
    # Four bytes at a time: a strided view gathers (name tag, name length) at each item start
    # and (value tag, value length) after the name with one fancy index each.
    words = np.lib.stride_tricks.as_strided(u8, shape=(len(u8) - 3, 4), strides=(1, 1))
    top = len(u8) - 4
    head = words[np.minimum(starts, top)].view("<u4").ravel()
    first = (head & 0xFF).astype(np.uint8)
    name_length = ((head >> 8) & 0xFF).astype(np.int64)
    ok = (starts < ends) & (starts <= top) & (name_length < 0x80)
    ok &= (first == _NAME_TAGS[0][0]) | (first == _NAME_TAGS[1][0])
    name_start = starts + 2
    name_end = name_start + name_length
    q = name_end
    after = words[np.minimum(q, top)].view("<u4").ravel().astype(np.int64)
    tag_bits = 8 * len(_VALUE_TAG)
    ok &= (q <= top) & ((after & ((1 << tag_bits) - 1)) == int.from_bytes(_VALUE_TAG, "little"))
    l0 = (after >> tag_bits) & 0xFF
    two = l0 >= 0x80
    if len(_VALUE_TAG) == 2:
        l1 = after >> 24
        ok &= ~two | (l1 < 0x80)
        length = np.where(two, (l0 & 0x7F) | (l1 << 7), l0)
    else:
        ok &= ~two
        length = l0
    value_start = q + len(_VALUE_TAG) + 1 + two
    value_end = value_start + length
    ok &= value_end == ends
    nested_name = first == _NAME_TAGS[1][0]
    if not ok.all():
        other = np.flatnonzero(~ok)
        g_ok, g_ns, g_ne, g_vs, g_ve, g_nested = _items_general(u8, starts[other], ends[other], **walk)
        ok[other] = g_ok
        name_start[other], name_end[other], value_start[other], value_end[other] = g_ns, g_ne, g_vs, g_ve
        nested_name[other] = g_nested
    return ok, name_start, name_end, value_start, value_end, nested_name


def _binary(data: pa.Buffer, u8: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """The byte spans as one compact LargeBinary array (a copy of just those bytes)."""
    n = len(starts)
    if n == 0:
        return pa.array([], type=pa.large_binary())
    if n == 1 or (starts[1:] >= ends[:-1]).all():
        # Spans in buffer order: view the buffer as alternating (span, gap) elements and take
        # the spans; Arrow copies each value with one memcpy.
        offsets = np.empty(2 * n, dtype=np.int64)
        offsets[0::2], offsets[1::2] = starts, ends
        view = pa.Array.from_buffers(pa.large_binary(), 2 * n - 1, [None, pa.py_buffer(offsets), data])
        return view.take(pa.array(np.arange(0, 2 * n - 1, 2, dtype=np.int64)))
    lengths = ends - starts
    out_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=out_offsets[1:])
    index = np.arange(out_offsets[-1], dtype=np.int64) + np.repeat(starts - out_offsets[:-1], lengths)
    return pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(out_offsets), pa.py_buffer(u8[index])])


def _utf8(binary: pa.Array) -> tuple[pl.Series | None, np.ndarray]:
    """A String column from binary (one vectorised validation); when some values are not UTF-8,
    None and a mask of the bad values."""
    series = pl.Series(binary)
    try:
        return series.cast(pl.String), np.zeros(len(series), dtype=bool)
    except pl.exceptions.ComputeError:
        bad = np.zeros(len(series), dtype=bool)
        for i, raw in enumerate(series.to_list()):  # rare: only logs holding invalid UTF-8
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                bad[i] = True
        return None, bad


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0, 1, ... within each group of consecutive items (groups of sizes `counts`)."""
    first = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first, counts)


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------


@dataclass
class HistoryBatch:
    """History rows decoded from one batch of records, in record order.

    Per row: `records` (index into the spans given), `step_nums` (`HistoryRecord.step.num`, 0
    when `step` is present without `num`) and `has_step_num`, `row_counts` (items). Per item, in
    row then write order: `keys` and `texts` (String; bookkeeping `_`-items included, as the
    reader keeps them until it builds the table). `slow_records`: indices of records not decoded.
    """

    records: np.ndarray
    step_nums: np.ndarray
    has_step_num: np.ndarray
    row_counts: np.ndarray
    keys: pl.Series
    texts: pl.Series
    slow_records: np.ndarray

    @property
    def item_rows(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.row_counts)), self.row_counts)

    def _first_in_row(self, key: str) -> pl.Series:
        """Each row's first `key` item text (null when the row has none), as the reader does."""
        positions = np.flatnonzero((self.keys == key).to_numpy())
        rows_with, first = np.unique(self.item_rows[positions], return_index=True)
        return pl.Series([None], dtype=pl.String).new_from_index(0, len(self.row_counts)).scatter(
            rows_with, self.texts.gather(positions[first])
        )

    @property
    def steps(self) -> pl.Series:
        """Per row: the first `_step` item as an integer (or a float cut to one), else
        `step.num`, else null (the reader drops such rows with a `missing_step` issue)."""
        texts = self._first_in_row(STEP_KEY)
        n = len(self.row_counts)
        step_nums = pl.Series(self.step_nums, dtype=pl.Int64).zip_with(
            pl.Series(self.has_step_num, dtype=pl.Boolean), pl.Series([None], dtype=pl.Int64).new_from_index(0, n)
        )
        return texts.cast(pl.Int64, strict=False).fill_null(texts.cast(pl.Float64, strict=False).cast(pl.Int64, strict=False)).fill_null(step_nums)

    @property
    def runtimes(self) -> pl.Series:
        return self._first_in_row(RUNTIME_KEY).cast(pl.Float64, strict=False)

    @property
    def timestamps(self) -> pl.Series:
        return self._first_in_row(TIMESTAMP_KEY).cast(pl.Float64, strict=False)

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[int, Sequence[bytes | str], Sequence[bytes | str], int | None]]) -> HistoryBatch:
        """A batch from rows decoded elsewhere (the protobuf path): (record index, names, value
        texts, `step.num` or None). Bytes that are not UTF-8 get replacement characters, as the
        reader's `_text_series` does."""

        def text(raw: bytes | str) -> str:
            return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw

        return cls(
            records=np.asarray([r[0] for r in rows], dtype=np.int64),
            step_nums=np.asarray([r[3] or 0 for r in rows], dtype=np.int64),
            has_step_num=np.asarray([r[3] is not None for r in rows], dtype=bool),
            row_counts=np.asarray([len(r[1]) for r in rows], dtype=np.int64),
            keys=pl.Series([text(k) for r in rows for k in r[1]], dtype=pl.String),
            texts=pl.Series([text(t) for r in rows for t in r[2]], dtype=pl.String),
            slow_records=np.zeros(0, dtype=np.int64),
        )


def empty_history_batch(slow_records: np.ndarray | None = None) -> HistoryBatch:
    empty = np.zeros(0, dtype=np.int64)
    return HistoryBatch(
        records=empty,
        step_nums=empty,
        has_step_num=np.zeros(0, dtype=bool),
        row_counts=empty,
        keys=pl.Series([], dtype=pl.String),
        texts=pl.Series([], dtype=pl.String),
        slow_records=empty if slow_records is None else slow_records.astype(np.int64),
    )


def decode_history(
    buffer: bytes | bytearray | memoryview,
    starts: Sequence[int] | np.ndarray,
    ends: Sequence[int] | np.ndarray,
    *,
    min_active: int = MIN_ACTIVE,
    min_rounds: int = MIN_ROUNDS,
) -> HistoryBatch:
    """Decode the history records whose `Record` payloads are `buffer[starts[i]:ends[i]]`.
    Records that are not plain history records (see the module docstring; other record kinds
    included) are not decoded and come back in `slow_records`; nothing here raises on bad bytes."""
    decoded = decode_records(buffer, starts, ends, min_active=min_active, min_rounds=min_rounds)
    batch = decoded.history
    batch.slow_records = np.setdiff1d(np.arange(len(decoded.kinds)), batch.records)
    return batch


def merge_history(*batches: HistoryBatch) -> HistoryBatch:
    """Batches of rows from the same records (a fast batch plus `HistoryBatch.from_rows` of its
    slow records) as one batch in record order (stable: equal indices keep argument order).
    `slow_records` of the result: those of the inputs not covered by any batch's rows."""
    batches = tuple(b for b in batches)
    if not batches:
        return empty_history_batch()
    batches = tuple(b for b in batches if len(b.records) or len(b.slow_records))
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return empty_history_batch()
    records = np.concatenate([b.records for b in batches])
    counts = np.concatenate([b.row_counts for b in batches])
    if (np.diff(records) >= 0).all():  # already in order: concatenate, no gather
        return HistoryBatch(
            records=records,
            step_nums=np.concatenate([b.step_nums for b in batches]),
            has_step_num=np.concatenate([b.has_step_num for b in batches]),
            row_counts=counts,
            keys=pl.concat([b.keys for b in batches]),
            texts=pl.concat([b.texts for b in batches]),
            slow_records=np.setdiff1d(np.concatenate([b.slow_records for b in batches]), records),
        )
    order = np.argsort(records, kind="stable")
    first = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    item_order = np.repeat(first[order], counts[order]) + _ranks(counts[order])
    covered = set(records.tolist())
    slow = np.unique(np.concatenate([b.slow_records for b in batches]))
    return HistoryBatch(
        records=records[order],
        step_nums=np.concatenate([b.step_nums for b in batches])[order],
        has_step_num=np.concatenate([b.has_step_num for b in batches])[order],
        row_counts=counts[order],
        keys=pl.concat([b.keys for b in batches]).gather(item_order),
        texts=pl.concat([b.texts for b in batches]).gather(item_order),
        slow_records=np.asarray([r for r in slow.tolist() if r not in covered], dtype=np.int64),
    )


def history_frame(batch: HistoryBatch, *, run_id: str, location: str, source: str) -> Any:
    """The reader's history table from a batch holding *all* of a log's rows, exactly as
    `WandbLogReader._history_frame` builds it from its lists (same step rules, `missing_step`
    issues first), returned in the form `wandb_log._history_table` returns (a `HistoryTable`;
    a `(frame, value_types, issues)` tuple before media retention)."""
    from altgrad_pipeline.ingest import wandb_log

    def with_issues(table: Any, issues: list[IngestIssue]) -> Any:
        if isinstance(table, tuple):
            return (table[0], table[1], issues + table[2])
        table.issues[:0] = issues
        return table

    def empty(issues: list[IngestIssue]) -> Any:
        return with_issues(wandb_log.build_history(wandb_log.HistoryColumns(), run_id=run_id, location=location, source=source), issues)

    if not len(batch.row_counts):
        return empty([])
    keys, texts, counts = batch.keys, batch.texts, batch.row_counts
    steps, runtimes, timestamps = batch.steps, batch.runtimes, batch.timestamps
    missing = steps.is_null().to_numpy()
    issues = [
        IngestIssue(
            location=location,
            source=source,
            kind="missing_step",
            reason="history row has neither a `_step` item nor a step number",
            lost=f"{count} values",
        )
        for count in counts[missing]
    ]
    if issues:
        kept_items = pl.Series(~missing[batch.item_rows])
        keys, texts = keys.filter(kept_items), texts.filter(kept_items)
        kept_rows = pl.Series(~missing)
        counts = counts[~missing]
        steps, runtimes, timestamps = steps.filter(kept_rows), runtimes.filter(kept_rows), timestamps.filter(kept_rows)
        if not len(counts):
            return empty(issues)
    table = wandb_log._history_table(
        keys,
        texts,
        row_steps=steps.to_numpy(),
        row_counts=counts,
        row_runtimes=runtimes,
        row_timestamps=timestamps,
        run_id=run_id,
        location=location,
        source=source,
    )
    return with_issues(table, issues)


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


#: A flat-summary entry as `WandbLogReader` folds it: a one-element name as raw bytes, a longer
#: path as a tuple of str; the value JSON text as bytes (fast records) or str (parsed ones).
SummaryEntry = tuple[bytes | tuple[str, ...], bytes | str]


@dataclass
class SummaryBatch:
    """The `update` items of the summary records decoded, as two streams in record order.

    Plain records (every item one name and one value): `records` per update (index into the
    spans given), `keys` (Binary: the raw name bytes, as the reader folds them) and the value
    spans (`texts`, built on demand: a fold only needs each key's last value). Records with
    names of several elements (wandb-core writes `["_wandb", "runtime"]` after every row; split
    histograms) but otherwise well formed and without `remove`: parsed with protobuf, their
    updates in `parsed` as (record index, entry) exactly as `WandbLogReader._fold_items` makes
    them. `slow_records`: records left to the caller's protobuf path."""

    records: np.ndarray
    keys: pl.Series
    value_starts: np.ndarray
    value_ends: np.ndarray
    parsed: list[tuple[int, SummaryEntry]]
    slow_records: np.ndarray
    data: pa.Buffer
    u8: np.ndarray

    @property
    def texts(self) -> pl.Series:
        return pl.Series(_binary(self.data, self.u8, self.value_starts, self.value_ends)).cast(pl.Binary)

    def last_values(self, lo_record: int = 0, hi_record: int | None = None) -> list[SummaryEntry]:
        """The entries the updates of records [lo_record, hi_record) leave: each key's last
        value, keys in order of first appearance (`dict.update` with these leaves a dict exactly
        as updating it item by item would: a key keeps the place of its first insertion)."""
        hi_record = np.iinfo(np.int64).max if hi_record is None else hi_record
        lo, hi = np.searchsorted(self.records, [lo_record, hi_record]).tolist()
        # key -> (first position, last position, value or index of the value span)
        found: dict[bytes | tuple[str, ...], list] = {}
        if hi > lo:
            grouped = (
                pl.DataFrame({"key": self.keys.slice(lo, hi - lo), "index": pl.int_range(lo, hi, eager=True, dtype=pl.Int64)})
                .group_by("key", maintain_order=True)
                .agg(pl.col("index").first().alias("first"), pl.col("index").last().alias("last"))
            )
            last = grouped["last"].to_numpy()
            texts = _binary(self.data, self.u8, self.value_starts[last], self.value_ends[last]).to_pylist()
            positions = self.records[np.concatenate([grouped["first"].to_numpy(), last])]
            firsts, lasts = positions[: len(last)].tolist(), positions[len(last) :].tolist()
            for key, first, last_pos, text in zip(grouped["key"].to_list(), firsts, lasts, texts, strict=True):
                found[key] = [(first, 0), (last_pos, 0), text]
        for order, (record, (key, text)) in enumerate(self.parsed):
            if lo_record <= record < hi_record:
                where = (record, 1 + order)  # parsed and plain records differ, so only record order matters
                entry = found.get(key)
                if entry is None:
                    found[key] = [where, where, text]
                else:
                    entry[0] = min(entry[0], where)
                    if where > entry[1]:
                        entry[1], entry[2] = where, text
        return [(key, entry[2]) for key, entry in sorted(found.items(), key=lambda item: item[1][0])]


def apply_summary(
    batch: SummaryBatch,
    flat: dict,
    decode_slow: Callable[[int], None],
    slow_records: np.ndarray | None = None,
    may_fold: np.ndarray | None = None,
) -> None:
    """Fold a batch into the reader's flat summary in record order, calling
    `decode_slow(record_index)` for each slow record (default: the batch's own). The batch's
    updates are folded at once (each key's last value only) and flushed into `flat` before a
    slow record that may fold into the summary itself; `may_fold` (bool per record index) says
    which may (default: all), so records that cannot touch the summary cost no flush."""
    slow = batch.slow_records if slow_records is None else np.asarray(slow_records, dtype=np.int64)
    lo = 0
    for record in slow.tolist():
        if may_fold is None or may_fold[record]:
            flat.update(batch.last_values(lo, record))
            lo = record + 1
        decode_slow(record)
    flat.update(batch.last_values(lo))


def _parsed_summary(payload: bytes) -> list[SummaryEntry] | None:
    """A summary record's updates as `WandbLogReader._fold_items` folds them (one-element name
    as bytes, a path as a tuple of str, the value as str), or None when protobuf rejects the
    record or it has `remove` items (those need the caller's in-order fold)."""
    from altgrad_pipeline.ingest.wandb_log import WandbLogReader, _record_view

    try:
        view = _record_view().FromString(payload).summary
        summary = wandb_pb.Record.FromString(payload).summary
    except DecodeError:
        return None
    # The reader folds item by item only when its view cannot pair names and values by position.
    if len(summary.remove) or WandbLogReader._single_names(view.update) is not None:
        return None
    entries: list[SummaryEntry] = []
    for item in summary.update:
        path = tuple(item.nested_key) if len(item.nested_key) else (item.key,)
        entries.append((path[0].encode() if len(path) == 1 else path, item.value_json))
    return entries


# --------------------------------------------------------------------------------------------
# Both at once
# --------------------------------------------------------------------------------------------


@dataclass
class DecodedRecords:
    """One batch of `Record`s decoded by the fast path. `kinds` per record (KIND_*: plain
    history / summary, else other); `history` and `summary` hold what was decoded (their
    `records` index the spans given); `slow_records`: every record *not* decoded, in order
    (other kinds, and history/summary records refused), for the caller's protobuf path."""

    kinds: np.ndarray
    history: HistoryBatch
    summary: SummaryBatch
    slow_records: np.ndarray
    #: Per record: may fold into the summary when decoded by the protobuf path (it has a
    #: top-level summary field, or its top level could not be read).
    may_fold_summary: np.ndarray

    def replay(self, flat_summary: dict, decode_slow: Callable[[int], None]) -> None:
        """Fold the fast summary updates into `flat_summary` and call `decode_slow(i)` for every
        slow record in record order; the summary ends exactly as decoding every record in
        order would leave it. (History rows the slow decoder makes go between the fast ones by
        record index: see `merge_history`.)"""
        apply_summary(self.summary, flat_summary, decode_slow, self.slow_records, self.may_fold_summary)


def decode_records(
    buffer: bytes | bytearray | memoryview,
    starts: Sequence[int] | np.ndarray,
    ends: Sequence[int] | np.ndarray,
    *,
    min_active: int = MIN_ACTIVE,
    min_rounds: int = MIN_ROUNDS,
) -> DecodedRecords:
    """Decode the history and summary records among the `Record` payloads
    `buffer[starts[i]:ends[i]]` (any kinds, in log order). History and summary records are
    walked in one lockstep (wandb-core writes them in pairs of equal width), and their items
    matched in one pass. Never raises on bad bytes: what it cannot decode is in `slow_records`."""
    u8, starts, ends = _check_spans(buffer, starts, ends)
    n = len(starts)
    walk = {"min_active": min_active, "min_rounds": min_rounds}
    if n:
        kinds, payload_start, payload_end, may_fold = _top_level(u8, starts, ends)
    else:
        kinds, payload_start, payload_end, may_fold = np.zeros(0, dtype=np.int8), starts, ends, np.zeros(0, dtype=bool)
    rec_h = np.flatnonzero(kinds == KIND_HISTORY)
    rec_s = np.flatnonzero(kinds == KIND_SUMMARY)
    nh, ns = len(rec_h), len(rec_s)
    msg_rec = np.concatenate([rec_h, rec_s])
    fields = _walk(u8, payload_start[msg_rec], payload_end[msg_rec], ordered=True, **walk)
    msg_ok = ~fields.refused
    in_h = fields.msg < nh
    is_len = fields.wire == WIRE_LEN
    # History: items, at most one step, `_info`; item and step length-delimited.
    is_item_h = in_h & (fields.field == F_HISTORY_ITEM)
    is_step = in_h & (fields.field == F_HISTORY_STEP)
    bad_h = in_h & ~((is_item_h | is_step) & is_len | (fields.field == F_HISTORY_INFO))
    # Summary: updates and `_info`; a `remove` (or anything else) leaves the record to upb.
    is_item_s = ~in_h & (fields.field == F_SUMMARY_UPDATE) & is_len
    bad_s = ~in_h & ~(is_item_s | (fields.field == F_SUMMARY_INFO))
    msg_ok &= (_count(fields, bad_h | bad_s, nh + ns) == 0) & (_count(fields, is_step, nh + ns) <= 1)
    # Steps: `HistoryStep` holds at most one varint `num` (0 when absent, as protobuf reads it).
    step_msg = fields.msg[is_step]
    has_step = np.zeros(nh, dtype=bool)
    has_step[step_msg] = True
    step_num = np.zeros(nh, dtype=np.int64)
    if len(step_msg):
        sf = _walk(u8, fields.start[is_step], fields.end[is_step], **walk)
        n_steps = len(step_msg)
        is_num = (sf.field == F_STEP_NUM) & (sf.wire == WIRE_VARINT)
        n_num = _count(sf, is_num, n_steps)
        s_ok = ~sf.refused & (np.bincount(sf.msg, minlength=n_steps) == n_num) & (n_num <= 1)
        msg_ok[step_msg[~s_ok]] = False
        step_num[step_msg[sf.msg[is_num]]] = sf.value[is_num].view(np.int64)
    # Items of both kinds in one pass (message-major, so in record then write order).
    is_item = is_item_h | is_item_s
    item_msg = fields.msg[is_item]
    i_ok, name_start, name_end, value_start, value_end, nested_name = _items(u8, fields.start[is_item], fields.end[is_item], **walk)
    # A record mixing `key` and `nested_key` items is one the reader decodes item by item with
    # a full protobuf parse (its view cannot pair names and values by position): not plain.
    n_msgs = nh + ns
    mixed = (np.bincount(item_msg[i_ok & nested_name], minlength=n_msgs) > 0) & (np.bincount(item_msg[i_ok & ~nested_name], minlength=n_msgs) > 0)
    i_ok &= ~mixed[item_msg]
    # Summary records whose only oddity is item names of several elements: parsed with protobuf
    # (rare records), so they need not be left to the caller, which would flush the fold.
    parsed_msgs = np.unique(item_msg[~i_ok & (item_msg >= nh) & msg_ok[item_msg]])
    msg_ok[item_msg[~i_ok]] = False
    data = pa.py_buffer(buffer)
    # History columns: names and texts validated as UTF-8 (a record with bad bytes goes slow).
    item_h = item_msg < nh
    while True:
        keep = item_h & msg_ok[item_msg]
        keys, bad_keys = _utf8(_binary(data, u8, name_start[keep], name_end[keep]))
        texts, bad_texts = _utf8(_binary(data, u8, value_start[keep], value_end[keep]))
        if keys is not None and texts is not None:
            break
        msg_ok[item_msg[keep][bad_keys | bad_texts]] = False
    h_ok = msg_ok[:nh]
    history = HistoryBatch(
        records=rec_h[h_ok],
        step_nums=step_num[h_ok],
        has_step_num=has_step[h_ok],
        row_counts=np.bincount(item_msg[keep], minlength=nh)[h_ok].astype(np.int64),
        keys=keys,
        texts=texts,
        slow_records=rec_h[~h_ok],
    )
    parsed: list[tuple[int, SummaryEntry]] = []
    for msg in parsed_msgs.tolist():
        record = int(msg_rec[msg])
        entries = _parsed_summary(bytes(u8[starts[record] : ends[record]]))
        if entries is not None:
            msg_ok[msg] = True
            parsed.extend((record, entry) for entry in entries)
    plain_s = msg_ok.copy()
    plain_s[parsed_msgs] = False
    keep_s = ~item_h & plain_s[item_msg]
    s_ok = msg_ok[nh:]
    summary = SummaryBatch(
        records=msg_rec[item_msg[keep_s]],
        keys=pl.Series(_binary(data, u8, name_start[keep_s], name_end[keep_s])).cast(pl.Binary),
        value_starts=value_start[keep_s],
        value_ends=value_end[keep_s],
        parsed=parsed,
        slow_records=rec_s[~s_ok],
        data=data,
        u8=u8,
    )
    slow = np.ones(n, dtype=bool)
    slow[rec_h[h_ok]] = False
    slow[rec_s[s_ok]] = False
    return DecodedRecords(kinds=kinds, history=history, summary=summary, slow_records=np.flatnonzero(slow), may_fold_summary=may_fold)


def decode_summary(
    buffer: bytes | bytearray | memoryview,
    starts: Sequence[int] | np.ndarray,
    ends: Sequence[int] | np.ndarray,
    *,
    min_active: int = MIN_ACTIVE,
    min_rounds: int = MIN_ROUNDS,
) -> SummaryBatch:
    """Decode the summary records whose `Record` payloads are `buffer[starts[i]:ends[i]]`;
    records with `remove` items, multi-element names, other kinds or anything unusual are in
    `slow_records`."""
    decoded = decode_records(buffer, starts, ends, min_active=min_active, min_rounds=min_rounds)
    batch = decoded.summary
    batch.slow_records = np.setdiff1d(np.arange(len(decoded.kinds)), np.flatnonzero(decoded.kinds == KIND_SUMMARY))
    batch.slow_records = np.union1d(batch.slow_records, decoded.slow_records)
    return batch

"""Vectorised decoding of `.wandb` history and summary records: a scan of the protobuf wire format
in C (`_wirescan.c`, when built) or in numpy passes, then columns built with Arrow/Polars.

Why it exists. `WandbLogReader` decodes every record with upb into a columnar view; that still
creates several Python objects per history value (key, value text, and, from wandb-core 0.19 on,
the incremental summary record that mirrors every history row), which capped the reader at about
1.2 M values per CPU-second. This module reads the wire format of many records at once and
builds Arrow/Polars columns from byte offsets: no Python object per value, item or record.

How (the compiled scan: `_top_level_c`, `_scan_messages_c`). One C walk per record classifies
it, one per history/summary message checks its fields, reads its step and its items, encodes the
item names in a hash table and copies the plain history values out. What follows the scan is
shared, and `decode_records` returns the same arrays either way (tests compare them one by one;
the C walk never refuses a record to save rounds, so pass `min_active=1` to the numpy one).

How (numpy). The reader copies each record's payload into one buffer (chunks reassembled) and hands over
its spans. A `Record` laid out as the SDK writes history and summary records (`num`, then that
field, ending the record) is classified with a few gathers; the top level of any other is walked
in lockstep (round k reads every record's k-th field). The item lists of `HistoryRecord`/`SummaryRecord` are found by sequential passes
instead (`_item_lists`: a lockstep walk there is a cache miss per field), and each item is
matched against the shape the SDK writes (`_items`: name tag and length, value tag and length,
a few gathers per item). Names are dictionary-encoded once (Arrow), so the history table sorts
and de-duplicates integer codes and a summary fold keeps each code's last value: only those
values are ever read. Field numbers come from the installed `wandb.proto` descriptors.

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
  - fields after a broken item chain that the lockstep walk cannot finish: after `min_rounds`
    rounds, fewer than `min_active` messages still being walked are left to upb.
Summary records whose only oddity is their item names (`["_wandb", "runtime"]`, which wandb-core
writes after every row; mixed `key`/`nested_key`) are not left to the caller: they are parsed
with protobuf here and folded exactly as `WandbLogReader._fold_items` would: each distinct
payload (without its `Record.num`) once, found by dictionary-encoding the payloads, and the
fold over their updates done with arrays (no Python object per record). Those whose first update
is named by a path (the runtime record) are recognised from their first bytes and parsed before
any item is read: they are a third of the records of a log of narrow rows.
For every record it decodes, the fast path yields exactly what `WandbLogReader._decode` yields
for it (tested record by record and end to end on SDK-written and all corpus files, generated
records, truncated and torn logs, random bytes). `DecodedRecords.replay` interleaves the summary
fold with the caller's slow decoding in record order; `merge_history` puts the slow records'
history rows between the fast ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2 as wandb_pb

from altgrad_pipeline.ingest.wandb import compiled as wandb_compiled
from altgrad_pipeline.ingest.wandb.compiled import compiled_scan
from altgrad_pipeline.ingest.wandb.records import record_view, single_names

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
if tuple(_SITEM[n].number for n in ("key", "nested_key", "value_json")) != (F_ITEM_KEY, F_ITEM_NESTED_KEY, F_ITEM_VALUE_JSON):
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
    """Every field of a set of messages, in no particular order unless the maker says so."""

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


#: Two-byte field headers (tag byte, then length byte, read as one little-endian uint16) of the
#: short path of `_walk`: a one-byte tag of a length-delimited field and a one-byte length.
_SHORT_LEN_HEADER = (((np.arange(1 << 16) & 0x87) == WIRE_LEN) & ((np.arange(1 << 16) >> 8) < 0x80))


def _walk(
    u8: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    *,
    min_active: int = MIN_ACTIVE,
    min_rounds: int = MIN_ROUNDS,
) -> _Fields:
    """Tokenise messages [starts, ends) in lockstep: round k reads every live message's k-th
    field. A round where every field has a one-byte tag, wire type LEN and a one-byte length
    (the usual item list) takes a short path: one 16-bit gather and a table look-up; any other
    round the general one. After `min_rounds` rounds, fewer than `min_active` live messages are
    refused (left to upb)."""
    n = len(starts)
    ends = ends.astype(np.int64, copy=False)
    refused = np.zeros(n, dtype=bool)
    active = np.flatnonzero(starts < ends)
    p, lim = starts[active].astype(np.int64), ends[active]
    headers = _pairs(u8)
    last_header = len(headers) - 1
    out: list[tuple[np.ndarray, ...]] = []
    k = 0
    while active.size:
        if k >= min_rounds and active.size < min_active:
            refused[active] = True
            break
        # A field in a message's last byte reads past it here; such a field is malformed and the
        # general round (or the deferred end check below) refuses it.
        header = headers[np.minimum(p, last_header)] if last_header >= 0 else None
        if header is not None and _SHORT_LEN_HEADER[header].all():
            # Field number 0 and a payload past the end are checked once, after the walk: the
            # message stops here either way (its end is not below `lim`).
            start = p + 2
            end = start + (header >> 8)
            out.append((active, header, None, start, end, None, k))
        else:
            ok, field, wire, start, end, value = _round_general(u8, p, lim)
            if not ok.all():
                refused[active[~ok]] = True
                active, field, wire, start, end, value, lim = (a[ok] for a in (active, field, wire, start, end, value, lim))
            out.append((active, field, wire, start, end, value, k))
        more = end < lim
        if more.all():
            p = end
        else:
            active, p, lim = active[more], end[more], lim[more]
        k += 1
    if not out:
        empty = np.zeros(0, dtype=np.int64)
        return _Fields(empty, empty, empty, empty, empty, np.zeros(0, dtype=np.uint64), refused)
    sizes = [len(o[0]) for o in out]
    msg = np.concatenate([o[0] for o in out])
    field = np.concatenate([((o[1] & 0xFF) >> 3).astype(np.int64) if o[2] is None else o[1] for o in out])
    start = np.concatenate([o[3] for o in out])
    end = np.concatenate([o[4] for o in out])
    general = any(o[2] is not None for o in out)
    if general:
        wire = np.concatenate([np.full(size, WIRE_LEN, dtype=np.int64) if o[2] is None else o[2] for o, size in zip(out, sizes, strict=True)])
        value = np.concatenate([np.zeros(size, dtype=np.uint64) if o[5] is None else o[5] for o, size in zip(out, sizes, strict=True)])
    if not general:
        wire = np.full(len(msg), WIRE_LEN, dtype=np.int64)
        value = np.zeros(len(msg), dtype=np.uint64)
    # The short path's deferred checks: field number 0, a payload running past its message.
    bad = (field == 0) | (end > ends[msg])
    if bad.any():
        refused[msg[bad]] = True
    return _Fields(msg, field, wire, start, end, value, refused)


def _tag_bytes(field_number: int, wire: int) -> bytes:
    tag, out = (field_number << 3) | wire, bytearray()
    while tag >= 0x80:
        out.append(tag & 0x7F | 0x80)
        tag >>= 7
    out.append(tag)
    return bytes(out)


_NAME_TAGS = (_tag_bytes(F_ITEM_KEY, WIRE_LEN), _tag_bytes(F_ITEM_NESTED_KEY, WIRE_LEN))
_VALUE_TAG = _tag_bytes(F_ITEM_VALUE_JSON, WIRE_LEN)

if F_HISTORY_ITEM != F_SUMMARY_UPDATE:
    raise ImportError("wandb.proto: HistoryRecord.item and SummaryRecord.update differ in number; the fast path assumes they agree")
_ITEM_TAG = _tag_bytes(F_HISTORY_ITEM, WIRE_LEN)
_NUM_TAG = _tag_bytes(_RECORD["num"].number, WIRE_VARINT)
_HISTORY_TAG, _SUMMARY_TAG = _tag_bytes(F_RECORD_HISTORY, WIRE_LEN), _tag_bytes(F_RECORD_SUMMARY, WIRE_LEN)
#: A few MB of the buffer at a time when looking for item tags: no buffer-sized temporaries.
_SCAN_BYTES = 1 << 22


def _tag_positions(u8: np.ndarray, lo: int, hi: int, tag: int) -> np.ndarray:
    """Positions in [lo, hi) holding byte `tag`, found in slices reusing one mask."""
    mask = np.empty(min(_SCAN_BYTES, max(hi - lo, 0)), dtype=bool)
    found = []
    for start in range(lo, hi, _SCAN_BYTES):
        stop = min(start + _SCAN_BYTES, hi)
        np.equal(u8[start:stop], tag, out=mask[: stop - start])
        found.append(np.flatnonzero(mask[: stop - start]) + start)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


@dataclass
class _ItemLists:
    """The fields of `HistoryRecord`/`SummaryRecord` messages: the items (message index and
    payload span, in buffer order: each message's in write order, messages in log order) and
    every other field (`others`, whose `refused` covers the messages)."""

    msg: np.ndarray
    start: np.ndarray
    end: np.ndarray
    others: _Fields
    #: Each item's first two bytes (name tag, name length) as `_pairs` reads them.
    name_header: np.ndarray


def _item_lists(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray, **walk: int) -> _ItemLists:
    """Tokenise `HistoryRecord`/`SummaryRecord` messages [starts, ends).

    A lockstep walk reads one field of every message per numpy round, and each of those reads is
    a cache miss (the messages lie 44 KB apart): about 60 ns per field. Here the item lists are
    found with sequential passes instead: every item tag byte followed by a name tag is a
    candidate, each candidate's length says where the next field starts, and a message's items
    are the run of candidates each linked to the next from its first byte. A chain is only
    followed from a real field start, so a stray tag byte inside a value breaks it and can never
    be taken for a field. What follows the chain (the step, or anything after a break) goes to
    the lockstep walk."""
    n = len(starts)
    chain_end = starts.astype(np.int64, copy=True)  # where the lockstep walk takes over
    empty = np.zeros(0, dtype=np.int64)
    msg, item_start, item_end, name_header = empty, empty, empty, np.zeros(0, dtype=np.uint32)
    name_tags = np.frombuffer(b"".join(_NAME_TAGS), dtype=np.uint8)
    if n and len(_ITEM_TAG) == 1 and len(name_tags) == 2:
        order = np.argsort(starts, kind="stable")
        s_sorted, e_sorted = starts[order], ends[order]
        candidates = _tag_positions(u8, int(s_sorted[0]), int(ends.max()), _ITEM_TAG[0])
        # The buffer is padded (`PADDING`): reads past a candidate stay inside it. One gather: the
        # tag, the item's length (first byte) and, after a one-byte length, its name's tag and length.
        quad = _quads(u8)[candidates]
        header = (quad >> 8) & 0xFFFF  # the item's length (first byte) and the byte after it
        two = header & 0x80 != 0
        # An item starts with its name's tag: this drops nearly every stray tag byte (a length of
        # 10 inside an item), which would otherwise break its message's chain.
        name_tag = header >> 8
        if two.any():
            name_tag[two] = u8[candidates[two] + 3]
        plausible = (name_tag == name_tags[0]) | (name_tag == name_tags[1])
        candidates, header, two, quad = candidates[plausible], header[plausible], two[plausible], quad[plausible]
        first_two = quad >> 16
        if two.any():
            first_two[two] = _pairs(u8)[candidates[two] + 3]
        following = candidates + 2 + (header & 0xFF)
        if two.any():
            l0, l1 = (header[two] & 0x7F).astype(np.int64), (header[two] >> 8).astype(np.int64)
            following[two] = np.where(l1 < 0x80, candidates[two] + 3 + (l0 | (l1 << 7)), -1)  # three-byte lengths: not followed
        if len(candidates):
            linked = np.zeros(len(candidates), dtype=bool)
            linked[:-1] = following[:-1] == candidates[1:]
            breaks = np.flatnonzero(~linked)  # the last candidate is never linked: a sentinel
            lo = np.searchsorted(candidates, s_sorted)
            hi = np.searchsorted(candidates, e_sorted)
            lo_clipped = np.minimum(lo, len(candidates) - 1)
            chained = (lo < hi) & (candidates[lo_clipped] == s_sorted)
            last = np.where(chained, np.minimum(breaks[np.searchsorted(breaks, lo_clipped)], hi - 1), lo - 1)
            # The chain's last item must end inside its message; otherwise the walk re-reads it.
            tail = following[np.maximum(last, 0)]
            last[chained & ((tail < 0) | (tail > e_sorted))] -= 1
            counts = np.maximum(last - lo + 1, 0)
            chain_end[order] = np.where(counts > 0, following[np.maximum(last, 0)], s_sorted)
            msg = np.repeat(order, counts)
            if counts.sum() == len(candidates):  # every candidate is an item: no gathers needed
                item_start, item_end, name_header = candidates + 2 + two, following, first_two
            else:
                members = np.repeat(lo, counts) + _ranks(counts)
                item_start = candidates[members] + 2 + two[members]
                item_end, name_header = following[members], first_two[members]
    rest = np.flatnonzero(chain_end < ends)
    walked = _walk(u8, chain_end[rest], ends[rest], **walk)
    walked.msg = rest[walked.msg]
    refused = np.zeros(n, dtype=bool)
    refused[rest[walked.refused]] = True
    walked.refused = refused
    is_item = (walked.field == F_HISTORY_ITEM) & (walked.wire == WIRE_LEN)
    if is_item.any():  # items after a broken chain: put them in place
        msg, item_start, item_end = (np.concatenate([a, b[is_item]]) for a, b in ((msg, walked.msg), (item_start, walked.start), (item_end, walked.end)))
        name_header = np.concatenate([name_header, _pairs(u8)[walked.start[is_item]]])
        by_start = np.argsort(item_start, kind="stable")
        msg, item_start, item_end, name_header = msg[by_start], item_start[by_start], item_end[by_start], name_header[by_start]
        keep = ~is_item
        walked = _Fields(walked.msg[keep], walked.field[keep], walked.wire[keep], walked.start[keep], walked.end[keep], walked.value[keep], refused)
    return _ItemLists(msg, item_start, item_end, walked, name_header)


def _count(fields: _Fields, mask: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(fields.msg[mask], minlength=n)


#: Zero bytes the decoder wants after the last record: template reads run up to a few hundred
#: bytes past an item start, and need no bounds check when they stay inside the buffer.
PADDING = 512


def _check_spans(
    buffer: bytes | bytearray | memoryview, starts: Sequence[int] | np.ndarray, ends: Sequence[int] | np.ndarray
) -> tuple[bytes | bytearray | memoryview, np.ndarray, np.ndarray, np.ndarray]:
    """The buffer (copied with `PADDING` zero bytes when it has fewer after the last span), its
    bytes as uint8 and the spans as int64."""
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    ends = np.asarray(ends, dtype=np.int64).reshape(-1)
    if starts.shape != ends.shape:
        raise ValueError("starts and ends differ in length")
    size = len(memoryview(buffer).cast("B"))
    if len(starts) and ((starts < 0).any() or (ends < starts).any() or (ends > size).any()):
        raise ValueError("record spans must satisfy 0 <= start <= end <= len(buffer)")
    if size < (int(ends.max()) if len(ends) else 0) + PADDING:
        buffer = bytes(buffer) + bytes(PADDING)
    return buffer, np.frombuffer(buffer, dtype=np.uint8), starts, ends


def _pairs(u8: np.ndarray) -> np.ndarray:
    """Every byte position's (byte, next byte) as one little-endian uint16: a view, no copy. One
    gather from it reads two bytes of a field header."""
    return np.ndarray((max(len(u8) - 1, 0),), dtype="<u2", buffer=u8, strides=(1,))


def _quads(u8: np.ndarray) -> np.ndarray:
    """Every byte position's next four bytes as one little-endian uint32: a view, like `_pairs`."""
    return np.ndarray((max(len(u8) - 3, 0),), dtype="<u4", buffer=u8, strides=(1,))


def _top_level(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per `Record`: its kind and the span of its history/summary payload (0, 0 for others).
    Plain history (summary): that field exactly once, length-delimited, and none of the other
    fields the reader's view declares. More than 16 top-level fields: not plain."""
    n = len(starts)
    kinds = np.full(n, KIND_OTHER, dtype=np.int8)
    payload_start = np.zeros(n, dtype=np.int64)
    payload_end = np.zeros(n, dtype=np.int64)
    may_fold_summary = np.zeros(n, dtype=bool)
    # The SDK writes a history (summary) record as `num`, then that field, ending the record:
    # read with a few gathers per record. Every other layout is walked field by field.
    laid_out = np.zeros(n, dtype=bool)
    if len(_NUM_TAG) == 1 and len(_HISTORY_TAG) == 1 and len(_SUMMARY_TAG) == 1:
        at = starts + ((u8[starts] == _NUM_TAG[0]) & (starts < ends))
        numbered = at > starts
        if numbered.any():
            _, after_num, ok_num = _varint(u8, at[numbered], ends[numbered], 10)
            at[numbered] = np.where(ok_num, after_num, ends[numbered])
        tag = u8[at]
        length, after_length, ok = _varint(u8, at + 1, ends, 5)
        ok &= (at < ends) & ((tag == _HISTORY_TAG[0]) | (tag == _SUMMARY_TAG[0])) & (length < (1 << 31))
        laid_out = ok & (after_length + length.astype(np.int64) == ends)
        kinds[laid_out] = np.where(tag[laid_out] == _HISTORY_TAG[0], KIND_HISTORY, KIND_SUMMARY)
        payload_start[laid_out], payload_end[laid_out] = after_length[laid_out], ends[laid_out]
        may_fold_summary[laid_out] = kinds[laid_out] == KIND_SUMMARY
    other = np.flatnonzero(~laid_out)
    if not len(other):
        return kinds, payload_start, payload_end, may_fold_summary
    top = _walk(u8, starts[other], ends[other], min_rounds=16, min_active=len(other) + 1)
    m = len(other)
    declared = _count(top, np.isin(top.field, F_RECORD_DECLARED), m)
    for number, kind in ((F_RECORD_HISTORY, KIND_HISTORY), (F_RECORD_SUMMARY, KIND_SUMMARY)):
        target = (top.field == number) & (top.wire == WIRE_LEN)
        plain = ~top.refused & (_count(top, target, m) == 1) & (declared == 1)
        kinds[other[plain]] = kind
        sel = target & plain[top.msg]
        payload_start[other[top.msg[sel]]], payload_end[other[top.msg[sel]]] = top.start[sel], top.end[sel]
    may_fold_summary[other] = top.refused | (_count(top, top.field == F_RECORD_SUMMARY, m) > 0)
    return kinds, payload_start, payload_end, may_fold_summary


#: Field numbers `_wirescan.scan` reads, in its order.
_SCAN_NUMBERS = (F_HISTORY_ITEM, F_HISTORY_STEP, F_HISTORY_INFO, F_SUMMARY_INFO, F_STEP_NUM, F_ITEM_KEY, F_ITEM_NESTED_KEY, F_ITEM_VALUE_JSON)


def _top_level_c(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_top_level` by `_wirescan.classify`: one sequential walk per record."""
    n = len(starts)
    kinds = np.empty(n, dtype=np.int8)
    payload_start, payload_end = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    may_fold = np.empty(n, dtype=bool)
    declared = np.asarray(F_RECORD_DECLARED, dtype=np.uint64)
    wandb_compiled._wirescan.classify(u8, starts, ends, F_RECORD_HISTORY, F_RECORD_SUMMARY, declared, kinds, payload_start, payload_end, may_fold)
    return kinds, payload_start, payload_end, may_fold


def _scan_messages_c(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray, nh: int, **_walk: int) -> tuple:
    """`_scan_messages` by `_wirescan.scan`: one sequential walk per message, nothing left to a
    lockstep walk (so `min_active`/`min_rounds` do not apply), names dictionary-encoded and the
    plain history items' values copied out (`item_texts`, one entry per item) as they are read.
    Items of messages that are not ok are left out (the caller drops them either way). The item
    arrays are sized for items of 24 bytes or more on average; more items than that take a second
    call with the exact count."""
    n = len(starts)
    starts, ends = np.ascontiguousarray(starts, dtype=np.int64), np.ascontiguousarray(ends, dtype=np.int64)
    msg_ok, has_step, step_num = np.empty(n, dtype=bool), np.empty(nh, dtype=bool), np.empty(nh, dtype=np.int64)
    capacity = int((ends - starts).sum()) // 24 + 16
    texts = np.empty(int((ends[:nh] - starts[:nh]).sum()), dtype=np.uint8)
    while True:
        item_msg, code, values = np.empty(capacity, dtype=np.int32), np.empty(capacity, dtype=np.int32), np.empty((capacity, 2), dtype=np.int64)
        item_ok, nested, text_offsets = np.empty(capacity, dtype=bool), np.empty(capacity, dtype=bool), np.empty(capacity + 1, dtype=np.int64)
        count, name_spans = wandb_compiled._wirescan.scan(
            u8, starts, ends, nh, _SCAN_NUMBERS, msg_ok, has_step, step_num, item_msg, code, values, item_ok, nested, text_offsets, texts
        )
        if count <= capacity:
            break
        capacity = count
    name_spans = np.frombuffer(name_spans, dtype=np.int64).reshape(-1, 2)
    dictionary = _binary(pa.py_buffer(u8), u8, name_spans[:, 0], name_spans[:, 1])
    item_texts = pa.Array.from_buffers(pa.large_binary(), count, [None, pa.py_buffer(text_offsets[: count + 1]), pa.py_buffer(texts)])
    return msg_ok, has_step, step_num, item_msg[:count], item_ok[:count], code[:count], dictionary, values[:count, 0], values[:count, 1], nested[:count], item_texts


def plain_record_bytes(buffer: bytes | bytearray | memoryview, starts: Sequence[int] | np.ndarray, ends: Sequence[int] | np.ndarray) -> int:
    """Payload bytes of the plain history and summary records among the `Record`s: what the
    fast path would decode (below a megabyte or so, upb is faster than numpy's per-call cost)."""
    _, u8, starts, ends = _check_spans(buffer, starts, ends)
    if not len(starts):
        return 0
    kinds, payload_start, payload_end, _ = (_top_level_c if compiled_scan() else _top_level)(u8, starts, ends)
    plain = kinds != KIND_OTHER
    return int((payload_end[plain] - payload_start[plain]).sum())


# --------------------------------------------------------------------------------------------
# Items and columns
# --------------------------------------------------------------------------------------------


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


#: Per (tag byte, length byte) pair: a name field of the plain item shape (a `key` or
#: `nested_key` tag and a one-byte length).
_NAME_HEADER = np.zeros(1 << 16, dtype=bool)
for _tag in _NAME_TAGS:
    if len(_tag) == 1:
        _NAME_HEADER[_tag[0] | (np.arange(0x80) << 8)] = True


def _items(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray, name_header: np.ndarray | None = None, **walk: int) -> tuple[np.ndarray, ...]:
    """Items (`HistoryItem`/`SummaryItem`) in the plain shape: one name (`key` or a one-element
    `nested_key`) and one `value_json`. Returns ok per item, the name and value spans, and
    whether the name is a `nested_key`. `name_header`: each item's first two bytes, when known.

    Items as the SDK writes them (name, then value; a name under 128 bytes, a value under 16 KiB)
    are matched against that template with a two-byte and a four-byte gather per item; the others are
    tokenised with the general lockstep walk."""
    n = len(starts)
    if n == 0 or len(_VALUE_TAG) != 2 or len(_NAME_TAGS[0]) != 1 or len(_NAME_TAGS[1]) != 1:
        return _items_general(u8, starts, ends, **walk)

    # The buffer is padded (`PADDING`): every read below stays inside it.
    name_header = _pairs(u8)[starts] if name_header is None else name_header
    ok = _NAME_HEADER[name_header]
    name_start = starts + 2
    name_end = name_start + (name_header >> 8)
    value_field = _quads(u8)[name_end]  # the value's tag and (up to) two length bytes in one gather
    ok &= (value_field & 0xFFFF) == int.from_bytes(_VALUE_TAG, "little")
    value_header = value_field >> 16
    value_start = name_end + 3
    two = (value_header & 0x80) != 0
    if two.any():  # values of 128 bytes or more: a two-byte length
        value_header = value_header.astype(np.int64)
        ok &= ~two | (value_header < 0x8000)
        value_end = value_start + two + np.where(two, (value_header & 0x7F) | ((value_header >> 8) << 7), value_header & 0xFF)
        value_start += two
    else:
        value_end = value_start + (value_header & 0xFF)
    ok &= value_end == ends
    nested_name = (name_header & 0xFF) == _NAME_TAGS[1][0]
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
    compiled = compiled_scan() if n else None
    if compiled:
        starts, ends = np.ascontiguousarray(starts, dtype=np.int64), np.ascontiguousarray(ends, dtype=np.int64)
        offsets, out = np.empty(n + 1, dtype=np.int64), np.empty(int((ends - starts).sum()), dtype=np.uint8)
        compiled.gather(u8, starts, ends, offsets, out)
        return pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(out)])
    if n == 0:
        return pa.Array.from_buffers(pa.large_binary(), 0, [None, pa.py_buffer(np.zeros(1, dtype=np.int64)), pa.py_buffer(b"")])
    if n == 1 or (starts[1:] >= ends[:-1]).all():
        # Spans in buffer order: view the buffer as alternating (span, gap) elements and take
        # the spans; Arrow copies each value with one memcpy.
        offsets = np.empty(2 * n, dtype=np.int64)
        offsets[0::2], offsets[1::2] = starts, ends
        view = pa.Array.from_buffers(pa.large_binary(), 2 * n - 1, [None, pa.py_buffer(offsets), data])
        # (`pa.array` of a numpy array would import pandas: 0.2 s on the first call.)
        every_other = pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(np.arange(0, 2 * n - 1, 2, dtype=np.int64))])
        return view.take(every_other)
    lengths = ends - starts
    out_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=out_offsets[1:])
    index = np.arange(out_offsets[-1], dtype=np.int64) + np.repeat(starts - out_offsets[:-1], lengths)
    return pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(out_offsets), pa.py_buffer(u8[index])])


def _selection(mask: np.ndarray) -> slice | np.ndarray:
    """Where `mask` holds, as a slice when those entries are one contiguous stretch (the usual
    case: items are in message order and every message decoded), else as their indices. A slice
    selects several arrays by the same mask without a gather each."""
    kept = np.flatnonzero(mask)
    if not len(kept):
        return slice(0, 0)
    if kept[-1] - kept[0] + 1 == len(kept):  # increasing and as many as the span holds: all of it
        return slice(int(kept[0]), int(kept[-1]) + 1)
    return kept


def _kept_values(values: pa.Array, kept: slice | np.ndarray) -> pa.Array:
    """The entries `kept` (`_selection`) of `values`: a zero-copy slice, else a gather."""
    if isinstance(kept, slice):
        return values.slice(kept.start, kept.stop - kept.start)
    return _take(values, kept)


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


def _codes(encoded: pa.DictionaryArray) -> np.ndarray:
    """The indices of a dictionary-encoded array without nulls, as int64 (read from the Arrow
    buffer: `to_numpy` would import pandas, 0.2 s on the first call)."""
    indices = encoded.indices
    width = indices.type.bit_width // 8
    return np.frombuffer(indices.buffers()[1], dtype=f"<i{width}", count=len(indices), offset=indices.offset * width).astype(np.int64)


def _first_appearance(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes into a dictionary of `size` entries, renumbered 0, 1, ... in order of first
    appearance (as Arrow's `dictionary_encode` numbers them), and the entries they now name."""
    compiled = compiled_scan()
    if compiled:
        renumbered, entries = np.empty(len(codes), dtype=np.int64), np.empty(size, dtype=np.int64)
        distinct = compiled.first_appearance(np.ascontiguousarray(codes), size, renumbered, entries)
        return renumbered, entries[:distinct]
    first = np.full(size, len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes), dtype=np.int64))
    used = np.flatnonzero(first < len(codes))
    entries = used[np.argsort(first[used], kind="stable")]
    renumber = np.empty(size, dtype=np.int64)
    renumber[entries] = np.arange(len(entries), dtype=np.int64)
    return renumber[codes], entries


def _take(array: pa.Array, indices: np.ndarray) -> pa.Array:
    """`array.take(indices)` without `pa.array` of numpy (which would import pandas)."""
    return array.take(pa.Array.from_buffers(pa.int64(), len(indices), [None, pa.py_buffer(np.ascontiguousarray(indices, dtype=np.int64))]))


def encode_keys(keys: pl.Series) -> tuple[pl.Series, np.ndarray]:
    """Item names as (distinct names, each item's index into them): one hash pass (Arrow's
    dictionary encoding), after which sorting, grouping and comparing keys are integer work."""
    encoded = pc.dictionary_encode(keys.to_arrow())
    return pl.Series(encoded.dictionary).cast(pl.String), _codes(encoded)


@dataclass
class HistoryBatch:
    """History rows decoded from one batch of records, in record order.

    Per row: `records` (index into the spans given), `step_nums` (`HistoryRecord.step.num`, 0
    when `step` is present without `num`) and `has_step_num`, `row_counts` (items). Per item, in
    row then write order: `codes` into `names` (the distinct item names) and `texts` (String;
    bookkeeping `_`-items included, as the reader keeps them until it builds the table).
    """

    records: np.ndarray
    step_nums: np.ndarray
    has_step_num: np.ndarray
    row_counts: np.ndarray
    names: pl.Series
    codes: np.ndarray
    texts: pl.Series

    @property
    def keys(self) -> pl.Series:
        return self.names.gather(self.codes)

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[int, Sequence[bytes | str], Sequence[bytes | str], int | None]]) -> HistoryBatch:
        """A batch from rows decoded elsewhere (the protobuf path): (record index, names, value
        texts, `step.num` or None). Bytes that are not UTF-8 get replacement characters, as the
        reader's `text_series` (wandb.history) does."""

        def text(raw: bytes | str) -> str:
            return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw

        names, codes = encode_keys(pl.Series([text(k) for r in rows for k in r[1]], dtype=pl.String))
        return cls(
            records=np.asarray([r[0] for r in rows], dtype=np.int64),
            step_nums=np.asarray([r[3] or 0 for r in rows], dtype=np.int64),
            has_step_num=np.asarray([r[3] is not None for r in rows], dtype=bool),
            row_counts=np.asarray([len(r[1]) for r in rows], dtype=np.int64),
            names=names,
            codes=codes,
            texts=pl.Series([text(t) for r in rows for t in r[2]], dtype=pl.String),
        )


def merge_history(*batches: HistoryBatch) -> HistoryBatch:
    """Batches of rows of one log (fast batches, `HistoryBatch.from_rows` of slow records) as
    one batch in record order (stable: equal indices keep argument order). The name
    dictionaries are merged (a few thousand names at most); items move only when rows do."""
    batches = tuple(b for b in batches if len(b.records))
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return HistoryBatch.from_rows([])
    names, remap = encode_keys(pl.concat([b.names for b in batches]))
    first_name = np.cumsum([0, *(len(b.names) for b in batches)])
    codes = np.concatenate([remap[first + b.codes] for first, b in zip(first_name, batches)])
    texts = pl.concat([b.texts for b in batches])
    records = np.concatenate([b.records for b in batches])
    counts = np.concatenate([b.row_counts for b in batches])
    step_nums = np.concatenate([b.step_nums for b in batches])
    has_step_num = np.concatenate([b.has_step_num for b in batches])
    if (np.diff(records) < 0).any():  # slow rows between fast ones
        order = np.argsort(records, kind="stable")
        first = np.zeros(len(counts), dtype=np.int64)
        np.cumsum(counts[:-1], out=first[1:])
        item_order = np.repeat(first[order], counts[order]) + _ranks(counts[order])
        codes, texts = codes[item_order], texts.gather(pl.Series(item_order))
        records, counts, step_nums, has_step_num = records[order], counts[order], step_nums[order], has_step_num[order]
    return HistoryBatch(records, step_nums, has_step_num, counts, names, codes, texts)


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
    spans given), `codes` into `names` (the distinct raw name bytes, as the reader folds them)
    and the value spans (read only for each key's last value: all a fold needs). Records with
    names of several elements (wandb-core writes `["_wandb", "runtime"]` after every row; split
    histograms) but otherwise well formed and without `remove`: parsed with protobuf, their
    updates in `parsed` as (record index, entry) exactly as `WandbLogReader._fold_items` makes
    them."""

    records: np.ndarray
    codes: np.ndarray
    names: list[bytes]
    value_starts: np.ndarray
    value_ends: np.ndarray
    #: The parsed records' updates in order: record index and index into `parsed_entries`.
    parsed_records: np.ndarray
    parsed_entry: np.ndarray
    parsed_entries: list[SummaryEntry]
    data: pa.Buffer
    u8: np.ndarray

    @property
    def parsed(self) -> list[tuple[int, SummaryEntry]]:
        """The parsed records' updates as (record index, entry), in order."""
        return [(record, self.parsed_entries[entry]) for record, entry in zip(self.parsed_records.tolist(), self.parsed_entry.tolist(), strict=True)]

    def last_values(self, lo_record: int = 0, hi_record: int | None = None) -> list[SummaryEntry]:
        """The entries the updates of records [lo_record, hi_record) leave: each key's last
        value, keys in order of first appearance (`dict.update` with these leaves a dict exactly
        as updating it item by item would: a key keeps the place of its first insertion)."""
        hi_record = np.iinfo(np.int64).max if hi_record is None else hi_record
        lo, hi = np.searchsorted(self.records, [lo_record, hi_record]).tolist()
        # key -> (first position, last position, value or index of the value span)
        found: dict[bytes | tuple[str, ...], list] = {}
        if hi > lo:
            codes, index = self.codes[lo:hi], np.arange(lo, hi, dtype=np.int64)
            first = np.full(len(self.names), hi, dtype=np.int64)
            np.minimum.at(first, codes, index)
            last = np.full(len(self.names), -1, dtype=np.int64)
            np.maximum.at(last, codes, index)
            present = np.flatnonzero(last >= 0)
            first, last = first[present], last[present]
            texts = _binary(self.data, self.u8, self.value_starts[last], self.value_ends[last]).to_pylist()
            rows = zip(present.tolist(), self.records[first].tolist(), first.tolist(), self.records[last].tolist(), last.tolist(), texts, strict=True)
            for code, first_record, first_item, last_record, last_item, text in rows:
                found[self.names[code]] = [(first_record, 0, first_item), (last_record, 0, last_item), text]
        lo, hi = np.searchsorted(self.parsed_records, [lo_record, hi_record]).tolist()
        if hi > lo:
            # Each key's first and last update among them (parsed and plain records differ:
            # record order decides between them).
            key_codes: dict[bytes | tuple[str, ...], int] = {}
            entry_key = np.asarray([key_codes.setdefault(key, len(key_codes)) for key, _ in self.parsed_entries], dtype=np.int64)
            keys = list(key_codes)
            index = np.arange(lo, hi, dtype=np.int64)
            codes = entry_key[self.parsed_entry[lo:hi]]
            first = np.full(len(keys), hi, dtype=np.int64)
            np.minimum.at(first, codes, index)
            last = np.full(len(keys), -1, dtype=np.int64)
            np.maximum.at(last, codes, index)
            present = np.flatnonzero(last >= 0)
            for code, first_at, last_at in zip(present.tolist(), first[present].tolist(), last[present].tolist(), strict=True):
                key = keys[code]
                first_where = (int(self.parsed_records[first_at]), 1 + first_at)
                last_where = (int(self.parsed_records[last_at]), 1 + last_at)
                text = self.parsed_entries[int(self.parsed_entry[last_at])][1]
                entry = found.get(key)
                if entry is None:
                    found[key] = [first_where, last_where, text]
                else:
                    entry[0] = min(entry[0], first_where)
                    if last_where > entry[1]:
                        entry[1], entry[2] = last_where, text
        return [(key, entry[2]) for key, entry in sorted(found.items(), key=lambda item: item[1][0])]


def _without_record_number(payload: bytes) -> bytes:
    """The payload without a leading `Record.num` of at most 9 bytes (valid for every parser), so
    records differing only in their number compare equal; any other payload as it is."""
    if payload.startswith(_NUM_TAG):
        for end in range(len(_NUM_TAG), min(len(payload), len(_NUM_TAG) + 9)):
            if payload[end] < 0x80:
                return payload[end + 1 :]
    return payload


def _after_record_number(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Where each payload [starts, ends) goes on after a leading `Record.num` (as
    `_without_record_number` cuts it), or its start when it has none (the buffer is padded)."""
    if len(_NUM_TAG) != 1:
        cut = [len(p) - len(_without_record_number(p)) for p in (bytes(u8[s:e]) for s, e in zip(starts.tolist(), ends.tolist(), strict=True))]
        return starts + np.asarray(cut, dtype=np.int64)
    after = starts.copy()
    todo = np.flatnonzero(u8[starts] == _NUM_TAG[0])
    for end in range(1, 10):
        if not todo.size:
            break
        at = starts[todo] + end
        inside = at < ends[todo]
        todo, at = todo[inside], at[inside]
        done = u8[at] < 0x80
        after[todo[done]] = at[done] + 1
        todo = todo[~done]
    return after


def _parsed_summary(payload: bytes) -> list[SummaryEntry] | None:
    """A summary record's updates as `WandbLogReader._fold_items` folds them (one-element name
    as bytes, a path as a tuple of str, the value as str), or None when protobuf rejects the
    record or it has `remove` items (those need the caller's in-order fold)."""
    try:
        view = record_view().FromString(payload).summary
        summary = wandb_pb.Record.FromString(payload).summary
    except DecodeError:
        return None
    # The reader folds item by item only when its view cannot pair names and values by position.
    if len(summary.remove) or single_names(view.update) is not None:
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
        lo = 0
        for record in self.slow_records.tolist():
            if self.may_fold_summary[record]:  # flush the fast updates before it folds its own
                flat_summary.update(self.summary.last_values(lo, record))
                lo = record + 1
            decode_slow(record)
        flat_summary.update(self.summary.last_values(lo))


@dataclass
class _ParsedSummaries:
    """Summary records decoded with protobuf (`_parse_alike`): their updates as `SummaryBatch`
    keeps them (record index per update, index into `entries`), gathered over several calls."""

    entries: list[SummaryEntry] = field(default_factory=list)
    parts: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(record per update, entry per update), in record then update order."""
        if not self.parts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        records, entry = (np.concatenate(c) for c in zip(*self.parts))
        order = np.argsort(records, kind="stable")
        return records[order], entry[order]


def _parse_alike(u8: np.ndarray, data: pa.Buffer, starts: np.ndarray, ends: np.ndarray, records: np.ndarray, parsed: _ParsedSummaries) -> np.ndarray:
    """Parse the summary `records` with protobuf (`_parsed_summary`), each distinct payload
    (without its `Record.num`) once: wandb-core writes the same runtime summary record many
    times, numbered differently. Adds their updates to `parsed`; returns which were parsed (the
    others are left to the caller's protobuf path)."""
    if not len(records):
        return np.zeros(0, dtype=bool)
    alike_start = _after_record_number(u8, starts[records], ends[records])
    encoded = pc.dictionary_encode(_binary(data, u8, alike_start, ends[records]))
    alike = _codes(encoded)
    first_of = np.full(len(encoded.dictionary), len(records), dtype=np.int64)
    np.minimum.at(first_of, alike, np.arange(len(records), dtype=np.int64))
    entry_lo = np.zeros(len(first_of), dtype=np.int64)
    entry_count = np.zeros(len(first_of), dtype=np.int64)
    for code, record in enumerate(records[first_of].tolist()):
        entries = _parsed_summary(bytes(u8[starts[record] : ends[record]]))
        if entries is not None:
            entry_lo[code], entry_count[code] = len(parsed.entries), len(entries)
            parsed.entries.extend(entries)
        else:
            entry_count[code] = -1
    good = entry_count[alike] >= 0
    counts = entry_count[alike[good]]
    parsed.parts.append((np.repeat(records[good], counts), np.repeat(entry_lo[alike[good]], counts) + _ranks(counts)))
    return good


def _first_name_is_a_path(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per `SummaryRecord` payload [starts, ends): its first field is an update whose name is a
    `nested_key` of two or more elements (item tag, one-byte length, `nested_key` tag, one-byte
    length, then another `nested_key` element), as `["_wandb", "runtime"]` is."""
    if len(_ITEM_TAG) != 1 or len(_NAME_TAGS[1]) != 1 or not len(starts):
        return np.zeros(len(starts), dtype=bool)
    # The buffer is padded (`PADDING`): reads past a short payload stay inside it and the
    # length checks reject them.
    header = _quads(u8)[starts].astype(np.int64)
    nested = _NAME_TAGS[1][0]
    name_length = header >> 24
    path = (
        (ends - starts >= 6)
        & ((header & 0xFF) == _ITEM_TAG[0])
        & (((header >> 8) & 0xFF) < 0x80)
        & (((header >> 16) & 0xFF) == nested)
        & (name_length < 0x80)
    )
    after_name = starts + 4 + np.where(path, name_length, 0)
    return path & (after_name < ends) & (u8[np.minimum(after_name, len(u8) - 1)] == nested)


def _scan_messages(u8: np.ndarray, starts: np.ndarray, ends: np.ndarray, nh: int, **walk: int) -> tuple[np.ndarray, ...]:
    """The `HistoryRecord`s (the first `nh`) and `SummaryRecord`s [starts, ends), with numpy passes:
    msg_ok (their fields other than items are plain), has_step and step_num per history message;
    per item (message then write order) its message, ok (the plain item shape), its name's code
    among the distinct raw names (a binary array; codes of items that are not ok mean nothing),
    its value span, and whether its name is a `nested_key`; then None where the compiled scan
    gives the history values. `_wirescan.scan` computes the same in C (its dictionary may hold
    names of other items, never fewer)."""
    ns = len(starts) - nh
    lists = _item_lists(u8, starts, ends, **walk)
    fields = lists.others
    msg_ok = ~fields.refused
    in_h = fields.msg < nh
    # History: items (in `lists`), at most one length-delimited step, `_info`.
    is_step = in_h & (fields.field == F_HISTORY_STEP) & (fields.wire == WIRE_LEN)
    bad_h = in_h & ~(is_step | (fields.field == F_HISTORY_INFO))
    # Summary: updates (in `lists`) and `_info`; a `remove` (or anything else) leaves the record to upb.
    bad_s = ~in_h & (fields.field != F_SUMMARY_INFO)
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
    i_ok, name_start, name_end, value_start, value_end, nested_name = _items(u8, lists.start, lists.end, lists.name_header, **walk)
    encoded = pc.dictionary_encode(_binary(pa.py_buffer(u8), u8, name_start, name_end))
    return msg_ok, has_step, step_num, lists.msg, i_ok, _codes(encoded), encoded.dictionary, value_start, value_end, nested_name, None


def decode_records(
    buffer: bytes | bytearray | memoryview,
    starts: Sequence[int] | np.ndarray,
    ends: Sequence[int] | np.ndarray,
    *,
    min_active: int = MIN_ACTIVE,
    min_rounds: int = MIN_ROUNDS,
) -> DecodedRecords:
    """Decode the history and summary records among the `Record` payloads
    `buffer[starts[i]:ends[i]]` (any kinds, in log order): their item lists found by item
    chains, their items matched in one pass. Never raises on bad bytes: what it cannot decode
    is in `slow_records`."""
    buffer, u8, starts, ends = _check_spans(buffer, starts, ends)
    n = len(starts)
    walk = {"min_active": min_active, "min_rounds": min_rounds}
    compiled = compiled_scan()
    if n:
        kinds, payload_start, payload_end, may_fold = (_top_level_c if compiled else _top_level)(u8, starts, ends)
    else:
        kinds, payload_start, payload_end, may_fold = np.zeros(0, dtype=np.int8), starts, ends, np.zeros(0, dtype=bool)
    rec_h = np.flatnonzero(kinds == KIND_HISTORY)
    rec_s = np.flatnonzero(kinds == KIND_SUMMARY)
    data = pa.py_buffer(buffer)
    parsed = _ParsedSummaries()
    # wandb-core writes the same `_wandb.runtime` summary record after every row: records whose
    # first update is named by a path of several elements are parsed once per distinct payload
    # before any item is looked at (a third of the records of a narrow-row log).
    pathed = rec_s[_first_name_is_a_path(u8, payload_start[rec_s], payload_end[rec_s])]
    if len(pathed):
        rec_s = np.setdiff1d(rec_s, pathed[_parse_alike(u8, data, starts, ends, pathed, parsed)], assume_unique=True)
    nh, ns = len(rec_h), len(rec_s)
    msg_rec = np.concatenate([rec_h, rec_s])
    scan = _scan_messages_c if compiled else _scan_messages
    msg_ok, has_step, step_num, item_msg, i_ok, name_code, name_dictionary, value_start, value_end, nested_name, item_texts = scan(
        u8, payload_start[msg_rec], payload_end[msg_rec], nh, **walk
    )
    # A record mixing `key` and `nested_key` items is one the reader decodes item by item with
    # a full protobuf parse (its view cannot pair names and values by position): not plain.
    n_msgs = nh + ns
    nested_ok = i_ok & nested_name
    if nested_ok.any() and (nested_ok != i_ok).any():  # both kinds of name occur: look per record
        mixed = (np.bincount(item_msg[nested_ok], minlength=n_msgs) > 0) & (np.bincount(item_msg[i_ok & ~nested_name], minlength=n_msgs) > 0)
        i_ok &= ~mixed[item_msg]
    # Summary records whose only oddity is item names of several elements: parsed with protobuf
    # (rare records), so they need not be left to the caller, which would flush the fold.
    odd_msg = item_msg[np.flatnonzero(~i_ok)]  # messages of the items not of the plain shape: usually none
    parsed_msgs = np.flatnonzero(np.bincount(odd_msg[(odd_msg >= nh) & msg_ok[odd_msg]], minlength=n_msgs))
    msg_ok[odd_msg] = False
    # History columns: names and texts validated as UTF-8 (a record with bad bytes goes slow).
    item_h = item_msg < nh
    while True:
        keep = _selection(item_h & msg_ok[item_msg])
        codes, entries = _first_appearance(name_code[keep], len(name_dictionary))
        names, bad_names = _utf8(_take(name_dictionary, entries))  # each distinct name validated once
        texts, bad_texts = _utf8(_kept_values(item_texts, keep) if item_texts is not None else _binary(data, u8, value_start[keep], value_end[keep]))
        if names is not None and texts is not None:
            break
        msg_ok[item_msg[keep][bad_names[codes] | bad_texts]] = False
    h_ok = msg_ok[:nh]
    history = HistoryBatch(
        records=rec_h[h_ok],
        step_nums=step_num[h_ok],
        has_step_num=has_step[h_ok],
        row_counts=np.bincount(item_msg[keep], minlength=nh)[h_ok].astype(np.int64),
        names=names,
        codes=codes,
        texts=texts,
    )
    parsed_good = _parse_alike(u8, data, starts, ends, msg_rec[parsed_msgs], parsed)
    msg_ok[parsed_msgs[parsed_good]] = True
    parsed_records, parsed_entry = parsed.arrays()
    plain_s = msg_ok.copy()
    plain_s[parsed_msgs] = False
    keep_s = _selection(~item_h & plain_s[item_msg])
    s_ok = msg_ok[nh:]
    summary_codes, summary_entries = _first_appearance(name_code[keep_s], len(name_dictionary))
    summary = SummaryBatch(
        records=msg_rec[item_msg[keep_s]],
        codes=summary_codes,
        names=_take(name_dictionary, summary_entries).to_pylist(),
        value_starts=value_start[keep_s],
        value_ends=value_end[keep_s],
        parsed_records=parsed_records,
        parsed_entry=parsed_entry,
        parsed_entries=parsed.entries,
        data=data,
        u8=u8,
    )
    slow = np.ones(n, dtype=bool)
    slow[rec_h[h_ok]] = False
    slow[rec_s[s_ok]] = False
    for parsed_records_part, _ in parsed.parts:
        slow[parsed_records_part] = False
    return DecodedRecords(kinds=kinds, history=history, summary=summary, slow_records=np.flatnonzero(slow), may_fold_summary=may_fold)

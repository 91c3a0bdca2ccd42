"""Framing of a W&B `.wandb` transaction log: LevelDB-log 32 KiB blocks of CRC-checked chunks
after a 7-byte file header, in either block layout (standard, or wandb-core 0.17.0-0.17.5's, whose
blocks start after the header). `WandbLogReader` (`log.py`) walks the chunks; this module holds
the format's constants, the check that tells the layouts apart and the batched CRC check of many
chunks (`first_crc_mismatch`)."""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np
from zlib_ng import zlib_ng

from altgrad_pipeline.ingest.wandb.compiled import compiled_scan

LOG_HEADER = b":W&B" + (0xBEE1).to_bytes(2, "little") + bytes([0])
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")
CHUNK_FULL, CHUNK_FIRST, CHUNK_MIDDLE, CHUNK_LAST = 1, 2, 3, 4
#: Block layouts and where each one's block 0 starts: "standard" counts the file header inside
#: block 0; wandb-core of 0.17.0-0.17.5 began block 0 after it (fixed upstream in 0.17.6).
LAYOUT_STANDARD, LAYOUT_CORE_017 = "standard", "wandb-core-0.17"
BLOCK_ORIGIN = {LAYOUT_STANDARD: 0, LAYOUT_CORE_017: len(LOG_HEADER)}
#: Bytes at the start framed both ways to tell the layouts apart: several boundaries, since a
#: record can end exactly where both layouts put a chunk header.
LAYOUT_PROBE_BYTES = 4 * BLOCK_SIZE
#: CRC-32 of each chunk type byte: a chunk's CRC continues from its type's (one call per chunk).
TYPE_CRC = tuple(zlib.crc32(bytes([kind])) for kind in range(256))


def first_damage(view: memoryview, base: int, pos: int, end: int, origin: int) -> tuple[int | None, int]:
    """Walk the chunks of the file's bytes `view` (from file offset `base`) between `pos` and `end`
    with blocks starting at `origin`: the offset of the first chunk this layout finds damaged (None
    when the bytes run out first), and where the last whole, CRC-checked chunk ends."""
    checked = pos
    while True:
        in_block = (pos - origin) % BLOCK_SIZE
        if BLOCK_SIZE - in_block < CHUNK_HEADER.size:
            pos += BLOCK_SIZE - in_block
            continue
        if pos + CHUNK_HEADER.size > end:
            return None, checked
        crc, length, kind = CHUNK_HEADER.unpack_from(view, pos - base)
        payload_start = pos + CHUNK_HEADER.size
        if kind == 0 and length == 0:
            pos = payload_start
            continue
        if kind == 0 or kind > CHUNK_LAST or payload_start + length > pos - in_block + BLOCK_SIZE:
            return pos, checked
        if payload_start + length > end:
            return None, checked
        if zlib.crc32(view[payload_start - base : payload_start - base + length], TYPE_CRC[kind]) != crc:
            return pos, checked
        pos = checked = payload_start + length


# --------------------------------------------------------------------------------------------
# Many chunks' CRCs checked with one CRC-32 call per block
# --------------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF


@functools.cache
def _zero_byte_tables() -> tuple[np.ndarray, np.ndarray]:
    """Tables of the linear map "CRC-32 register after n zero bytes" (zlib's reflected CRC-32,
    no pre/post inversion), split as n = 256 * high + low so that any n below 32 KiB is two
    table stages: `low[n_low, j, b]` and `high[n_high, j, b]` are the register after n_low
    (256 * n_high) zero bytes from the register holding byte b at byte j; the register after
    n bytes from any value is the XOR over its four bytes."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    basis = (np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32))[:, None]).astype(np.uint32)
    low = np.empty((257, 4, 256), dtype=np.uint32)
    low[0] = basis
    for n in range(1, 257):
        previous = low[n - 1]
        low[n] = table[previous & 0xFF] ^ (previous >> 8)
    high = np.empty((BLOCK_SIZE // 256, 4, 256), dtype=np.uint32)
    high[0] = basis
    by_256 = low[256]
    for n in range(1, len(high)):
        previous = high[n - 1]
        high[n] = by_256[0][previous & 0xFF] ^ by_256[1][(previous >> 8) & 0xFF] ^ by_256[2][(previous >> 16) & 0xFF] ^ by_256[3][previous >> 24]
    return low[:256].reshape(-1).copy(), high.reshape(-1).copy()


def _after_zeros(n: np.ndarray, register: np.ndarray) -> np.ndarray:
    """The CRC-32 register after `n` (< 32 KiB) zero bytes from `register`, element-wise."""
    low, high = _zero_byte_tables()
    register = register.astype(np.uint32, copy=False)
    for table, stage in ((low, (n & 0xFF) * 1024), (high, (n >> 8) * 1024)):
        register = (
            table[stage + (register & 0xFF)]
            ^ table[stage + 256 + ((register >> 8) & 0xFF)]
            ^ table[stage + 512 + ((register >> 16) & 0xFF)]
            ^ table[stage + 768 + (register >> 24)]
        )
    return register


def _predicted_runs(at: np.ndarray, length: np.ndarray, crc: np.ndarray, origin: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of back-to-back chunks within one block (first chunk, end offset) and the CRC-32
    each run's bytes have when every chunk's stored CRC is right (`_wirescan.predict_runs` in C)."""
    header = CHUNK_HEADER.size
    chunk_end = at + header + length
    new_run = np.ones(len(at), dtype=bool)
    new_run[1:] = (at[1:] != chunk_end[:-1]) | ((at[1:] - origin) // BLOCK_SIZE != (at[:-1] - origin) // BLOCK_SIZE)
    first = np.flatnonzero(new_run)
    run_of = np.cumsum(new_run) - 1
    last = np.append(first[1:], len(at)) - 1
    run_end = chunk_end[last]
    # Per chunk (stored crc c, length l, n = 1 + l bytes of type and payload, s bytes after it in
    # its run): its bytes leave a register difference Z(n, Z(6, c) ^ Z(2, l) ^ F) ^ c ^ F, moved
    # through s more bytes, when the stored CRC is right (Z(k, r): k zero bytes from register r;
    # F = 0xFFFFFFFF, zlib's inversion).
    crc = crc.astype(np.uint32)
    lead = _after_zeros(np.int64(6), crc) ^ _after_zeros(np.int64(2), length.astype(np.uint32)) ^ np.uint32(_MASK32)
    after = run_end[run_of] - chunk_end
    predicted = _after_zeros(after + 1 + length, lead) ^ _after_zeros(after, crc ^ np.uint32(_MASK32))
    return first, run_end, np.bitwise_xor.reduceat(predicted, first)


def first_crc_mismatch(
    view: memoryview, base: int, at: np.ndarray, length: np.ndarray, kind: np.ndarray, crc: np.ndarray, origin: int
) -> int | None:
    """Index of the first chunk whose stored CRC does not match its type byte and payload, or
    None: chunks at file offsets `at` (ascending; `view` holds the file from offset `base`), with
    their payload lengths, types and stored CRCs, blocks starting at `origin`.

    Why. One `zlib.crc32` call per chunk cost about a seventh of reading a log of narrow rows
    (tens of thousands of sub-kilobyte chunks per log, each call dominated by its overhead). CRC-32 is
    linear, so the CRC of a block's run of back-to-back chunks, headers included, follows from
    the stored CRCs and lengths alone when every chunk is intact: here it is predicted with table
    look-ups for all chunks at once and compared with one CRC-32 call per run (about one per
    32 KiB block). A run's prediction differs from its bytes by the XOR of each chunk's CRC error
    moved through the bytes after it, an invertible map: one damaged chunk in a block is always
    found, two or more cancel only by a 1 in 2^32 chance, as damage matching a chunk's own CRC
    does. The first run that disagrees has its chunks checked one by one, as before. The runs'
    bytes go through zlib-ng's CRC-32 (SIMD: about six times the system zlib's rate here, the same
    values), a maintained library instead of a hand-written carry-less multiplication."""
    if not len(at):
        return None
    header = CHUNK_HEADER.size
    compiled = compiled_scan()
    if compiled:
        first, run_end, predicted_runs = (np.empty(len(at), dtype=dtype) for dtype in (np.int64, np.int64, np.uint32))
        low, high = _zero_byte_tables()
        runs = compiled.predict_runs(
            np.ascontiguousarray(at, dtype=np.int64), np.ascontiguousarray(length, dtype=np.int64), np.ascontiguousarray(crc, dtype=np.uint32),
            origin, BLOCK_SIZE, low, high, first, run_end, predicted_runs,
        )
        first, run_end, predicted_runs = first[:runs], run_end[:runs], predicted_runs[:runs]
    else:
        first, run_end, predicted_runs = _predicted_runs(at, length, crc, origin)
    last = np.append(first[1:], len(at)) - 1
    crc32 = zlib_ng.crc32
    actual = [crc32(view[s - base : e - base], _MASK32) ^ _MASK32 for s, e in zip(at[first].tolist(), run_end.tolist())]
    bad_runs = np.flatnonzero(np.asarray(actual, dtype=np.uint32) != predicted_runs)
    if not len(bad_runs):
        return None
    lo, hi = int(first[bad_runs[0]]), int(last[bad_runs[0]]) + 1
    for index in range(lo, hi):
        payload = int(at[index]) + header - base
        if crc32(view[payload : payload + int(length[index])], TYPE_CRC[int(kind[index])]) != int(crc[index]):
            return index
    raise AssertionError("a run's CRC disagrees but each of its chunks agrees")  # linearity says impossible

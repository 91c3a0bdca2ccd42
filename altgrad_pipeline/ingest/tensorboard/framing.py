"""TFRecord framing of TensorBoard event files (u64 length, masked CRC-32C of the length, the
data, masked CRC-32C of the data): where records start, and their CRCs checked in bulk.

Speed: most records of a scalar log have one fixed layout, Event{wall_time, step,
summary{value{tag, simple_value}}}. Records are located with a tight framing walk, and that layout
is recognised, CRC-checked (by the linearity of CRC-32C: one C `crc32c` call per tag, table
lookups for the bytes that vary) and decoded for all records at once with numpy; only the other
records (file_version, session logs, tensors, images, hparams, several values per event) go
through protobuf, their CRCs one C call each. A CRC library has no call for many records, and one
call per record was half of the reading time.
"""

from __future__ import annotations

import struct

import crc32c
import numpy as np

HEADER_BYTES = 12  # u64 length + u32 masked CRC of the length
FOOTER_BYTES = 4  # u32 masked CRC of the data
RECORD_LENGTH = struct.Struct("<Q")
#: Record starts predicted at once when record lengths repeat with a period (see `record_starts`).
SPECULATED_RECORDS = 16384
FIRST_GUESS_RECORDS = 256
LONGEST_PERIOD = 64


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
            stored = gather_le(as_bytes, np.minimum(begins, size - 8), 8, "<u8").astype(np.int64)
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


def gather_le(padded: np.ndarray, positions: np.ndarray, width: int, dtype: str) -> np.ndarray:
    """Little-endian fixed-width numbers at `positions` (each `width` bytes), as `dtype`: rows of
    a sliding-window view are gathered, so no index matrix is built."""
    windows = np.lib.stride_tricks.as_strided(padded, shape=(padded.size - width + 1, width), strides=(1, 1))
    return windows[positions].view(dtype).reshape(-1)

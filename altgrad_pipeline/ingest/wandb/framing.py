"""Framing of a W&B `.wandb` transaction log: LevelDB-log 32 KiB blocks of CRC-checked chunks
after a 7-byte file header, in either block layout (standard, or wandb-core 0.17.0-0.17.5's, whose
blocks start after the header). `WandbLogReader` (`log.py`) walks the chunks; this module holds
the format's constants and the check that tells the layouts apart."""

from __future__ import annotations

import struct
import zlib

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

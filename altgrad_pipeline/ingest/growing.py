"""Reading a file that another process is still appending to.

Each read starts where the previous one stopped, so following a live log costs only the new
bytes. A file that was truncated or replaced (not merely grown) is noticed by comparing the bytes
just before the read position, so two different files are never stitched together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: How many already-read bytes are compared to recognise the same file on the next read.
ANCHOR_BYTES = 64


@dataclass(frozen=True)
class ReadPosition:
    """How far a growing file has been consumed, with the bytes just before that point."""

    offset: int = 0
    anchor: bytes = b""

    def advanced(self, data: bytes, consumed: int) -> ReadPosition:
        """The position after using the first `consumed` bytes of `data` (read from `offset`)."""
        kept = data[max(consumed - ANCHOR_BYTES, 0) : consumed]  # not a copy of all the data
        return ReadPosition(self.offset + consumed, (self.anchor + kept)[-ANCHOR_BYTES:])


def read_appended(path: Path, position: ReadPosition) -> bytes | None:
    """The bytes after `position`, or None when the file no longer continues what was read
    (shorter than before, or its bytes before `position` changed): then read from offset 0."""
    with path.open("rb") as handle:
        handle.seek(position.offset - len(position.anchor))
        if handle.read(len(position.anchor)) != position.anchor:
            return None
        return handle.read()

"""Tolerant JSON-lines reading shared by every line-oriented source (JSONL logs, W&B 0.8 history).

Python's `json` writes NaN and +-Infinity as bare tokens that strict parsers (Polars'
`read_ndjson`, orjson) reject; in training logs those tokens are the evidence of failure, so lines
are parsed with Python's `json`, which accepts them. A final line without its newline is a line
still being written: it is not an error, it is left for the next read (see `complete_until`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from altgrad_pipeline.ingest.model import IngestIssue


@dataclass
class JsonLines:
    """Parsed objects with their 1-based line numbers, the rejected lines, and the byte offset
    up to which the text was complete (a growing file is re-read from there)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    line_numbers: list[int] = field(default_factory=list)
    issues: list[IngestIssue] = field(default_factory=list)
    complete_until: int = 0
    partial_tail: bytes = b""


def parse_json_lines(
    data: bytes, *, location: str, source: str, first_line: int = 1, base_offset: int = 0
) -> JsonLines:
    """Parse newline-delimited JSON objects; malformed lines become `IngestIssue`s, never raise."""
    out = JsonLines()
    end = data.rfind(b"\n") + 1
    out.complete_until = base_offset + end
    out.partial_tail = data[end:]
    for index, raw in enumerate(data[:end].split(b"\n")[:-1]):
        line_no = first_line + index
        text = raw.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
            problem = None if isinstance(obj, dict) else f"expected a JSON object, found {type(obj).__name__}"
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            problem = f"not valid JSON: {exc}"
        if problem:
            out.issues.append(
                IngestIssue(
                    location=location,
                    source=source,
                    position=f"line {line_no}",
                    kind="malformed_line",
                    reason=problem,
                    lost=f"line {line_no} ({len(raw)} bytes)",
                )
            )
            continue
        out.records.append(obj)
        out.line_numbers.append(line_no)
    return out

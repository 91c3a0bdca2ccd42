"""Media values as logged in a run's history, decoded: one index row per value (`run_media`) and
the bins and counts of every histogram (`histograms`).

The reader keeps each media value's JSON text whatever its encoding (one JSON object up to SDK
0.16; from 0.19 split `nested_key` items sharing a prefix, rebuilt into one object by the
reader), so this module sees one shape. Media values are few (one per key per logged step at
most), so they are decoded one by one with `json`; nothing here loops over history values.
A value that cannot be used becomes an `IngestIssue`; every other value is kept.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from altgrad_pipeline.ingest.model import IngestIssue

#: Media values of runs: what the media store hands over (one row per logged media value).
MEDIA_VALUES_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "source": pl.String(),
    "step": pl.Int64(),
    "key": pl.String(),
    "value_json": pl.String(),
    #: Where a local run's relative media `path`s resolve (its `files/` folder); null for API runs.
    "files_dir": pl.String(),
}

RUN_MEDIA_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "step": pl.Int64(),
    "key": pl.String(),
    "media_type": pl.String(),
    "wandb_type": pl.String(),
    "path": pl.String(),
    "file": pl.String(),
    "artifact_path": pl.String(),
    "sha256": pl.String(),
    "size": pl.Int64(),
    "nrows": pl.Int64(),
    "ncols": pl.Int64(),
}
RUN_MEDIA_DESCRIPTIONS = {
    "media_type": "table, incremental-table, histogram, image, plotly, html, audio, video, graph, ... (the W&B `_type` without `-file`)",
    "wandb_type": "The `_type` exactly as logged (table-file, histogram, image-file, images/separated, ...)",
    "path": "The media file as logged, relative to the run's files folder (media/table/....table.json)",
    "file": "Where the file is: the absolute path of a local run's file, or the artifact reference/name for API runs",
    "artifact_path": "The W&B artifact reference of a table (wandb-client-artifact://... or wandb-artifact://...)",
    "sha256": "Checksum of the file as logged",
    "size": "File size in bytes as logged",
    "nrows": "Rows of a table as logged (null for other media)",
    "ncols": "Columns of a table as logged (null for other media)",
}

HISTOGRAMS_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "step": pl.Int64(),
    "key": pl.String(),
    "bin_edges": pl.List(pl.Float64()),
    "counts": pl.List(pl.Float64()),
}
HISTOGRAM_DESCRIPTIONS = {
    "bin_edges": "len(counts) + 1 edges, ascending (from `bins`, or `packedBins` min + size·i)",
    "counts": "Count (or weight) per bin, exactly as logged",
}

#: `_type`s that are not `<kind>-file` but still name one kind of media.
SPECIAL_MEDIA_TYPES = {"images/separated": "image", "histogram": "histogram"}
TABLE_TYPES = ("table", "incremental-table", "partitioned-table", "joined-table")


def media_type_of(wandb_type: str) -> str:
    """`table-file` -> `table`, `image-file` -> `image`, `images/separated` -> `image`, ..."""
    if wandb_type in SPECIAL_MEDIA_TYPES:
        return SPECIAL_MEDIA_TYPES[wandb_type]
    return wandb_type.removesuffix("-file")


@dataclass
class DecodedMedia:
    """The media index and histograms of a set of media values, and what could not be used."""

    run_media: pl.DataFrame
    histograms: pl.DataFrame
    issues: list[IngestIssue] = field(default_factory=list)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _numbers(values: Any) -> list[float] | None:
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    return [float(v) for v in values]


def histogram_bins(value: dict[str, Any]) -> tuple[list[float], list[float]] | str:
    """(edges, counts) of one histogram value, or why it cannot be used."""
    counts = _numbers(value.get("values"))
    if counts is None:
        return "`values` is not a list of numbers"
    packed = value.get("packedBins")
    if isinstance(packed, dict):
        start, size, count = packed.get("min"), packed.get("size"), _int_or_none(packed.get("count"))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (start, size)) or count is None:
            return "`packedBins` lacks a numeric min, size or count"
        edges = [float(start) + float(size) * i for i in range(count + 1)]
    else:
        edges = _numbers(value.get("bins"))
        if edges is None:
            return "`bins` is not a list of numbers"
    if len(edges) != len(counts) + 1:
        return f"{len(counts)} counts need {len(counts) + 1} bin edges, the value has {len(edges)}"
    if any(b < a for a, b in zip(edges, edges[1:])) or not all(math.isfinite(e) for e in edges):
        return "bin edges are not finite and ascending"
    return edges, counts


def decode_media(values: pl.DataFrame) -> DecodedMedia:
    """`run_media` and `histograms` rows of media values (`MEDIA_VALUES_SCHEMA`)."""
    index_rows: list[dict[str, Any]] = []
    histogram_rows: list[dict[str, Any]] = []
    issues: list[IngestIssue] = []
    for row in values.iter_rows(named=True):
        where = f"step {row['step']}, key {row['key']!r}"

        def issue(kind: str, reason: str) -> None:
            issues.append(
                IngestIssue(location=row["files_dir"] or row["run_id"], kind=kind, reason=reason, lost=f"the {row['key']!r} value of step {row['step']}",
                            position=where, run_id=row["run_id"], source=row["source"])  # fmt: skip
            )

        try:
            value = json.loads(row["value_json"])
        except ValueError as exc:
            issue("bad_media_value", f"media value is not valid JSON: {exc}")
            continue
        wandb_type = value.get("_type") if isinstance(value, dict) else None
        if not isinstance(wandb_type, str):
            issue("bad_media_value", "media value has no `_type` string")
            continue
        path = value.get("path") if isinstance(value.get("path"), str) else None
        artifact = next((value[k] for k in ("artifact_path", "_latest_artifact_path") if isinstance(value.get(k), str)), None)
        if path and row["files_dir"]:
            file = f"{row['files_dir']}/{path}"
        else:
            file = artifact
        index_rows.append(
            {
                "run_id": row["run_id"],
                "step": row["step"],
                "key": row["key"],
                "media_type": media_type_of(wandb_type),
                "wandb_type": wandb_type,
                "path": path,
                "file": file,
                "artifact_path": artifact,
                "sha256": value.get("sha256") if isinstance(value.get("sha256"), str) else None,
                "size": _int_or_none(value.get("size")),
                "nrows": _int_or_none(value.get("nrows")),
                "ncols": _int_or_none(value.get("ncols")),
            }
        )
        if wandb_type == "histogram":
            bins = histogram_bins(value)
            if isinstance(bins, str):
                issue("bad_histogram", f"histogram cannot be drawn: {bins}")
                continue
            histogram_rows.append(
                {"run_id": row["run_id"], "step": row["step"], "key": row["key"], "bin_edges": bins[0], "counts": bins[1]}
            )
    return DecodedMedia(
        run_media=pl.DataFrame(index_rows, schema=RUN_MEDIA_SCHEMA).sort("run_id", "step", "key"),
        histograms=pl.DataFrame(histogram_rows, schema=HISTOGRAMS_SCHEMA).sort("run_id", "key", "step"),
        issues=issues,
    )

"""The toolkit the file-based readers share (JSONL, Lightning CSV, MLflow, TensorBoard, W&B history
exports): stable run ids from paths, file stamps and times, tolerant config files (JSON, YAML with
unknown tags), and the long history from rows in write order (`keep_last_writes`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from altgrad_pipeline.ingest.model import IngestIssue

#: Rows in write order, before duplicates are resolved: `line` orders the writes.
ROWS_SCHEMA: dict[str, pl.DataType] = {
    "line": pl.Int64(),
    "step": pl.Int64(),
    "key": pl.String(),
    "value": pl.Float64(),
    "text": pl.String(),
    "runtime": pl.Float64(),
    "timestamp": pl.Float64(),
}


def stable_run_id(readable: str, *identity: bytes) -> str:
    """A short readable id that stays the same for the same identity bytes across reads."""
    digest = hashlib.sha1(b"\0".join(identity)).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', readable)[:48]}-{digest}"


def relative_posix(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def file_stamp(path: Path) -> str:
    """Size and mtime: a cheap proxy for content, changed by any write."""
    try:
        stat = path.stat()
    except OSError:
        return f"{path.name}:absent"
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


def mtime_utc(path: Path) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    except OSError:
        return None


def utc_from_epoch(seconds: float) -> dt.datetime | None:
    """A Unix time as UTC, or None when it is not a representable date (a corrupt timestamp)."""
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


class _TolerantYamlLoader(yaml.SafeLoader):
    """Safe YAML loading that turns unknown tags (`!!python/object:argparse.Namespace`, which
    Lightning writes into hparams.yaml) into plain data instead of failing or running code."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.unknown_tags: set[str] = set()


def _construct_untagged(loader: _TolerantYamlLoader, _suffix: str, node: yaml.Node) -> Any:
    loader.unknown_tags.add(node.tag)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_TolerantYamlLoader.add_multi_constructor("!", _construct_untagged)
_TolerantYamlLoader.add_multi_constructor("tag:", _construct_untagged)


def load_config_file(path: Path, *, source: str) -> tuple[dict[str, Any] | None, list[IngestIssue]]:
    """A JSON or YAML mapping from a file; unreadable or non-mapping content is an issue, never raised."""
    location = str(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return None, [
            IngestIssue(location, "unreadable_config", f"{type(exc).__name__}: {exc}", "the config", source=source)
        ]
    issues: list[IngestIssue] = []
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            loader = _TolerantYamlLoader(text)
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
            if loader.unknown_tags:
                issues.append(
                    IngestIssue(
                        location,
                        "unknown_yaml_tag",
                        f"tags {sorted(loader.unknown_tags)} read as plain mappings, lists or strings",
                        "the Python object types (their values are kept)",
                        source=source,
                    )
                )
    except (ValueError, yaml.YAMLError) as exc:
        return None, [
            *issues,
            IngestIssue(location, "malformed_config", f"cannot parse: {exc}", "the config", source=source),
        ]
    if data is None:
        return {}, issues
    if not isinstance(data, dict):
        reason = f"expected a mapping, found {type(data).__name__}"
        return None, [*issues, IngestIssue(location, "malformed_config", reason, "the config", source=source)]
    return data, issues


def _sorted_by_step_and_key(rows: pl.DataFrame) -> bool:
    """Rows in line order that are also in (step, key) order (the fast path writes a line's keys
    sorted): checking is a fraction of sorting."""
    step, key = pl.col("step"), pl.col("key")
    return bool(rows.select(((step.diff() > 0) | ((step.diff() == 0) & (key >= key.shift()))).all()).item())


def keep_last_writes(
    rows: pl.DataFrame, *, run_id: str, location: str, source: str, in_order: bool = False
) -> tuple[pl.DataFrame, list[IngestIssue]]:
    """History sorted by (step, key) from rows in write order (`line`). A (step, key) written
    twice keeps its last value; rewrites with a different value and a key's steps going backwards
    are reported (per key: dr_gen's splits count their epochs separately). Identical rewrites
    (Lightning's `epoch` cell on rows sharing a step) lose nothing and are merged silently.
    `in_order`: the caller knows the rows are already in (step, key) order with no (step, key)
    twice (the JSONL fast path, from its lines' steps), so there is nothing to check."""
    if in_order:
        return _history(rows, run_id), []
    issues: list[IngestIssue] = []
    if not rows.get_column("line").is_sorted():
        rows = rows.sort("line", maintain_order=True)
    if not rows.get_column("step").is_sorted():  # only then can some key's steps go backwards
        backwards = rows.filter(pl.col("step") < pl.col("step").cum_max().shift(1).over("key"))
        if backwards.height:
            first = backwards.sort("line", "key").row(0, named=True)
            issues.append(
                IngestIssue(
                    location,
                    "step_backwards",
                    f"{backwards.get_column('line').n_unique()} lines log a key at a step lower than that key's "
                    f"earlier steps (first: {first['key']!r} at step {first['step']}); kept and sorted by step",
                    position=f"line {first['line']}",
                    source=source,
                    run_id=run_id,
                )
            )
    # One stable sort puts the writes of each (step, key) side by side, in write order: the last
    # of a run of equal (step, key) is the one kept, and rewrites are found without hashing.
    ordered = rows if _sorted_by_step_and_key(rows) else rows.sort("step", "key", "line")
    rewritten = (pl.col("step") == pl.col("step").shift(-1)) & (pl.col("key") == pl.col("key").shift(-1))
    ordered = ordered.with_columns(rewritten.fill_null(False).alias("_rewritten"))
    if ordered.get_column("_rewritten").any():
        written_twice = ordered.filter(pl.col("_rewritten")).select("step", "key").unique()
        conflicts = (
            ordered.join(written_twice, on=["step", "key"])
            .group_by("step", "key", maintain_order=True)
            .agg(pl.len().alias("writes"), pl.struct("value", "text").n_unique().alias("distinct"))
            .filter(pl.col("distinct") > 1)
        )
        if conflicts.height:
            first = conflicts.row(0, named=True)
            issues.append(
                IngestIssue(
                    location,
                    "duplicate_step",
                    f"{conflicts.height} (step, key) pairs written more than once with different values "
                    f"(first: step {first['step']}, key {first['key']!r}); the last write is kept",
                    lost=f"{int(conflicts.get_column('writes').sum()) - conflicts.height} earlier values",
                    source=source,
                    run_id=run_id,
                )
            )
    return _history(ordered.filter(~pl.col("_rewritten")), run_id), issues


def _history(rows: pl.DataFrame, run_id: str) -> pl.DataFrame:
    return rows.select(pl.lit(run_id, pl.String).alias("run_id"), "step", "key", "value", "text", "runtime", "timestamp")

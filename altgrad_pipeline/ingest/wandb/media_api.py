"""The media of runs on a W&B server, through the public `wandb.Api` client: their media values
(tables, histograms, images, ...) as logged in the history, and the rows of their W&B Tables.

A run logged online keeps each media value in its history as a JSON object, but not a table's
rows: `run.log` puts every logged table into an artifact of type `run_table` named
`run-<run id>-<key>` (one version per distinct content, holding the file `<key>.table.json`), and
the history value points at it as `wandb-client-artifact://<client id>/<key>.table.json`, a
client-side id the public API cannot resolve. So, per run:

1. the media values come from `run.scan_history(keys=[key])` for each media key the run's history
   types name (wandb-core then asks the server for that key alone, `SampledHistoryPage`);
2. the run's `run_table` artifacts are listed (`run.logged_artifacts()`) and each version's table
   entry is fetched with `artifact.get_entry(name).download()`, the file exactly as logged
   (`artifact.get()` would rebuild a `wandb.Table`, converting cells on the way);
3. each history value gets the file whose SHA-256 is the value's `sha256` (a
   `wandb-artifact://_id/<id>/...` or `wandb-artifact://<entity>/<project>/<name>:<version>/...`
   reference is matched by that artifact), and the file is parsed by the parser local runs use
   (`media.tables.read_tables`), checksum check included.

Table files are kept by SHA-256 under a local folder, so a refresh asks the server only for
tables it has not seen. A table whose file cannot be found or fetched becomes an issue saying
why; every other table is kept. Error texts pass through the caller's `redact` (the API key).
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from altgrad_pipeline import atomic
from altgrad_pipeline.ingest.media import tables
from altgrad_pipeline.ingest.media.values import MEDIA_VALUES_SCHEMA, SPECIAL_MEDIA_TYPES, TABLE_TYPES
from altgrad_pipeline.ingest.model import IngestIssue

#: Artifact types holding the tables `run.log` logs (incremental tables are not read).
TABLE_ARTIFACT_TYPES = ("run_table",)
CLIENT_REFERENCE = "wandb-client-artifact://"
ARTIFACT_REFERENCE = "wandb-artifact://"
#: Rows per `SampledHistoryPage`, as for the history itself.
HISTORY_PAGE_SIZE = 1000
#: Download failures named in one issue's reason at most.
MAX_FAILURES_NAMED = 3
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def is_media_type(value_type: str) -> bool:
    """W&B media `_type`s: `<kind>-file`, `histogram`, `images/separated` and the table kinds."""
    return value_type.endswith("-file") or value_type in SPECIAL_MEDIA_TYPES or value_type in TABLE_TYPES


def media_keys(non_scalar_keys: Sequence[dict[str, str]] | None) -> list[str]:
    """The media keys among a `raw_runs` row's `non_scalar_keys`."""
    return sorted({item["key"] for item in non_scalar_keys or [] if is_media_type(item["value_type"])})


def media_values(run: Any, *, run_id: str, source: str, keys: Iterable[str]) -> pl.DataFrame:
    """The media values (`MEDIA_VALUES_SCHEMA`, no files folder) of `keys` in the run's history,
    one per (step, key): for a run with history exports, wandb-core may hand a step of the
    exported part again with the live rows."""
    rows = []
    for key in keys:
        for row in run.scan_history(keys=[key], page_size=HISTORY_PAGE_SIZE, use_cache=False):
            value = row.get(key)
            if isinstance(value, dict):
                rows.append((run_id, source, row["_step"], key, json.dumps(value), None))
    frame = pl.DataFrame(rows, schema=MEDIA_VALUES_SCHEMA, orient="row")
    return frame.unique(["step", "key"], keep="first", maintain_order=True)


class TableFileCache:
    """Table files by SHA-256 (content-addressed, so an entry never goes stale)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def get(self, sha256: str | None) -> bytes | None:
        if not sha256 or not SHA256_HEX.fullmatch(sha256):  # the history's text never becomes a path unchecked
            return None
        try:
            data = (self.folder / f"{sha256}.table.json").read_bytes()
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == sha256 else None

    def put(self, data: bytes) -> None:
        atomic.write_bytes(self.folder / f"{hashlib.sha256(data).hexdigest()}.table.json", data)


def entry_name(reference: str) -> str | None:
    """The artifact entry a history value's reference points at (`attn/layer0.table.json`)."""
    if reference.startswith(CLIENT_REFERENCE):
        parts = reference[len(CLIENT_REFERENCE) :].split("/", 1)
    elif reference.startswith(ARTIFACT_REFERENCE):
        rest = reference[len(ARTIFACT_REFERENCE) :]
        parts = rest.split("/", 2)[1:] if rest.startswith("_id/") else rest.split("/", 3)[2:]
    else:
        return None
    return parts[1] if len(parts) == 2 and parts[1] else None


@dataclass(frozen=True)
class ArtifactFile:
    """One table file fetched from an artifact version, with the references that name it."""

    entry: str
    data: bytes
    sha256: str
    #: `wandb-artifact://` prefixes naming the artifact version (by id, version and aliases).
    prefixes: frozenset[str]


@dataclass
class FetchedTables:
    files: list[ArtifactFile] = field(default_factory=list)
    #: Why an entry could not be fetched: (artifact name, entry name or None for the whole artifact, reason).
    failures: list[tuple[str, str | None, str]] = field(default_factory=list)
    #: Why the run's artifacts could not be listed at all.
    listing_error: str | None = None


def _prefixes(artifact: Any) -> frozenset[str]:
    collection = artifact.name.split(":")[0]
    names = {artifact.version, *(getattr(artifact, "aliases", None) or [])}
    return frozenset(
        {f"{ARTIFACT_REFERENCE}_id/{artifact.id}/"}
        | {f"{ARTIFACT_REFERENCE}{artifact.entity}/{artifact.project}/{collection}:{name}/" for name in names}
    )


def fetch_artifact_tables(run: Any, entries: set[str], folder: Path, redact: Callable[[str], str]) -> FetchedTables:
    """The files named `entries` in the run's `run_table` artifact versions, downloaded into `folder`."""
    fetched = FetchedTables()
    try:
        artifacts = [a for a in run.logged_artifacts() if a is not None and a.type in TABLE_ARTIFACT_TYPES]
    except Exception as exc:  # the client raises many types; all mean "could not list"
        fetched.listing_error = redact(f"{type(exc).__name__}: {exc}")
        return fetched
    for artifact in artifacts:
        try:
            names = sorted(entries & set(artifact.manifest.entries))
        except Exception as exc:
            fetched.failures.append((artifact.qualified_name, None, redact(f"{type(exc).__name__}: {exc}")))
            continue
        for name in names:
            try:
                path = artifact.get_entry(name).download(root=str(folder / artifact.id.replace("/", "_")), skip_cache=True)
                data = Path(path).read_bytes()
            except Exception as exc:
                fetched.failures.append((artifact.qualified_name, name, redact(f"{type(exc).__name__}: {exc}")))
                continue
            fetched.files.append(ArtifactFile(name, data, hashlib.sha256(data).hexdigest(), _prefixes(artifact)))
    return fetched


def _match(reference: str, sha256: str | None, fetched: FetchedTables) -> bytes | None:
    for file in fetched.files:
        if reference.startswith(ARTIFACT_REFERENCE):
            if any(reference == prefix + file.entry for prefix in file.prefixes):
                return file.data
        elif sha256 and file.sha256 == sha256:
            return file.data
    return None


def _not_found_reason(reference: str, sha256: str | None, fetched: FetchedTables) -> str:
    if fetched.listing_error:
        return f"the run's artifacts could not be listed: {fetched.listing_error}"
    name = entry_name(reference)
    if name is None:
        return f"the history value's artifact reference names no file ({reference})"
    if reference.startswith(CLIENT_REFERENCE) and not sha256:
        return "the history value has no sha256 to find its table among the run's artifacts"
    wanted = f"with SHA-256 {sha256[:12]}…" if sha256 and reference.startswith(CLIENT_REFERENCE) else "it refers to"
    reason = f"no logged `run_table` artifact of the run holds the table file {name!r} {wanted}"
    failed = [f"{artifact} ({entry or 'manifest'}): {why}" for artifact, entry, why in fetched.failures if entry in (None, name)]
    if failed:
        more = f" and {len(failed) - MAX_FAILURES_NAMED} more" if len(failed) > MAX_FAILURES_NAMED else ""
        reason += f"; {len(failed)} artifact version(s) could not be read: " + "; ".join(failed[:MAX_FAILURES_NAMED]) + more
    return reason


def read_run_tables(
    run: Callable[[], Any],
    run_media: pl.DataFrame,
    *,
    source: str,
    cache: TableFileCache,
    redact: Callable[[str], str],
) -> tables.ReadTables:
    """The tables of one API run's `run_media` rows. `run` returns the client's `Run`; it is
    called only when a table is not in `cache`."""
    rows = run_media.filter(pl.col("media_type").is_in(TABLE_TYPES))
    result = tables.ReadTables()
    for row in rows.filter(pl.col("file").is_null()).iter_rows(named=True):
        result.issues.append(
            IngestIssue(location=row["path"] or row["run_id"], kind="missing_table_file",
                        reason="the history value names no artifact to read the table from (an API run's tables are read from its artifacts only)",
                        lost=f"the table {row['key']!r} of step {row['step']}", position=f"step {row['step']}, key {row['key']!r}",
                        run_id=row["run_id"], source=source)  # fmt: skip
        )
    rows = rows.filter(pl.col("file").is_not_null())
    found: dict[str, bytes] = {}
    missing: dict[str, str] = {}
    unresolved = []
    for reference, sha256 in rows.select("file", "sha256").unique(maintain_order=True).iter_rows():
        data = cache.get(sha256)
        if data is not None:
            found[reference] = data
        else:
            unresolved.append((reference, sha256))
    if unresolved:
        wanted = {name for reference, _ in unresolved if (name := entry_name(reference))}
        cache.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="artifacts-", dir=cache.folder) as folder:
            try:
                fetched = fetch_artifact_tables(run(), wanted, Path(folder), redact)
            except Exception as exc:  # the run itself could not be fetched
                fetched = FetchedTables(listing_error=redact(f"{type(exc).__name__}: {exc}"))
        for reference, sha256 in unresolved:
            data = _match(reference, sha256, fetched)
            if data is None:
                missing[reference] = _not_found_reason(reference, sha256, fetched)
                continue
            found[reference] = data
            cache.put(data)

    def read_file(reference: str) -> bytes:
        if reference in found:
            return found[reference]
        raise FileNotFoundError(errno.ENOENT, missing[reference])

    read = tables.read_tables(rows, read_file, sources=dict.fromkeys(rows["run_id"].unique().to_list(), source))
    result.tables.extend(read.tables)
    result.issues.extend(read.issues)
    return result


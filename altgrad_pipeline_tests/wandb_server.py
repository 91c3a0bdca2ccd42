"""A loopback stand-in for the W&B GraphQL API, so the real `wandb.Api` client can be tested offline.

The real client (wandb 0.31) sends its GraphQL through the wandb-core sidecar, so faking Python
objects would test nothing: this server answers the operations the client really sends, from an
in-memory list of `FakeRun`s, records every request so tests can count them, and can be told to
fail the next requests with 429/5xx. Unknown operations get a GraphQL error naming them, so a gap
shows up as a clear failure rather than as missing data.

Answered operations (by GraphQL operation name):
  Viewer, GetViewer, GetDefaultEntity, ServerFeaturesQuery  - login and capability checks
  Runs                                                     - `Api.runs(path, filters=...)`, paged
  Run                                                      - `Api.run(path)` / lazy full-data load
  RunHistoryKeys                                           - `run.lastHistoryStep` (scan_history)
  HistoryPage                                              - scan_history's pages: rows with
                                                             minStep <= _step < maxStep, at most
                                                             pageSize (1000 by default) of them
  RunParquetHistory                                        - the run's Parquet history exports: for a
                                                             run with `export_parts` > 0, URLs of
                                                             Parquet files this server writes from
                                                             its history and serves itself (GET
                                                             /exports/<run>/<part>.parquet, byte
                                                             ranges honoured), plus
                                                             `liveData` for rows after `exported_rows`;
                                                             for other runs no URLs (the client then
                                                             pages HistoryPage)
  SampledHistoryPage                                       - `scan_history(keys=...)`: rows with
                                                             minStep <= _step <= maxStep (wandb-core
                                                             sends the inclusive bound) holding
                                                             every key of the spec, at most `samples`
  RunOutputArtifacts                                       - `run.logged_artifacts()`, paged
  FetchArtifactManifest                                    - the URL of an artifact's manifest, which
                                                             this server serves (GET /manifests/<id>)
Artifact files are served where the client's storage policy looks for them (layout V2:
GET /artifactsV2/default/<entity>/<project>/<collection>/<birth id>/<md5 hex>/<file name>); a file
an artifact lists in `missing` answers 404, as a deleted object would. Telemetry posted to
/sdk/otel/... is accepted and ignored.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

#: A fake API key of the real shape (40 characters), distinctive enough to search for in outputs.
FAKE_API_KEY = "altgradfake0key0never0valid0anywhere0042"

_OPERATION = re.compile(r"\b(query|mutation)\s+(\w+)")
#: Where the server serves the Parquet export files it announces in RunParquetHistory.
EXPORTS_PATH = "/exports/"
#: Where the server serves artifact manifests (FetchArtifactManifest's `directUrl`) and files.
MANIFESTS_PATH = "/manifests/"
ARTIFACT_FILES_PATH = "/artifactsV2/default/"


@dataclass
class FakeArtifact:
    """One artifact version a run logged, with its files by entry name (`attn/layer0.table.json`).
    Entries named in `missing` stay in the manifest but their files answer 404."""

    name: str
    version: int
    files: dict[str, bytes]
    type: str = "run_table"
    missing: set[str] = field(default_factory=set)

    @property
    def id(self) -> str:
        return base64.b64encode(f"Artifact:{self.name}:v{self.version}".encode()).decode()

    def manifest(self) -> dict[str, Any]:
        """The manifest as W&B stores it: MD5 digests (base64), storage layout V2."""
        contents = {
            entry: {"digest": base64.b64encode(hashlib.md5(data).digest()).decode(), "size": len(data), "birthArtifactID": self.id}
            for entry, data in self.files.items()
        }
        return {"version": 1, "storagePolicy": "wandb-storage-policy-v1", "storagePolicyConfig": {"storageLayout": "V2"}, "contents": contents}

    def node(self, entity: str, project: str) -> dict[str, Any]:
        """The artifact as the `ArtifactFragment` of RunOutputArtifacts."""
        project_info = {"id": "project-1", "internalId": "project-1", "name": project, "entity": {"name": entity}}
        digest = hashlib.md5(b"".join(sorted(self.files.values()))).hexdigest()
        return {
            "__typename": "Artifact",
            "id": self.id,
            "artifactSequence": {"__typename": "ArtifactSequence", "name": self.name, "project": project_info},
            "versionIndex": self.version,
            "artifactType": {"name": self.type},
            "description": None,
            "metadata": "{}",
            "ttlDurationSeconds": -2,
            "ttlIsInherited": True,
            "tags": [],
            "historyStep": None,
            "state": "COMMITTED",
            "size": sum(len(data) for data in self.files.values()),
            "digest": digest,
            "commitHash": digest[:12],
            "fileCount": len(self.files),
            "createdAt": "2024-05-01T10:30:00",
            "updatedAt": "2024-05-01T10:30:00",
            "aliases": [],
        }


@dataclass
class FakeRun:
    """One run as the server stores it. `history` rows carry `_step` like W&B history lines; float
    NaN/inf in them go out as bare `NaN`/`Infinity` tokens (Python's json), strings as strings."""

    id: str
    name: str | None = None
    state: str = "finished"
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    group: str | None = None
    notes: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    created_at: str = "2024-05-01T10:00:00"
    heartbeat_at: str = "2024-05-01T11:00:00"
    updated_at: str = "2024-05-01T11:00:00"
    #: How many Parquet export files the history is split into; 0: the run has no exports.
    export_parts: int = 0
    #: History rows covered by the exports (None: all); later rows are the run's live data.
    exported_rows: int | None = None
    #: Artifact versions the run logged (`run.logged_artifacts()`), in logging order.
    artifacts: list[FakeArtifact] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [json.dumps(row) for row in self.history]

    def last_step(self) -> int:
        steps = [json.loads(line).get("_step", -1) for line in self.lines()]
        return max(steps, default=-1)

    def export_files(self) -> list[bytes]:
        """The exported rows as `export_parts` Parquet files, in W&B's export layout: one column
        per history key (`_step`, `_runtime`, `_timestamp` and the metrics), null where a row did
        not log the key (columns of all the part's rows). Non-finite floats sent as strings ("NaN", "Infinity") are floats here, as
        the export stores them; nested values (media) are structs, strings stay strings."""
        rows = self.history[: self.exported_rows]
        bounds = [len(rows) * part // self.export_parts for part in range(self.export_parts + 1)]
        files = []
        for low, high in zip(bounds, bounds[1:], strict=False):
            keys = list(dict.fromkeys(key for row in rows[low:high] for key in row))
            part = [{key: _export_value(row.get(key)) for key in keys} for row in rows[low:high]]
            buffer = io.BytesIO()
            # pyarrow's plain `string` columns, as W&B writes them: wandb-core's own Parquet reader
            # (used by scan_history when exports exist) aborts on Polars' large/view strings.
            pq.write_table(pa.Table.from_pylist(part), buffer)
            files.append(buffer.getvalue())
        return files

    def live_rows(self) -> list[dict[str, Any]]:
        """Rows not yet exported, as `liveData` lists them (only the keys asked for: `_step`)."""
        if self.exported_rows is None:
            return []
        return [{"_step": float(row["_step"])} for row in self.history[self.exported_rows :]]

    def node(self, query: str) -> dict[str, Any]:
        """The run as a GraphQL `Run` node, with only the fields the query names (as a real
        GraphQL server answers: the client never sees a field it did not ask for)."""
        node: dict[str, Any] = {
            "id": f"storage-{self.id}",
            "name": self.id,
            "displayName": self.name or self.id,
            "projectId": "1",
            "tags": self.tags,
            "sweepName": None,
            "state": self.state,
            "group": self.group,
            "jobType": None,
            "commit": None,
            "readOnly": False,
            "createdAt": self.created_at,
            "heartbeatAt": self.heartbeat_at,
            "updatedAt": self.updated_at,
            "description": self.notes,
            "notes": self.notes,
            "historyLineCount": len(self.lines()),
            "user": {"name": "tester", "username": "tester"},
            "config": json.dumps({key: {"value": value, "desc": None} for key, value in self.config.items()}),
            "summaryMetrics": json.dumps(self.summary),
            "systemMetrics": "{}",
            "historyKeys": {"lastStep": self.last_step(), "keys": {}},
        }
        return {key: value for key, value in node.items() if re.search(rf"\b{key}\b", query)}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received; `operation` is None for non-GraphQL posts (telemetry)."""

    path: str
    operation: str | None
    variables: dict[str, Any]
    status: int
    headers: dict[str, str]
    body: str
    #: `time.monotonic()` on arrival, to check the waits between retries.
    at: float


@dataclass
class _PlannedFailure:
    status: int
    operation: str | None
    remaining: int
    retry_after: str | None
    echo_auth: bool = False


class FakeWandbServer:
    """The state behind the loopback server: one project's runs, recorded requests, planned failures."""

    def __init__(self, entity: str = "altgrad", project: str = "fp8", runs: list[FakeRun] | None = None):
        self.entity = entity
        self.project = project
        self.runs: list[FakeRun] = list(runs or [])
        self.requests: list[RecordedRequest] = []
        self._failures: list[_PlannedFailure] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        #: A misbehaving server: every response carries the request's Authorization header back.
        self.echo_auth_header = False

    # -- control from tests ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def run(self, run_id: str) -> FakeRun:
        return next(run for run in self.runs if run.id == run_id)

    def fail_next(
        self, status: int = 429, *, times: int = 1, operation: str | None = None, retry_after: str | None = None,
        echo_auth: bool = False,
    ) -> None:
        """Answer the next `times` GraphQL requests (of `operation`, if given) with `status`; with
        `echo_auth`, a misbehaving server's error text that repeats the request's credentials."""
        with self._lock:
            self._failures.append(_PlannedFailure(status, operation, times, retry_after, echo_auth))

    def operations(self) -> list[str | None]:
        """Operation names of the GraphQL requests received so far, in order."""
        with self._lock:
            return [r.operation for r in self.requests if r.path.endswith("/graphql")]

    def count(self, operation: str) -> int:
        return self.operations().count(operation)

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def start(self) -> FakeWandbServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-wandb", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeWandbServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling ------------------------------------------------------------------------

    def _take_failure(self, operation: str | None) -> _PlannedFailure | None:
        for failure in self._failures:
            if failure.remaining > 0 and failure.operation in (None, operation):
                failure.remaining -= 1
                return failure
        return None

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        text = body.decode("utf-8", errors="replace")
        if path.startswith(EXPORTS_PATH):
            return self._export_file(path, headers, text)
        if path.startswith((MANIFESTS_PATH, ARTIFACT_FILES_PATH)):
            return self._artifact_file(path, headers, text)
        if not path.endswith("/graphql"):
            # Telemetry (/sdk/otel/v1/metrics) and anything else not GraphQL: accepted, ignored.
            self._record(path, None, {}, 200, headers, text)
            return 200, {"Content-Type": "application/json"}, b"{}"
        try:
            request = json.loads(text)
        except json.JSONDecodeError:
            self._record(path, None, {}, 400, headers, text)
            return 400, {"Content-Type": "application/json"}, b'{"errors": [{"message": "body is not JSON"}]}'
        query = request.get("query", "")
        variables = request.get("variables") or {}
        found = _OPERATION.search(query)
        operation = request.get("operationName") or (found.group(2) if found else None)
        with self._lock:
            failure = self._take_failure(operation)
        if failure is not None:
            self._record(path, operation, variables, failure.status, headers, text)
            extra = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
            echoed = f" for {headers.get('authorization', '')} ({urllib.parse.quote(headers.get('authorization', ''))})"
            payload = json.dumps({"errors": [{"message": f"planned failure {failure.status}{echoed if failure.echo_auth else ''}"}]})
            return failure.status, {"Content-Type": "application/json", **extra}, payload.encode()
        self._record(path, operation, variables, 200, headers, text)
        try:
            data = self._answer(operation, query, variables)
            payload = {"data": data}
        except _GraphQLError as exc:
            payload = {"data": None, "errors": [{"message": str(exc)}]}
        return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()

    def _export_file(self, path: str, headers: dict[str, str], text: str) -> tuple[int, dict[str, str], bytes]:
        found = re.fullmatch(rf"{EXPORTS_PATH}([^/]+)/(\d+)\.parquet", path)
        runs = [run for run in self.runs if found and run.id == found.group(1)]
        files = runs[0].export_files() if runs and runs[0].export_parts else []
        if not found or int(found.group(2)) >= len(files):
            self._record(path, None, {}, 404, headers, text)
            return 404, {"Content-Type": "text/plain"}, b"no such export"
        data = files[int(found.group(2))]
        wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", headers.get("range", ""))
        if wanted is None:
            self._record(path, None, {}, 200, headers, text)
            return 200, {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}, data
        # A range request, as wandb-core's Parquet reader sends when `scan_history` reads exports.
        first, last = wanted.groups()
        start = int(first) if first else max(0, len(data) - int(last))
        stop = min(len(data) - 1, int(last)) if first and last else len(data) - 1
        self._record(path, None, {}, 206, headers, text)
        return 206, {"Content-Type": "application/octet-stream", "Content-Range": f"bytes {start}-{stop}/{len(data)}"}, data[start : stop + 1]

    def _artifacts(self) -> Iterator[FakeArtifact]:
        return (artifact for run in self.runs for artifact in run.artifacts)

    def _artifact_file(self, path: str, headers: dict[str, str], text: str) -> tuple[int, dict[str, str], bytes]:
        """A manifest (GET /manifests/<id>) or a file (GET /artifactsV2/default/.../<md5 hex>/<name>)."""
        payload: bytes | None = None
        if path.startswith(MANIFESTS_PATH):
            wanted = urllib.parse.unquote(path[len(MANIFESTS_PATH) :])
            found = [a for a in self._artifacts() if a.id == wanted]
            payload = json.dumps(found[0].manifest()).encode() if found else None
        else:
            md5_hex = urllib.parse.unquote(path).rstrip("/").split("/")[-2]
            payload = next(
                (data for a in self._artifacts() for entry, data in a.files.items()
                 if entry not in a.missing and hashlib.md5(data).hexdigest() == md5_hex),
                None,
            )  # fmt: skip
        status = 404 if payload is None else 200
        self._record(path, None, {}, status, headers, text)
        if payload is None:
            return 404, {"Content-Type": "text/plain"}, b"no such object"
        return 200, {"Content-Type": "application/octet-stream"}, payload

    def artifact_files_downloaded(self) -> list[str]:
        """Paths of the artifact files (not manifests) served so far, in order."""
        with self._lock:
            return [r.path for r in self.requests if r.path.startswith(ARTIFACT_FILES_PATH) and r.status == 200]

    def exports_downloaded(self) -> list[str]:
        """Paths of the export files served so far, in order."""
        with self._lock:
            return [r.path for r in self.requests if r.path.startswith(EXPORTS_PATH) and r.status == 200]

    def _record(self, path: str, operation: str | None, variables: dict, status: int, headers: dict, body: str) -> None:
        with self._lock:
            self.requests.append(RecordedRequest(path, operation, variables, status, headers, body, time.monotonic()))

    def _answer(self, operation: str | None, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        if operation in ("Viewer", "GetViewer", "GetDefaultEntity"):
            return {"viewer": self._viewer()}
        if operation == "ServerFeaturesQuery":
            return {"serverInfo": {"features": []}}
        if operation == "Runs":
            return {"project": self._runs_page(query, variables)}
        if operation == "FetchArtifactManifest":
            known = any(a.id == variables.get("id") for a in self._artifacts())
            url = f"{self.url}{MANIFESTS_PATH}{urllib.parse.quote(variables['id'], safe='')}"
            return {"artifact": {"currentManifest": {"file": {"directUrl": url}}} if known else None}
        run_name = variables.get("name") or variables.get("run") or variables.get("runName")
        if operation in ("Run", "RunHistoryKeys", "HistoryPage", "RunParquetHistory", "SampledHistoryPage", "RunOutputArtifacts"):
            if (variables.get("entity"), variables.get("project")) != (self.entity, self.project):
                return {"project": None}
            found = [run for run in self.runs if run.id == run_name]
            if not found:
                return {"project": {"run": None}}
            return {"project": {"run": self._run_field(operation, found[0], query, variables)}}
        raise _GraphQLError(f"fake W&B server does not answer operation {operation!r}")

    def _viewer(self) -> dict[str, Any]:
        return {
            "id": "viewer-1",
            "name": "tester",
            "username": "tester",
            "email": None,
            "admin": False,
            "flags": "{}",
            "entity": self.entity,
            "deletedAt": None,
            "apiKeys": {"edges": []},
            "teams": {"edges": []},
        }

    def _runs_page(self, query: str, variables: dict[str, Any]) -> dict[str, Any] | None:
        if (variables.get("entity"), variables.get("project")) != (self.entity, self.project):
            return None
        filters = json.loads(variables.get("filters") or "{}")
        matching = [run for run in self.runs if _matches(run, filters)]
        start = int(variables["cursor"]) if variables.get("cursor") else 0
        per_page = int(variables.get("perPage") or 50)
        page = matching[start : start + per_page]
        return {
            "internalId": "project-1",
            "runCount": len(matching),
            "readOnly": False,
            "runs": {
                "edges": [
                    {"node": run.node(query), "cursor": str(start + offset + 1)} for offset, run in enumerate(page)
                ],
                "pageInfo": {"endCursor": str(start + len(page)), "hasNextPage": start + per_page < len(matching)},
            },
        }

    def _run_field(self, operation: str, run: FakeRun, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        if operation == "Run":
            return run.node(query)
        if operation == "RunHistoryKeys":
            return {"historyKeys": {"lastStep": run.last_step(), "keys": {}}}
        if operation == "RunParquetHistory":
            urls = [f"{self.url}{EXPORTS_PATH}{run.id}/{part}.parquet" for part in range(run.export_parts)]
            return {"parquetHistory": {"parquetUrls": urls, "liveData": run.live_rows() if urls else []}}
        if operation == "SampledHistoryPage":
            spec = json.loads(variables["spec"])
            low, high, size = int(spec["minStep"]), int(spec["maxStep"]), int(spec["samples"])
            keys = set(spec["keys"])
            rows = [json.loads(line) for line in run.lines()]
            # maxStep is inclusive here (wandb-core asks for [0, 1000) as minStep 0, maxStep 999).
            return {"sampledHistory": [[row for row in rows if low <= row.get("_step", -1) <= high and keys <= row.keys()][:size]]}
        if operation == "RunOutputArtifacts":
            start = int(variables["cursor"]) if variables.get("cursor") else 0
            per_page = int(variables.get("perPage") or 50)
            page = run.artifacts[start : start + per_page]
            return {
                "artifacts": {
                    "totalCount": len(run.artifacts),
                    "pageInfo": {"__typename": "PageInfo", "endCursor": str(start + len(page)), "hasNextPage": start + per_page < len(run.artifacts)},
                    "edges": [{"node": artifact.node(self.entity, self.project)} for artifact in page],
                }
            }
        low, high, size = int(variables["minStep"]), int(variables["maxStep"]), int(variables["pageSize"])
        rows = [line for line in run.lines() if low <= _step_of(line) < high]
        return {"history": rows[:size]}


class _GraphQLError(Exception):
    pass


def _export_value(value: Any) -> Any:
    return float(value) if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity") else value


def _step_of(line: str) -> int:
    found = re.search(r'"_step"\s*:\s*(-?\d+)', line)
    return int(found.group(1)) if found else -1


def _field_value(run: FakeRun, path: str) -> Any:
    head, _, rest = path.partition(".")
    if head == "config":
        return run.config.get(rest)
    if head in ("summary_metrics", "summaryMetrics"):
        return run.summary.get(rest)
    fields = {"state": run.state, "name": run.id, "displayName": run.name, "group": run.group, "tags": run.tags,
              "createdAt": run.created_at, "heartbeatAt": run.heartbeat_at, "updatedAt": run.updated_at}  # fmt: skip
    return fields.get(path)


def _matches(run: FakeRun, filters: dict[str, Any]) -> bool:
    """A small subset of W&B's MongoDB-style filters: equality, $in, $ne, $gt/$gte/$lt/$lte (on
    `createdAt`, `heartbeatAt`, `updatedAt` too), $and, $or."""
    for key, wanted in filters.items():
        if key == "$and":
            ok = all(_matches(run, part) for part in wanted)
        elif key == "$or":
            ok = any(_matches(run, part) for part in wanted)
        elif key.startswith("$"):
            raise _GraphQLError(f"fake W&B server does not support filter operator {key!r}")
        else:
            ok = _compare(_field_value(run, key), wanted)
        if not ok:
            return False
    return True


def _compare(actual: Any, wanted: Any) -> bool:
    if not isinstance(wanted, dict):
        return actual == wanted or (isinstance(actual, list) and wanted in actual)
    for op, operand in wanted.items():
        if op == "$in":
            ok = actual in operand
        elif op == "$ne":
            ok = actual != operand
        elif op == "$eq":
            ok = actual == operand
        elif op in ("$gt", "$gte", "$lt", "$lte"):  # timestamps: ISO text of one layout orders as time does
            ok = actual is not None and {"$gt": actual > operand, "$gte": actual >= operand,
                                         "$lt": actual < operand, "$lte": actual <= operand}[op]  # fmt: skip
        else:
            raise _GraphQLError(f"fake W&B server does not support filter operator {op!r}")
        if not ok:
            return False
    return True


def _handler_for(server: FakeWandbServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _respond(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {key.lower(): value for key, value in self.headers.items()}
            status, out_headers, payload = server.handle(self.path, headers, body)
            if server.echo_auth_header:
                out_headers = {**out_headers, "X-Echoed-Authorization": headers.get("authorization", "")}
            self.send_response(status)
            for key, value in out_headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_POST = _respond
        do_GET = _respond

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
            """Silent: requests are recorded on the server object, not printed."""

    return Handler


@contextmanager
def fake_wandb(monkeypatch: pytest.MonkeyPatch, runs: list[FakeRun] | None = None, **kwargs: Any) -> Iterator[FakeWandbServer]:
    """Start the server and point the wandb client at it (base URL, fake key, online mode)."""
    with FakeWandbServer(runs=runs, **kwargs) as server:
        monkeypatch.setenv("WANDB_BASE_URL", server.url)
        monkeypatch.setenv("WANDB_API_KEY", FAKE_API_KEY)
        monkeypatch.setenv("WANDB_MODE", "online")
        yield server


@pytest.fixture
def wandb_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWandbServer]:
    """A running fake W&B server with no runs; tests add `FakeRun`s to `wandb_server.runs`."""
    with fake_wandb(monkeypatch) as server:
        yield server

"""WandbApiSource through the real `wandb.Api` client (and its wandb-core sidecar) against the
loopback GraphQL server in `altgrad_pipeline_tests.wandb_server`."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import math
import urllib.parse
from pathlib import Path

import polars as pl
import pytest

from altgrad_pipeline.ingest.model import HISTORY_SCHEMA, RunLocator
from altgrad_pipeline.ingest.wandb.api import WandbApiError, WandbApiSource, parse_wandb_uri
from altgrad_pipeline_tests.wandb_server import FAKE_API_KEY, FakeRun, FakeWandbServer, fake_wandb

PATH = "altgrad/fp8"
ROWS = 1500  # more than one 1000-step HistoryPage


def alpha_history() -> list[dict]:
    rows = [
        {"_step": step, "_runtime": step * 0.5, "_timestamp": 1.7e9 + step, "loss": 1.0 / (step + 1)}
        for step in range(ROWS)
    ]
    rows[3]["loss"] = "NaN"
    rows[4]["loss"] = "Infinity"
    rows[5]["loss"] = "-Infinity"
    rows[6]["loss"] = math.nan  # serialised as a bare NaN token, as Python's json writes it
    rows[7]["loss"] = math.inf
    rows[10]["weights"] = {"_type": "histogram", "values": [1, 2, 3], "bins": [0.0, 1.0, 2.0, 3.0]}
    rows[11]["lr_text"] = "0.5"  # numeric-looking, but logged as a string
    rows[12]["samples"] = {"_type": "table-file", "path": "media/table/samples.json"}
    return rows


def make_runs() -> list[FakeRun]:
    return [
        FakeRun(
            id="alpha",
            name="e5m2-baseline",
            state="finished",
            config={"fp8_format": "E5M2", "lr": 3e-4, "_private": 1, "_wandb": {"host": "gpu-7"}},
            summary={"loss": 0.25, "grad_norm": "NaN", "best": "Infinity", "_wandb": {"runtime": 750}},
            tags=["fp8", "baseline"],
            group="study-1",
            notes="first try",
            history=alpha_history(),
            created_at="2024-05-01T10:00:00",
            heartbeat_at="2024-05-01T11:00:00",
        ),
        FakeRun(id="beta", state="failed", config={"fp8_format": "E4M3"}, history=[{"_step": 0, "loss": 2.0}]),
        FakeRun(id="gamma", state="crashed", config={"fp8_format": "E5M2"}),
    ]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    with fake_wandb(monkeypatch, runs=make_runs()) as running:
        yield running


def source(tmp_path: Path, **kwargs) -> WandbApiSource:
    return WandbApiSource(PATH, tmp_path / "cache", max_retries=2, **kwargs)


def locator(run_id: str, fingerprint: str = "unknown") -> RunLocator:
    return RunLocator(source="wandb-api", location=f"wandb://{PATH}/{run_id}", fingerprint=fingerprint, run_id_hint=run_id)


def test_discover_lists_runs_without_reading_history(server: FakeWandbServer, tmp_path: Path) -> None:
    locators = source(tmp_path).discover()

    assert [loc.run_id_hint for loc in locators] == ["alpha", "beta", "gamma"]
    assert locators[0].location == "wandb://altgrad/fp8/alpha"
    assert locators[0].source == "wandb-api"
    assert locators[0].fingerprint.startswith(f"2024-05-01T11:00:00|finished|{ROWS}|")
    assert not {"HistoryPage", "RunHistoryKeys", "RunParquetHistory"} & set(server.operations())


def test_filters_reach_the_server(server: FakeWandbServer, tmp_path: Path) -> None:
    # As an ALTGRAD_RUNS entry reaches the source: the scheme stripped, the query string kept.
    locators = WandbApiSource("altgrad/fp8?config.fp8_format=E5M2", tmp_path).discover()

    assert [loc.run_id_hint for loc in locators] == ["alpha", "gamma"]
    runs_requests = [r for r in server.requests if r.operation == "Runs"]
    assert json.loads(runs_requests[-1].variables["filters"]) == {"config.fp8_format": "E5M2"}


def test_runs_ended_since_a_moment_are_asked_for_with_the_users_filters(server: FakeWandbServer, tmp_path: Path) -> None:
    server.run("beta").updated_at = "2024-05-02T09:00:00"
    server.runs.append(FakeRun(id="delta", state="running", config={"fp8_format": "E5M2"}, updated_at="2024-05-02T09:30:00"))
    since = dt.datetime(2024, 5, 2, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))  # 08:00 UTC

    assert [loc.run_id_hint for loc in source(tmp_path).discover_ended_since(since)] == ["beta"]  # not delta: running
    narrowed = WandbApiSource("altgrad/fp8?config.fp8_format=E5M2", tmp_path).discover_ended_since(since)

    assert narrowed == []
    filters = [json.loads(r.variables["filters"]) for r in server.requests if r.operation == "Runs"]
    news = [{"updatedAt": {"$gt": "2024-05-02T08:00:00"}}, {"state": {"$ne": "running"}}]
    assert filters == [{"$and": news}, {"$and": [{"config.fp8_format": "E5M2"}, *news]}]


def test_wandb_uri_forms() -> None:
    assert parse_wandb_uri("wandb://team/proj") == ("team/proj", {})
    assert parse_wandb_uri("wandb://team/proj?state=finished&config.batch_size=32") == (
        "team/proj",
        {"state": "finished", "config.batch_size": 32},
    )
    raw = json.dumps({"$or": [{"config.fp8_format": "E5M2"}, {"tags": "fp8"}]})
    assert parse_wandb_uri(f"wandb://team/proj?filters={raw}")[1] == json.loads(raw)
    with pytest.raises(ValueError):
        parse_wandb_uri("wandb://only-entity")


def test_read_returns_metadata_config_and_summary(server: FakeWandbServer, tmp_path: Path) -> None:
    run = source(tmp_path).read(locator("alpha"))

    assert run.issues == []
    assert (run.run_id, run.source, run.location) == ("alpha", "wandb-api", "wandb://altgrad/fp8/alpha")
    assert (run.entity, run.project, run.name, run.group, run.notes) == ("altgrad", "fp8", "e5m2-baseline", "study-1", "first try")
    assert run.tags == ["fp8", "baseline"]
    assert run.config == {"fp8_format": "E5M2", "lr": 3e-4}
    assert run.summary["loss"] == 0.25
    assert math.isnan(run.summary["grad_norm"]) and run.summary["best"] == math.inf
    assert "_wandb" not in run.summary
    assert (run.ended, run.exit_code, run.cut_short) == (True, 0, False)
    assert run.started_at == dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)
    assert run.last_write == dt.datetime(2024, 5, 1, 11, tzinfo=dt.UTC)
    assert run.url == f"{server.url}/altgrad/fp8/runs/alpha"
    assert run.value_types == {"weights": "histogram", "samples": "table-file"}
    assert run.fingerprint.startswith(f"2024-05-01T11:00:00|finished|{ROWS}|")


def test_read_scans_the_full_history_value_by_value(server: FakeWandbServer, tmp_path: Path) -> None:
    run = source(tmp_path).read(locator("alpha"))
    assert run.history.schema == pl.Schema(HISTORY_SCHEMA)
    assert run.history.filter(pl.col("key") == "lr_text").select("step", "value", "text").rows() == [(11, None, "0.5")]
    history = run.history.filter(pl.col("key") != "lr_text")

    assert history["key"].unique().to_list() == ["loss"]
    assert history["step"].to_list() == list(range(ROWS))
    expected = [1.0 / (step + 1) for step in range(ROWS)]
    expected[3:8] = [math.nan, math.inf, -math.inf, math.nan, math.inf]
    values = history["value"].to_list()
    assert all(math.isnan(v) if math.isnan(e) else v == e for v, e in zip(values, expected, strict=True))
    assert history["runtime"].to_list() == [step * 0.5 for step in range(ROWS)]
    assert history["timestamp"].to_list() == [1.7e9 + step for step in range(ROWS)]
    # scan_history, not the 500-point sample: one HistoryPage per 1000 steps.
    pages = [r.variables for r in server.requests if r.operation == "HistoryPage"]
    assert [(p["minStep"], p["maxStep"]) for p in pages] == [(0, 1000), (1000, ROWS)]
    assert "RunFullHistory" not in server.operations()
    # The server was asked for exports first and had none.
    assert server.count("RunParquetHistory") >= 1 and server.exports_downloaded() == []


def test_history_exports_are_downloaded_instead_of_paged(server: FakeWandbServer, tmp_path: Path) -> None:
    paged = source(tmp_path / "paged").read(locator("alpha"))
    server.run("alpha").export_parts = 3
    server.clear_requests()

    run = source(tmp_path / "exported").read(locator("alpha"))

    assert sorted(server.exports_downloaded()) == [f"/exports/alpha/{part}.parquet" for part in range(3)]
    assert server.count("HistoryPage") == 0 and server.count("RunHistoryKeys") == 0
    assert run.issues == []
    # Value by value the same history as paging gives, NaN and +-inf included.
    assert run.history.schema == paged.history.schema
    assert run.history.equals(paged.history)
    assert run.history.height == ROWS + 1  # with the string row of lr_text
    assert run.value_types == paged.value_types == {"weights": "histogram", "samples": "table-file"}
    assert not list((tmp_path / "exported" / "cache").glob("exports-*"))  # downloads removed once read


def test_rows_after_the_last_export_are_paged(server: FakeWandbServer, tmp_path: Path) -> None:
    fake = server.run("alpha")
    fake.state = "running"
    fake.export_parts, fake.exported_rows = 2, 1200

    run = source(tmp_path).read(locator("alpha"))

    # Read once here; wandb-core's scan_history fetches them again to find where the live rows start.
    assert sorted(server.exports_downloaded()) == ["/exports/alpha/0.parquet"] * 2 + ["/exports/alpha/1.parquet"] * 2
    pages = [r.variables for r in server.requests if r.operation == "HistoryPage"]
    assert [(p["minStep"], p["maxStep"]) for p in pages] == [(1200, ROWS)]
    assert run.history.filter(pl.col("text").is_not_null()).select("step", "key", "text").rows() == [(11, "lr_text", "0.5")]
    loss = run.history.filter(pl.col("key") == "loss")
    assert loss["step"].to_list() == list(range(ROWS))
    expected = [1.0 / (step + 1) for step in range(ROWS)]
    expected[3:8] = [math.nan, math.inf, -math.inf, math.nan, math.inf]
    values = loss["value"].to_list()
    assert all(math.isnan(v) if math.isnan(e) else v == e for v, e in zip(values, expected, strict=True))
    assert loss["timestamp"].to_list() == [1.7e9 + step for step in range(ROWS)]


@pytest.mark.parametrize(
    ("state", "outcome"),
    [
        ("finished", (True, 0, False)),
        ("failed", (True, 1, False)),
        ("crashed", (False, None, True)),
        ("killed", (False, None, True)),
        ("running", (False, None, False)),
    ],
)
def test_state_maps_to_ended_exit_code_and_cut_short(
    server: FakeWandbServer, tmp_path: Path, state: str, outcome: tuple
) -> None:
    fake = server.run("beta")
    fake.state = state
    fake.heartbeat_at = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat()

    run = source(tmp_path).read(locator("beta"))

    assert (run.ended, run.exit_code, run.cut_short) == outcome


def test_running_run_silent_beyond_the_grace_period_is_cut_short(server: FakeWandbServer, tmp_path: Path) -> None:
    server.run("beta").state = "running"  # heartbeat from 2024

    run = source(tmp_path, grace_period_s=3600).read(locator("beta"))

    assert (run.ended, run.cut_short) == (False, True)


def test_cached_running_run_turns_cut_short_once_silent_past_the_grace_period(
    server: FakeWandbServer, tmp_path: Path
) -> None:
    fake = server.run("beta")
    fake.state = "running"
    fake.heartbeat_at = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60)).replace(tzinfo=None).isoformat()
    first = source(tmp_path, grace_period_s=3600).discover()[1]

    fresh = source(tmp_path, grace_period_s=3600).read(first)
    later = source(tmp_path, grace_period_s=30).read(first)  # the same copy, judged later

    assert (fresh.ended, fresh.cut_short) == (False, False)
    assert (later.ended, later.cut_short) == (False, True)
    assert server.count("HistoryPage") == 1


def test_unchanged_run_is_read_from_the_cache(server: FakeWandbServer, tmp_path: Path) -> None:
    first = source(tmp_path)
    located = {loc.run_id_hint: loc for loc in first.discover()}
    fetched = first.read(located["alpha"])
    server.clear_requests()

    again = first.read(located["alpha"])
    # A later refresh in a new process: fresh source, same cache directory.
    later = source(tmp_path)
    relocated = {loc.run_id_hint: loc for loc in later.discover()}
    reread = later.read(relocated["alpha"])

    assert server.count("HistoryPage") == 0 and server.count("RunHistoryKeys") == 0
    assert server.operations().count("Run") == 0  # nothing beyond the discovery listing
    for cached in (again, reread):
        assert cached.history.equals(fetched.history)
        assert cached.value_types == fetched.value_types
        assert (cached.config, cached.tags, cached.ended, cached.last_write) == (
            fetched.config,
            fetched.tags,
            fetched.ended,
            fetched.last_write,
        )
        assert math.isnan(cached.summary["grad_norm"])


def test_updated_run_is_fetched_again(server: FakeWandbServer, tmp_path: Path) -> None:
    src = source(tmp_path)
    before = {loc.run_id_hint: loc for loc in src.discover()}
    src.read(before["beta"])
    fake = server.run("beta")
    fake.history.append({"_step": 1, "loss": 1.5})
    fake.heartbeat_at = "2024-05-01T12:00:00"
    server.clear_requests()

    after = {loc.run_id_hint: loc for loc in src.discover()}
    run = src.read(after["beta"])

    assert after["beta"].fingerprint != before["beta"].fingerprint
    assert after["alpha"].fingerprint == before["alpha"].fingerprint
    assert server.count("HistoryPage") == 1
    assert run.history["value"].to_list() == [2.0, 1.5]
    assert run.fingerprint == after["beta"].fingerprint


def test_rate_limit_then_success_yields_the_data(server: FakeWandbServer, tmp_path: Path) -> None:
    server.fail_next(429, operation="HistoryPage", retry_after="0")

    run = source(tmp_path).read(locator("beta"))

    assert run.issues == []
    assert run.history["value"].to_list() == [2.0]
    attempts = [r for r in server.requests if r.operation == "HistoryPage"]
    assert [r.status for r in attempts] == [429, 200]
    # wandb-core honoured Retry-After: 0 instead of its own ~2 s first backoff.
    assert attempts[1].at - attempts[0].at < 1.0


def test_persistent_rate_limit_becomes_an_issue_after_bounded_retries(server: FakeWandbServer, tmp_path: Path) -> None:
    server.fail_next(429, times=50, operation="HistoryPage", retry_after="0")

    run = source(tmp_path).read(locator("beta"))

    assert [issue.kind for issue in run.issues] == ["api_error"]
    assert "429" in run.issues[0].reason
    assert run.issues[0].lost == "the whole run"
    assert run.history.is_empty()
    # max_retries=2: three attempts in all, and no second retry loop on top of wandb-core's.
    assert server.count("HistoryPage") == 3


def test_failure_after_a_change_keeps_the_cached_copy(server: FakeWandbServer, tmp_path: Path) -> None:
    src = source(tmp_path)
    first = src.read(locator("beta", "old"))
    server.fail_next(503, times=50, retry_after="0")

    run = src.read(locator("beta", "changed"))

    assert run.history.equals(first.history)
    assert [issue.kind for issue in run.issues] == ["api_error"]
    assert run.issues[0].lost == "the run's update since the local copy"


def test_api_key_never_leaks(
    server: FakeWandbServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    src = source(tmp_path)
    good = src.read(locator("alpha"))
    server.fail_next(500, times=50, retry_after="0")
    bad = src.read(locator("beta"))

    basic = base64.b64encode(f"api:{FAKE_API_KEY}".encode()).decode()
    assert any(r.headers.get("authorization") == f"Basic {basic}" for r in server.requests)  # it was used
    out, err = capfd.readouterr()
    texts = [repr(good), repr(bad), caplog.text, out, err]
    texts += [path.read_bytes().decode("latin-1") for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    assert bad.issues, "the failing read should have produced an issue to check"
    for secret in (FAKE_API_KEY, basic):
        assert not [text for text in texts if secret in text]


def test_a_key_echoed_by_the_server_is_redacted_in_every_form(server: FakeWandbServer, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    src = source(tmp_path)
    server.fail_next(500, times=50, retry_after="0", echo_auth=True)
    bad = src.read(locator("beta"))

    basic = base64.b64encode(f"api:{FAKE_API_KEY}".encode()).decode()
    texts = [repr(bad), caplog.text] + [p.read_bytes().decode("latin-1") for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert "[redacted]" in bad.issues[0].reason
    for form in (FAKE_API_KEY, basic, basic.rstrip("="), urllib.parse.quote(basic)):
        assert not [text for text in texts if form in text], form


def test_a_refused_connection_is_said_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_API_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(WandbApiError) as caught:
        source(tmp_path).discover()
    assert "could not connect" in str(caught.value) or "Connection refused" in str(caught.value), caught.value


def test_unknown_run_is_an_issue_not_an_exception(server: FakeWandbServer, tmp_path: Path) -> None:
    run = source(tmp_path).read(locator("missing"))

    assert run.history.is_empty()
    assert [issue.kind for issue in run.issues] == ["api_error"]
    assert "missing" in run.issues[0].reason


def test_unreachable_listing_raises_a_scrubbed_error(server: FakeWandbServer, tmp_path: Path) -> None:
    server.fail_next(503, times=50, operation="Runs", retry_after="0")

    with pytest.raises(WandbApiError) as caught:
        source(tmp_path).discover()

    assert "503" in str(caught.value) and FAKE_API_KEY not in str(caught.value)

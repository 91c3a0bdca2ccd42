"""Media of W&B API runs through the real `wandb.Api` client against the loopback server: a run
logged with the real SDK (offline) is served as the hosted service keeps it (media values in the
history, each table in a `run_table` artifact version), and `run_media`, `media_tables` and
`histograms` must hold exactly what was logged, as for the local run folder."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from altgrad_pipeline.definitions import build_resources
from altgrad_pipeline.defs import ingest as ingest_defs
from altgrad_pipeline.defs import media as media_defs
from altgrad_pipeline.ingest.catalog import RunCatalog
from altgrad_pipeline.ingest.media import store, tables, values
from altgrad_pipeline.ingest.wandb import media_api as wandb_media_api
from altgrad_pipeline.ingest.wandb.api import WandbApiSource
from altgrad_pipeline.ingest.wandb.local import read_run_media
from altgrad_pipeline.ingest.wandb.media_api import entry_name
from altgrad_pipeline_tests.conftest import offline_wandb_env
from altgrad_pipeline_tests.media.sdk_runs import LoggedRun, write_media_run
from altgrad_pipeline_tests.media.test_media_values import JSON_TEXT_COLUMNS, decoded_run, same_cell
from altgrad_pipeline_tests.wandb_server import FAKE_API_KEY, FakeArtifact, FakeRun, FakeWandbServer, fake_wandb

RUN_ID = "media01"
#: The table served under a `wandb-artifact://_id/...` reference instead of the SDK's client one.
BY_ARTIFACT_ID = (2, "samples")


@pytest.fixture(scope="module")
def sdk_run(tmp_path_factory: pytest.TempPathFactory) -> LoggedRun:
    root = tmp_path_factory.mktemp("api-media")
    with pytest.MonkeyPatch.context() as env:
        offline_wandb_env(env, root)
        return write_media_run(root, RUN_ID, seed=1, lr=0.001)


def served_run(logged: LoggedRun, exported_rows: int | None = None) -> FakeRun:
    """The SDK run as the hosted service keeps it: its history lines with the media values as
    logged, and one `run_table` artifact version per logged table holding the table file. With
    `exported_rows`, that many history rows are in a Parquet export and the rest are live."""
    assert logged.folder is not None
    history: dict[int, dict] = {}
    versions: dict[str, int] = {}
    artifacts = []
    for step, key, text in read_run_media(logged.folder).select("step", "key", "value_json").iter_rows():
        value = json.loads(text)
        if value["_type"] == "table-file":
            name = f"run-{RUN_ID}-{key.replace('/', '')}"
            artifact = FakeArtifact(name, versions.get(name, 0), {f"{key}.table.json": (logged.folder / "files" / value["path"]).read_bytes()})
            versions[name] = artifact.version + 1
            artifacts.append(artifact)
            if (step, key) == BY_ARTIFACT_ID:
                value["artifact_path"] = f"wandb-artifact://_id/{artifact.id}/{key}.table.json"
        history.setdefault(step, {"_step": step})[key] = value
    for step, row in history.items():
        row.update({"kl": 1.0 / (step + 1), "val_loss": 3.0 - step})
    exports = {"export_parts": 1, "exported_rows": exported_rows} if exported_rows is not None else {}
    return FakeRun(id=RUN_ID, config=logged.config, history=[history[s] for s in sorted(history)], artifacts=artifacts, **exports)


def read_api_media(server: FakeWandbServer, cache: Path) -> tuple[values.DecodedMedia, tables.ReadTables, list]:
    """What the `media_format` asset does for a `wandb://` store, through the catalog."""
    catalog = RunCatalog(cache / "runs", [WandbApiSource("altgrad/fp8", cache / "wandb_api", max_retries=1)])
    entries = catalog.sync().entries
    api_runs = store.ApiRuns(catalog.sources)
    media, fetch_issues = store.media_values(entries, cache, api_runs)
    decoded = values.decode_media(media)
    return decoded, store.read_tables(decoded.run_media, entries, cache, api_runs), fetch_issues


def assert_same_as_logged(table: tables.TableRows, logged: LoggedRun) -> None:
    columns, data = logged.tables[(table.step, table.key)]
    assert table.columns == columns
    assert table.frame.columns == ["run_id", "step", "key", "row", *(f"col.{c}" for c in columns)]
    assert table.frame.select("run_id", "step", "key").unique().rows() == [(RUN_ID, table.step, table.key)]
    assert table.frame["row"].to_list() == list(range(len(data)))
    for r, logged_row in enumerate(data):
        for c, cell in enumerate(logged_row):
            assert same_cell(table.frame[f"col.{columns[c]}"][r], cell, as_json=columns[c] in JSON_TEXT_COLUMNS), (table.key, r, columns[c])


@pytest.mark.parametrize("exported_rows", [None, 2], ids=["history-pages", "parquet-export-and-live-rows"])
def test_api_tables_hold_exactly_what_was_logged(
    sdk_run: LoggedRun, exported_rows: int | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with fake_wandb(monkeypatch, runs=[served_run(sdk_run, exported_rows)]) as server:
        decoded, read, fetch_issues = read_api_media(server, tmp_path)

    assert fetch_issues == [] and decoded.issues == [] and read.issues == []
    assert {(t.step, t.key) for t in read.tables} == set(sdk_run.tables)
    _, local = decoded_run(sdk_run.folder, RUN_ID)
    local_frames = {(t.step, t.key): t.frame for t in local.tables}
    for table in read.tables:
        assert_same_as_logged(table, sdk_run)
        assert table.frame.equals(local_frames[(table.step, table.key)])  # types included
    samples = next(t for t in read.tables if t.key == "samples")
    assert samples.frame.schema["col.key"] == pl.String and samples.frame.schema["col.step"] == pl.Int64
    assert samples.frame["col.key"].to_list()[:3] == ["a|b", "<script>x</script>", 'é\n"quoted"\ttab']
    # Six artifact files: each table version fetched once (the SDK logged no two alike).
    assert len(server.artifact_files_downloaded()) == len(sdk_run.tables)


@pytest.mark.parametrize("exported_rows", [None, 2], ids=["history-pages", "parquet-export-and-live-rows"])
def test_api_run_media_points_at_the_artifacts(
    sdk_run: LoggedRun, exported_rows: int | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with fake_wandb(monkeypatch, runs=[served_run(sdk_run, exported_rows)]) as server:
        decoded, _, _ = read_api_media(server, tmp_path)
        artifact_ids = {a.id for a in server.run(RUN_ID).artifacts}

    index = decoded.run_media
    assert index.select("step", "key", "media_type").rows() == [
        (s, k, "histogram" if k == "weights" else "table") for s in range(3) for k in ("attn/layer0", "attn/long", "samples", "weights")
    ]
    for row in index.filter(pl.col("media_type") == "table").iter_rows(named=True):
        columns, data = sdk_run.tables[(row["step"], row["key"])]
        assert (row["nrows"], row["ncols"]) == (len(data), len(columns))
        assert row["file"] == row["artifact_path"] and row["path"].startswith("media/table/")
        if (row["step"], row["key"]) == BY_ARTIFACT_ID:
            assert row["file"].split("/")[3] in artifact_ids
        else:
            assert row["file"].startswith("wandb-client-artifact://") and row["file"].endswith(f"/{row['key']}.table.json")
    got = {(r["step"], r["key"]): (r["bin_edges"], r["counts"]) for r in decoded.histograms.iter_rows(named=True)}
    assert got == sdk_run.histograms


def test_missing_artifact_files_become_issues_and_the_other_tables_survive(
    sdk_run: LoggedRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run = served_run(sdk_run)
    gone = next(a for a in run.artifacts if a.name == f"run-{RUN_ID}-attnlong" and a.version == 1)  # step 1
    gone.missing.add("attn/long.table.json")  # the object store lost the file: 404
    deleted = next(a for a in run.artifacts if a.name == f"run-{RUN_ID}-attnlayer0" and a.version == 2)  # step 2
    run.artifacts.remove(deleted)  # the artifact version itself was deleted
    with fake_wandb(monkeypatch, runs=[run]) as server:
        decoded, read, fetch_issues = read_api_media(server, tmp_path)

    assert fetch_issues == [] and decoded.issues == []
    issues = sorted(read.issues, key=lambda i: i.position or "")
    assert [(i.kind, i.position, i.run_id, i.source, i.lost) for i in issues] == [
        ("missing_table_file", "step 1, key 'attn/long'", RUN_ID, "wandb-api", "the table 'attn/long' of step 1"),
        ("missing_table_file", "step 2, key 'attn/layer0'", RUN_ID, "wandb-api", "the table 'attn/layer0' of step 2"),
    ]
    assert "404" in issues[0].reason and f"fp8/run-{RUN_ID}-attnlong:v1" in issues[0].reason
    assert issues[1].reason.startswith("cannot read the table file: no logged `run_table` artifact of the run holds the table file 'attn/layer0.table.json'")
    assert issues[0].location.startswith("wandb-client-artifact://")
    assert {(t.step, t.key) for t in read.tables} == set(sdk_run.tables) - {(1, "attn/long"), (2, "attn/layer0")}
    for table in read.tables:
        assert_same_as_logged(table, sdk_run)
    assert FAKE_API_KEY not in repr(read.issues)


def test_media_assets_of_a_wandb_store(sdk_run: LoggedRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The `media_format` asset through Dagster with `ALTGRAD_RUNS=wandb://altgrad/fp8`."""
    run = served_run(sdk_run)
    lost = next(iter(run.artifacts[-1].files))  # step 2's `samples`, referenced by artifact id
    run.artifacts[-1].missing.add(lost)
    defs = dg.Definitions(
        assets=[ingest_defs.ingest_format, media_defs.media_format],
        resources=build_resources(runs="wandb://altgrad/fp8", data_dir=str(tmp_path / "data")),
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("fp8_format", ["E5M2"])
    with fake_wandb(monkeypatch, runs=[run]):
        result = defs.get_implicit_global_asset_job_def().execute_in_process(instance=instance, partition_key="E5M2", asset_selection=[
            dg.AssetKey(k) for k in ("raw_runs", "run_histories", "run_media", "media_tables", "histograms", "media_issues")])  # fmt: skip
    assert result.success

    assets = tmp_path / "data/assets"
    run_media = pl.read_parquet(assets / "run_media/E5M2.parquet")
    assert run_media.height == 12 and run_media.filter(pl.col("media_type") == "table")["file"].str.starts_with("wandb-").all()
    issues = pl.read_parquet(assets / "media_issues/E5M2.parquet")
    assert issues.select("kind", "run_id", "source").rows() == [("missing_table_file", RUN_ID, "wandb-api")]
    assert issues["position"][0] == f"step 2, key {lost.removesuffix('.table.json')!r}" and "404" in issues["reason"][0]
    index = pl.read_parquet(assets / "media_tables/E5M2.parquet")
    assert index.height == len(sdk_run.tables) - 1
    for row in index.iter_rows(named=True):
        frame = pl.read_parquet(row["table_file"])
        assert_same_as_logged(tables.TableRows(row["run_id"], row["step"], row["key"], row["columns"], frame), sdk_run)
    assert pl.read_parquet(assets / "histograms/E5M2.parquet").height == len(sdk_run.histograms)
    assert FAKE_API_KEY not in issues.write_csv()


def test_table_files_are_fetched_once(sdk_run: LoggedRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with fake_wandb(monkeypatch, runs=[served_run(sdk_run)]) as server:
        _, first, _ = read_api_media(server, tmp_path)
        server.clear_requests()
        _, again, _ = read_api_media(server, tmp_path)
        asked = server.operations()

    assert [(t.step, t.key) for t in again.tables] == [(t.step, t.key) for t in first.tables]
    assert all(a.frame.equals(b.frame) for a, b in zip(first.tables, again.tables, strict=True))
    assert not {"RunOutputArtifacts", "FetchArtifactManifest", "SampledHistoryPage"} & set(asked)
    assert server.artifact_files_downloaded() == []


def test_a_run_the_server_lost_is_an_issue(sdk_run: LoggedRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    run = served_run(sdk_run)
    with fake_wandb(monkeypatch, runs=[run]) as server:
        catalog = RunCatalog(tmp_path / "runs", [WandbApiSource("altgrad/fp8", tmp_path / "wandb_api", max_retries=1)])
        entries = catalog.sync().entries
        server.fail_next(500, times=20, operation="SampledHistoryPage")
        media, fetch_issues = store.media_values(entries, tmp_path, store.ApiRuns(catalog.sources))

    assert media.height == 0
    assert [(i.kind, i.run_id, i.lost) for i in fetch_issues] == [("api_error", RUN_ID, "the run's media (tables, histograms, ...)")]
    assert FAKE_API_KEY not in repr(fetch_issues)


def test_unreachable_runs_and_unnamed_tables_are_issues_without_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_API_KEY)
    table = {"_type": "table-file", "path": "media/table/t.table.json", "sha256": "0" * 64, "nrows": 1, "ncols": 1}
    media = pl.DataFrame(
        [(RUN_ID, "wandb-api", 3, "t", json.dumps({**table, "artifact_path": "wandb-client-artifact://c1/t.table.json"}), None),
         (RUN_ID, "wandb-api", 4, "t", json.dumps(table), None)],
        schema=values.MEDIA_VALUES_SCHEMA, orient="row",
    )  # fmt: skip

    def unreachable() -> None:
        raise ConnectionError(f"401 for api:{FAKE_API_KEY}@host")

    source = WandbApiSource("altgrad/fp8", tmp_path)
    read = wandb_media_api.read_run_tables(
        unreachable, values.decode_media(media).run_media, source="wandb-api", cache=wandb_media_api.TableFileCache(tmp_path / "t"), redact=source.redact
    )
    assert read.tables == []
    assert [(i.kind, i.position) for i in read.issues] == [("missing_table_file", "step 4, key 't'"), ("missing_table_file", "step 3, key 't'")]
    assert read.issues[0].reason.startswith("the history value names no artifact")
    assert read.issues[1].reason == "cannot read the table file: the run's artifacts could not be listed: ConnectionError: 401 for api:[redacted]@host"


def test_entry_names_of_artifact_references() -> None:
    assert entry_name("wandb-client-artifact://abc123/attn/layer0.table.json") == "attn/layer0.table.json"
    assert entry_name("wandb-client-artifact://abc123:latest/samples.table.json") == "samples.table.json"
    assert entry_name("wandb-artifact://_id/QXJ0aWZhY3Q6MQ==/samples.table.json") == "samples.table.json"
    assert entry_name("wandb-artifact://lab/fp8/run-x-samples:v3/attn/l0.table.json") == "attn/l0.table.json"
    assert entry_name("wandb-artifact://_id/QXJ0aWZhY3Q6MQ==") is None
    assert entry_name("media/table/samples_0_ab.table.json") is None

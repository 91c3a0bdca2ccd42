"""`run_media`, `media_tables` and `histograms` checked value by value against what the real wandb
SDK logged (offline), against the older encodings in the corpora, and against damaged media."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest

from altgrad_pipeline.analysis.attention import attention_weights
from altgrad_pipeline.ingest.media import tables, values
from altgrad_pipeline.ingest.wandb.local import find_run_folders, group_runs, read_run_media
from altgrad_pipeline_tests.media.sdk_runs import HEADS, POSITIONS, attention_matrix, write_media_run


def decoded_run(folder: Path, run_id: str) -> tuple[values.DecodedMedia, tables.ReadTables]:
    media = read_run_media(folder).with_columns(pl.lit(run_id).alias("run_id"), pl.lit("wandb-local").alias("source"))
    decoded = values.decode_media(media.select(*values.MEDIA_VALUES_SCHEMA))
    return decoded, tables.read_tables(decoded.run_media, tables.read_local_file)


#: Columns whose cells mix JSON kinds (or nest): each cell is kept as its JSON text.
JSON_TEXT_COLUMNS = {"extra", "mixed"}


def same_cell(read: object, logged: object, *, as_json: bool = False) -> bool:
    if isinstance(logged, float) and math.isnan(logged):
        return isinstance(read, float) and math.isnan(read)
    if as_json:
        return json.loads(str(read)) == logged
    if isinstance(logged, str) and not isinstance(read, str):
        return False
    return read == logged


@pytest.fixture(scope="module")
def sdk_run(tmp_path_factory: pytest.TempPathFactory):
    return write_media_run(tmp_path_factory.mktemp("media"), "media01", seed=1, lr=0.001)


def test_run_media_indexes_every_logged_value(sdk_run) -> None:
    decoded, _ = decoded_run(sdk_run.folder, "media01")
    index = decoded.run_media
    assert index.select("step", "key", "media_type").rows() == [
        (s, k, "histogram" if k == "weights" else "table") for s in range(3) for k in ("attn/layer0", "attn/long", "samples", "weights")
    ]
    tables_rows = index.filter(pl.col("media_type") == "table")
    for row in tables_rows.iter_rows(named=True):
        columns, data = sdk_run.tables[(row["step"], row["key"])]
        assert (row["nrows"], row["ncols"]) == (len(data), len(columns))
        assert row["path"].startswith("media/table/") and row["path"].endswith(".table.json")
        assert row["file"] == f"{sdk_run.folder}/files/{row['path']}"
        assert row["artifact_path"].startswith("wandb-client-artifact://")
        assert len(row["sha256"]) == 64 and row["size"] == Path(row["file"]).stat().st_size
    assert decoded.issues == []


def test_media_tables_hold_exactly_what_was_logged(sdk_run) -> None:
    _, read = decoded_run(sdk_run.folder, "media01")
    assert read.issues == []
    assert {(t.step, t.key) for t in read.tables} == set(sdk_run.tables)
    for table in read.tables:
        columns, data = sdk_run.tables[(table.step, table.key)]
        assert table.columns == columns
        frame = table.frame
        assert frame.columns == ["run_id", "step", "key", "row", *(f"col.{c}" for c in columns)]
        assert frame["step"].unique().to_list() == [table.step] and frame["key"].unique().to_list() == [table.key]
        assert frame["row"].to_list() == list(range(len(data)))
        for r, logged_row in enumerate(data):
            for c, logged in enumerate(logged_row):
                cell = frame[f"col.{columns[c]}"][r]
                assert same_cell(cell, logged, as_json=columns[c] in JSON_TEXT_COLUMNS), (table.key, r, columns[c])
    samples = next(t for t in read.tables if t.key == "samples")
    assert samples.frame.schema["col.step"] == pl.Int64 and samples.frame.schema["col.score"] == pl.Float64
    assert samples.frame.schema["col.flag"] == pl.Boolean and samples.frame.schema["col.key"] == pl.String
    assert samples.frame.schema["col.mixed"] == pl.String  # ints and strings mixed: JSON text per cell
    assert samples.frame["col.mixed"].to_list()[:2] == ['"s0"', "1"]


def test_histograms_hold_exactly_what_was_logged(sdk_run) -> None:
    decoded, _ = decoded_run(sdk_run.folder, "media01")
    got = {(r["step"], r["key"]): (r["bin_edges"], r["counts"]) for r in decoded.histograms.iter_rows(named=True)}
    assert got == sdk_run.histograms


def test_attention_weights_of_both_table_shapes(sdk_run) -> None:
    _, read = decoded_run(sdk_run.folder, "media01")
    for table in read.tables:
        weights = attention_weights(table)
        if table.key == "samples":
            assert weights is None
            continue
        assert weights is not None and weights.height == HEADS * POSITIONS * POSITIONS
        for row in weights.iter_rows(named=True):
            expected = attention_matrix(1, table.step, int(row["head"]))[row["query"], row["key_position"]]
            assert row["weight"] == pytest.approx(expected, rel=1e-12)


def _value(run_id: str, step: int, key: str, value: dict, files_dir: str | None = None) -> dict:
    return {"run_id": run_id, "source": "wandb-local", "step": step, "key": key, "value_json": json.dumps(value), "files_dir": files_dir}


def test_damaged_media_become_issues_and_nothing_else_is_lost(tmp_path: Path) -> None:
    files = tmp_path / "files"
    (files / "media/table").mkdir(parents=True)
    (files / "media/table/good.table.json").write_text('{"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}')
    (files / "media/table/cut.table.json").write_text('{"columns": ["a"], "data": [[1], [2')
    (files / "media/table/ragged.table.json").write_text('{"columns": ["a", "b"], "data": [[1, 2], [3], [4, 5, 6]]}')
    (files / "media/table/notjson.table.json").write_bytes(b"\x00\xffgarbage")
    table = lambda name, n, c: {"_type": "table-file", "path": f"media/table/{name}.table.json", "nrows": n, "ncols": c}  # noqa: E731
    rows = [
        _value("r", 1, "good", table("good", 2, 2), str(files)),
        _value("r", 1, "gone", table("gone", 2, 2), str(files)),
        _value("r", 1, "cut", table("cut", 2, 1), str(files)),
        _value("r", 1, "ragged", table("ragged", 3, 2), str(files)),
        _value("r", 1, "notjson", table("notjson", 1, 1), str(files)),
        _value("r", 1, "wrongshape", table("good", 5, 2), str(files)),
        _value("r", 2, "h_bad", {"_type": "histogram", "values": [1, 2, 3], "bins": [0, 1, 2]}),
        _value("r", 2, "h_ok", {"_type": "histogram", "values": [1, 2], "bins": [0, 1, 2]}),
        _value("r", 2, "h_packed", {"_type": "histogram", "values": [4, 5, 6], "packedBins": {"min": -1.0, "size": 0.5, "count": 3}}),
    ]
    decoded = values.decode_media(pl.DataFrame(rows, schema=values.MEDIA_VALUES_SCHEMA))
    read = tables.read_tables(decoded.run_media, tables.read_local_file)
    kinds = sorted((i.kind, i.position) for i in decoded.issues + read.issues)
    assert kinds == [
        ("bad_histogram", "step 2, key 'h_bad'"),
        ("bad_table_file", "step 1, key 'cut'"),
        ("bad_table_file", "step 1, key 'notjson'"),
        ("missing_table_file", "step 1, key 'gone'"),
        ("table_shape", "step 1, key 'ragged'"),
        ("table_shape", "step 1, key 'wrongshape'"),
    ]
    assert decoded.run_media.height == 9  # every value indexed, damaged or not
    assert {(h["key"], tuple(h["bin_edges"]), tuple(h["counts"])) for h in decoded.histograms.iter_rows(named=True)} == {
        ("h_ok", (0.0, 1.0, 2.0), (1.0, 2.0)),
        ("h_packed", (-1.0, -0.5, 0.0, 0.5), (4.0, 5.0, 6.0)),
    }
    kept = {t.key: t.frame for t in read.tables}
    assert sorted(kept) == ["good", "ragged", "wrongshape"]
    assert kept["ragged"].select("col.a", "col.b").rows() == [(1, 2), (3, None), (4, 5)]
    assert kept["good"].select("col.a", "col.b").rows() == [(1, "x"), (2, "y")]
    ragged = next(i for i in read.issues if i.position == "step 1, key 'ragged'")
    assert ragged.lost == "1 cells beyond the declared columns"


@pytest.mark.corpora
def test_corpus_table_of_sdk_0_16(corpora_dir: Path) -> None:
    (folder,) = [f for fs in group_runs(find_run_folders(corpora_dir / "yzqrtop__init_jr_llm")).values() for f in fs]
    decoded, read = decoded_run(folder.path, "ksyqnmkk")
    index = decoded.run_media.filter(pl.col("media_type") == "table")
    assert index.height >= 1 and index["wandb_type"].unique().to_list() == ["table-file"]
    raw = json.loads(next((folder.path / "files/media/table").glob("*.table.json")).read_text())
    assert read.tables, read.issues
    table = read.tables[0]
    assert table.columns == raw["columns"] and table.frame.height == len(raw["data"])
    for r, logged_row in enumerate(raw["data"]):
        for c, logged in enumerate(logged_row):
            assert same_cell(table.frame[f"col.{raw['columns'][c]}"][r], logged)


@pytest.mark.corpora
def test_corpus_split_histograms_of_sdk_0_26(corpora_dir: Path) -> None:
    groups = group_runs(find_run_folders(corpora_dir / "Massive-Rabbit-8223__Neural-Training-Observatory"))
    decoded, _ = decoded_run(groups["4d26cf75"][0].path, "4d26cf75")
    hist = decoded.histograms.filter(pl.col("key") == "grad")
    assert hist.height == 47 and decoded.issues == []
    first = hist.row(0, named=True)
    assert first["step"] == 0 and first["counts"][:4] == [1.0, 0.0, 0.0, 1.0]
    assert first["bin_edges"][0] == -0.035760585218667984
    assert all(len(e) == len(c) + 1 for e, c in zip(hist["bin_edges"], hist["counts"]))


@pytest.mark.corpora
def test_corpus_old_format_histograms_of_sdk_0_8(corpora_dir: Path) -> None:
    runs = group_runs(find_run_folders(corpora_dir / "AGKhalil__RL_implements"))
    found = 0
    for run_id, folders in runs.items():
        decoded, _ = decoded_run(folders[0].path, run_id)
        history_lines = [json.loads(line) for line in (folders[0].path / "wandb-history.jsonl").read_text().splitlines() if line.strip()] \
            if (folders[0].path / "wandb-history.jsonl").exists() else []  # fmt: skip
        for line in history_lines:
            for key, value in line.items():
                if isinstance(value, dict) and value.get("_type") == "histogram":
                    row = decoded.histograms.filter((pl.col("step") == line["_step"]) & (pl.col("key") == key))
                    assert row.height == 1
                    assert row["counts"][0].to_list() == [float(v) for v in value["values"]]
                    assert row["bin_edges"][0].to_list() == [float(v) for v in value["bins"]]
                    found += 1
    assert found > 0


def test_media_values_come_from_the_catalogs_one_decode(sdk_run, tmp_path: Path, monkeypatch) -> None:
    """The catalog keeps each local run's media values beside its history when it parses the run;
    the media stage reads that file and never decodes the logs again, with the same rows."""
    from altgrad_pipeline.ingest.catalog import RunCatalog
    from altgrad_pipeline.ingest.media import store
    from altgrad_pipeline.ingest.wandb.local import LocalWandbSource

    root = sdk_run.folder.parent.parent
    catalog = RunCatalog(tmp_path / "runs", [LocalWandbSource(root)])
    (entry,) = catalog.sync().entries
    assert entry.media_path.exists()
    expected = read_run_media(sdk_run.folder)

    def no_second_decode(*args, **kwargs):
        raise AssertionError("the media stage decoded the logs again")

    monkeypatch.setattr(store, "read_run_media", no_second_decode)
    media, issues = store.media_values([entry], tmp_path / "cache")
    assert issues == []
    assert media.drop("run_id", "source").equals(expected.select("step", "key", "value_json", "files_dir"))
    assert media.height == 12 and set(media.get_column("run_id")) == {entry.run_id}


@pytest.mark.parametrize("damage", ["altered", "truncated", "deleted"])
def test_a_damaged_media_cache_file_is_named_and_rebuilt_from_the_run_log(sdk_run, tmp_path: Path, damage: str) -> None:
    """The catalog's `.media.parquet` is hashed like its history: altered (still valid Parquet with
    other values), cut short or gone, it is named, moved aside and the run read again from its log."""
    from altgrad_pipeline.ingest.catalog import RunCatalog
    from altgrad_pipeline.ingest.media import store
    from altgrad_pipeline.ingest.wandb.local import LocalWandbSource

    root = sdk_run.folder.parent.parent
    catalog = RunCatalog(tmp_path / "runs", [LocalWandbSource(root)])
    (entry,) = catalog.sync().entries
    assert set(entry.sha256) == {"history", "details", "media"}
    media = entry.media_path
    expected = read_run_media(sdk_run.folder)
    if damage == "altered":
        pl.read_parquet(media).with_columns(pl.col("step") + 1).write_parquet(media)
    elif damage == "truncated":
        media.write_bytes(media.read_bytes()[:50])
    else:
        media.unlink()

    result, messages = catalog.verified_sync()
    why = {"altered": "is corrupt", "truncated": "is corrupt", "deleted": "is missing"}[damage]
    assert len(messages) == 1 and f"{media} {why}" in messages[0], messages
    assert result.reread == [entry.run_id]
    quarantined = [p.name for p in (tmp_path / "runs" / "quarantine").rglob("*") if p.is_file()]
    assert sorted(quarantined) == sorted(p.name for p in (catalog.history_path(entry), entry.details_path, media) if damage != "deleted" or p != media)
    (healed,) = result.entries
    values_now, issues = store.media_values([healed], tmp_path / "cache")
    assert issues == [] and values_now.drop("run_id", "source").equals(expected.select("step", "key", "value_json", "files_dir"))
    assert catalog.verified_sync()[1] == []  # healed: nothing to say the next time

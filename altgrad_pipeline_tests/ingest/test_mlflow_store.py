"""MLflow file and SQLite stores written by mlflow-skinny's own client, read without it."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from altgrad_pipeline.ingest import mlflow_store
from altgrad_pipeline.ingest.mlflow_store import MlflowFileSource, MlflowSqlSource

VALUES = [0.5, math.nan, math.inf, -math.inf, 1e-30, -2.0]


def log_runs(uri: str) -> tuple[str, str]:
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("fp8-study")
    with mlflow.start_run(run_name="parent") as parent:
        with mlflow.start_run(run_name="child", nested=True) as child:
            mlflow.log_params({"fp8_format": "E5M2", "lr": 0.001, "max_steps": 120})
            mlflow.set_tag("team", "altgrad")
            for step, value in enumerate(VALUES):
                mlflow.log_metric("train/loss", value, step=step)
                mlflow.log_metric("grad_norm_l2/layers.0.weight", step * 2.0, step=step)
        mlflow.end_run()
    import mlflow.tracking

    mlflow.tracking.MlflowClient().set_terminated(parent.info.run_id, "FAILED")
    return parent.info.run_id, child.info.run_id


def check_child(runs, parent_id: str, child_id: str) -> None:
    by_name = {r.name: r for r in runs}
    child, parent = by_name["child"], by_name["parent"]
    loss = child.history.filter(key="train/loss").sort("step").get_column("value").to_list()
    assert len(loss) == len(VALUES)
    assert all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(loss, VALUES, strict=True))
    assert child.history.filter(key="grad_norm_l2/layers.0.weight").get_column("value").to_list() == [0, 2, 4, 6, 8, 10]
    assert child.config == {"fp8_format": "E5M2", "lr": 0.001, "max_steps": 120}
    assert child.project == "fp8-study" and child.group == parent_id and child.tags == ["team=altgrad"]
    assert (child.ended, child.exit_code) == (True, 0) and (parent.ended, parent.exit_code) == (True, 1)
    assert child.source == "mlflow" and child_id in child.location or child_id == Path(child.location).name


def test_file_store_every_value_arrives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    parent_id, child_id = log_runs("file:" + str(tmp_path / "mlruns"))
    source = MlflowFileSource(tmp_path)

    runs = [source.read(loc) for loc in source.discover()]

    assert len(runs) == 2
    check_child(runs, parent_id, child_id)
    assert all(r.issues == [] for r in runs)


def test_file_store_bad_line_and_missing_meta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    parent_id, child_id = log_runs("file:" + str(tmp_path / "mlruns"))
    child_dir = next((tmp_path / "mlruns").glob(f"*/{child_id}"))
    with open(child_dir / "metrics" / "train" / "loss", "a") as handle:
        handle.write("not a metric line\n4102444800000 0.25 6\n")
    (next((tmp_path / "mlruns").glob(f"*/{parent_id}")) / "meta.yaml").unlink()
    source = MlflowFileSource(tmp_path)

    runs = {Path(r.location).name: r for r in (source.read(loc) for loc in source.discover())}

    child = runs[child_id]
    assert [(i.kind, i.lost) for i in child.issues] == [("malformed_metric_line", "1 values")]
    assert child.history.filter(key="train/loss", step=6).get_column("value").to_list() == [0.25]
    assert [i.kind for i in runs[parent_id].issues] == ["missing_meta"]


def test_sqlite_store_restores_nan_and_inf(tmp_path: Path, sqlite_driver: str) -> None:
    url = f"sqlite:///{tmp_path / 'mlruns.db'}"
    parent_id, child_id = log_runs(url)
    source = MlflowSqlSource(url)

    runs = [source.read(loc) for loc in source.discover()]

    check_child(runs, parent_id, child_id)
    assert all(r.issues == [] for r in runs)


def read_history(url: str):
    source = MlflowSqlSource(url)
    runs = sorted((source.read(loc) for loc in source.discover()), key=lambda r: r.name)
    return [(r.name, r.history) for r in runs], [r.issues for r in runs]


@pytest.fixture(params=["sqlite3", "adbc"])
def sqlite_driver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each SQLite test runs with the stdlib driver and, where installed, the columnar one."""
    if request.param == "adbc":
        pytest.importorskip("adbc_driver_sqlite", reason="the optional fast-sql extra is not installed")
    else:
        monkeypatch.setattr(mlflow_store, "_columnar_driver", lambda: None)
    return request.param


def test_sqlite_flat_rows_match_the_portable_queries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_driver: str
) -> None:
    db = tmp_path / "mlruns.db"
    _, child_id = log_runs(f"sqlite:///{db}")
    with sqlite3.connect(db) as con:
        # Steps and timestamps beyond float64's exact integers, negative ones, and NaN beside them.
        con.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,?)",
            [("big", 1.5, 2**60 + 1, child_id, 2**62 + 3, 0), ("big", 0.0, 2**60 + 7, child_id, 2**62 + 5, 1),
             ("neg", 2.5, -5, child_id, -(2**40), 0), ("neg", 0.0, -3, child_id, 7, 1)],
        )  # fmt: skip
    url = f"sqlite:///{db}"

    flat, flat_issues = read_history(url)
    child = dict(flat)["child"]
    big = child.filter(key="big").sort("step")
    neg = child.filter(key="neg").sort("step")
    monkeypatch.setattr(mlflow_store, "SQLITE_DIALECTS", frozenset())
    portable, portable_issues = read_history(url)

    assert big.get_column("step").to_list() == [2**62 + 3, 2**62 + 5]
    assert big.get_column("timestamp").to_list() == [(2**60 + 1) / 1000, (2**60 + 7) / 1000]
    assert big.get_column("value").to_list()[0] == 1.5 and math.isnan(big.get_column("value").to_list()[1])
    assert neg.get_column("step").to_list() == [-(2**40), 7]
    assert neg.get_column("timestamp").to_list() == [-0.005, -0.003]
    assert neg.get_column("value").to_list()[0] == 2.5 and math.isnan(neg.get_column("value").to_list()[1])
    assert [name for name, _ in flat] == [name for name, _ in portable] == ["child", "parent"]
    assert all(a.equals(b) for (_, a), (_, b) in zip(flat, portable, strict=True))
    assert flat_issues == portable_issues


def test_sqlite_without_the_run_key_index_reads_the_same(tmp_path: Path, sqlite_driver: str) -> None:
    db = tmp_path / "mlruns.db"
    log_runs(f"sqlite:///{db}")
    indexed, _ = read_history(f"sqlite:///{db}")
    with sqlite3.connect(db) as con:
        con.execute(f"DROP INDEX {mlflow_store.RUN_KEY_INDEX}")

    unindexed, _ = read_history(f"sqlite:///{db}")

    assert all(a.equals(b) for (_, a), (_, b) in zip(indexed, unindexed, strict=True))
    assert sum(h.height for _, h in unindexed) == 12


@pytest.mark.parametrize("dialects", [mlflow_store.SQLITE_DIALECTS, frozenset()], ids=["sqlite", "portable"])
def test_sqlite_fingerprint_changes_when_a_metric_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dialects: frozenset[str]
) -> None:
    import mlflow

    url = f"sqlite:///{tmp_path / 'mlruns.db'}"
    _, child_id = log_runs(url)
    monkeypatch.setattr(mlflow_store, "SQLITE_DIALECTS", dialects)
    source = MlflowSqlSource(url)
    before = {loc.run_id_hint: loc.fingerprint for loc in source.discover()}

    mlflow.tracking.MlflowClient(url).log_metric(child_id, "train/loss", 0.125, step=2)

    after = {loc.run_id_hint: loc.fingerprint for loc in source.discover()}
    changed = [run for run in before if before[run] != after[run]]
    assert changed == [source.run_id(child_id)]


def test_sqlite_column_of_mixed_types_is_read_exactly(tmp_path: Path, sqlite_driver: str) -> None:
    db = tmp_path / "mlruns.db"
    _, child_id = log_runs(f"sqlite:///{db}")
    with sqlite3.connect(db) as con:
        # SQLite keeps any value in any column: a text step (the columnar driver would turn the
        # whole column to text, numbers rounded to 7 digits) beside values needing all 17.
        con.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,?)",
            [("mixed", 0.1 + 0.2, 1000, child_id, 1, 0), ("mixed", 1 / 3, 2000, child_id, "2", 0)],
        )

    history, _ = read_history(f"sqlite:///{db}")

    mixed = dict(history)["child"].filter(key="mixed").sort("step")
    assert mixed.select("step", "value").rows() == [(1, 0.1 + 0.2), (2, 1 / 3)]


def test_sqlite_unknown_schema_revision_is_read_and_reported_once_per_store(tmp_path: Path) -> None:
    """A store of an MLflow release newer than the reader: read by column names, said once."""
    url = f"sqlite:///{tmp_path / 'mlruns.db'}"
    parent_id, child_id = log_runs(url)
    with sqlite3.connect(tmp_path / "mlruns.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    source = MlflowSqlSource(url)

    runs = [source.read(loc) for loc in source.discover()]

    check_child(runs, parent_id, child_id)
    assert all(r.issues == [] for r in runs)
    assert [(i.kind, i.location) for i in source.discovery_issues] == [("unknown_schema_version", url)]
    assert "'ffffffffffff'" in source.discovery_issues[0].reason


def test_sqlite_store_of_the_installed_mlflow_reports_at_most_its_revision(tmp_path: Path) -> None:
    """Whatever MLflow release is installed, its store reads exactly; a revision newer than the
    reader's list is one store issue, never a per-run issue or a failure."""
    url = f"sqlite:///{tmp_path / 'mlruns.db'}"
    log_runs(url)
    (revision,) = sqlite3.connect(tmp_path / "mlruns.db").execute("SELECT version_num FROM alembic_version").fetchone()
    source = MlflowSqlSource(url)
    source.discover()
    expected = [] if revision in mlflow_store.KNOWN_SQL_REVISIONS else ["unknown_schema_version"]
    assert [i.kind for i in source.discovery_issues] == expected


def test_catalog_records_the_unknown_revision_once(tmp_path: Path) -> None:
    from altgrad_pipeline.ingest.catalog import RunCatalog

    url = f"sqlite:///{tmp_path / 'mlruns.db'}"
    log_runs(url)
    with sqlite3.connect(tmp_path / "mlruns.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    result = RunCatalog(tmp_path / "cache", [MlflowSqlSource(url)]).sync()

    assert len(result.entries) == 2
    assert [i.kind for i in result.issues] == ["unknown_schema_version"]
    assert all(e.issues == [] for e in result.entries)


def test_sqlite_without_mlflow_tables_cannot_be_listed(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE runs (x)").connection.commit()
    with pytest.raises(RuntimeError, match="missing"):
        MlflowSqlSource(f"sqlite:///{tmp_path / 'other.db'}").discover()


@pytest.mark.corpora
@pytest.mark.parametrize(
    ("corpus", "runs", "points"), [("BozzoloLu__GAN", 26, 3896), ("Finnk11__bilevel-rl", 7, 4 * 345)]
)
def test_corpus_file_stores(corpora_dir: Path, corpus: str, runs: int, points: int) -> None:
    source = MlflowFileSource(corpora_dir / corpus)
    read = [source.read(loc) for loc in source.discover()]
    assert len(read) == runs
    # Lines in files; duplicate (step, key) lines are merged into one value with an issue.
    duplicates = sum(int(i.lost.split()[0]) for r in read for i in r.issues if i.kind == "duplicate_step")
    assert sum(r.history.height for r in read) + duplicates <= points
    assert all(i.kind == "duplicate_step" for r in read for i in r.issues)


@pytest.mark.corpora
def test_corpus_sqlite_stores(corpora_dir: Path) -> None:
    doha = corpora_dir / "17-doha__GANS"
    full = MlflowSqlSource(f"sqlite:///{doha / 'mlruns.db'}")
    runs = [full.read(loc) for loc in full.discover()]
    assert sorted(r.history.height for r in runs) == [0, 0, 20, 20]
    assert {r.name for r in runs} >= {"rambunctious-bat-651", "dazzling-loon-103"}
    assert MlflowSqlSource(f"sqlite:///{doha / 'mlflow.db'}").discover() == []


def test_file_store_line_forms_and_a_refused_file_beside_good_ones(tmp_path: Path) -> None:
    run = tmp_path / "mlruns" / "1" / "abc123"
    (run / "metrics" / "train").mkdir(parents=True)
    (run.parent / "meta.yaml").write_text("name: study\n")
    (run / "meta.yaml").write_text("run_name: hand-made\nstatus: 3\nstart_time: 1000\nend_time: 9000\n")
    # Pre-1.0 lines without a step (step 0), dataset fields, CRLF and Python's non-finite spellings.
    (run / "metrics" / "train" / "loss").write_bytes(b"1000 1.5\n2000 nan 1 ds 9f2c\r\n3000 -inf 2\n4000 inf 3\n")
    (run / "metrics" / "acc").write_text("1000 0.5 0\n2000  0.75 1\n3000 0.8 2\n")  # a doubled space
    source = MlflowFileSource(tmp_path)

    [parsed] = [source.read(loc) for loc in source.discover()]

    got = {(k, s): v for k, s, v in parsed.history.select("key", "step", "value").iter_rows()}
    assert got[("train/loss", 0)] == 1.5 and math.isnan(got[("train/loss", 1)])
    assert got[("train/loss", 2)] == -math.inf and got[("train/loss", 3)] == math.inf
    assert {s: v for (k, s), v in got.items() if k == "acc"} == {0: 0.5, 2: 0.8}
    assert [(i.kind, i.location, i.lost) for i in parsed.issues] == [
        ("malformed_metric_line", str(run / "metrics" / "acc"), "1 values")
    ]

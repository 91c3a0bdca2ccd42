"""`refresh` says why a run failed, not only that it did; a wrong or empty run store is a message."""

import re

import dagster as dg
import polars as pl
import pytest

from altgrad_pipeline import cli, settings
from altgrad_pipeline.analysis.outcomes import OUTCOMES_SCHEMA
from altgrad_pipeline.definitions import ASSETS, build_resources
from altgrad_pipeline.refresh import _echo_step_failures

REPORTS = ("format_comparison", "failure_modes", "manifold_comparison", "training_dynamics", "sweep_summary", "media", "index")


def test_failed_steps_are_named_with_the_user_error():
    @dg.asset
    def broken_asset():
        raise ValueError("the disk is full\nsecond line")

    with dg.instance_for_test() as instance:
        result = dg.materialize([broken_asset], instance=instance, raise_on_error=False)
        lines: list[str] = []
        _echo_step_failures(instance, result.run_id, lines.append)
    assert lines == ["    broken_asset: ValueError: the disk is full"]


@pytest.fixture
def own_instance(monkeypatch):
    """The CLI's instance lives under the data dir, not in a DAGSTER_HOME of the caller."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


def test_a_missing_store_is_one_line_and_exit_2(tmp_path, capsys, own_instance):
    missing = tmp_path / "no" / "such" / "dir"
    code = cli.main(["refresh", "--runs", str(missing), "--data-dir", str(tmp_path / "data")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.splitlines() == [err.strip()] and str(missing) in err and "does not exist" in err
    assert settings.RUNS_ENV in err and "Traceback" not in err
    assert not (tmp_path / "data").exists()  # nothing was started


def test_a_store_that_is_a_file_is_refused_but_urls_are_not_checked(tmp_path):
    (tmp_path / "runs.txt").write_text("")
    entries = settings.parse_run_stores(f"{tmp_path / 'runs.txt'}")
    assert "is not a folder" in settings.local_store_problem(entries[0])
    urls = settings.parse_run_stores(f"wandb://lab/altgrad:sqlite:///{tmp_path}/absent/mlflow.db")
    assert [e.kind for e in urls] == ["wandb", "mlflow-sql"]
    settings.check_local_stores(urls)  # left to their sources: no error here


def test_an_empty_store_refreshes_and_every_report_says_no_runs_yet(tmp_path, capsys, own_instance):
    store, data = tmp_path / "runs", tmp_path / "data"
    store.mkdir()
    code = cli.main(["refresh", "--runs", str(store), "--data-dir", str(data)])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in out + err, out + err
    assert f"No runs found under {store}." in out
    assert all(kind in out for kind in ("wandb/run-*", ".wandb", "*.jsonl", "metrics.csv", "tfevents", "mlruns", "sqlite"))
    assert len(out.splitlines()) <= 8, out
    for name in REPORTS:
        text = (data / "reports" / f"{name}.md").read_text()
        assert re.search(r"\bno\b[^.]*\byet\b", text, re.IGNORECASE), name


def test_the_graph_materializes_on_an_empty_store(tmp_path):
    """As `dg dev` does with no format partition: empty tables of the right schema."""
    (tmp_path / "runs").mkdir()
    unpartitioned = [key for asset in ASSETS if asset.partitions_def is None for key in asset.keys]
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            ASSETS, selection=unpartitioned, instance=instance,
            resources=build_resources(runs=str(tmp_path / "runs"), data_dir=str(tmp_path / "data")),
        )  # fmt: skip
        assert result.success
        [issues] = [m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey("ingest_issues")]
        metadata = issues.materialization.metadata
    assert metadata["n_runs"].value == 0 and "No runs found under" in metadata["no_runs"].value
    outcomes = pl.read_parquet(tmp_path / "data" / "assets" / "run_outcomes.parquet")
    assert outcomes.is_empty() and dict(outcomes.schema) == dict(OUTCOMES_SCHEMA)


def test_a_missing_store_is_an_ingest_issue_where_the_cli_is_not_asked(tmp_path):
    """`dg dev` and the sensor sync without the CLI's check: `ingest_issues` says it instead."""
    from altgrad_pipeline.defs.resources import RunStores

    absent = tmp_path / "absent"
    result = RunStores(runs=str(absent), data_dir=str(tmp_path / "data")).catalog().sync()
    assert result.issues and all(i.kind == "source_unavailable" and f"{absent} does not exist" in i.reason for i in result.issues)
    absent.mkdir()  # created: the next sync looks again instead of repeating the cached answer
    assert RunStores(runs=str(absent), data_dir=str(tmp_path / "data")).catalog().sync().issues == []

"""ALTGRAD_RUNS: local roots and wandb:// paths separated by the OS path separator."""

from altgrad_pipeline.settings import RunStoreEntry, parse_run_stores


def test_local_and_wandb_entries():
    assert parse_run_stores("/data/runs:wandb://lab/altgrad::./more") == [
        RunStoreEntry("local", "/data/runs"),
        RunStoreEntry("wandb", "lab/altgrad"),
        RunStoreEntry("local", "more"),
    ]


def test_a_folder_called_wandb_is_a_folder():
    assert parse_run_stores("wandb:/x") == [RunStoreEntry("local", "wandb"), RunStoreEntry("local", "/x")]


def test_empty_means_no_stores():
    assert parse_run_stores("") == []


def test_sqlite_url_is_an_mlflow_sql_store():
    [entry] = parse_run_stores("sqlite:////data/mlruns.db")
    assert entry == RunStoreEntry("mlflow-sql", "sqlite:////data/mlruns.db")
    assert entry.label == "sqlite:////data/mlruns.db"


def test_sql_url_keeps_its_own_colons_and_hides_the_password_in_its_label():
    [entry] = parse_run_stores("postgresql+psycopg2://user:s3cret@db.lab:5432/mlflow")
    assert entry == RunStoreEntry("mlflow-sql", "postgresql+psycopg2://user:s3cret@db.lab:5432/mlflow")
    assert entry.label == "postgresql+psycopg2://user:***@db.lab:5432/mlflow"
    assert "s3cret" not in entry.label


def test_relative_folder_after_a_sql_url_needs_a_leading_dot_slash():
    assert parse_run_stores("postgresql+psycopg2://user:pw@host/db:./runs:wandb://lab/altgrad") == [
        RunStoreEntry("mlflow-sql", "postgresql+psycopg2://user:pw@host/db"),
        RunStoreEntry("local", "runs"),
        RunStoreEntry("wandb", "lab/altgrad"),
    ]
    # Without `./` the piece cannot be told from the URL's own `:` parts, so it stays in the URL.
    assert parse_run_stores("sqlite:///mlruns.db:runs") == [RunStoreEntry("mlflow-sql", "sqlite:///mlruns.db:runs")]

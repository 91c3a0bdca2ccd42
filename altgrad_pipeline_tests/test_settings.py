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

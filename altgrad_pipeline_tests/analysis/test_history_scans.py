"""`history_scans`: queries evaluated run by run give what they give over the whole history, see
one run's rows at a time (or as many as asked for), and keep their columns when there is no run; distinct values come in
first-seen order. Checked on a frame and on a Parquet scan with small row groups (as partition
files are read)."""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from altgrad_pipeline.analysis.history_scans import distinct, per_run

HISTORY = pl.DataFrame(
    {
        "run_id": ["b"] * 4 + ["a"] * 3 + ["c"] * 2,
        "step": [0, 1, 1, 2, 0, 1, 2, 5, 6],
        "key": ["loss", "loss", "lr", "loss", "loss", "lr", "loss", "loss", "loss"],
        "value": [3.0, 2.5, 0.1, float("nan"), 4.0, 0.2, 3.5, 1.0, None],
    }
)


def _last_loss(rows: pl.LazyFrame) -> pl.LazyFrame:
    return rows.filter(pl.col("key") == "loss").group_by("run_id").agg(pl.col("value").last(), pl.col("step").max())


@pytest.fixture(params=["frame", "parquet"])
def history(request, tmp_path) -> pl.LazyFrame | pl.DataFrame:
    if request.param == "frame":
        return HISTORY
    path = tmp_path / "history.parquet"
    HISTORY.write_parquet(path, row_group_size=2)
    return pl.scan_parquet(path)


def test_per_run_equals_the_whole_query(history):
    whole = _last_loss(HISTORY.lazy()).collect().sort("run_id")
    assert_frame_equal(per_run(history, _last_loss).sort("run_id"), whole)
    assert per_run(history, _last_loss)["run_id"].to_list() == ["b", "a", "c"]  # first seen


def test_per_run_sees_one_run_at_a_time(history):
    seen = per_run(history, lambda rows: rows.select(pl.col("run_id").n_unique().alias("n_runs"), pl.len().alias("n_rows")))
    assert seen["n_runs"].to_list() == [1, 1, 1] and seen["n_rows"].to_list() == [4, 3, 2]


def test_per_run_a_few_runs_at_once_equals_run_by_run(history):
    seen = per_run(history, lambda rows: rows.select(pl.col("run_id").n_unique().alias("n_runs"), pl.len().alias("n_rows")), runs_at_once=2)
    assert seen["n_runs"].to_list() == [2, 1] and seen["n_rows"].to_list() == [7, 2]
    assert_frame_equal(per_run(history, _last_loss, runs_at_once=2).sort("run_id"), per_run(history, _last_loss).sort("run_id"))


def test_per_run_follows_the_given_runs(history):
    assert per_run(history, _last_loss, ["c", "a", "missing"])["run_id"].to_list() == ["c", "a"]


def test_per_run_without_runs_keeps_the_columns():
    empty = per_run(HISTORY.head(0), _last_loss)
    assert empty.is_empty() and empty.schema == _last_loss(HISTORY.lazy()).collect().schema
    assert per_run(HISTORY, _last_loss, []).columns == ["run_id", "value", "step"]


def test_distinct_in_first_seen_order(history):
    assert distinct(history, "run_id") == ["b", "a", "c"]
    assert distinct(history, "key") == ["loss", "lr"]

"""String rows (`value` null, the string in `text`) never change a numeric result: the analyses
read numbers only, and the uniqueness check still holds over every row."""

from __future__ import annotations

import polars as pl
from polars.testing import assert_frame_equal

from altgrad_pipeline.analysis.consistency import every_run_has_loss, steps_unique_and_increasing
from altgrad_pipeline.analysis.curves import curve_series
from altgrad_pipeline.analysis.failures import failure_modes
from altgrad_pipeline.analysis.layers import layer_metrics
from altgrad_pipeline.analysis.outcomes import run_outcomes
from altgrad_pipeline.analysis.summaries import run_summaries


def with_strings(histories: pl.DataFrame) -> pl.DataFrame:
    """Every run also logs `input_seq` at each loss step, and `loss` and a per-parameter key as
    text one step past its last: a null value there would be the run's last loss."""
    numbers = histories.with_columns(pl.lit(None, pl.String).alias("text"))
    loss = numbers.filter(pl.col("key") == "loss")
    tail = numbers.group_by("run_id").agg(pl.col("step").max() + 1, pl.col("key").filter(pl.col("key").str.contains("/")).first())
    texts = pl.concat(
        [
            loss.with_columns(pl.lit("input_seq").alias("key"), pl.format("seq {}", "step").alias("text")),
            tail.with_columns(pl.lit("loss").alias("key")).join(numbers.drop("step", "key"), on="run_id").unique(["run_id", "key"]),
            tail.drop_nulls("key").join(numbers.drop("step", "key"), on="run_id").unique(["run_id", "key"]),
        ],
        how="diagonal",
    ).with_columns(pl.lit(None, pl.Float64).alias("value"), pl.col("text").fill_null("7998.707"))
    return pl.concat([numbers, texts.select(numbers.columns)]).sort("run_id", "step", "key")


def test_analyses_read_numbers_only(raw_runs, histories) -> None:
    mixed = with_strings(histories)
    assert mixed.filter(pl.col("text").is_not_null()).height > 0
    assert_frame_equal(run_outcomes(raw_runs, mixed), run_outcomes(raw_runs, histories), check_row_order=False)
    assert_frame_equal(layer_metrics(mixed), layer_metrics(histories), check_row_order=False)
    assert_frame_equal(curve_series(mixed).collect(), curve_series(histories).collect(), check_row_order=False)
    assert_frame_equal(run_summaries(mixed), run_summaries(histories), check_row_order=False)
    outcomes = run_outcomes(raw_runs, histories)
    assert_frame_equal(failure_modes(raw_runs, mixed, outcomes), failure_modes(raw_runs, histories, outcomes), check_row_order=False)
    assert every_run_has_loss(raw_runs, mixed)[0]
    assert steps_unique_and_increasing(mixed)[0]

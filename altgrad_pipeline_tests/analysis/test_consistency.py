"""Asset-check helpers: each passes on clean data and names the offenders otherwise."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from altgrad_pipeline.analysis.consistency import (
    duplicate_configurations,
    every_run_has_loss,
    manifold_intervals_contain_diff,
    rankings_cover_formats,
    steps_unique_and_increasing,
)
from altgrad_pipeline.analysis.manifold import manifold_stats
from altgrad_pipeline.analysis.rankings import format_rankings


def test_every_run_has_loss(raw_runs, histories):
    assert every_run_has_loss(raw_runs, histories)[0]
    passed, details = every_run_has_loss(raw_runs, histories.filter(pl.col("run_id") != "bf16").filter(~pl.col("key").is_in(["loss"]) | (pl.col("run_id") != "legacy")))
    assert not passed and set(details["run_id"]) == {"bf16", "legacy"}


def test_steps_unique_and_increasing(histories):
    assert steps_unique_and_increasing(histories)[0]
    loss = histories.filter((pl.col("run_id") == "bf16") & (pl.col("key") == "loss"))
    broken = pl.concat([histories, loss.head(1), loss.slice(5, 1)])
    passed, details = steps_unique_and_increasing(broken)
    assert not passed and details.select("run_id", "key").rows() == [("bf16", "loss")]
    assert details["n_duplicate_steps"][0] == 2 and details["n_decreasing_steps"][0] == 1
    runs = sorted(set(broken["run_id"]), reverse=True)  # the partition's runs named (raw_runs'), in any order
    assert steps_unique_and_increasing(broken, runs)[1].equals(details)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 4)), max_size=14), st.booleans())
def test_step_faults_are_counted_per_series_in_logged_order(rows: list[tuple[str, int]], catalog_order: bool) -> None:
    """Whatever the rows' order (the catalog's strictly increasing (step, key) order, where one
    comparison of neighbours proves every series clean, or any other), each series' faults are
    those counted from its steps as logged: repeated steps, and steps lower than the one before."""
    frame = pl.DataFrame(rows, schema={"key": pl.String, "step": pl.Int64}, orient="row").with_columns(pl.lit("r").alias("run_id"))
    if catalog_order:
        frame = frame.unique(["step", "key"]).sort("step", "key")
    expected = []
    for key in sorted(set(frame["key"])):
        steps = frame.filter(pl.col("key") == key)["step"].to_list()
        repeated, decreasing = len(steps) - len(set(steps)), sum(b < a for a, b in zip(steps, steps[1:], strict=False))
        if repeated or decreasing:
            expected.append(("r", key, repeated, decreasing))
    passed, details = steps_unique_and_increasing(frame)
    assert details.rows() == expected and passed == (not expected)


def test_rankings_cover_formats(raw_runs, histories, outcomes, per_layer):
    rankings = format_rankings(raw_runs, histories, outcomes, per_layer)
    assert rankings_cover_formats(rankings)[0]
    passed, details = rankings_cover_formats(rankings.with_columns(pl.lit(False).alias("all_failed")))
    assert not passed and set(details["fp8_format"]) == {"E7M0", "E2M5", "E5M2"}


def test_manifold_intervals_contain_diff(raw_runs, histories, outcomes, summaries):
    stats = manifold_stats(raw_runs, histories, outcomes, summaries, n_resamples=199)
    assert manifold_intervals_contain_diff(stats)[0]
    passed, details = manifold_intervals_contain_diff(stats.with_columns((pl.col("ci_high") - 10).alias("ci_high")))
    assert not passed and details.height == stats.height


def test_duplicate_configurations_ignore_noise_keys(raw_runs):
    assert duplicate_configurations(raw_runs)[0]
    twin = raw_runs.filter(pl.col("run_id") == "e5m2-adamw-1").with_columns(
        pl.lit("e5m2-short").alias("run_id"), pl.lit("e5m2-short").alias("name"), pl.lit("checkpoints/e5m2_short").alias("config.checkpoint_dir")
    )
    other_seed = twin.with_columns(pl.lit("e5m2-seed9").alias("run_id"), pl.lit(77, pl.Int64).alias("seed"), pl.lit(77, pl.Int64).alias("config.seed"))
    passed, details = duplicate_configurations(pl.concat([raw_runs, twin, other_seed]))
    assert not passed and set(details["run_id"]) == {"e5m2-adamw-1", "e5m2-short"} and details["duplicate_group"].n_unique() == 1

"""Per-run results and conclusions of ANAL-01, checked against the synthetic study's design."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from altgrad_pipeline.analysis.conclusions import conclusions, failure_conclusions, manifold_conclusions, run_results
from altgrad_pipeline.analysis.failures import RECOMMENDATIONS, failure_modes
from altgrad_pipeline.analysis.rankings import format_rankings
from altgrad_pipeline_tests.analysis.synthetic import HEALTHIEST, PROJECT


@pytest.fixture(scope="module")
def results(raw_runs, histories, outcomes):
    return run_results(raw_runs, histories, outcomes, last_k=10)


@pytest.fixture(scope="module")
def found(raw_runs, histories, outcomes, per_layer):
    return conclusions(format_rankings(raw_runs, histories, outcomes, per_layer), failure_modes(raw_runs, histories, outcomes))


def test_every_run_appears_with_its_numbers(results, raw_runs, histories, specs):
    assert sorted(results["run_id"]) == sorted(raw_runs["run_id"]) and results.height == len(specs)
    for run_id in ("e7m0-nan", "e3m4-2", "legacy"):
        row = results.filter(pl.col("run_id") == run_id).row(0, named=True)
        loss = histories.filter((pl.col("run_id") == run_id) & (pl.col("key") == "loss")).sort("step")["value"].to_numpy()
        loss = loss[np.isfinite(loss)]
        assert (row["final_loss"], row["best_loss"]) == pytest.approx((loss[-10:].mean(), loss.min()), abs=1e-12)
        assert row["outcome"] == specs[run_id].outcome and row["last_step"] == (specs[run_id].end_step or specs[run_id].max_steps - 1)
    stall = histories.filter((pl.col("run_id") == "e0m7-stall") & (pl.col("key") == "quantization/bit_stall_rate")).sort("step")["value"][-1]
    assert results.filter(pl.col("run_id") == "e0m7-stall")["final_bit_stall_rate"].item() == stall
    assert results.filter(pl.col("run_id") == "bf16")["final_bit_stall_rate"].item() is None


def test_conclusions(found):
    best = dict(found.best.filter(pl.col("project") == PROJECT).select("optimizer", "fp8_format").iter_rows())
    assert best == {"AdamW": "E5M2", "ManifoldAdamW": "E5M2"}
    avoid = found.avoid.filter(pl.col("project") == PROJECT)
    rows = {r["fp8_format"]: r for r in avoid.iter_rows(named=True)}
    assert set(rows) == {"E7M0", "E2M5", "E1M6", "E0M7"}  # E1M6 2 of 3 failed, E0M7 1 of 2; not E5M2 (1 of 5)
    assert (rows["E7M0"]["n_completed"], rows["E7M0"]["n_decided"], rows["E7M0"]["failure_modes"]) == (0, 2, ["nan_loss"])
    assert rows["E1M6"]["failure_modes"] == ["early_stop", "overflow"]
    layers = dict(found.per_layer.filter((pl.col("project") == PROJECT) & (pl.col("optimizer") == "AdamW")).select("layer_type", "fp8_format").iter_rows())
    assert all(layers[t] == f for t, f in HEALTHIEST.items())
    trails = found.vs_baseline.filter((pl.col("project") == PROJECT) & (pl.col("optimizer") == "AdamW"))
    np.testing.assert_allclose(trails["trails_by"].to_numpy(), (trails["final_loss"] - trails["baseline_final_loss"]).to_numpy())
    assert (trails["trails_by"] > 0).all() and trails["rank"].is_sorted()


def test_failure_conclusions_say_how_when_and_where(raw_runs, histories, outcomes):
    modes = failure_modes(raw_runs, histories, outcomes)
    found = failure_conclusions(modes).filter(pl.col("project") == PROJECT)
    failed = modes.filter((pl.col("project") == PROJECT) & ~pl.col("failure_mode").is_in(["none", "no_exit_record"]))
    assert found["n_failed"].sum() == failed.height
    e7m0 = found.filter(pl.col("fp8_format") == "E7M0").row(0, named=True)
    steps = failed.filter(pl.col("fp8_format") == "E7M0")["failure_step"]
    assert (e7m0["failure_mode"], e7m0["first_failure_step"], e7m0["last_failure_step"]) == ("nan_loss", steps.min(), steps.max())
    assert e7m0["recommendation"] == RECOMMENDATIONS[e7m0["failure_stage"]]


def test_manifold_conclusions_pick_the_format_that_benefits_most():
    rows = [
        ("p", fmt, metric, verdict, diff, pct)
        for fmt, verdict, diff, pct in (("E5M2", "helps", -0.08, -1.6), ("E0M7", "helps", -0.13, -2.5), ("E3M4", "no detectable effect", -0.01, -0.2))
        for metric in ("final_loss",)
    ] + [("p", "E0M7", "failure_step", "helps", 99.0, 71.7), ("p", "E0M7", "failure_rate", "no detectable effect", 0.0, 0.0)]
    stats = pl.DataFrame(rows, schema=["project", "fp8_format", "metric", "verdict", "diff", "diff_pct"], orient="row").with_columns(
        ci_low=pl.col("diff") - 0.01, ci_high=pl.col("diff") + 0.01, method=pl.lit("t paired"), paired=True, n_lower=3, n_pairs=3,
        n_standard=3, n_manifold=3, common_step=499, mean_standard=pl.lit(137.0), mean_manifold=pl.lit(236.0),
    )
    found = manifold_conclusions(stats)
    assert found.filter(pl.col("benefits_most"))["fp8_format"].to_list() == ["E0M7"]
    e0m7 = found.filter(pl.col("fp8_format") == "E0M7").row(0, named=True)
    assert (e0m7["failure_delay"], e0m7["failure_step_standard"], e0m7["failure_step_manifold"]) == (99.0, 137.0, 236.0)
    assert found.filter(pl.col("fp8_format") == "E5M2")["failure_delay"].item() is None


def test_run_results_reduce_each_run_from_its_own_rows():
    """Reduced run by run (a lazy history, as the IO manager hands it): each run's own loss key and
    bit-stall key, NaN losses left out, a run with no history rows kept with nulls."""
    history = pl.LazyFrame(
        [("a", 0, "loss", 4.0), ("a", 1, "loss", 2.0), ("a", 0, "train/loss", 9.0), ("a", 1, "quantization/bit_stall_rate", 0.3),
         ("a", 1, "bit_stall_rate", 0.7), ("b", 0, "train/loss", 5.0), ("b", 1, "train/loss", 3.0), ("b", 2, "train/loss", float("nan")),
         ("b", 2, "bit_stall_rate", 0.1)],
        schema={"run_id": pl.String, "step": pl.Int64, "key": pl.String, "value": pl.Float64}, orient="row",
    )  # fmt: skip
    raw_runs = pl.DataFrame(
        {"project": ["p"] * 3, "run_id": ["a", "b", "c"], "name": ["a", "b", "c"], "fp8_format": ["E5M2"] * 3, "optimizer": ["AdamW"] * 3,
         "seed": [0, 1, 2], "state": ["finished"] * 3, "max_steps": [3] * 3}
    )  # fmt: skip
    outcomes = pl.DataFrame({"run_id": ["a", "b", "c"], "outcome": ["completed"] * 3, "last_step": [1, 2, None]})
    found = run_results(raw_runs, history, outcomes, last_k=1)
    assert found.select("run_id", "final_loss", "best_loss", "final_bit_stall_rate").rows() == [
        ("a", 2.0, 2.0, 0.3), ("b", 3.0, 3.0, 0.1), ("c", None, None, None)
    ]

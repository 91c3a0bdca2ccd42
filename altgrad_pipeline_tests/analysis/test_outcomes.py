"""Run outcomes come from the data: NaN-stopped runs the tracker calls finished are nan_stopped."""

from __future__ import annotations

import numpy as np
import polars as pl

from altgrad_pipeline.analysis.outcomes import OUTCOMES_SCHEMA, run_outcomes


def test_every_outcome_matches_the_injected_truth(outcomes, specs):
    assert outcomes.schema == pl.Schema(OUTCOMES_SCHEMA)
    got = dict(outcomes.select("run_id", "outcome").iter_rows())
    assert got == {run_id: spec.outcome for run_id, spec in specs.items()}


def test_nan_stopped_runs_that_the_tracker_calls_finished(outcomes, histories):
    row = outcomes.filter(pl.col("run_id") == "e7m0-nan").row(0, named=True)
    assert row["state"] == "finished" and row["outcome"] == "nan_stopped"
    loss = histories.filter((pl.col("run_id") == "e7m0-nan") & (pl.col("key") == "loss")).sort("step")
    values, steps = loss["value"].to_numpy(), loss["step"].to_numpy()
    finite = np.isfinite(values)
    assert row["first_nan_step"] == steps[~finite][0] == 40
    assert row["last_finite_loss_step"] == steps[finite][-1] == 39
    assert row["last_finite_loss"] == values[finite][-1]
    assert row["last_step"] == 48


def test_classification_runs_use_train_loss_and_the_final_eval_step(outcomes):
    row = outcomes.filter(pl.col("run_id") == "cls-bf16").row(0, named=True)
    assert (row["loss_key"], row["last_step"], row["last_finite_loss_step"], row["outcome"]) == ("train/loss", 500, 450, "completed")


def test_isolated_nan_does_not_stop_a_completed_run(outcomes):
    row = outcomes.filter(pl.col("run_id") == "e3m4-2").row(0, named=True)
    assert (row["outcome"], row["first_nan_step"]) == ("completed", 20)


def test_unknown_max_steps_and_missing_loss_are_incomplete():
    runs = pl.DataFrame({"run_id": ["a", "b"], "state": ["finished", "finished"], "max_steps": [None, 10], "last_step": [9, 9]})
    history = pl.DataFrame({"run_id": ["a", "b"], "step": [9, 9], "key": ["loss", "diagnostics/ulp_mean"], "value": [1.0, 1.0]})
    got = dict(run_outcomes(runs, history).select("run_id", "outcome").iter_rows())
    assert got == {"a": "incomplete", "b": "incomplete"}

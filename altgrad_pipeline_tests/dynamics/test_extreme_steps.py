"""Steps at the ends of int64 (a `.wandb` step of 2**63-1, steps from -2**63): the dynamics analysis
fits them without an integer overflow and reports the steps exactly as logged."""

from __future__ import annotations

import math
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import wandb

from altgrad_pipeline.analysis import fits, training
from altgrad_pipeline.defs import analysis as analysis_defs
from altgrad_pipeline.defs import reports as report_defs
from altgrad_pipeline.defs.resources import RunStores
from altgrad_pipeline.ingest.model import HISTORY_SCHEMA
from altgrad_pipeline_tests.dynamics.synthetic import materialize_on_frames
from altgrad_pipeline_tests.sdk import finish_and_flush

INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
N_CURVE = 60


def _loss(step: int) -> float:
    return 4.0 * math.exp(-step / 15) + 1.0


def _histories(steps: list[int]) -> pl.DataFrame:
    n = len(steps)
    return pl.DataFrame(
        {"run_id": ["r"] * n, "step": steps, "key": ["train/loss"] * n, "value": [_loss(i) for i in range(n)],
         "text": [None] * n, "runtime": [float(i) for i in range(n)], "timestamp": [1e9 + i for i in range(n)]},
        schema=HISTORY_SCHEMA,
    )  # fmt: skip


def test_step_offsets_are_exact_across_the_whole_int64_range():
    steps = np.array([INT64_MIN, -1, 0, 1, INT64_MAX], dtype=np.int64)
    assert training.step_offsets(steps).tolist() == [0.0, 2.0**63 - 1, 2.0**63, 2.0**63 + 1, 2.0**64 - 1]
    near_top = np.arange(INT64_MAX - 39, INT64_MAX + 1, dtype=np.int64)  # float64 cannot tell these apart
    assert training.step_offsets(near_top).tolist() == [float(i) for i in range(40)]


@pytest.mark.parametrize(
    "steps",
    [
        [*range(N_CURVE), INT64_MAX],  # one last step at the top of int64
        [INT64_MIN, *range(N_CURVE)],  # a first step at the bottom: offsets collapse in float64
        [INT64_MAX - N_CURVE + 1 + i for i in range(N_CURVE)],  # a whole run near the top
        [-7, *range(N_CURVE - 1)],  # negative steps
    ],
    ids=["max-last", "min-first", "near-max", "negative"],
)
def test_training_dynamics_keeps_extreme_steps_exact(steps):
    runs = pl.DataFrame({"run_id": ["r"], "project": ["p"]})
    frame = training.training_dynamics(runs, _histories(steps))
    assert frame.height == 4 and frame.get_column("selected").sum() == 1  # one row per model
    row = frame.filter("selected").row(0, named=True)
    assert (row["first_step"], row["last_step"], row["n_points"]) == (steps[0], steps[-1], len(steps))
    assert row["final_value"] == pytest.approx(np.mean([_loss(i) for i in range(len(steps))][-10:]))
    for column in ("knee_step", "plateau_step"):  # when found, a step inside the run
        assert row[column] is None or steps[0] - 1e-6 * abs(steps[0]) <= row[column] <= steps[-1] + 1e-6 * abs(steps[-1])


def test_plateau_step_tolerates_steps_that_float64_merges():
    steps = np.array([0.0, 2.0**63, 2.0**63, 2.0**63 + 4096, *[2.0**63 + 4096 * i for i in range(2, 40)]])
    values = np.array([_loss(i) for i in range(len(steps))])
    with np.errstate(all="raise"):  # no division by a zero step size
        plateau = fits.plateau_step(steps, values)
    assert plateau is None or 0.0 <= plateau <= steps[-1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A real offline W&B run whose last logged step is 2**63-1."""
    root = tmp_path_factory.mktemp("extreme") / "runs"
    run = wandb.init(mode="offline", dir=str(root), project="altgrad", id="maxstep", config={"fp8_format": "E5M2", "max_steps": N_CURVE})
    for step in range(N_CURVE):
        run.log({"train/loss": _loss(step)}, step=step)
    run.log({"train/loss": 1.01}, step=INT64_MAX)
    finish_and_flush(run)
    return root


def test_a_wandb_step_of_int64_max_is_analysed_and_reported(store, tmp_path):
    catalog = RunStores(runs=str(store), data_dir=str(tmp_path)).catalog()
    entries = catalog.sync().entries
    raw = catalog.raw_runs(entries)
    histories = catalog.histories(entries).collect()
    assert histories.get_column("step").max() == INT64_MAX

    with dg.instance_for_test() as instance:
        assets = [analysis_defs.learning_curves, analysis_defs.training_dynamics, report_defs.training_dynamics_report]
        result = materialize_on_frames(raw, histories, assets, tmp_path, instance)
        assert result.success
        dynamics = result.output_for_node("training_dynamics")
    loss = dynamics.filter(pl.col("metric") == "train/loss", pl.col("selected"))
    assert loss.height == 1
    row = loss.row(0, named=True)
    assert (row["run_id"], row["first_step"], row["last_step"], row["n_points"]) == ("maxstep", 0, INT64_MAX, N_CURVE + 1)
    assert row["final_value"] == pytest.approx(np.mean([_loss(s) for s in range(N_CURVE - 9, N_CURVE)] + [1.01]))
    assert row["knee_step"] is None or 0 <= row["knee_step"] < N_CURVE
    assert pl.read_parquet(tmp_path / "assets" / "training_dynamics.parquet").filter("selected").get_column("last_step").to_list() == [INT64_MAX]
    assert "maxstep" in (tmp_path / "reports" / "training_dynamics.md").read_text()

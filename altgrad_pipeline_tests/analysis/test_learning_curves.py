"""`learning_curves`: which history rows the table keeps, and that every analysis and report
series reading it instead of the whole history gets the same answer (the synthetic study: NaN
runs, bit stall, per-parameter keys, runs of several formats and both optimizers)."""

from __future__ import annotations

import math

import polars as pl
from polars.testing import assert_frame_equal

from altgrad_pipeline.analysis.conclusions import run_results
from altgrad_pipeline.analysis.curves import curve_series, steps_per_epoch
from altgrad_pipeline.analysis.learning_curves import LEARNING_CURVES_SCHEMA, learning_curves
from altgrad_pipeline.analysis.manifold import manifold_stats
from altgrad_pipeline.analysis.outcomes import loss_and_series, run_outcomes
from altgrad_pipeline.analysis.rankings import format_rankings
from altgrad_pipeline.analysis.report_series import failure_trace_series, loss_curve_summary
from altgrad_pipeline.analysis.summaries import run_summaries
from altgrad_pipeline.analysis.sweeps import sweep_summary
from altgrad_pipeline.analysis.training import training_dynamics
from altgrad_pipeline.ingest.model import HISTORY_SCHEMA
from altgrad_pipeline.study import BIT_STALL_KEYS

NAN, INF = math.nan, math.inf


def _history(rows: list[tuple[str, int | None, str, float | None, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        [{"run_id": r, "step": s, "key": k, "value": v, "text": t, "runtime": None, "timestamp": None} for r, s, k, v, t in rows],
        schema=HISTORY_SCHEMA,
    )


def test_the_curves_and_named_series_of_each_run_as_logged() -> None:
    history = _history([
        ("b", 0, "loss", 2.0, None),
        ("b", 0, "grad_norm_l2/transformer.h.0.attn.c_attn.weight", 0.5, None),  # per-parameter: left out
        ("b", 0, "eval/runtime", 3.0, None),  # the evaluation's bookkeeping: left out
        ("b", 0, "sample", None, "a generated text"),  # a string row: left out
        ("a", 0, "train/loss", 3.0, None),
        ("a", 0, "eval/accuracy", 0.1, None),
        ("a", 0, "learning_rate", 1e-3, None),  # neither a curve nor a named series: left out
        ("b", 1, "loss", NAN, None),
        ("b", 1, "quantization/bit_stall_rate", 0.25, None),
        ("b", 1, "param_nan_count", 4.0, None),
        ("a", 1, "train/loss", INF, None),
        ("a", 1, "curvature/lambda_max", 12.0, None),
        ("a", 1, "train/epoch", 0.5, None),
        ("a", 1, "train/loss", 2.5, None),  # the same step logged again: kept, after the first
        ("b", 2, "grad_norm", 1.5, None),
        ("b", 2, "quantization/overflow_rate", 0.0, None),
        ("b", 2, "underflow_rate", 0.125, None),
    ])  # fmt: skip
    expected = pl.DataFrame(
        {
            "run_id": ["b", "a", "a", "b", "b", "b", "a", "a", "a", "a", "b", "b", "b"],
            "key": ["loss", "train/loss", "eval/accuracy", "loss", "quantization/bit_stall_rate", "param_nan_count", "train/loss",
                    "curvature/lambda_max", "train/epoch", "train/loss", "grad_norm", "quantization/overflow_rate", "underflow_rate"],
            "step": [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2],
            "value": [2.0, 3.0, 0.1, NAN, 0.25, 4.0, INF, 12.0, 0.5, 2.5, 1.5, 0.0, 0.125],
        },
        schema=LEARNING_CURVES_SCHEMA,
    )  # fmt: skip
    assert_frame_equal(learning_curves(history).collect(), expected)
    assert_frame_equal(learning_curves(history.lazy()).collect(engine="streaming"), expected)


def test_an_empty_history_gives_an_empty_table_with_its_columns() -> None:
    assert_frame_equal(learning_curves(pl.DataFrame(schema=HISTORY_SCHEMA)).collect(), pl.DataFrame(schema=LEARNING_CURVES_SCHEMA))


def test_the_analyses_read_the_same_from_the_table_as_from_the_histories(raw_runs, histories, summaries, per_layer) -> None:
    curves = learning_curves(histories).collect()
    assert curves.height < histories.height / 3  # the study's per-parameter rows are left out
    outcomes = run_outcomes(raw_runs, histories)
    assert_frame_equal(run_outcomes(raw_runs, curves, summaries), outcomes)
    assert_frame_equal(curve_series(curves).collect(), curve_series(histories).collect())
    assert_frame_equal(steps_per_epoch(raw_runs, curves).collect(), steps_per_epoch(raw_runs, histories).collect(), check_row_order=False)
    ids = raw_runs["run_id"].to_list()
    for table, whole in zip(loss_and_series(curves, BIT_STALL_KEYS, ids), loss_and_series(histories, BIT_STALL_KEYS, ids)):
        assert_frame_equal(table.collect(), whole.collect())
    assert_frame_equal(run_results(raw_runs, curves, outcomes), run_results(raw_runs, histories, outcomes))
    assert_frame_equal(loss_curve_summary(curves, raw_runs), loss_curve_summary(histories, raw_runs))
    assert_frame_equal(failure_trace_series(curves, per_layer, ids), failure_trace_series(histories, per_layer, ids))
    assert_frame_equal(format_rankings(raw_runs, curves, outcomes, per_layer), format_rankings(raw_runs, histories, outcomes, per_layer))
    assert_frame_equal(manifold_stats(raw_runs, curves, outcomes, summaries), manifold_stats(raw_runs, histories, outcomes, summaries))
    assert_frame_equal(training_dynamics(raw_runs, curves), training_dynamics(raw_runs, histories))
    assert_frame_equal(sweep_summary(raw_runs, curves), sweep_summary(raw_runs, histories))


def test_a_run_keeps_the_last_step_its_other_keys_logged(raw_runs, histories) -> None:
    """The last step over every key comes from `run_summaries`: the curves alone would miss it (a
    step the reader could not tell, null, is no step)."""
    run = raw_runs["run_id"][0]
    late_rows = [(run, 10_000, "learning_rate", 0.0, None), (run, None, "learning_rate", 1.0, None), (run, None, "momentum", 0.9, None)]
    late = pl.concat([histories, _history(late_rows).select(histories.columns)])
    outcomes = run_outcomes(raw_runs, learning_curves(late), run_summaries(late))
    assert outcomes.filter(pl.col("run_id") == run)["last_step"].item() == 10_000
    assert_frame_equal(outcomes, run_outcomes(raw_runs, late))

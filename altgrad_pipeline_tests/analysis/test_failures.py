"""Failure modes: every injected failure classified, at the right step, with trends that match
an independent numpy computation."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from altgrad_pipeline.analysis.failures import failure_modes, trace_to_collapse
from altgrad_pipeline.analysis.outcomes import run_outcomes
from altgrad_pipeline.analysis.summaries import run_summaries
from altgrad_pipeline.ingest.failure_reports import find_failure_reports
from altgrad_pipeline_tests.ingest.test_failure_reports import REPORT


@pytest.fixture(scope="module")
def failures(raw_runs, histories, outcomes):
    return failure_modes(raw_runs, histories, outcomes, window=20, trend_steps=30)


def test_every_injected_failure_is_classified(failures, specs):
    got = {row["run_id"]: (row["failure_mode"], row["failure_step"]) for row in failures.iter_rows(named=True)}
    for run_id, spec in specs.items():
        mode, step = got[run_id]
        assert mode == spec.failure_mode, run_id
        if spec.failure_step is None:
            assert step is None, run_id
        else:
            patience = spec.config.get("nan_patience", 10)
            assert abs(step - spec.failure_step) <= patience, run_id
            assert step == spec.failure_step, run_id


def test_thresholds_come_from_each_runs_config(failures):
    rows = {r["run_id"]: r for r in failures.filter(pl.col("run_id").str.starts_with("e1m6")).iter_rows(named=True)}
    assert rows["e1m6-overflow"]["overflow_threshold"] == 0.01 and rows["e1m6-overflow"]["failure_mode"] == "overflow"
    assert rows["e1m6-tolerant"]["overflow_threshold"] == 0.02 and rows["e1m6-tolerant"]["failure_mode"] == "none"
    assert failures.filter(pl.col("run_id") == "e7m0-nan-p4")["nan_patience"][0] == 4


def _window(histories, run_id, key, lo, hi):
    frame = histories.filter((pl.col("run_id") == run_id) & (pl.col("key") == key) & pl.col("step").is_between(lo, hi)).sort("step")
    steps, values = frame["step"].to_numpy().astype(float), frame["value"].to_numpy()
    keep = np.isfinite(values)
    return steps[keep], values[keep]


def _dead_mean(histories, run_id, lo, hi, exclude_embeddings):
    params = ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight", "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight"]
    if not exclude_embeddings:
        params += ["transformer.wte.weight", "transformer.wpe.weight"]
    frame = histories.filter(
        (pl.col("run_id") == run_id) & pl.col("key").is_in([f"dead_neuron_frac/{p}" for p in params]) & pl.col("step").is_between(lo, hi)
    )
    per_step = [frame.filter(pl.col("step") == s)["value"].to_numpy().mean() for s in sorted(set(frame["step"].to_list()))]
    return np.mean(per_step)


def _trend(histories, run_id, lo, hi):
    s, loss = _window(histories, run_id, "loss", lo, hi)
    g_steps, grad = _window(histories, run_id, "grad_norm", lo, hi)
    growth = np.exp(np.polyfit(g_steps, np.log(grad), 1)[0] * (g_steps.max() - g_steps.min()))
    return np.array([np.polyfit(s, loss, 1)[0], growth, _dead_mean(histories, run_id, lo, hi, False), _dead_mean(histories, run_id, lo, hi, True)])


def test_trend_and_reference_metrics_match_numpy(failures, histories, outcomes, raw_runs, specs):
    row = failures.filter(pl.col("run_id") == "e7m0-nan").row(0, named=True)
    lo, hi = 40 - 30, 40
    assert (row["trend_start_step"], row["trend_end_step"]) == (lo, hi)
    expected = _trend(histories, "e7m0-nan", lo, hi)
    got = [row["loss_slope"], row["grad_norm_growth"], row["grad_sparsity"], row["dead_neuron_frac_ex_embedding"]]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    references = (
        raw_runs.join(outcomes, on="run_id")
        .filter((pl.col("outcome") == "completed") & ~pl.col("fp8_format").is_in(["E7M0", "no_format"]) & (pl.col("project") == "altgrad"))
        .filter(pl.col("optimizer") == "AdamW")
        ["run_id"].to_list()
    )
    references = [r for r in references if specs[r].failure_mode == "none"]  # successful runs of the same optimizer only
    assert "e0m7-stall" not in references and "e0m7-2" in references
    expected_ref = np.mean([_trend(histories, r, lo, hi) for r in references], axis=0)
    assert row["n_ref_runs"] == len(references)
    got_ref = [row["ref_loss_slope"], row["ref_grad_norm_growth"], row["ref_grad_sparsity"], row["ref_dead_neuron_frac_ex_embedding"]]
    np.testing.assert_allclose(got_ref, expected_ref, rtol=0, atol=1e-9)


def test_classification_grad_norm_falls_back_to_per_parameter_norms(raw_runs, histories, outcomes):
    row = failure_modes(raw_runs, histories, outcomes, trend_steps=200).filter(pl.col("run_id") == "cls-e5m2").row(0, named=True)
    keys = [k for k in histories.filter(pl.col("run_id") == "cls-e5m2")["key"].unique() if k.startswith("train/grad_norm_l2/")]
    frame = histories.filter((pl.col("run_id") == "cls-e5m2") & pl.col("key").is_in(keys) & pl.col("step").is_between(50, 250))
    per_step = frame.group_by("step").agg((pl.col("value") ** 2).sum().sqrt()).sort("step")
    s, g = per_step["step"].to_numpy().astype(float), per_step["value"].to_numpy()
    assert row["grad_norm_growth"] == pytest.approx(np.exp(np.polyfit(s, np.log(g), 1)[0] * (s.max() - s.min())), abs=1e-9)


def test_failure_report_is_joined_by_checkpoint_dir(raw_runs, histories, outcomes, tmp_path):
    folder = tmp_path / "checkpoints" / "e7m0-nan" / "failure_reports"
    folder.mkdir(parents=True)
    (folder / "E7M0_20260122_203000_failure_report.md").write_text(REPORT)
    reports = find_failure_reports(tmp_path, raw_runs["config.checkpoint_dir"].to_list())
    got = failure_modes(raw_runs, histories, outcomes, reports)
    row = got.filter(pl.col("run_id") == "e7m0-nan").row(0, named=True)
    assert (row["report_collapse_step"], row["report_format"], row["report_checkpoint_dir"]) == (137, "E7M0", "checkpoints/e7m0-nan")
    assert got.filter(pl.col("run_id") != "e7m0-nan")["report_path"].null_count() == got.height - 1


def test_failure_stage_of_runs_built_to_fail_at_each_stage(failures, specs):
    got = {row["run_id"]: row for row in failures.iter_rows(named=True)}
    for run_id, spec in specs.items():
        row = got[run_id]
        assert row["failure_stage"] == spec.failure_stage, run_id
        assert (row["recommendation"] is None) == (spec.failure_stage is None), run_id
        assert (row["failure_evidence"] is None) == (spec.failure_stage is None), run_id
    assert {s.failure_stage for s in specs.values()} >= {"forward_overflow", "backward_vanishing", "optimizer_state_corruption", "unknown"}
    corrupt = got["e2m5-corrupt"]
    assert corrupt["param_nan_finite_grad_step"] == 30 and corrupt["first_nan_step"] == 33
    assert "from step 30" in corrupt["failure_evidence"] and "loss non-finite from step 33" in corrupt["failure_evidence"]
    explode = got["e2m5-explode"]
    assert explode["param_nan_finite_grad_step"] is None and explode["grad_norm_growth"] >= 10
    growth = float(f"{explode['grad_norm_growth']:.3g}")
    assert f"gradient norm x{growth} over steps 10-40" in explode["failure_evidence"]
    assert got["e2m5-vanish"]["dead_neuron_frac_ex_embedding"] > 0.5 and "zero-gradient fraction" in got["e2m5-vanish"]["failure_evidence"]
    assert "mantissa" in got["e0m7-stall"]["recommendation"] and "clip" in got["e1m6-overflow"]["recommendation"]


def test_a_run_without_exit_record_is_listed_at_once(raw_runs, histories, outcomes):
    seen = raw_runs.with_columns(pl.lit(dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)).alias("updated_at"))
    got = failure_modes(seen, histories, outcomes)
    live = got.filter(pl.col("run_id") == "e3m4-live").row(0, named=True)
    assert (live["failure_mode"], live["failure_step"], live["last_step"], live["exit_recorded"]) == ("no_exit_record", 49, 49, False)
    assert live["last_write_at"] == dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC) and live["failure_stage"] is None
    assert got.filter(pl.col("run_id") == "e3m4-1")["exit_recorded"].item() is True
    # once the grace period has passed the tracker says crashed: the same run is an early stop like any other
    crashed = seen.with_columns(pl.when(pl.col("run_id") == "e3m4-live").then(pl.lit("crashed")).otherwise("state").alias("state"))
    later = failure_modes(crashed, histories, run_outcomes(crashed, histories)).filter(pl.col("run_id") == "e3m4-live").row(0, named=True)
    assert (later["failure_mode"], later["failure_step"], later["failure_stage"]) == ("early_stop", 49, "unknown")


def test_trend_window_starts_at_the_first_logged_step(raw_runs, histories, outcomes):
    got = failure_modes(raw_runs, histories, outcomes, trend_steps=50).filter(pl.col("run_id") == "e7m0-nan-p4").row(0, named=True)
    assert (got["trend_start_step"], got["trend_end_step"]) == (0, 25)


def test_run_summaries_give_the_keys_and_first_steps_a_scan_of_the_histories_gives(raw_runs, histories, outcomes):
    """Also when a key was logged at a null step: its summary has no first step (nulls sort
    first), so that run's first step (where its trend window starts) is read from its rows. The
    summaries also say which runs log no global gradient norm, whose per-parameter norms are read."""
    late = histories.filter((pl.col("run_id") != "e7m0-nan-p4") | (pl.col("step") >= 10))
    null_step = (
        late.filter(pl.col("run_id") == "e7m0-nan-p4")
        .head(2)
        .with_columns(pl.lit("eval/score").alias("key"), pl.Series("step", [None, 3], dtype=pl.Int64))
    )
    changed = pl.concat([late, null_step])
    given = failure_modes(raw_runs, changed, outcomes, trend_steps=50, run_summaries=run_summaries(changed))
    assert_frame_equal(given, failure_modes(raw_runs, changed, outcomes, trend_steps=50))
    assert given.filter(pl.col("run_id") == "e7m0-nan-p4")["trend_start_step"].item() == 3
    # a classification run logs no global gradient norm: its per-parameter norms are still read
    assert given.filter(pl.col("run_id") == "cls-e5m2")["grad_norm_growth"].item() is not None


def test_trace_stops_at_each_runs_own_collapse(failures, histories):
    trace = histories.filter(pl.col("run_id").is_in(["e7m0-nan-p4", "e7m0-nan", "e3m4-1"]) & (pl.col("key") == "loss"))
    clipped = trace_to_collapse(trace, failures)
    ends = dict(clipped.group_by("run_id").agg(pl.col("step").max()).iter_rows())
    assert ends == {"e7m0-nan-p4": 25, "e7m0-nan": 40, "e3m4-1": 99}

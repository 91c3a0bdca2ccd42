"""ManifoldAdamW vs AdamW: intervals that cover the true effect, statistics equal to scipy."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from altgrad_pipeline.analysis.manifold import MANIFOLD_SCHEMA, formats_missing_an_arm, manifold_stats, per_run_metrics
from altgrad_pipeline.analysis.outcomes import run_outcomes
from altgrad_pipeline.analysis.summaries import run_summaries

STEPS = 40
N_RESAMPLES = 999


def _arm_study(effect: float, seeds_manifold, seeds_standard, *, noise=0.02, failed_manifold=0, rng_seed=0):
    """Runs whose loss decays to 2.0 (AdamW) or 2.0 + effect (ManifoldAdamW) plus run noise:
    (raw_runs, histories, run_outcomes, run_summaries)."""
    rng = np.random.default_rng(rng_seed)
    runs, frames = [], []
    steps = np.arange(STEPS)
    arms = [("ManifoldAdamW", s, effect) for s in seeds_manifold] + [("AdamW", s, 0.0) for s in seeds_standard]
    arms += [("ManifoldAdamW", 100 + i, effect) for i in range(failed_manifold)]
    for i, (optimizer, seed, shift) in enumerate(arms):
        run_id = f"{optimizer}-{seed}-{i}"
        failed = seed >= 100
        asymptote = 2.0 + shift + noise * rng.standard_normal()
        loss = asymptote + 3.0 * np.exp(-steps / 5.0) + 0.001 * rng.standard_normal(STEPS)
        stall = 0.3 + 0.1 * (optimizer == "AdamW") + 0.01 * rng.standard_normal(STEPS)
        end = 20 if failed else STEPS
        frames.append(pl.DataFrame({"run_id": run_id, "step": steps[:end], "key": "loss", "value": loss[:end]}))
        frames.append(pl.DataFrame({"run_id": run_id, "step": steps[:end], "key": "quantization/bit_stall_rate", "value": stall[:end]}))
        runs.append({"run_id": run_id, "project": "p", "fp8_format": "E5M2", "optimizer": optimizer, "seed": seed, "max_steps": STEPS,
                     "state": "failed" if failed else "finished", "last_step": end - 1})
    raw = pl.DataFrame(runs, schema_overrides={"seed": pl.Int64, "max_steps": pl.Int64, "last_step": pl.Int64})
    histories = pl.concat(frames)
    return raw, histories, run_outcomes(raw, histories), run_summaries(histories)


def _stats(effect, seeds_m, seeds_s, min_bootstrap_n=8, **kw):
    raw, histories, outcomes, summaries = _arm_study(effect, seeds_m, seeds_s, **kw)
    stats = manifold_stats(raw, histories, outcomes, summaries, n_resamples=N_RESAMPLES, seed=11, min_bootstrap_n=min_bootstrap_n)
    return raw, histories, outcomes, summaries, stats


def test_large_effect_is_covered_and_excludes_zero():
    *_, got = _stats(-0.3, range(8), range(8))
    row = got.filter(pl.col("metric") == "final_loss").row(0, named=True)
    assert row["ci_low"] <= -0.3 <= row["ci_high"] and row["ci_high"] < 0
    assert row["method"] == "BCa paired" and row["prob_improvement"] == 1.0 and not row["low_n"]


def test_zero_effect_interval_contains_zero():
    *_, got = _stats(0.0, range(8), range(8), rng_seed=3)
    row = got.filter(pl.col("metric") == "final_loss").row(0, named=True)
    assert row["ci_low"] <= 0.0 <= row["ci_high"]


def test_paired_statistics_equal_scipy():
    raw, histories, outcomes, summaries, got = _stats(-0.1, [3, 1, 2, 4], [4, 2, 3, 1], failed_manifold=1, min_bootstrap_n=2)
    assert got.schema == pl.Schema(MANIFOLD_SCHEMA)
    values = per_run_metrics(raw, histories, outcomes, summaries)
    for metric in ("final_loss", "best_loss", "steps_to_threshold", "bit_stall_rate"):
        m = values.filter(pl.col("optimizer") == "ManifoldAdamW").sort("seed")[metric].to_numpy()
        s = values.filter(pl.col("optimizer") == "AdamW").sort("seed")[metric].to_numpy()
        row = got.filter(pl.col("metric") == metric).row(0, named=True)
        assert (row["n_manifold"], row["n_standard"], row["n_excluded_manifold"], row["n_excluded_standard"]) == (4, 4, 1, 0)
        assert row["paired"] and row["low_n"] is False
        assert (row["mean_manifold"], row["mean_standard"], row["diff"]) == pytest.approx((m.mean(), s.mean(), m.mean() - s.mean()), abs=1e-9)
        d = m - s
        assert row["prob_improvement"] == pytest.approx(np.mean((d < 0) + 0.5 * (d == 0)), abs=1e-12)
        if np.ptp(d) > 0:
            ci = sps.bootstrap((d,), np.mean, n_resamples=N_RESAMPLES, method="BCa", random_state=np.random.default_rng(11)).confidence_interval
            assert row["method"] == "BCa paired"
            assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_unpaired_when_seeds_differ():
    raw, histories, outcomes, summaries, got = _stats(-0.1, [1, 2, 3], [7, 8, 9, 10, 11], min_bootstrap_n=2)
    values = per_run_metrics(raw, histories, outcomes, summaries)
    m = values.filter(pl.col("optimizer") == "ManifoldAdamW")["final_loss"].to_numpy()
    s = values.filter(pl.col("optimizer") == "AdamW")["final_loss"].to_numpy()
    row = got.filter(pl.col("metric") == "final_loss").row(0, named=True)
    ci = sps.bootstrap((m, s), lambda x, y, axis: x.mean(axis) - y.mean(axis), n_resamples=N_RESAMPLES, method="BCa",
                       random_state=np.random.default_rng(11)).confidence_interval
    assert row["method"] == "BCa unpaired" and not row["paired"]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert row["prob_improvement"] == pytest.approx(np.mean(m[:, None] < s[None, :]), abs=1e-12)


def test_small_arms_get_student_t_intervals_equal_to_scipy():
    """Three seeds per arm: the bootstrap would undercover, so the interval is t (paired) or Welch."""
    raw, histories, outcomes, summaries, got = _stats(-0.1, [1, 2, 3], [1, 2, 3], rng_seed=5)
    values = per_run_metrics(raw, histories, outcomes, summaries)
    m = values.filter(pl.col("optimizer") == "ManifoldAdamW").sort("seed")["final_loss"].to_numpy()
    s = values.filter(pl.col("optimizer") == "AdamW").sort("seed")["final_loss"].to_numpy()
    row = got.filter(pl.col("metric") == "final_loss").row(0, named=True)
    d = m - s
    half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    assert row["method"] == "t paired"
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-9)
    *_, unpaired = _stats(-0.1, [1, 2, 3], [7, 8, 9], rng_seed=5)
    assert unpaired.filter(pl.col("metric") == "final_loss")["method"].to_list() == ["Welch t unpaired"]


def test_per_run_metrics_equal_numpy():
    raw, histories, outcomes, summaries = _arm_study(-0.1, [1, 2], [1, 2])
    values = per_run_metrics(raw, histories, outcomes, summaries, last_k=5, smoothing_span=4, threshold_fraction=0.5)
    alpha = 2 / (4 + 1)
    firsts, finals = [], []
    for run_id in values["run_id"]:
        loss = histories.filter((pl.col("run_id") == run_id) & (pl.col("key") == "loss")).sort("step")["value"].to_numpy()
        firsts.append(loss[0])
        finals.append(loss[-5:].mean())
    threshold = np.mean(firsts) + 0.5 * (np.mean(finals) - np.mean(firsts))
    for row in values.iter_rows(named=True):
        loss = histories.filter((pl.col("run_id") == row["run_id"]) & (pl.col("key") == "loss")).sort("step")["value"].to_numpy()
        stall = histories.filter((pl.col("run_id") == row["run_id"]) & (pl.col("key") == "quantization/bit_stall_rate")).sort("step")["value"].to_numpy()
        smooth = [loss[0]]
        for x in loss[1:]:
            smooth.append((1 - alpha) * smooth[-1] + alpha * x)
        smooth = np.array(smooth)
        assert row["final_loss"] == pytest.approx(loss[-5:].mean(), abs=1e-9)
        assert row["best_loss"] == loss.min()  # the run's best logged loss, not smoothed
        assert row["loss_threshold"] == pytest.approx(threshold, abs=1e-9)
        assert row["steps_to_threshold"] == np.argmax(smooth <= threshold)
        assert row["bit_stall_rate"] == stall[-1]


def test_single_run_arms_are_low_n_without_interval():
    *_, got = _stats(-0.1, [42], [42])
    assert got["low_n"].all() and got["ci_low"].null_count() == got.height
    assert set(got["method"]) == {"none paired"}


def test_best_loss_is_the_best_finite_loss_from_run_summaries():
    """A run whose loss went NaN and -inf for a while (and recovered, so it completed) keeps its
    best finite loss; the value is the `run_summaries` row's, not recomputed from the history."""
    raw, histories, _, _ = _arm_study(-0.1, [1, 2], [1, 2])
    diverged = "ManifoldAdamW-1-0"
    is_loss = (pl.col("run_id") == diverged) & (pl.col("key") == "loss")
    histories = histories.with_columns(
        pl.when(is_loss & pl.col("step").is_between(30, 33)).then(float("nan"))
        .when(is_loss & (pl.col("step") == 34)).then(float("-inf"))
        .otherwise(pl.col("value")).alias("value")
    )  # fmt: skip
    outcomes, summaries = run_outcomes(raw, histories), run_summaries(histories)
    values = per_run_metrics(raw, histories, outcomes, summaries)
    loss = histories.filter(is_loss)["value"].to_numpy()
    assert values.filter(pl.col("run_id") == diverged)["best_loss"].item() == loss[np.isfinite(loss)].min()
    assert values["best_loss"].is_finite().all() and values.height == 4
    marked = summaries.with_columns(pl.when((pl.col("run_id") == diverged) & (pl.col("key") == "loss")).then(0.125).otherwise("min").alias("min"))
    assert per_run_metrics(raw, histories, outcomes, marked).filter(pl.col("run_id") == diverged)["best_loss"].item() == 0.125


def test_synthetic_study_manifold(raw_runs, histories, outcomes, summaries):
    got = manifold_stats(raw_runs, histories, outcomes, summaries, n_resamples=N_RESAMPLES)
    assert set(got["fp8_format"]) == {"E5M2"}
    row = got.filter(pl.col("metric") == "final_loss").row(0, named=True)
    assert (row["n_manifold"], row["n_standard"], row["n_excluded_standard"], row["common_step"]) == (4, 4, 1, 99)
    assert row["ci_high"] < 0


@pytest.mark.parametrize(("effect", "verdict"), [(-0.3, "helps"), (0.3, "hurts")])
def test_verdict_diff_pct_and_observed_counts(effect, verdict):
    *_, got = _stats(effect, range(3), range(3))
    row = got.filter(pl.col("metric") == "final_loss").row(0, named=True)
    assert row["verdict"] == verdict and not row["higher_is_better"]
    assert row["diff_pct"] == pytest.approx(100 * row["diff"] / abs(row["mean_standard"]), abs=1e-12)
    assert (row["n_lower"], row["n_pairs"]) == ((3, 3) if effect < 0 else (0, 3))
    *_, null_effect = _stats(0.0, range(8), range(8), rng_seed=3)
    assert null_effect.filter(pl.col("metric") == "final_loss")["verdict"].item() == "no detectable effect"
    *_, one = _stats(effect, [0], [0])
    assert one.filter(pl.col("metric") == "final_loss")["verdict"].item() == "not enough runs"


def _failures(raw, steps_by_run):
    """A failure_modes frame: bit_stall at the given step, `none` where the step is None."""
    return raw.select("run_id").with_columns(
        pl.col("run_id").replace_strict({r: ("none" if s is None else "bit_stall") for r, s in steps_by_run.items()}, default="none").alias("failure_mode"),
        pl.col("run_id").replace_strict(steps_by_run, default=None, return_dtype=pl.Int64).alias("failure_step"),
    )


def test_failure_step_and_rate_per_arm():
    raw, histories, outcomes, summaries = _arm_study(-0.1, range(3), range(3))
    ids = {(r["optimizer"], r["seed"]): r["run_id"] for r in raw.iter_rows(named=True)}
    steps = {ids[("AdamW", 0)]: 136, ids[("AdamW", 1)]: 138, ids[("AdamW", 2)]: 139,
             ids[("ManifoldAdamW", 0)]: 237, ids[("ManifoldAdamW", 1)]: 237, ids[("ManifoldAdamW", 2)]: 235}
    got = manifold_stats(raw, histories, outcomes, summaries, _failures(raw, steps), n_resamples=N_RESAMPLES)
    row = got.filter(pl.col("metric") == "failure_step").row(0, named=True)
    d = np.array([237 - 136, 237 - 138, 235 - 139], float)
    half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert (row["mean_standard"], row["mean_manifold"], row["diff"]) == pytest.approx((413 / 3, 709 / 3, d.mean()), abs=1e-9)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-9)
    assert row["method"] == "t paired" and row["higher_is_better"] and row["verdict"] == "helps" and (row["n_lower"], row["n_pairs"]) == (0, 3)
    rate = got.filter(pl.col("metric") == "failure_rate").row(0, named=True)
    assert (rate["mean_standard"], rate["mean_manifold"], rate["verdict"]) == (1.0, 1.0, "no detectable effect")
    # ManifoldAdamW prevents two of the three failures
    steps.pop(ids[("ManifoldAdamW", 0)]), steps.pop(ids[("ManifoldAdamW", 1)])
    fewer = manifold_stats(raw, histories, outcomes, summaries, _failures(raw, steps), n_resamples=N_RESAMPLES)
    rate = fewer.filter(pl.col("metric") == "failure_rate").row(0, named=True)
    assert (rate["mean_manifold"], rate["diff"], rate["n_manifold"]) == pytest.approx((1 / 3, -2 / 3, 3))
    assert fewer.filter(pl.col("metric") == "failure_step")["n_manifold"].item() == 1
    assert manifold_stats(raw, histories, outcomes, summaries, n_resamples=N_RESAMPLES).filter(pl.col("metric").is_in(["failure_step", "failure_rate"])).is_empty()


def test_formats_lacking_an_arm_are_listed_and_the_check_warns():
    import dagster as dg

    from altgrad_pipeline.defs.checks import every_format_has_both_optimizers

    raw, *_ = _arm_study(0.0, range(2), range(2))
    lone = raw.head(1).with_columns(pl.lit("E1M6").alias("fp8_format"), pl.lit("AdamW").alias("optimizer"), pl.lit("e1m6").alias("run_id"))
    both = pl.concat([raw, lone, lone.with_columns(pl.lit("E7M0").alias("fp8_format"), pl.lit("ManifoldAdamW").alias("optimizer"))])
    missing = formats_missing_an_arm(both)
    assert missing.select("fp8_format", "n_standard", "n_manifold", "missing_optimizer").rows() == [("E1M6", 1, 0, "ManifoldAdamW"), ("E7M0", 0, 1, "AdamW")]
    result = every_format_has_both_optimizers(manifold_stats=pl.DataFrame(), raw_runs=both.lazy())
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN and result.metadata["n_offending"].value == 2

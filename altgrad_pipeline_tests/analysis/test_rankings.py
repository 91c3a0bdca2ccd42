"""Format rankings: sweet spots by design within each optimizer, statistics equal to numpy and
scipy.stats.t at the common step."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps
from scipy.stats import rankdata

from altgrad_pipeline.analysis.rankings import format_rankings
from altgrad_pipeline_tests.analysis.synthetic import HEALTHIEST, LM_PARAMS, PROJECT

LAST_K = 10


@pytest.fixture(scope="module")
def rankings(raw_runs, histories, outcomes, per_layer):
    return format_rankings(raw_runs, histories, outcomes, per_layer, last_k=LAST_K)


def _completed(raw_runs, outcomes, fmt, optimizer="AdamW"):
    return raw_runs.join(outcomes, on="run_id").filter(
        (pl.col("project") == PROJECT) & (pl.col("fp8_format") == fmt) & (pl.col("optimizer") == optimizer) & (pl.col("outcome") == "completed")
    )["run_id"].to_list()


def _final_loss(histories, run_id, common_step):
    loss = histories.filter((pl.col("run_id") == run_id) & (pl.col("key") == "loss") & (pl.col("step") <= common_step)).sort("step")["value"].to_numpy()
    return loss[np.isfinite(loss)][-LAST_K:].mean()


def _row(rankings, fmt, layer_type, optimizer="AdamW"):
    return rankings.filter(
        (pl.col("project") == PROJECT) & (pl.col("optimizer") == optimizer) & (pl.col("fp8_format") == fmt) & (pl.col("layer_type") == layer_type)
    ).row(0, named=True)


def _spots(rankings, optimizer):
    rows = rankings.filter((pl.col("project") == PROJECT) & (pl.col("optimizer") == optimizer) & pl.col("is_sweet_spot"))
    assert rows.select("layer_type").is_unique().all()
    return dict(rows.select("layer_type", "fp8_format").iter_rows())


def test_sweet_spots_overall_and_per_layer_type_within_each_optimizer(rankings):
    spots = _spots(rankings, "AdamW")
    assert spots["all"] == "E5M2"
    for layer_type, fmt in HEALTHIEST.items():
        assert spots[layer_type] == fmt, layer_type
    # ManifoldAdamW ran E5M2 only: ranked on its own, never pooled with the AdamW runs
    manifold = rankings.filter((pl.col("project") == PROJECT) & (pl.col("optimizer") == "ManifoldAdamW"))
    assert set(manifold["fp8_format"]) == {"E5M2"} and _spots(rankings, "ManifoldAdamW")["all"] == "E5M2"
    assert _row(rankings, "E5M2", "all", "ManifoldAdamW")["n_runs"] == 4


def test_a_single_completed_run_is_ranked_but_never_the_sweet_spot(raw_runs, histories, outcomes, per_layer):
    one_e0m7 = raw_runs.filter(pl.col("run_id") != "e0m7-2")
    got = format_rankings(one_e0m7, histories, outcomes, per_layer, last_k=LAST_K)
    mlp = got.filter((pl.col("project") == PROJECT) & (pl.col("optimizer") == "AdamW") & (pl.col("layer_type") == "mlp"))
    e0m7 = mlp.filter(pl.col("fp8_format") == "E0M7").row(0, named=True)
    assert e0m7["rank"] == 1 and e0m7["n_completed"] == 1 and not e0m7["eligible_for_sweet_spot"] and not e0m7["is_sweet_spot"]
    spot = mlp.filter(pl.col("is_sweet_spot")).row(0, named=True)
    assert spot["n_completed"] >= 2 and spot["rank"] == mlp.filter(pl.col("eligible_for_sweet_spot"))["rank"].min()


def test_baseline_all_failed_and_no_format(rankings):
    ours = rankings.filter(pl.col("project") == PROJECT)
    assert "no_format" not in ours["fp8_format"].to_list()
    bf16 = ours.filter(pl.col("fp8_format") == "BF16")
    assert bf16["rank"].null_count() == bf16.height and not bf16["is_sweet_spot"].any()
    e7m0 = ours.filter(pl.col("fp8_format") == "E7M0")
    assert e7m0["all_failed"].all() and e7m0["rank"].null_count() == e7m0.height and (e7m0["n_runs"] == 2).all()
    row = _row(rankings, "E5M2", "all")
    assert (row["n_runs"], row["n_completed"]) == (5, 4) and row["completion_rate"] == pytest.approx(4 / 5, abs=1e-12)


def test_final_losses_at_the_common_step(rankings, raw_runs, histories, outcomes):
    common = min(histories.filter((pl.col("run_id") == r) & (pl.col("key") == "loss"))["step"].max()
                 for fmt in ("BF16", "E5M2", "E3M4", "E0M7", "E1M6") for r in _completed(raw_runs, outcomes, fmt))
    assert common == 99
    baseline = np.mean([_final_loss(histories, r, common) for r in _completed(raw_runs, outcomes, "BF16")])
    for fmt in ("BF16", "E5M2", "E3M4", "E0M7", "E1M6"):
        expected = np.mean([_final_loss(histories, r, common) for r in _completed(raw_runs, outcomes, fmt)])
        row = _row(rankings, fmt, "all")
        assert row["common_step"] == common
        assert row["final_loss"] == pytest.approx(expected, abs=1e-9)
        assert row["improvement_over_baseline"] == pytest.approx((baseline - expected) / abs(baseline), abs=1e-9)
    # ManifoldAdamW has no BF16 arm: its baseline is the standard optimizer's
    assert _row(rankings, "E5M2", "all", "ManifoldAdamW")["baseline_final_loss"] == pytest.approx(baseline, abs=1e-9)


def _t_interval(values):
    values = np.asarray(values)
    half = sps.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return values.mean() - half, values.mean() + half


def test_final_loss_intervals_are_student_t_below_eight_runs(rankings, raw_runs, histories, outcomes):
    for fmt, optimizer in (("E5M2", "AdamW"), ("E5M2", "ManifoldAdamW"), ("E3M4", "AdamW"), ("E0M7", "AdamW")):
        finals = [_final_loss(histories, r, 99) for r in _completed(raw_runs, outcomes, fmt, optimizer)]
        row = _row(rankings, fmt, "all", optimizer)
        assert (row["final_loss_ci_low"], row["final_loss_ci_high"]) == pytest.approx(_t_interval(finals), abs=1e-9)
        assert row["final_loss_ci_method"] == "t one-sample"


def test_lead_over_runner_up_is_a_welch_interval(rankings, raw_runs, histories, outcomes):
    spot = rankings.filter((pl.col("project") == PROJECT) & (pl.col("optimizer") == "AdamW") & (pl.col("layer_type") == "all") & pl.col("is_sweet_spot")).row(0, named=True)
    assert (spot["fp8_format"], spot["runner_up"]) == ("E5M2", "E3M4")
    ahead = np.array([_final_loss(histories, r, 99) for r in _completed(raw_runs, outcomes, "E5M2")])
    behind = np.array([_final_loss(histories, r, 99) for r in _completed(raw_runs, outcomes, "E3M4")])
    va, vb = ahead.var(ddof=1) / len(ahead), behind.var(ddof=1) / len(behind)
    df = (va + vb) ** 2 / (va**2 / (len(ahead) - 1) + vb**2 / (len(behind) - 1))
    lead = behind.mean() - ahead.mean()
    half = sps.t.ppf(0.975, df) * np.sqrt(va + vb)
    assert spot["lead_over_runner_up"] == pytest.approx(lead, abs=1e-9)
    assert (spot["lead_ci_low"], spot["lead_ci_high"]) == pytest.approx((lead - half, lead + half), abs=1e-9)
    assert spot["lead_ci_method"] == "Welch t unpaired" and spot["lead_beyond_noise"] == (lead - half > 0)
    others = rankings.filter(~pl.col("is_sweet_spot") | (pl.col("layer_type") != "all"))
    assert others["lead_over_runner_up"].null_count() == others.height


def test_bit_stall_rate_is_ranked_within_the_optimizer(rankings, raw_runs, histories, outcomes):
    rows = rankings.filter((pl.col("project") == PROJECT) & (pl.col("optimizer") == "AdamW") & (pl.col("layer_type") == "all") & pl.col("is_candidate"))
    for row in rows.iter_rows(named=True):
        expected = np.mean([
            histories.filter((pl.col("run_id") == r) & (pl.col("key") == "quantization/bit_stall_rate") & (pl.col("step") <= 99)).sort("step")["value"][-1]
            for r in _completed(raw_runs, outcomes, row["fp8_format"])
        ])
        assert row["bit_stall_rate"] == pytest.approx(expected, abs=1e-12)
    np.testing.assert_array_equal(rows["bit_stall_rank"].to_numpy(), rankdata(rows["bit_stall_rate"].to_numpy(), method="min"))
    assert _row(rankings, "E0M7", "all")["bit_stall_rank"] == rows.height  # the stalling format ranks last
    assert _row(rankings, "E5M2", "all", "ManifoldAdamW")["bit_stall_rank"] == 1
    assert _row(rankings, "BF16", "all")["bit_stall_rank"] is None

def test_health_scores_equal_numpy(rankings, raw_runs, histories, outcomes):
    attention = [p for p, t in LM_PARAMS.items() if t == "attention"]
    embedding = [p for p, t in LM_PARAMS.items() if t == "embedding"]
    for fmt in ("E3M4", "BF16"):
        runs = _completed(raw_runs, outcomes, fmt)

        def series(run_id, key):
            frame = histories.filter((pl.col("run_id") == run_id) & (pl.col("key") == key) & (pl.col("step") <= 99))
            return frame["value"].to_numpy()

        snr = np.mean([np.concatenate([series(r, f"grad_snr/{p}") for p in attention]).mean() for r in runs])
        cov = np.mean([np.mean([np.std(series(r, f"grad_norm_l2/{p}"), ddof=1) / series(r, f"grad_norm_l2/{p}").mean() for p in attention]) for r in runs])
        sparsity = np.mean([np.concatenate([series(r, f"dead_neuron_frac/{p}") for p in attention]).mean() for r in runs])
        sparsity_embedding = np.mean([series(r, "dead_neuron_frac/transformer.wpe.weight").mean() for r in runs])
        row = _row(rankings, fmt, "attention")
        assert (row["grad_snr"], row["norm_cov"], row["sparsity"]) == pytest.approx((snr, cov, sparsity), abs=1e-9)
        assert _row(rankings, fmt, "embedding")["sparsity"] == pytest.approx(sparsity_embedding, abs=1e-9)
        assert len(embedding) == 2


def test_criterion_spread_is_the_std_over_runs(rankings, raw_runs, histories, outcomes):
    attention = [p for p, t in LM_PARAMS.items() if t == "attention"]
    runs = _completed(raw_runs, outcomes, "E5M2")
    per_run = [
        histories.filter((pl.col("run_id") == r) & pl.col("key").is_in([f"grad_snr/{p}" for p in attention]) & (pl.col("step") <= 99))["value"].mean()
        for r in runs
    ]
    assert _row(rankings, "E5M2", "attention")["grad_snr_std"] == pytest.approx(np.std(per_run, ddof=1), abs=1e-12)


def test_health_score_is_the_mean_of_criterion_ranks(rankings):
    rows = rankings.filter((pl.col("project") == PROJECT) & (pl.col("optimizer") == "AdamW") & (pl.col("layer_type") == "mlp") & pl.col("is_candidate"))
    for name, descending in (("grad_snr", True), ("sparsity", False), ("norm_cov", False)):
        values = rows[name].to_numpy()
        expected = rankdata(-values if descending else values, method="average")
        np.testing.assert_allclose(rows[f"{name}_rank"].to_numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(rows["health_score"].to_numpy(), rows.select(pl.mean_horizontal("grad_snr_rank", "sparsity_rank", "norm_cov_rank")).to_series().to_numpy(), atol=1e-12)
    np.testing.assert_array_equal(rows["mean_rank"].to_numpy(), rows["health_score"].to_numpy())
    np.testing.assert_array_equal(rows["rank"].to_numpy(), rankdata(rows["mean_rank"].to_numpy(), method="min"))

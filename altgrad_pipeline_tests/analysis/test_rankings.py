"""Format rankings: sweet spots by design, statistics equal to numpy at the common step."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.stats import rankdata

from altgrad_pipeline.analysis.rankings import format_rankings
from altgrad_pipeline_tests.analysis.synthetic import HEALTHIEST, LM_PARAMS, PROJECT

LAST_K = 10


@pytest.fixture(scope="module")
def rankings(raw_runs, histories, outcomes, per_layer):
    return format_rankings(raw_runs, histories, outcomes, per_layer, last_k=LAST_K)


def _completed(raw_runs, outcomes, fmt):
    return raw_runs.join(outcomes, on="run_id").filter(
        (pl.col("project") == PROJECT) & (pl.col("fp8_format") == fmt) & (pl.col("outcome") == "completed")
    )["run_id"].to_list()


def _final_loss(histories, run_id, common_step):
    loss = histories.filter((pl.col("run_id") == run_id) & (pl.col("key") == "loss") & (pl.col("step") <= common_step)).sort("step")["value"].to_numpy()
    return loss[np.isfinite(loss)][-LAST_K:].mean()


def _row(rankings, fmt, layer_type):
    return rankings.filter((pl.col("project") == PROJECT) & (pl.col("fp8_format") == fmt) & (pl.col("layer_type") == layer_type)).row(0, named=True)


def test_sweet_spots_overall_and_per_layer_type(rankings):
    spots = dict(rankings.filter((pl.col("project") == PROJECT) & pl.col("is_sweet_spot")).select("layer_type", "fp8_format").iter_rows())
    assert spots["all"] == "E5M2"
    for layer_type, fmt in HEALTHIEST.items():
        assert spots[layer_type] == fmt, layer_type


def test_baseline_all_failed_and_no_format(rankings):
    ours = rankings.filter(pl.col("project") == PROJECT)
    assert "no_format" not in ours["fp8_format"].to_list()
    bf16 = ours.filter(pl.col("fp8_format") == "BF16")
    assert bf16["rank"].null_count() == bf16.height and not bf16["is_sweet_spot"].any()
    e7m0 = ours.filter(pl.col("fp8_format") == "E7M0")
    assert e7m0["all_failed"].all() and e7m0["rank"].null_count() == e7m0.height and (e7m0["n_runs"] == 2).all()
    row = _row(rankings, "E5M2", "all")
    assert (row["n_runs"], row["n_completed"]) == (9, 8) and row["completion_rate"] == pytest.approx(8 / 9, abs=1e-12)


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


def test_health_score_is_the_mean_of_criterion_ranks(rankings):
    rows = rankings.filter((pl.col("project") == PROJECT) & (pl.col("layer_type") == "mlp") & pl.col("is_candidate"))
    for name, descending in (("grad_snr", True), ("sparsity", False), ("norm_cov", False)):
        values = rows[name].to_numpy()
        expected = rankdata(-values if descending else values, method="average")
        np.testing.assert_allclose(rows[f"{name}_rank"].to_numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(rows["health_score"].to_numpy(), rows.select(pl.mean_horizontal("grad_snr_rank", "sparsity_rank", "norm_cov_rank")).to_series().to_numpy(), atol=1e-12)

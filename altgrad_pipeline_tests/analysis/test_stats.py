"""Shared statistics helpers against numpy/scipy computed directly."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from altgrad_pipeline.analysis.stats import (
    bootstrap_mean_difference,
    coefficient_of_variation,
    least_squares_slope,
    mean_of_last_k,
    probability_lower,
    t_quantiles,
)


def test_slope_and_cov_match_numpy():
    rng = np.random.default_rng(0)
    x = np.arange(1000, 1050, dtype=float)
    y = 3.0 - 0.02 * x + rng.standard_normal(50)
    got = pl.DataFrame({"x": x, "y": y}).select(
        least_squares_slope(pl.col("x"), pl.col("y")).alias("slope"), coefficient_of_variation(pl.col("y")).alias("cov")
    )
    assert got["slope"][0] == pytest.approx(np.polyfit(x, y, 1)[0], abs=1e-9)
    assert got["cov"][0] == pytest.approx(np.std(y, ddof=1) / np.mean(y), abs=1e-9)


def test_mean_of_last_k_respects_cutoff_and_skips_non_finite():
    series = pl.DataFrame({"run_id": ["a"] * 6, "step": [0, 1, 2, 3, 4, 5], "value": [1.0, 2.0, np.nan, 4.0, 5.0, 6.0]})
    got = mean_of_last_k(series, pl.DataFrame({"run_id": ["a"], "cutoff_step": [4]}), 3).collect()
    assert got["value"][0] == pytest.approx(np.mean([2.0, 4.0, 5.0]), abs=1e-9)
    assert got["n_values"][0] == 3 and got["last_value_step"][0] == 4


def test_bootstrap_paired_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 0.1, 8), rng.normal(0.5, 0.1, 8)
    got = bootstrap_mean_difference(a, b, paired=True, n_resamples=999, seed=3)
    ref = sps.bootstrap((a - b,), np.mean, n_resamples=999, method="BCa", random_state=np.random.default_rng(3)).confidence_interval
    assert got.method == "BCa paired"
    assert (got.low, got.high) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_bootstrap_unpaired_matches_scipy():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 0.1, 6), rng.normal(0.5, 0.1, 9)
    got = bootstrap_mean_difference(a, b, paired=False, n_resamples=999, seed=4)
    ref = sps.bootstrap(
        (a, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), n_resamples=999, method="BCa", random_state=np.random.default_rng(4)
    ).confidence_interval
    assert got.method == "BCa unpaired"
    assert (got.low, got.high) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_bootstrap_falls_back_to_percentile_and_refuses_single_values():
    same = bootstrap_mean_difference(np.array([1.0, 1.0, 1.0]), np.array([0.5, 0.5, 0.5]), paired=True, n_resamples=199, seed=0)
    assert same.method == "percentile paired" and (same.low, same.high) == pytest.approx((0.5, 0.5), abs=1e-12)
    single = bootstrap_mean_difference(np.array([1.0]), np.array([0.5]), paired=True, n_resamples=199, seed=0)
    assert single.method == "none paired" and np.isnan(single.low)


def test_probability_lower():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0])
    expected = np.mean([[x < y or 0.5 * (x == y) for y in b] for x in a])
    assert probability_lower(a, b, paired=False) == pytest.approx(expected, abs=1e-12)
    assert probability_lower(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0]), paired=True) == pytest.approx(0.5, abs=1e-12)


def test_t_quantiles_match_scipy_per_row():
    counts = pl.Series([1, 2, 3, None, 8, 2, 0, 30], dtype=pl.UInt32)
    expected = [float(sps.t.ppf(0.975, k - 1)) if k is not None and k >= 2 else None for k in counts.to_list()]
    assert t_quantiles(counts, 0.95).to_list() == expected
    assert t_quantiles(counts.head(0), 0.95).dtype == pl.Float64

"""Statistics shared by the analysis modules: regression slopes, variation, step-aligned finals,
bootstrap intervals and the probability of improvement.

Polars helpers return expressions or frames so callers stay lazy and vectorised; the bootstrap
helpers take small numpy arrays (one per compared group) because `scipy.stats.bootstrap` does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats as sps


def finite(expr: pl.Expr) -> pl.Expr:
    """True where a float is neither NaN nor +-inf (null stays null, i.e. not finite)."""
    return expr.is_finite().fill_null(False)


def least_squares_slope(x: pl.Expr, y: pl.Expr) -> pl.Expr:
    """Ordinary least-squares slope of y on x, as an aggregation (centred sums, so large step
    numbers do not cancel). Null when fewer than two distinct x values."""
    dx = x - x.mean()
    dy = y - y.mean()
    denominator = (dx * dx).sum()
    return pl.when(denominator > 0).then((dx * dy).sum() / denominator)


def t_quantiles(n: pl.Series, confidence: float) -> pl.Series:
    """The Student-t quantile t(0.5 + confidence/2, n − 1) of each count in `n` (null below two):
    SciPy is called once per distinct count, not once per row (a curve band has a row per step,
    and a SciPy call costs as much as thousands of Polars rows)."""
    counts = [k for k in n.unique().drop_nulls().to_list() if k >= 2]
    quantiles = [float(sps.t.ppf(0.5 + confidence / 2, k - 1)) for k in counts]
    return n.replace_strict(counts, quantiles, default=None, return_dtype=pl.Float64)


def coefficient_of_variation(x: pl.Expr) -> pl.Expr:
    """Sample standard deviation (ddof=1) over mean: scale-free spread, as an aggregation."""
    return x.std(ddof=1) / x.mean()


def mean_of_last_k(series: pl.LazyFrame | pl.DataFrame, cutoffs: pl.LazyFrame | pl.DataFrame, last_k: int) -> pl.LazyFrame:
    """Mean of each run's last `last_k` finite values logged at or before its cutoff step.

    `series`: run_id, step, value. `cutoffs`: run_id, cutoff_step, plus any columns that tell
    several cutoffs of one run apart (e.g. the format it is compared with); they are kept.
    Returns those columns, value (the mean), n_values (at most last_k) and last_value_step.
    Comparing runs at one cutoff step is what keeps a 2000-step baseline and 500-step FP8 runs
    comparable: each run's final value is measured where all of them still have data.
    """
    cutoffs = cutoffs.lazy()
    by = [name for name in cutoffs.collect_schema().names() if name != "cutoff_step"]
    tail = pl.col("value").sort_by("step").tail(last_k)
    return (
        series.lazy()
        .filter(finite(pl.col("value")))
        .join(cutoffs, on="run_id", how="inner")
        .filter(pl.col("step") <= pl.col("cutoff_step"))
        .group_by(by)
        .agg(tail.mean().alias("value"), tail.len().alias("n_values"), pl.col("step").max().alias("last_value_step"))
    )


@dataclass(frozen=True)
class BootstrapInterval:
    """A confidence interval and how it was obtained ("BCa paired", "percentile unpaired", ...)."""

    low: float
    high: float
    method: str


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _run_bootstrap(data: tuple[np.ndarray, ...], statistic, *, paired: bool, method: str, n_resamples: int, seed: int, confidence: float):
    with warnings.catch_warnings():
        warnings.simplefilter("error", sps.DegenerateDataWarning)
        warnings.simplefilter("error", RuntimeWarning)
        result = sps.bootstrap(
            data,
            statistic,
            paired=paired,
            vectorized=True,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method=method,
            random_state=np.random.default_rng(seed),
        )
    return result.confidence_interval


def bootstrap_mean_difference(
    treatment: np.ndarray,
    control: np.ndarray,
    *,
    paired: bool,
    n_resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> BootstrapInterval:
    """Bootstrap CI of mean(treatment) - mean(control).

    Paired: the arrays are aligned (same seed at each index) and the per-pair differences are
    resampled with the one-sample mean as statistic. Unpaired: each arm is resampled on its own
    (`paired=False`) with the difference of means as statistic. BCa first; when BCa is
    degenerate (a warning, or a NaN bound, e.g. all differences equal) the percentile interval
    from a fresh generator with the same seed is used instead. Fewer than two observations in an
    arm (or pair) give NaN bounds and method "none".
    """
    kind = "paired" if paired else "unpaired"
    if paired:
        data: tuple[np.ndarray, ...] = (np.asarray(treatment, float) - np.asarray(control, float),)
        statistic = np.mean
        enough = len(data[0]) >= 2
    else:
        data = (np.asarray(treatment, float), np.asarray(control, float))
        statistic = _mean_difference
        enough = min(len(data[0]), len(data[1])) >= 2
    if not enough:
        return BootstrapInterval(float("nan"), float("nan"), f"none {kind}")
    return _bca_else_percentile(data, statistic, kind, n_resamples=n_resamples, seed=seed, confidence=confidence)


def _bca_else_percentile(data: tuple[np.ndarray, ...], statistic, kind: str, *, n_resamples: int, seed: int, confidence: float) -> BootstrapInterval:
    """BCa interval, or the percentile interval (fresh generator, same seed) when BCa is degenerate."""
    try:
        interval = _run_bootstrap(data, statistic, paired=False, method="BCa", n_resamples=n_resamples, seed=seed, confidence=confidence)
        if np.isfinite(interval.low) and np.isfinite(interval.high):
            return BootstrapInterval(float(interval.low), float(interval.high), f"BCa {kind}")
    except (sps.DegenerateDataWarning, RuntimeWarning):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interval = sps.bootstrap(
            data,
            statistic,
            paired=False,
            vectorized=True,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method="percentile",
            random_state=np.random.default_rng(seed),
        ).confidence_interval
    return BootstrapInterval(float(interval.low), float(interval.high), f"percentile {kind}")


def t_mean_difference(treatment: np.ndarray, control: np.ndarray, *, paired: bool, confidence: float = 0.95) -> BootstrapInterval:
    """Student-t CI of mean(treatment) - mean(control): one-sample t on the per-pair differences
    when paired, Welch's t otherwise. NaN bounds and method "none" below two values per arm."""
    t = np.asarray(treatment, float)
    c = np.asarray(control, float)
    kind = "paired" if paired else "unpaired"
    if min(len(t), len(c)) < 2:
        return BootstrapInterval(float("nan"), float("nan"), f"none {kind}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero spread: a degenerate, zero-width interval
        test = sps.ttest_1samp(t - c, 0.0) if paired else sps.ttest_ind(t, c, equal_var=False)
        interval = test.confidence_interval(confidence)
    low, high = float(interval.low), float(interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):
        low = high = float(np.mean(t) - np.mean(c))
    return BootstrapInterval(low, high, f"t {kind}" if paired else "Welch t unpaired")


def mean_difference_interval(
    treatment: np.ndarray,
    control: np.ndarray,
    *,
    paired: bool,
    n_resamples: int,
    seed: int,
    min_bootstrap_n: int,
    confidence: float = 0.95,
) -> BootstrapInterval:
    """The CI reported for a difference of means: the bootstrap (BCa, else percentile) once each
    arm has at least `min_bootstrap_n` values, Student/Welch t below that.

    Why: a bootstrap of n values has at most C(2n-1, n) distinct resamples (10 for n = 3) and its
    interval ignores the t-distribution's small-sample widening, so at n = 3 a "95%" BCa interval
    covers the truth far less often than 95%. The t interval is the honest one there.
    """
    n = len(treatment) if paired else min(len(treatment), len(control))
    if n < min_bootstrap_n:
        return t_mean_difference(treatment, control, paired=paired, confidence=confidence)
    return bootstrap_mean_difference(treatment, control, paired=paired, n_resamples=n_resamples, seed=seed, confidence=confidence)


def probability_lower(treatment: np.ndarray, control: np.ndarray, *, paired: bool) -> float:
    """Probability that treatment is lower than control (ties count one half).

    Paired: the share of pairs whose difference is negative. Unpaired: the common-language effect
    size P(X_treatment < X_control) over all treatment x control pairs. NaN when an arm is empty.
    """
    t = np.asarray(treatment, float)
    c = np.asarray(control, float)
    if len(t) == 0 or len(c) == 0:
        return float("nan")
    if paired:
        d = t - c
        return float(np.mean((d < 0) + 0.5 * (d == 0)))
    lower = t[:, None] < c[None, :]
    ties = t[:, None] == c[None, :]
    return float(np.mean(lower + 0.5 * ties))


def mean_interval(values: np.ndarray, *, n_resamples: int, seed: int, min_bootstrap_n: int, confidence: float = 0.95) -> BootstrapInterval:
    """CI of one mean, by the same small-n rule as `mean_difference_interval`: Student's t below
    `min_bootstrap_n` values, the bootstrap (BCa, else percentile) from there; NaN bounds and
    method "none" below two values. Zero spread gives a zero-width interval at the mean."""
    x = np.asarray(values, float)
    if len(x) < 2:
        return BootstrapInterval(float("nan"), float("nan"), "none")
    if len(x) >= min_bootstrap_n:
        return _bca_else_percentile((x,), np.mean, "one-sample", n_resamples=n_resamples, seed=seed, confidence=confidence)
    half = sps.t.ppf(0.5 + confidence / 2, len(x) - 1) * np.std(x, ddof=1) / np.sqrt(len(x))
    return BootstrapInterval(float(np.mean(x) - half), float(np.mean(x) + half), "t one-sample")


def count_lower(treatment: np.ndarray, control: np.ndarray, *, paired: bool) -> tuple[int, int]:
    """(comparisons in which treatment is lower, comparisons): per seed when paired, over all
    treatment x control pairs otherwise. Observed counts, for wording such as "lower in 3 of 3 seeds"."""
    t = np.asarray(treatment, float)
    c = np.asarray(control, float)
    if paired:
        return int(np.sum(t < c)), len(t)
    return int(np.sum(t[:, None] < c[None, :])), len(t) * len(c)


def mean_intervals(
    values: pl.LazyFrame | pl.DataFrame, by: list[str], *, n_resamples: int, seed: int, min_bootstrap_n: int, confidence: float = 0.95
) -> pl.DataFrame:
    """`by`, ci_low, ci_high, ci_method: `mean_interval` of column `value` within each group.
    One scipy call per group (scipy's bootstrap takes one sample at a time), never per row."""
    groups = values.lazy().group_by(by).agg(pl.col("value").drop_nulls().drop_nans()).collect()
    intervals = [
        mean_interval(np.asarray(v, float), n_resamples=n_resamples, seed=seed, min_bootstrap_n=min_bootstrap_n, confidence=confidence)
        for v in groups.get_column("value").to_list()
    ]
    return groups.drop("value").with_columns(
        pl.Series("ci_low", [i.low for i in intervals], pl.Float64).fill_nan(None),
        pl.Series("ci_high", [i.high for i in intervals], pl.Float64).fill_nan(None),
        pl.Series("ci_method", [i.method for i in intervals], pl.String),
    )

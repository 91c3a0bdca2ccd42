"""Curve fits on curves generated from known formulas with seeded noise: AICc picks the
generating model, the exponent, the asymptote, the knee and the plateau are recovered, and a
curve without a break reports no knee."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import optimize

from altgrad_pipeline.analysis import curves, fits
from altgrad_pipeline.analysis.training import training_dynamics
from altgrad_pipeline_tests.dynamics.synthetic import curve_history, runs_frame

N_POINTS = 300
STEPS_PER_EPOCH = 25
NOISE_SD = 0.03
N_TRIALS = 160
#: Tolerances of the recovery test: relative error of a pure power law's exponent; error of the
#: asymptote, and of a shifted power law's exponent (correlated with t0), in standard errors.
EXPONENT_TOLERANCE = 0.05
ASYMPTOTE_SIGMAS = 4.0


def _generate(kind: str, rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, dict]:
    if kind == "power_law":
        truth = {"a": rng.uniform(3, 8), "b": rng.uniform(0.4, 1.2), "c": rng.uniform(1, 4)}
        return fits.power_law(t, **truth), truth
    if kind == "shifted_power_law":
        # the example study's shape: L0·(1 + t/T)^(−b) + c, i.e. a = L0·T^b, t0 = T
        scale, b, t0 = rng.uniform(4, 8), rng.uniform(0.5, 1.2), rng.uniform(10, 60)
        truth = {"a": scale * t0**b, "b": b, "t0": t0, "c": rng.uniform(1, 4)}
        return fits.shifted_power_law(t, **truth), truth
    if kind == "exponential":
        truth = {"a": rng.uniform(3, 8), "tau": rng.uniform(20, 80), "c": rng.uniform(1, 4)}
        return fits.exponential(t, **truth), truth
    # burn-in: a slow first segment, then a steeper power law, joined at the break
    a1, b1, b2, c, break_t = rng.uniform(3, 6), rng.uniform(0.1, 0.3), rng.uniform(0.8, 1.5), rng.uniform(1, 3), rng.uniform(40, 120)
    truth = {"a1": a1, "b1": b1, "b2": b2, "c": c, "break_t": break_t}
    return fits.two_power(t, a1, b1, fits.continuous_a2(a1, b1, b2, break_t), b2, c, break_t), truth


def test_aicc_picks_the_generating_model_and_recovers_exponent_and_knee() -> None:
    rng = np.random.default_rng(20260101)
    t = np.arange(1, N_POINTS + 1, dtype=float)
    picked: dict[str, list[bool]] = {m: [] for m in fits.MODELS}
    knees: dict[str, list[bool]] = {m: [] for m in fits.MODELS}
    exponent_errors, shifted_exponent_sigmas, asymptote_sigmas, knee_errors_epochs = [], [], [], []
    for trial in range(N_TRIALS):
        kind = fits.MODELS[trial % len(fits.MODELS)]
        clean, truth = _generate(kind, rng, t)
        fitted = {f.model: f for f in fits.fit_models(t, clean + rng.normal(0.0, NOISE_SD, N_POINTS), floor=0.0)}
        selected = fits.selected_model(list(fitted.values()))
        picked[kind].append(selected.model == kind)
        knees[kind].append(fits.has_knee(list(fitted.values())))
        if kind == "power_law":
            exponent_errors.append(abs(fitted[kind].params["b"] / truth["b"] - 1))
        if kind == "shifted_power_law":
            shifted_exponent_sigmas.append(abs(fitted[kind].params["b"] - truth["b"]) / fitted[kind].standard_errors["b"])
        if kind != "two_power":
            limit, se = fits.asymptote(selected)
            asymptote_sigmas.append(abs(limit - truth["c"]) / se)
        else:
            knee_errors_epochs.append(abs(fitted[kind].break_step - truth["break_t"]) / STEPS_PER_EPOCH)
    rates = {m: float(np.mean(v)) for m, v in picked.items()}
    overall = float(np.mean([x for v in picked.values() for x in v]))
    assert overall >= 0.95 and min(rates.values()) >= 0.9, rates
    assert max(exponent_errors) < EXPONENT_TOLERANCE
    assert max(shifted_exponent_sigmas) < ASYMPTOTE_SIGMAS
    assert max(asymptote_sigmas) < ASYMPTOTE_SIGMAS
    assert max(knee_errors_epochs) <= 1.0
    # a knee is found where one is built in, and never on a smooth curve
    assert all(knees["two_power"]) and not any(knees["power_law"] + knees["shifted_power_law"] + knees["exponential"])


@pytest.mark.parametrize("kind", ["power_law", "shifted_power_law"])
def test_smooth_power_laws_have_no_knee_and_a_physical_floor(kind: str) -> None:
    """Held-out pure and shifted power laws (the example study's shape, 500 points): no knee, the
    asymptote within 4 standard errors and 0.25 nats of the floor, the exponent within 10%."""
    rng = np.random.default_rng({"power_law": 41, "shifted_power_law": 42}[kind])
    steps = np.arange(500, dtype=float)
    for _ in range(12):
        floor, b = rng.uniform(3.2, 4.0), rng.uniform(0.5, 0.9)
        if kind == "power_law":
            clean = fits.power_law(steps + 1.0, rng.uniform(5, 9), b, floor)
        else:
            clean = fits.shifted_power_law(steps + 1.0, 7.5 * 50.0**b, b, 49.0, floor)
        table = training_dynamics(
            runs_frame([{"lr": 0.1}], run_ids=["r"], projects=["p"], seeds=[1]),
            curve_history("r", steps, clean + rng.normal(0.0, 0.05, steps.size)),
        )
        row = table.filter(pl.col("selected")).row(0, named=True)
        assert row["model"] == kind and row["knee_step"] is None
        assert row["asymptote"] >= 0 and abs(row["asymptote"] - floor) < min(0.25, ASYMPTOTE_SIGMAS * row["asymptote_se"])
        assert row["b"] == pytest.approx(b, rel=0.1)
        if kind == "shifted_power_law":
            assert row["plateau_step"] is None  # still falling at the end of the run, as in the example study
        assert table.filter(pl.col("model") == "two_power")["knee_step"].to_list() == [None]


def test_loss_limits_are_bounded_below_by_zero() -> None:
    """A slow loss whose floor is 0: unbounded, the power laws extrapolate below zero (seeds 0
    and 2 here); bounded, their limit stops at 0 and `at_bound` says so."""
    t = np.arange(1, 301, dtype=float)
    y = fits.power_law(t, 3.0, 0.15, 0.0) + np.random.default_rng(0).normal(0.0, 0.02, t.size)
    assert fits.fit_power_law(t, y).params["c"] < 0
    for fit in fits.fit_models(t, y, floor=0.0):
        assert fit.params["c"] >= 0.0
        if fit.model in ("power_law", "shifted_power_law"):
            assert fit.params["c"] == pytest.approx(0.0, abs=1e-9) and "c" in fit.at_bound


def test_plateau_within_five_percent_of_the_run() -> None:
    """Exponential curves with a known plateau: the first step where the noiseless slope,
    relative to the run, falls below the tolerance (solved in closed form)."""
    rng = np.random.default_rng(7)
    n = 3000
    t = np.arange(1, n + 1, dtype=float)
    steps = t - 1
    length = steps[-1] - steps[0]
    errors = []
    for _ in range(30):
        a, tau, c = rng.uniform(4, 8), rng.uniform(150, 450), rng.uniform(1, 4)
        y = fits.exponential(t, a, tau, c) + rng.normal(0.0, 0.005, n)
        change = a * (np.exp(-t[0] / tau) - np.exp(-t[-1] / tau))
        true_t = tau * np.log(a * length / (tau * fits.PLATEAU_TOLERANCE * change))
        found = fits.plateau_step(steps, y)
        assert found is not None
        errors.append(abs(found - (true_t - 1)) / length)
    assert max(errors) <= 0.05


def test_a_curve_still_falling_has_no_plateau() -> None:
    t = np.arange(1, 301, dtype=float)
    assert fits.plateau_step(t - 1, 10.0 - 0.02 * t) is None


def test_standard_errors_match_the_jacobian_computed_here() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(1, 301, dtype=float)
    y = fits.power_law(t, 5.0, 0.7, 2.0) + rng.normal(0, 0.03, t.size)
    fit = fits.fit_power_law(t, y)
    a, b, c = fit.params["a"], fit.params["b"], fit.params["c"]
    step = 1e-6
    jacobian = np.column_stack(
        [(fits.power_law(t, *(np.array([a, b, c]) + step * e)) - fits.power_law(t, *(np.array([a, b, c]) - step * e))) / (2 * step) for e in np.eye(3)]
    )
    rss = np.sum((y - fits.power_law(t, a, b, c)) ** 2)
    expected = np.sqrt(np.diag(rss / (t.size - 3) * np.linalg.inv(jacobian.T @ jacobian)))
    np.testing.assert_allclose([fit.standard_errors[k] for k in "abc"], expected, rtol=1e-5)
    assert fit.rss == pytest.approx(rss, rel=1e-12)
    k = 4
    aic = t.size * np.log(rss / t.size) + 2 * k
    assert fit.aic == pytest.approx(aic, abs=1e-9)
    assert fit.aicc == pytest.approx(aic + 2 * k * (k + 1) / (t.size - k - 1), abs=1e-9)



@pytest.mark.parametrize("kind", ["power_law", "shifted_power_law", "exponential"])
def test_the_newton_fit_is_the_robust_minimum_scipy_finds(kind: str) -> None:
    """The fits' own Levenberg-Marquardt steps end where scipy's `trf`, converged to the last digit
    from near that point, ends: the same `soft_l1` cost (not above it) and the same parameters, on
    noisy curves with spikes (so the robust loss matters)."""
    rng = np.random.default_rng(23)
    t = np.arange(1, N_POINTS + 1, dtype=float)
    fit_function = {"power_law": fits.fit_power_law, "shifted_power_law": fits.fit_shifted_power_law, "exponential": fits.fit_exponential}[kind]
    model = {"power_law": fits.power_law, "shifted_power_law": fits.shifted_power_law, "exponential": fits.exponential}[kind]
    for _ in range(5):
        y = _generate(kind, rng, t)[0] + rng.normal(0.0, NOISE_SD, t.size) + np.where(rng.random(t.size) < 0.03, 1.0, 0.0)
        fit = fit_function(t, y, 0.0)
        assert fit.success and fit.at_bound == ()
        x = np.array(list(fit.params.values()))
        scale = fits.noise_scale(y)
        reference = optimize.least_squares(
            lambda p: model(t, *p) - y, x * 1.001, method="trf", loss="soft_l1", f_scale=scale, x_scale="jac", ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=2000
        )
        cost = float(np.sum(np.sqrt(1.0 + ((model(t, *x) - y) / scale) ** 2) - 1.0)) * scale**2
        assert cost <= reference.cost * (1 + 1e-12)
        np.testing.assert_allclose(x, reference.x, rtol=1e-5)


@pytest.mark.parametrize("noise", [0.0, 1e-6, NOISE_SD])
@pytest.mark.parametrize("floor", [None, 0.0])
def test_the_fast_shift_ranking_keeps_the_exact_grids_best_shift(noise: float, floor: float | None) -> None:
    """The shifted power law's seed is searched only in the shifts the exp/log ranking keeps; the
    shift holding the exact `np.power` grid's least RSS is always among them, noise-free curves
    (whose RSS is rounding) included, so the seed is the exact grid's."""
    rng = np.random.default_rng(11)
    t = np.arange(1, N_POINTS + 1, dtype=float)
    for kind in ("power_law", "shifted_power_law", "exponential", "two_power"):
        for _ in range(5):
            y = _generate(kind, rng, t)[0] + rng.normal(0, noise, t.size)
            shifts = fits._SHIFT_GRID_FRACTIONS * (t[-1] - t[0])
            exact = [fits._projected_fits(np.power(t + shift, -fits._EXPONENT_GRID[:, None]), y, floor)[2] for shift in shifts]
            best_shift = int(np.argmin(np.concatenate(exact))) // len(fits._EXPONENT_GRID)
            candidates = fits._candidate_shifts(t, y, floor, shifts, np.empty((len(fits._EXPONENT_GRID), t.size)))
            assert best_shift in candidates
            assert len(candidates) < len(shifts)

def test_spectral_slope_tells_white_noise_from_a_random_walk() -> None:
    rng = np.random.default_rng(5)
    white = rng.normal(size=4096)
    assert abs(fits.spectral_slope(white)) < 0.3
    assert fits.spectral_slope(np.cumsum(white)) < -1.5


def test_training_dynamics_table_cuts_nan_tails_and_converts_epochs() -> None:
    rng = np.random.default_rng(11)
    steps = np.arange(0, 400)
    loss = fits.power_law(steps + 1.0, 6.0, 0.8, 2.0) + rng.normal(0, 0.02, steps.size)
    loss[350:] = np.nan
    accuracy = 0.9 - 0.7 * np.exp(-(steps + 1.0) / 60.0) + rng.normal(0, 0.005, steps.size)
    histories = pl.concat([curve_history("r1", steps, loss), curve_history("r1", steps, accuracy, key="eval/accuracy"), curve_history("r1", steps, steps * 0.1, key="eval/runtime")])
    raw = runs_frame([{"steps_per_epoch": 40, "lr": 0.1}], run_ids=["r1"], projects=["p"], seeds=[1])
    table = training_dynamics(raw, histories)
    assert set(table["metric"]) == {"loss", "eval/accuracy"}
    assert table.height == 2 * len(fits.MODELS) and table.group_by("metric").agg(pl.col("selected").sum())["selected"].to_list() == [1, 1]
    loss_rows = table.filter(pl.col("metric") == "loss")
    assert loss_rows["n_points"].unique().to_list() == [350]
    assert loss_rows["first_nonfinite_step"].unique().to_list() == [350]
    power = loss_rows.filter(pl.col("model") == "power_law").row(0, named=True)
    assert power["b"] == pytest.approx(0.8, rel=0.05)
    assert power["knee_step"] is None and power["knee_epoch"] is None  # a power law has no knee
    assert power["asymptote_bits"] == pytest.approx(power["asymptote"] / np.log(2))
    assert power["final_loss_bits"] == pytest.approx(np.mean(loss[340:350]) / np.log(2), abs=1e-12)
    accuracy_rows = table.filter(pl.col("metric") == "eval/accuracy")
    exponential = accuracy_rows.filter(pl.col("model") == "exponential").row(0, named=True)
    assert exponential["selected"] and exponential["a"] < 0 and exponential["tau"] == pytest.approx(60, rel=0.1)
    assert exponential["final_loss_bits"] is None


def test_empty_inputs_give_an_empty_table() -> None:
    assert training_dynamics(pl.DataFrame(), pl.DataFrame()).is_empty()


def test_curvature_and_noise_series_get_the_loss_treatment_and_quarter_epochs() -> None:
    """A run logging λ_max (rising to a plateau), a gradient variance and an epoch length; another
    logging only its loss and an `epoch` key: the dynamics series are fitted like the loss, the λ_max
    plateau is found by the EWMA rule, absent series are absent, and per-quarter-epoch aggregates
    use the configured or the logged epoch length."""
    rng = np.random.default_rng(17)
    steps = np.arange(0, 400)
    t = steps + 1.0
    loss = fits.power_law(t, 6.0, 0.8, 2.0) + rng.normal(0, 0.02, steps.size)
    tau = 40.0
    lambda_max = fits.exponential(t, -30.0, tau, 40.0) + rng.normal(0, 0.1, steps.size)
    variance = fits.power_law(t, 2.0, 0.6, 0.05) + rng.normal(0, 0.005, steps.size)
    histories = pl.concat([
        curve_history("r1", steps, loss), curve_history("r1", steps, lambda_max, key="curvature/lambda_max"),
        curve_history("r1", steps, variance, key="noise/grad_variance"),
        curve_history("r2", steps, loss), curve_history("r2", steps, steps / 50.0, key="epoch"),
    ])
    raw = runs_frame([{"steps_per_epoch": 40, "lr": 0.1}, {"lr": 0.2}], run_ids=["r1", "r2"], projects=["p", "p"], seeds=[1, 1])
    table = training_dynamics(raw, histories).filter(pl.col("selected"))
    assert sorted(table.filter(pl.col("run_id") == "r1")["metric"]) == ["curvature/lambda_max", "loss", "noise/grad_variance"]
    assert table.filter(pl.col("run_id") == "r2")["metric"].to_list() == ["loss"]
    curvature = table.filter(pl.col("metric") == "curvature/lambda_max").row(0, named=True)
    assert curvature["model"] == "exponential" and curvature["asymptote"] == pytest.approx(40.0, abs=0.2)
    assert curvature["knee_step"] is None and curvature["final_loss_bits"] is None
    # noiseless relative slope (tau·ln(a·L/(tau·tol·change))) falls below the tolerance here
    change = 30.0 * (np.exp(-t[0] / tau) - np.exp(-t[-1] / tau))
    expected = tau * np.log(30.0 * 399 / (tau * fits.PLATEAU_TOLERANCE * change)) - 1
    assert abs(curvature["plateau_step"] - expected) <= 0.05 * 399
    assert table.filter(pl.col("metric") == "noise/grad_variance")["asymptote"][0] >= 0
    assert dict(table.select("run_id", "steps_per_epoch").unique().iter_rows()) == {"r1": 40.0, "r2": pytest.approx(50.0)}
    quarters = curves.quarter_epoch_aggregates(curves.curve_series(histories), curves.steps_per_epoch(raw, histories))
    r1 = quarters.filter((pl.col("run_id") == "r1") & (pl.col("metric") == "curvature/lambda_max"))
    assert r1["epoch"].to_list()[:3] == [0.0, 0.25, 0.5] and set(r1["n_values"]) == {10}
    assert r1["mean"][1] == pytest.approx(float(np.mean(lambda_max[10:20])))
    assert sum(quarters.filter((pl.col("run_id") == "r2") & (pl.col("epoch") < 0.5))["n_values"]) == 25  # 12.5 steps per quarter

"""Learning-curve models fitted to one metric series, and the shape facts read off a curve.

Time is `t = step - first_step + 1`: steps since the series' first logged value, starting at 1, so
a power law is defined at the first point and a resumed run starting at step 186,061 fits like
any other. Only the finite prefix of a series is fitted (everything before its first NaN/inf).

Models (parameter names are the table's column names):

- `power_law`:         L(t) = a·t^(−b) + c
- `shifted_power_law`: L(t) = a·(t + t0)^(−b) + c, t0 ≥ 0     (column `t0`): the usual form of a
                       learning curve, L0·(1 + t/T)^(−b) + c, which is flat for t ≪ t0 and a power
                       law after, so burn-in needs no break; t0 = 0 is `power_law`
- `exponential`:       L(t) = a·e^(−t/τ) + c                  (column `tau`)
- `two_power`:         L(t) = a1·t^(−b1) + c for t < T, a2·t^(−b2) + c for t ≥ T, T = `break_step`,
                       joined at T (a2 = a1·T^(b2−b1): a loss curve does not jump), so a2 is
                       derived and its standard error comes from the delta method

`c` is every model's limit as t → ∞. For a loss (and any nonnegative metric, see
`analysis.curves`) it is bounded below by 0: a cross-entropy cannot fall below zero, and an
unbounded c trades a deeper floor for a steeper exponent on a curve that has not flattened yet.
Bounds: b, b1, b2 in [0, 20], τ in [10⁻⁶, 10³]·span, t0 in [0, 10·span] (span = t range).
`at_bound` lists the parameters the solution sits on a bound of (scipy's `active_mask`), plus
`break_step` when the two-power break is within `KNEE_EDGE_POINTS` of the break search's limits:
such a number is a constraint speaking, not the data, and its standard error is not meaningful.

A rising curve (accuracy, F1) is the same models with a < 0, so higher-is-better metrics are
fitted the same way. Each fit starts from a variable-projection grid: for each exponent b (or time
constant τ) on a log grid, (a, c) is the linear least-squares solution, and the best grid point
seeds the robust least-squares fit: the `soft_l1` cost of `scipy.optimize.least_squares`
(`f_scale` the robust noise level 1.4826·MAD(Δy)/√2, so isolated spikes do not pull the curve),
minimised by Levenberg-Marquardt steps written here (`_newton_minimum`: Gauss-Newton Hessian with
the loss's curvature, Marquardt damping, analytic Jacobians, stopping when a step lowers the cost
by at most 1e-10 of it). Why not scipy's solver: its `trf` spends ≈ 0.25 ms of its own Python per
iteration, three quarters of the fits' CPU on the benchmark study, and MINPACK's `lm` has no
robust loss (on residuals transformed to carry it, it took four times the iterations). While every
step stays inside the bounds that is the fit; a limit c that steps below its floor is held there
and the rest solved again, accepted when the cost's slope in c holds it against the floor (the
Karush-Kuhn-Tucker point `trf` converges to); any other step out of bounds, or no convergence in
100 steps, hands the fit to scipy's `trf` (`x_scale="jac"`) from the same seed. The two-power
break is found by dynamic programming over candidate breaks (each segment at least max(4, 5% of
the points)): with two segments the optimal partition is the minimum over k of prefix cost +
suffix cost, every segment cost minimised over the exponent grid in closed form from cumulative
sums; this runs once with a free asymptote per segment and once more with the shared c of the
first nonlinear fit.

Standard errors come from the Jacobian at the solution: cov = s²·(JᵀJ)⁻¹ with s² = RSS/(n − p).
AIC = n·ln(RSS/n) + 2k and AICc = AIC + 2k(k+1)/(n − k − 1), k counting the curve parameters and
the noise variance. The break of `two_power` is charged as 3 parameters, not 1: a change point
searched over n positions overfits like ~3 free parameters (Ninomiya 2005, "Information criterion
for Gaussian change-point model"), so a clean single power law is not mistaken for a broken one.
`selected` marks one model per series: among the successful fits, the lowest AICc, except that
a model within `SELECTION_MARGIN` (2) AICc units of it with fewer parameters is preferred (the
data do not tell them apart, so the simpler reading wins); `two_power` is a candidate only when
the series has a knee (below).

The series' `asymptote` is the selected model's c with its standard error, null when that fit's
rate of decay (b, b2 or τ) sits at a bound: a curve with no identified decay does not say where
it levels off (a and c then trade off freely).

Shape facts per series:

- `knee_step`: the end of burn-in, the `two_power` break, reported only when the broken model
  beats the best unbroken one by more than `KNEE_MARGIN` (10) AICc units and the break is not at
  the search's limits (`at_bound` has no `break_step`); otherwise there is no knee (null): a
  smooth curve, a shifted power law included, has no break, and a break forced to the first or
  last allowed point is the search's edge, not a feature of the data.
- `plateau_step`: the first step from which the smoothed slope stays below `PLATEAU_TOLERANCE`
  for good, provided that flat stretch covers at least `PLATEAU_MIN_STRETCH` (20%) of the run;
  else null. A stretch shorter than that sits at the very end of the run, where a slowly falling
  curve (a power law never flattens) and a true plateau look alike and a seed's noise decides;
  requiring a sustained stretch keeps the answer a property of the curve, so seeds of one
  setting agree. The same rule (zero-phase EWMA of the slope) reads the plateau of λ_max and of
  the other dynamics series. The slope is Δy/Δstep, smoothed by an EWMA (span 5% of the points) run forwards
  and then backwards (zero phase, like `scipy.signal.filtfilt`, so the plateau is not reported
  late by the smoother's lag), and measured relative to the run: |slope|·(run length in steps)
  / |total change of the smoothed curve|. Below 0.05 means that at this rate the rest of a run
  as long as this one would move the metric by less than 5% of what the run achieved.
- `spectral_slope`: slope of log PSD against log frequency of the residuals from the selected
  model (Welch's method, `scipy.signal.welch`, segments of min(256, n/4) points, frequencies in
  cycles per logged point): about 0 for white noise, −2 for a random walk, so a strongly negative
  value says the misfit is slow drift rather than noise.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, signal

MODELS = ("power_law", "shifted_power_law", "exponential", "two_power")
MODEL_PARAMETERS: dict[str, tuple[str, ...]] = {
    "power_law": ("a", "b", "c"),
    "shifted_power_law": ("a", "b", "t0", "c"),
    "exponential": ("a", "tau", "c"),
    "two_power": ("a1", "b1", "a2", "b2", "c"),
}
#: How many parameters the AIC charges for the searched break of `two_power` (see module doc).
BREAK_PENALTY_PARAMETERS = 3
#: Fewest points a series needs to be fitted (two segments of 4 and more points than parameters).
MIN_POINTS = 12
PLATEAU_TOLERANCE = 0.05
PLATEAU_SPAN_FRACTION = 0.05
#: Shortest flat stretch, as a fraction of the run's steps, that counts as a plateau.
PLATEAU_MIN_STRETCH = 0.2
#: A smoothed slope within this many noise standard deviations of zero is not movement.
PLATEAU_NOISE_SIGMAS = 4.0
#: AICc units a model with more parameters must gain to be selected over a simpler one.
SELECTION_MARGIN = 2.0
#: AICc units `two_power` must gain over the best unbroken model for the series to have a knee.
KNEE_MARGIN = 10.0
#: A break this many points or fewer from the break search's limits is at the bound.
KNEE_EDGE_POINTS = 2
MIN_SEGMENT_FRACTION = 0.05
MIN_SEGMENT_POINTS = 4
WELCH_SEGMENT = 256
MIN_SPECTRAL_POINTS = 32

_EXPONENT_GRID = np.geomspace(0.02, 5.0, 48)
_MAX_EXPONENT = 20.0
_SHIFT_GRID_FRACTIONS = np.concatenate([[0.0], np.geomspace(1e-3, 2.0, 23)])
_MAX_SHIFT_SPANS = 10.0
#: Shifts ranked this close (relative to Σy²) to the best by the fast grid are computed exactly.
_SHIFT_RANKING_TOLERANCE = 1e-9
#: Candidate breaks per block of the break search (48 × 256 floats a temporary, 96 KiB).
_COST_BLOCK = 256
#: The Newton fits stop when a step lowers the robust cost by at most this fraction of it.
_COST_TOLERANCE = 1e-10
_MAX_ITERATIONS = 100
#: Marquardt damping (relative to the Hessian's diagonal) at the start, and where a fit gives up
#: looking for a lower cost.
_INITIAL_DAMPING = 1e-3
_MAX_DAMPING = 1e16
#: A parameter this close to a bound (relative, at least absolute) counts as at it, as in `trf`.
_ACTIVE_TOLERANCE = 1e-10


@dataclass(frozen=True)
class CurveFit:
    """One model fitted to one series: parameters and standard errors by name, fit quality."""

    model: str
    params: dict[str, float]
    standard_errors: dict[str, float]
    n_points: int
    n_aic_parameters: int
    rss: float
    aic: float
    aicc: float
    success: bool
    break_step: float | None = None
    at_bound: tuple[str, ...] = ()
    fitted: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)


# ---------------------------------------------------------------- model functions


def power_law(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * t ** (-b) + c


def shifted_power_law(t: np.ndarray, a: float, b: float, t0: float, c: float) -> np.ndarray:
    return a * (t + t0) ** (-b) + c


def exponential(t: np.ndarray, a: float, tau: float, c: float) -> np.ndarray:
    return a * np.exp(-t / tau) + c


def two_power(t: np.ndarray, a1: float, b1: float, a2: float, b2: float, c: float, break_t: float) -> np.ndarray:
    return np.where(t < break_t, a1 * t ** (-b1), a2 * t ** (-b2)) + c


def _power_jacobian(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    a, b, _ = p
    x = t ** (-b)
    return np.column_stack([x, -a * np.log(t) * x, np.ones_like(t)])


def _shifted_power_jacobian(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    a, b, t0, _ = p
    shifted = t + t0
    x = shifted ** (-b)
    return np.column_stack([x, -a * np.log(shifted) * x, -a * b * x / shifted, np.ones_like(t)])


def _exponential_jacobian(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    a, tau, _ = p
    x = np.exp(-t / tau)
    return np.column_stack([x, a * x * t / tau**2, np.ones_like(t)])


def _two_power_jacobian(t: np.ndarray, p: np.ndarray, break_t: float) -> np.ndarray:
    """Jacobian in the continuous parameters (a1, b1, b2, c); a2 = a1·T^(b2−b1)."""
    a1, b1, b2, _ = p
    before = t < break_t
    first = np.where(before, t ** (-b1), 0.0)
    second = np.where(before, 0.0, break_t ** (-b1) * (t / break_t) ** (-b2))
    return np.column_stack(
        [
            first + second,
            -a1 * (np.log(t) * first + math.log(break_t) * second),
            -a1 * np.log(t / break_t) * second,
            np.ones_like(t),
        ]
    )


def continuous_a2(a1: float, b1: float, b2: float, break_t: float) -> float:
    """The second segment's prefactor that joins the segments at the break."""
    return a1 * break_t ** (b2 - b1)


class _Decay:
    """Residuals a·u + c − y and their Jacobian for a decay u(θ) (t^(−b), e^(−t/τ), …) the solver
    evaluates, with ∂u/∂θj = −dj·u (`derivatives` gives the dj): `u` keeps its last value,
    because the Jacobian is asked for at the point whose residuals were just computed, and each
    u is one `np.exp` over the series, computed once."""

    def __init__(self, y: np.ndarray, decay, derivatives) -> None:
        self.y, self.decay, self.derivatives = y, decay, derivatives
        self.key: tuple[float, ...] | None = None
        self.value = y

    def _u(self, theta: tuple[float, ...]) -> np.ndarray:
        if theta != self.key:
            self.key, self.value = theta, self.decay(*theta)
        return self.value

    def residuals(self, p: np.ndarray) -> np.ndarray:
        return p[0] * self._u(tuple(p[1:-1])) + p[-1] - self.y

    def jacobian_rows(self, p: np.ndarray) -> np.ndarray:
        """The Jacobian transposed (one row per parameter: a, θ…, c), as the solver uses it."""
        u = self._u(tuple(p[1:-1]))
        rows = np.empty((len(p), len(u)))
        rows[0] = u
        for row, d in zip(rows[1:-1], self.derivatives(*p[1:-1])):
            np.multiply(d, u, out=row)
            row *= -p[0]
        rows[-1] = 1.0
        return rows


# ---------------------------------------------------------------- helpers


def noise_scale(y: np.ndarray) -> float:
    """Robust per-point noise level: 1.4826·MAD of first differences / √2 (a smooth trend barely
    moves first differences, so this measures the noise, not the curve)."""
    if len(y) < 3:
        return 0.0
    d = np.diff(y)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2))


def information_criteria(rss: float, n: int, k: int) -> tuple[float, float]:
    """(AIC, AICc) of a Gaussian least-squares fit with k parameters (noise variance included)."""
    rss = max(rss, np.finfo(float).tiny * n)
    aic = n * math.log(rss / n) + 2 * k
    aicc = aic + 2 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else math.inf
    return aic, aicc


def _covariance(jacobian: np.ndarray, rss: float, n: int) -> np.ndarray:
    """s²·(JᵀJ)⁻¹ with s² = RSS/(n − p) (pseudo-inverse, so a flat direction gives a finite,
    large variance instead of an error); NaN when n ≤ p."""
    p = jacobian.shape[1]
    if n <= p:
        return np.full((p, p), np.nan)
    return rss / (n - p) * np.linalg.pinv(jacobian.T @ jacobian)


def _standard_errors(jacobian: np.ndarray, rss: float, n: int) -> np.ndarray:
    return np.sqrt(np.clip(np.diag(_covariance(jacobian, rss, n)), 0.0, None))


def _projected_fits(basis: np.ndarray, y: np.ndarray, floor: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row x of `basis` (m × n), the least-squares (a, c) of y ≈ a·x + c and its RSS,
    with c ≥ `floor` when given (a row whose free c falls below is refitted with c = floor)."""
    n = y.shape[0]
    sx = basis.sum(axis=1)
    sxx = (basis * basis).sum(axis=1)
    sxy = basis @ y
    sy, syy = y.sum(), y @ y
    var_x = sxx - sx * sx / n
    cov_xy = sxy - sx * sy / n
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(var_x > 0, cov_xy / var_x, 0.0)
    c = (sy - a * sx) / n
    rss = np.maximum(syy - sy * sy / n - a * cov_xy, 0.0)
    if floor is None:
        return a, c, rss
    target = y - floor
    sxt = sxy if floor == 0 else basis @ target  # y - 0 is y, bit for bit
    with np.errstate(divide="ignore", invalid="ignore"):
        a_floor = np.where(sxx > 0, sxt / sxx, 0.0)
    rss_floor = np.maximum(target @ target - a_floor * sxt, 0.0)
    low = c < floor
    return np.where(low, a_floor, a), np.where(low, floor, c), np.where(low, rss_floor, rss)


def _robust_options(y: np.ndarray) -> dict[str, object]:
    scale = noise_scale(y)
    if scale > 0 and np.isfinite(scale):
        return {"loss": "soft_l1", "f_scale": scale}
    return {"loss": "linear"}


@dataclass(frozen=True)
class _Solution:
    """What the fits read of a solver's answer (the fields of scipy's `OptimizeResult` they use)."""

    x: np.ndarray
    success: bool
    active_mask: np.ndarray


def _robust_cost(residuals: np.ndarray, scale: float | None) -> tuple[float, np.ndarray | None]:
    """`least_squares`' cost ½·Σρ, ρ = r² (linear) or 2s²(√(1 + r²/s²) − 1) (`soft_l1`), and the
    roots √(1 + r²/s²) its derivatives are made of (None for the linear loss)."""
    if scale is None:
        return 0.5 * float(residuals @ residuals), None
    roots = np.sqrt(1.0 + (residuals / scale) ** 2)
    return float(np.sum(roots - 1.0)) * scale * scale, roots


def _gradient_and_hessian(residuals: np.ndarray, roots: np.ndarray | None, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of `_robust_cost` and its Gauss-Newton Hessian Jᵀ·diag(ρ'')·J (`rows` = Jᵀ), the
    loss's own curvature included: what scipy's robust-loss scaling of J and r amounts to."""
    if roots is None:
        return rows @ residuals, rows @ rows.T
    return rows @ (residuals / roots), (rows / roots**3) @ rows.T


def _newton_minimum(fun, jac, x0: np.ndarray, scale: float | None, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Levenberg-Marquardt on the robust cost from `x0` until an accepted step lowers the cost by
    at most `_COST_TOLERANCE` of it, or until a step leaves the interior (lower, upper): (x, which
    parameters left, below their lower bound −1 and above their upper bound 1), None when it does
    not converge."""
    x = x0.copy()
    residuals = fun(x)
    cost, roots = _robust_cost(residuals, scale)
    if not np.isfinite(cost):
        return None
    damping, growth = _INITIAL_DAMPING, 2.0
    for _ in range(_MAX_ITERATIONS):
        gradient, hessian = _gradient_and_hessian(residuals, roots, jac(x))
        diagonal = np.diag(hessian)
        while True:
            damped = hessian.copy()
            damped.flat[:: len(x) + 1] += damping * diagonal
            try:
                step = np.linalg.solve(damped, -gradient)
            except np.linalg.LinAlgError:
                step = np.full(len(x), np.nan)
            trial = x + step
            trial_residuals = fun(trial)
            trial_cost, trial_roots = _robust_cost(trial_residuals, scale)
            predicted = -(gradient @ step) - 0.5 * (step @ hessian @ step)
            if np.isfinite(trial_cost) and trial_cost < cost and predicted > 0:
                break
            if damping > _MAX_DAMPING:
                return x, np.zeros(len(x), int)  # no step lowers the cost any more: a minimum to working precision
            damping, growth = damping * growth, growth * 2.0
        left = (trial >= upper).astype(int) - (trial <= lower)
        if left.any():
            return trial, left
        gain = (cost - trial_cost) / predicted
        damping, growth = damping * max(1.0 / 3.0, 1.0 - (2.0 * gain - 1.0) ** 3), 2.0
        converged = cost - trial_cost <= _COST_TOLERANCE * cost
        x, residuals, cost, roots = trial, trial_residuals, trial_cost, trial_roots
        if converged:
            return x, left
    return None


def _floor_held_minimum(curve: _Decay, x0: np.ndarray, floor: float, scale: float | None, lower: np.ndarray, upper: np.ndarray) -> _Solution | None:
    """The minimum with the limit c held at its floor (the last parameter), from the seed's other
    parameters; None unless they stay inside their bounds and the cost's slope in c is ≥ 0 there
    (c held by its bound, the point `trf` converges to)."""
    def with_floor(q: np.ndarray) -> np.ndarray:
        return np.append(q, floor)

    found = _newton_minimum(lambda q: curve.residuals(with_floor(q)), lambda q: curve.jacobian_rows(with_floor(q))[:-1], x0[:-1], scale, lower[:-1], upper[:-1])
    if found is None or found[1].any():
        return None
    x = with_floor(found[0])
    residuals = curve.residuals(x)
    roots = _robust_cost(residuals, scale)[1]
    if float(np.sum(residuals if roots is None else residuals / roots)) < 0:
        return None
    return _Solution(x=x, success=True, active_mask=-np.eye(len(x), dtype=int)[-1])


def _least_squares(fun, jac, curve: _Decay, x0: np.ndarray, bounds, y: np.ndarray):
    """The robust least-squares fit of residuals `fun` (Jacobian `jac`), see module doc: Newton
    steps on the same residuals as `curve` while they stay inside the bounds, else scipy's `trf`
    from the same seed, which solves the bounded problem."""
    options = _robust_options(y)
    x0 = np.asarray(x0, float)
    lower, upper = (np.broadcast_to(np.asarray(b, float), x0.shape) for b in bounds)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        # `trf` counts a parameter this close to a bound as at it (scipy's `find_active_constraints`).
        margin_low, margin_high = (_ACTIVE_TOLERANCE * np.maximum(1.0, np.abs(b)) for b in (lower, upper))
        inside_low, inside_high = lower + margin_low, upper - margin_high
        scale = options.get("f_scale")
        found = _newton_minimum(curve.residuals, curve.jacobian_rows, x0, scale, inside_low, inside_high)  # type: ignore[arg-type]
        if found is not None and not found[1].any():
            return _Solution(x=found[0], success=True, active_mask=found[1])
        if found is not None and np.isfinite(lower[-1]) and found[1][-1] == -1 and not found[1][:-1].any():
            held = _floor_held_minimum(curve, x0, float(lower[-1]), scale, inside_low, inside_high)  # type: ignore[arg-type]
            if held is not None:
                return held
        return optimize.least_squares(fun, x0, jac=jac, bounds=bounds, x_scale="jac", method="trf", max_nfev=200, **options)


def _lower(floor: float | None) -> float:
    return -np.inf if floor is None else floor


def _finish(model: str, names: tuple[str, ...], result, y: np.ndarray, fitted: np.ndarray, jacobian: np.ndarray) -> CurveFit:
    n = len(y)
    rss = float(np.sum((y - fitted) ** 2))
    k = len(names) + 1
    aic, aicc = information_criteria(rss, n, k)
    se = _standard_errors(jacobian, rss, n)
    return CurveFit(
        model=model,
        params={name: float(v) for name, v in zip(names, result.x)},
        standard_errors={name: float(v) for name, v in zip(names, se)},
        n_points=n,
        n_aic_parameters=k,
        rss=rss,
        aic=aic,
        aicc=aicc,
        success=bool(result.success) and bool(np.all(np.isfinite(fitted))),
        at_bound=tuple(name for name, active in zip(names, result.active_mask) if active != 0),
        fitted=fitted,
    )


# ---------------------------------------------------------------- single-curve fits


def fit_power_law(t: np.ndarray, y: np.ndarray, floor: float | None = None) -> CurveFit:
    """L(t) = a·t^(−b) + c (t ≥ 1), c ≥ `floor` when given."""
    t, y = np.asarray(t, float), np.asarray(y, float)
    a, c, rss = _projected_fits(t[None, :] ** -_EXPONENT_GRID[:, None], y, floor)
    best = int(np.argmin(rss))
    x0 = np.array([a[best], _EXPONENT_GRID[best], c[best]])
    log_t = np.log(t)
    curve = _Decay(y, lambda b: np.exp(-b * log_t), lambda b: (log_t,))
    result = _least_squares(
        lambda p: power_law(t, *p) - y, lambda p: _power_jacobian(t, p), curve, x0, ([-np.inf, 0.0, _lower(floor)], [np.inf, _MAX_EXPONENT, np.inf]), y
    )
    return _finish("power_law", MODEL_PARAMETERS["power_law"], result, y, power_law(t, *result.x), _power_jacobian(t, result.x))


def fit_shifted_power_law(t: np.ndarray, y: np.ndarray, floor: float | None = None) -> CurveFit:
    """L(t) = a·(t + t0)^(−b) + c, t0 ≥ 0, c ≥ `floor` when given; seeded from a (b, t0) grid."""
    t, y = np.asarray(t, float), np.asarray(y, float)
    span = max(float(t[-1] - t[0]), 1.0)
    shifts = _SHIFT_GRID_FRACTIONS * span
    # Shift by shift into one buffer: each (b) grid is reduced while it is in cache, not after all
    # 24 were written, and no fresh megabyte is allocated per shift (the allocator hands freed
    # ones back to the system, and every new one costs its page faults again).
    basis = np.empty((len(_EXPONENT_GRID), len(t)))
    candidates = _candidate_shifts(t, y, floor, shifts, basis)
    per_shift = [_projected_fits(np.power(t + shifts[i], -_EXPONENT_GRID[:, None], out=basis), y, floor) for i in candidates]
    a, c, rss = (np.concatenate(columns) for columns in zip(*per_shift))
    best = int(np.argmin(rss))
    shift, exponent = divmod(best, len(_EXPONENT_GRID))
    x0 = np.array([a[best], _EXPONENT_GRID[exponent], shifts[candidates[shift]], c[best]])
    curve = _Decay(y, lambda b, t0: np.exp(-b * np.log(t + t0)), lambda b, t0: (np.log(t + t0), b / (t + t0)))
    result = _least_squares(
        lambda p: shifted_power_law(t, *p) - y,
        lambda p: _shifted_power_jacobian(t, p),
        curve,
        x0,
        ([-np.inf, 0.0, 0.0, _lower(floor)], [np.inf, _MAX_EXPONENT, _MAX_SHIFT_SPANS * span, np.inf]),
        y,
    )
    fitted = shifted_power_law(t, *result.x)
    return _finish("shifted_power_law", MODEL_PARAMETERS["shifted_power_law"], result, y, fitted, _shifted_power_jacobian(t, result.x))


def _candidate_shifts(t: np.ndarray, y: np.ndarray, floor: float | None, shifts: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """The shifts whose (b) grid can hold the least RSS of the exact (b, t0) grid: every grid
    ranked from (t + t0)^(−b) as exp(−b·ln(t + t0)) (a third of `np.power`'s CPU, equal to ~1e-14
    relative), keeping each within `_SHIFT_RANKING_TOLERANCE` of Σy² of the least, a margin far above
    what that rounding moves an RSS by. Only these are then computed exactly, so the seed is the
    exact grid's bit for bit."""
    log_shifted = np.empty_like(t)
    least_rss = np.empty(len(shifts))
    for index, shift in enumerate(shifts):
        np.log(t + shift, out=log_shifted)
        np.exp(np.multiply(-_EXPONENT_GRID[:, None], log_shifted, out=basis), out=basis)
        least_rss[index] = _projected_fits(basis, y, floor)[2].min()
    scale = max(float(y @ y), 0.0 if floor is None else float((y - floor) @ (y - floor)))
    # Not `<=`: a NaN anywhere keeps every shift, as the exact grid would be searched.
    return np.flatnonzero(~(least_rss > least_rss.min() + _SHIFT_RANKING_TOLERANCE * scale))


def fit_exponential(t: np.ndarray, y: np.ndarray, floor: float | None = None) -> CurveFit:
    """L(t) = a·e^(−t/τ) + c, c ≥ `floor` when given."""
    t, y = np.asarray(t, float), np.asarray(y, float)
    span = max(float(t[-1] - t[0]), 1.0)
    taus = np.geomspace(span / 500.0, span * 5.0, 48)
    a, c, rss = _projected_fits(np.exp(-t[None, :] / taus[:, None]), y, floor)
    best = int(np.argmin(rss))
    x0 = np.array([a[best], taus[best], c[best]])
    curve = _Decay(y, lambda tau: np.exp(-t / tau), lambda tau: (-t / tau**2,))
    result = _least_squares(
        lambda p: exponential(t, *p) - y,
        lambda p: _exponential_jacobian(t, p),
        curve,
        x0,
        ([-np.inf, span * 1e-6, _lower(floor)], [np.inf, span * 1e3, np.inf]),
        y,
    )
    return _finish("exponential", MODEL_PARAMETERS["exponential"], result, y, exponential(t, *result.x), _exponential_jacobian(t, result.x))


# ---------------------------------------------------------------- two power-law segments


def _cumulative(values: np.ndarray) -> np.ndarray:
    """Sums of values[..., :k] for k = 0..n (along the last axis)."""
    sums = np.zeros(values.shape[:-1] + (values.shape[-1] + 1,))
    np.cumsum(values, axis=-1, out=sums[..., 1:])
    return sums


def _prefix_and_suffix_sums(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums of values[..., :k] and of values[..., k:] for k = 0..n. The suffix sums are summed from
    the end: subtracting prefix sums from the total would lose the tiny tails of steep bases
    (t^-5) to rounding."""
    return _cumulative(values), _cumulative(values[..., ::-1])[..., ::-1]


def _least_segment_cost(value: np.ndarray) -> np.ndarray:
    """The smallest RSS over the basis rows (exponents) at each k; a NaN cost never wins."""
    return np.nan_to_num(np.maximum(value, 0.0), nan=np.inf).min(axis=0)


class _SegmentCosts:
    """RSS of the best fit of every prefix y[:k] and suffix y[k:] (k = 0..n), minimised over the
    rows of a basis (one per exponent), in closed form from cumulative sums, so all segments of
    all exponents cost O(m·n). The sums of the basis alone (counts, Σx, Σx²) are summed once for
    both searches of a two-power fit."""

    def __init__(self, basis: np.ndarray) -> None:
        self.basis = basis
        self.n = _prefix_and_suffix_sums(np.ones(basis.shape[-1]))
        self.sx = _prefix_and_suffix_sums(basis)
        self.sxx = _prefix_and_suffix_sums(basis * basis)

    def with_intercept(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(prefix, suffix) costs of y ≈ a·x + c per segment."""
        sxy, sy, syy = _prefix_and_suffix_sums(self.basis * y), _prefix_and_suffix_sums(y), _prefix_and_suffix_sums(y * y)

        def cost(end: int, part: slice) -> np.ndarray:
            n, sx, sxx, s_y = self.n[end][part], self.sx[end][:, part], self.sxx[end][:, part], sy[end][part]
            var_x = sxx - sx * sx / n
            cov = sxy[end][:, part] - sx * s_y / n
            return syy[end][part] - s_y * s_y / n - np.where(var_x > 1e-12 * sxx, cov * cov / var_x, 0.0)

        return _least_costs_by_block(cost, len(y) + 1)

    def through_origin(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(prefix, suffix) costs of y ≈ a·x per segment (the caller has subtracted a shared c)."""
        sxy, syy = _prefix_and_suffix_sums(self.basis * y), _prefix_and_suffix_sums(y * y)

        def cost(end: int, part: slice) -> np.ndarray:
            sxx, s_xy = self.sxx[end][:, part], sxy[end][:, part]
            return syy[end][part] - np.where(sxx > 0, s_xy * s_xy / sxx, 0.0)

        return _least_costs_by_block(cost, len(y) + 1)


def _least_costs_by_block(cost, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(prefix, suffix) least costs at k = 0..length−1 from `cost(end, part)` (end 0 prefixes, 1
    suffixes; part a slice of k), `_COST_BLOCK` values of k at a time: each block's dozen
    temporaries stay in cache instead of a dozen fresh megabytes per search, each page-faulted in."""
    least = np.empty((2, length))
    with np.errstate(divide="ignore", invalid="ignore"):
        for start in range(0, length, _COST_BLOCK):
            part = slice(start, start + _COST_BLOCK)
            for end in (0, 1):
                least[end, part] = _least_segment_cost(cost(end, part))
    return least[0], least[1]


def _min_segment(n: int) -> int:
    return max(MIN_SEGMENT_POINTS, math.ceil(MIN_SEGMENT_FRACTION * n))


def _best_break(prefix: np.ndarray, suffix: np.ndarray, n: int) -> int:
    """The DP over two segments: argmin over allowed k of prefix cost + suffix cost."""
    min_segment = _min_segment(n)
    candidates = np.arange(min_segment, n - min_segment + 1)
    return int(candidates[np.argmin(prefix[candidates] + suffix[candidates])])


def _segment_start(y: np.ndarray, basis: np.ndarray, shift: float) -> tuple[float, float]:
    """(a, b) of the best grid fit of y − shift ≈ a·t^(−b) on one segment."""
    target = y - shift
    sxx = (basis * basis).sum(axis=1)
    sxy = basis @ target
    rss = target @ target - sxy * sxy / np.where(sxx > 0, sxx, np.inf)
    best = int(np.argmin(rss))
    return float(sxy[best] / sxx[best]), float(_EXPONENT_GRID[best])


def _fit_two_power_at(t: np.ndarray, y: np.ndarray, basis: np.ndarray, k: int, c0: float, floor: float | None):
    before = np.arange(len(t)) < k
    a1, b1 = _segment_start(y[before], basis[:, before], c0)
    _, b2 = _segment_start(y[~before], basis[:, ~before], c0)
    break_t = float(t[k])
    # Both segments as one decay: u = exp(−b1·w1 − b2·w2), w1 = ln t before the break and ln T
    # after, w2 = 0 before and ln(t/T) after, i.e. t^(−b1) and T^(−b1)·(t/T)^(−b2).
    log_t, log_break = np.log(t), math.log(break_t)
    first_weights = np.where(before, log_t, log_break)
    second_weights = np.where(before, 0.0, log_t - log_break)
    curve = _Decay(y, lambda b1, b2: np.exp(-b1 * first_weights - b2 * second_weights), lambda b1, b2: (first_weights, second_weights))
    result = _least_squares(
        lambda p: two_power(t, p[0], p[1], continuous_a2(p[0], p[1], p[2], break_t), p[2], p[3], break_t) - y,
        lambda p: _two_power_jacobian(t, p, break_t),
        curve,
        np.array([a1, b1, b2, c0]),
        ([-np.inf, 0.0, 0.0, _lower(floor)], [np.inf, _MAX_EXPONENT, _MAX_EXPONENT, np.inf]),
        y,
    )
    return result, break_t


def fit_two_power(t: np.ndarray, y: np.ndarray, floor: float | None = None) -> CurveFit:
    """Two power-law segments joined at the break T (a2 = a1·T^(b2−b1), so the curve is
    continuous) and sharing the asymptote c; T found by dynamic programming (the segment costs
    of the search let each segment move freely, the final fit joins them).
    `break_step` is in the units of `t` (the caller converts it back to a step)."""
    t, y = np.asarray(t, float), np.asarray(y, float)
    n = len(y)
    basis = t[None, :] ** -_EXPONENT_GRID[:, None]
    segment_costs = _SegmentCosts(basis)
    k = _best_break(*segment_costs.with_intercept(y - float(np.mean(y))), n)
    c0 = float(fit_power_law(t[k:], y[k:], floor).params["c"]) if n - k >= 4 else float(np.min(y))
    c0 = c0 if floor is None else max(c0, floor)
    result, _ = _fit_two_power_at(t, y, basis, k, c0, floor)
    k = _best_break(*segment_costs.through_origin(y - float(result.x[3])), n)
    result, break_t = _fit_two_power_at(t, y, basis, k, float(result.x[3]), floor)
    at_edge = min(k - _min_segment(n), n - _min_segment(n) - k) < KNEE_EDGE_POINTS
    a1, b1, b2, c = result.x
    a2 = continuous_a2(a1, b1, b2, break_t)
    fitted = two_power(t, a1, b1, a2, b2, c, break_t)
    rss = float(np.sum((y - fitted) ** 2))
    k_aic = 4 + 1 + BREAK_PENALTY_PARAMETERS
    aic, aicc = information_criteria(rss, n, k_aic)
    jacobian = _two_power_jacobian(t, result.x, break_t)
    covariance = _covariance(jacobian, rss, n)
    gradient_a2 = np.array([a2 / a1 if a1 != 0 else break_t ** (b2 - b1), -a2 * math.log(break_t), a2 * math.log(break_t), 0.0])
    variances = {"a1": covariance[0, 0], "b1": covariance[1, 1], "a2": gradient_a2 @ covariance @ gradient_a2, "b2": covariance[2, 2], "c": covariance[3, 3]}
    return CurveFit(
        model="two_power",
        params={"a1": float(a1), "b1": float(b1), "a2": float(a2), "b2": float(b2), "c": float(c)},
        standard_errors={name: float(math.sqrt(max(v, 0.0))) if np.isfinite(v) else math.nan for name, v in variances.items()},
        n_points=n,
        n_aic_parameters=k_aic,
        rss=rss,
        aic=aic,
        aicc=aicc,
        success=bool(result.success) and bool(np.all(np.isfinite(fitted))),
        break_step=break_t,
        at_bound=tuple(name for name, active in zip(("a1", "b1", "b2", "c"), result.active_mask) if active != 0) + (("break_step",) if at_edge else ()),
        fitted=fitted,
    )


def fit_models(t: np.ndarray, y: np.ndarray, floor: float | None = None) -> list[CurveFit]:
    """All models fitted to one finite series (at least `MIN_POINTS` points), in `MODELS` order;
    `floor` bounds every model's limit c from below (0 for a loss)."""
    return [fit_power_law(t, y, floor), fit_shifted_power_law(t, y, floor), fit_exponential(t, y, floor), fit_two_power(t, y, floor)]


def has_knee(fits: list[CurveFit]) -> bool:
    """True when `two_power` beats every successful unbroken model by more than `KNEE_MARGIN`
    AICc units with its break inside the search range (see module doc)."""
    broken = next(f for f in fits if f.model == "two_power")
    unbroken = [f.aicc for f in fits if f.model != "two_power" and f.success]
    return broken.success and "break_step" not in broken.at_bound and (not unbroken or broken.aicc < min(unbroken) - KNEE_MARGIN)


def selected_model(fits: list[CurveFit]) -> CurveFit:
    """The selected fit (see module doc): lowest AICc, the fewest parameters within
    `SELECTION_MARGIN` of it; `two_power` only with a knee; all fits if none succeeded."""
    knee = has_knee(fits)
    pool = [f for f in fits if f.success and (f.model != "two_power" or knee)] or fits
    lowest = min(f.aicc for f in pool)
    return min((f for f in pool if f.aicc <= lowest + SELECTION_MARGIN), key=lambda f: (f.n_aic_parameters, f.aicc))


#: Parameters setting how fast a curve approaches its limit: at a bound, the limit is unidentified.
DECAY_PARAMETERS = ("b", "b2", "tau")


def asymptote(fit: CurveFit) -> tuple[float | None, float | None]:
    """(limit c, its standard error) of a fit; None when its decay rate is at a bound."""
    if any(name in fit.at_bound for name in DECAY_PARAMETERS):
        return None, None
    return fit.params["c"], fit.standard_errors["c"]


# ---------------------------------------------------------------- shape facts


def finite_prefix_length(values: np.ndarray) -> int:
    """How many leading values are finite: a series is fitted only up to its first NaN/inf."""
    bad = ~np.isfinite(np.asarray(values, float))
    return int(np.argmax(bad)) if bad.any() else len(values)


def zero_phase_ewma(values: np.ndarray, span: float) -> np.ndarray:
    """EWMA (alpha = 2/(span+1), bias-corrected start) run forwards, then backwards over the
    result, so the smoothing has no lag."""
    decay = 1.0 - 2.0 / (span + 1.0)

    def one_pass(x: np.ndarray) -> np.ndarray:
        numerator = signal.lfilter([1.0], [1.0, -decay], x)
        denominator = signal.lfilter([1.0], [1.0, -decay], np.ones_like(x))
        return numerator / denominator

    return one_pass(one_pass(np.asarray(values, float))[::-1])[::-1]


def plateau_step(steps: np.ndarray, y: np.ndarray, *, tolerance: float = PLATEAU_TOLERANCE) -> float | None:
    """First step from which the zero-phase EWMA slope stays below `tolerance` (relative, see
    module doc); None when the curve is still moving at its last point or the flat stretch is
    shorter than `PLATEAU_MIN_STRETCH` of the run."""
    steps, y = np.asarray(steps, float), np.asarray(y, float)
    if len(y) < 3:
        return None
    span = max(3.0, PLATEAU_SPAN_FRACTION * len(y))
    # Steps float64 cannot tell apart (offsets beyond 2**53) count one float spacing apart, not 0.
    step_sizes = np.maximum(np.diff(steps), np.spacing(np.abs(steps[1:])))
    slope = zero_phase_ewma(np.diff(y) / step_sizes, span)
    smoothed = zero_phase_ewma(y, span)
    change = abs(smoothed[-1] - smoothed[0])
    length = steps[-1] - steps[0]
    if change == 0 or length <= 0:
        return float(steps[0])
    relative = np.abs(slope) * length / change
    noise = smoothed_slope_noise(span) * noise_scale(y) / float(np.median(step_sizes)) * length / change
    judged = relative[: max(1, len(relative) - int(span // 2))]
    above = np.flatnonzero(judged >= max(tolerance, PLATEAU_NOISE_SIGMAS * noise))
    if len(above) == 0:
        return float(steps[0])
    start = float(steps[above[-1] + 1]) if above[-1] < len(judged) - 1 else math.inf
    return start if steps[-1] - start >= PLATEAU_MIN_STRETCH * length else None


def smoothed_slope_noise(span: float) -> float:
    """Standard deviation of the zero-phase EWMA of first differences of unit white noise, away
    from the ends: Σ(g_j − g_(j+1))² for the smoother's impulse response g."""
    half = int(math.ceil(20 * span))
    impulse = np.zeros(2 * half + 1)
    impulse[half] = 1.0
    response = zero_phase_ewma(impulse, span)
    return float(np.sqrt(np.sum(np.diff(response) ** 2)))


def spectral_slope(residuals: np.ndarray) -> float | None:
    """Slope of log PSD vs log frequency of the residuals (Welch); None below 32 points."""
    r = np.asarray(residuals, float)
    if len(r) < MIN_SPECTRAL_POINTS or not np.any(r != r[0]):
        return None
    frequencies, power = signal.welch(r - r.mean(), fs=1.0, nperseg=min(WELCH_SEGMENT, len(r) // 4))
    keep = (frequencies > 0) & (power > 0)
    if keep.sum() < 3:
        return None
    return float(np.polyfit(np.log(frequencies[keep]), np.log(power[keep]), 1)[0])

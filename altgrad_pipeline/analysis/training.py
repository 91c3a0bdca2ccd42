"""Training dynamics: one row per (run, metric, model) with the fitted learning-curve models, and
per (run, metric) the knee, plateau, residual spectrum and final value repeated on each model row
(so one table answers both "which model fits" and "when did the run settle").
`asymptote` / `asymptote_se` are the selected model's limit (the `model` of the `selected` row
says which model it comes from), `asymptote_bits` the same in bits for a loss; `at_bound` lists
each fit's parameters at a bound.

Series: every curve metric (see `analysis.curves`) of every run, cut at its first non-finite
value (`first_nonfinite_step`); series with fewer than 12 finite points are not fitted. Model
definitions, fitting, AICc selection, knee, plateau and spectral slope are described in
`analysis.fits`. `knee_epoch` / `plateau_epoch` need the steps per epoch (config or logged epoch
key, see `analysis.curves`) and are null without it. Losses and other nonnegative metrics are
fitted with every model's limit bounded below by 0. `final_value` is the mean of the last 10 finite
values of the prefix; `final_loss_bits` = final_value / ln 2 for loss metrics (null for others).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from altgrad_pipeline.analysis import fits
from altgrad_pipeline.analysis.curves import (
    curve_series,
    is_loss_metric,
    is_nonnegative_metric,
    steps_per_epoch,
    to_epochs,
)

FINAL_LAST_K = 10

PARAMETER_COLUMNS = ("a", "b", "c", "t0", "tau", "a1", "b1", "a2", "b2")

TRAINING_DYNAMICS_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "project": pl.String(),
    "metric": pl.String(),
    "model": pl.String(),
    "selected": pl.Boolean(),
    "success": pl.Boolean(),
    **{name: pl.Float64() for p in PARAMETER_COLUMNS for name in (p, f"{p}_se")},
    "break_step": pl.Float64(),
    "at_bound": pl.List(pl.String()),
    "n_points": pl.Int64(),
    "n_aic_parameters": pl.Int64(),
    "rss": pl.Float64(),
    "aic": pl.Float64(),
    "aicc": pl.Float64(),
    "first_step": pl.Int64(),
    "last_step": pl.Int64(),
    "first_nonfinite_step": pl.Int64(),
    "steps_per_epoch": pl.Float64(),
    "asymptote": pl.Float64(),
    "asymptote_se": pl.Float64(),
    "asymptote_bits": pl.Float64(),
    "knee_step": pl.Float64(),
    "knee_epoch": pl.Float64(),
    "plateau_step": pl.Float64(),
    "plateau_epoch": pl.Float64(),
    "spectral_slope": pl.Float64(),
    "final_value": pl.Float64(),
    "final_loss_bits": pl.Float64(),
}


def step_offsets(steps: np.ndarray) -> np.ndarray:
    """Steps (int64, ascending) as float offsets from the first: exact in unsigned arithmetic, so a
    series from -2**63 to 2**63-1 neither overflows nor loses its small steps to a huge first one."""
    steps = np.asarray(steps, np.int64)
    return (steps.astype(np.uint64) - steps[:1].astype(np.uint64)).astype(float)


def _series_rows(run_id: str, metric: str, steps: np.ndarray, values: np.ndarray) -> list[dict]:
    """The model rows of one series (empty when its finite prefix is too short)."""
    n_finite = fits.finite_prefix_length(values)
    first_nonfinite = int(steps[n_finite]) if n_finite < len(values) else None
    steps, values = steps[:n_finite], values[:n_finite]
    if n_finite < fits.MIN_POINTS:
        return []
    first, last = int(steps[0]), int(steps[-1])
    t = step_offsets(steps) + 1.0
    fitted_models = fits.fit_models(t, values, 0.0 if is_nonnegative_metric(metric) else None)
    best = fits.selected_model(fitted_models)
    two_power = next(f for f in fitted_models if f.model == "two_power")
    knee = float(two_power.break_step + first - 1.0) if fits.has_knee(fitted_models) else None
    plateau = fits.plateau_step(t, values)
    limit, limit_se = fits.asymptote(best)
    final = float(np.mean(values[-FINAL_LAST_K:]))
    in_bits = 1 / math.log(2) if is_loss_metric(metric) else None
    shared = {
        "run_id": run_id,
        "metric": metric,
        "first_step": first,
        "last_step": last,
        "first_nonfinite_step": first_nonfinite,
        "asymptote": limit,
        "asymptote_se": limit_se,
        "asymptote_bits": limit * in_bits if in_bits and limit is not None else None,
        "knee_step": knee,
        "plateau_step": None if plateau is None else plateau + first - 1.0,
        "spectral_slope": fits.spectral_slope(values - best.fitted),
        "final_value": final,
        "final_loss_bits": final * in_bits if in_bits else None,
    }
    rows = []
    for fit in fitted_models:
        row = dict(shared, model=fit.model, selected=fit is best, success=fit.success, n_points=fit.n_points)
        row |= {"n_aic_parameters": fit.n_aic_parameters, "rss": fit.rss, "aic": fit.aic, "aicc": fit.aicc}
        row |= fit.params | {f"{name}_se": se for name, se in fit.standard_errors.items()}
        row["break_step"] = None if fit.break_step is None else float(fit.break_step + first - 1.0)
        row["at_bound"] = list(fit.at_bound)
        rows.append(row)
    return rows


def training_dynamics(raw_runs: pl.LazyFrame | pl.DataFrame, histories: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """One row per (run_id, metric, model); columns `TRAINING_DYNAMICS_SCHEMA`."""
    runs = raw_runs.lazy()
    if "run_id" not in runs.collect_schema().names() or "key" not in histories.lazy().collect_schema().names():
        return pl.DataFrame(schema=TRAINING_DYNAMICS_SCHEMA)
    series = curve_series(histories).join(runs.select("run_id"), on="run_id", how="semi").sort("run_id", "metric", "step").collect()
    rows: list[dict] = []
    for (run_id, metric), part in series.group_by("run_id", "metric", maintain_order=True):
        rows += _series_rows(run_id, metric, part["step"].to_numpy(), part["value"].to_numpy().astype(float))
    frame = pl.DataFrame(rows, schema={k: v for k, v in TRAINING_DYNAMICS_SCHEMA.items() if k not in ("project", "steps_per_epoch", "knee_epoch", "plateau_epoch")})
    return (
        frame.lazy()
        .join(runs.select("run_id", "project"), on="run_id", how="left")
        .join(steps_per_epoch(runs, histories), on="run_id", how="left")
        .with_columns(
            to_epochs(pl.col("knee_step"), pl.col("steps_per_epoch")).alias("knee_epoch"),
            to_epochs(pl.col("plateau_step"), pl.col("steps_per_epoch")).alias("plateau_epoch"),
        )
        .select(list(TRAINING_DYNAMICS_SCHEMA))
        .cast(TRAINING_DYNAMICS_SCHEMA)
        .sort("project", "run_id", "metric", "model", nulls_last=True)
        .collect()
    )

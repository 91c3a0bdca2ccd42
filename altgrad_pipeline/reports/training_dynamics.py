"""The training-dynamics report (`training_dynamics.md`, with an `.html` copy and figures under
`reports/figures/`), in the shared report style.

Numbers come from the asset frames and are printed with `format_cell`; run names, projects and
config values are escaped; figure file names come from fixed stems and `safe_filename` of the
project. An empty input gives a sentence saying there are no runs of that kind yet.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl

from altgrad_pipeline.analysis import curves as curves_analysis
from altgrad_pipeline.analysis import fits as fits_analysis
from altgrad_pipeline.analysis import sweeps as sweeps_analysis
from altgrad_pipeline.analysis import training as training_analysis
from altgrad_pipeline.escaping import escape_markdown
from altgrad_pipeline.markdown import format_cell, markdown_table
from altgrad_pipeline.reports.figures import figure_path
from altgrad_pipeline.reports.page import (
    FIGURES_DIR,
    ReportResult,
    data_summary,
    data_table,
    figure_block,
    header,
    in_project,
    project_heading,
    projects,
    run_link,
    run_lookup,
    table,
    write_report,
)
from altgrad_pipeline.reports.style import blank_figure, report_style, save_figure

TRAINING_DYNAMICS_TITLE = "Training dynamics"
#: Panels of the fit figure of each project: one run per setting (sweep group), at most this many.
MAX_FIT_PANELS = 12
FIT_GRID_COLUMNS = 3
MODEL_COLOURS = {"power_law": "#0072B2", "shifted_power_law": "#CC79A7", "exponential": "#E69F00", "two_power": "#009E73"}
#: Residual axes span this central range of the residuals (widened by `RESIDUAL_MARGIN`): the bulk
#: of the points sets the scale, not a first point the model cannot follow.
RESIDUAL_PERCENTILES = (1.0, 99.0)
RESIDUAL_MARGIN = 1.5
#: Data axes span this central range of the finite values: a wild fit does not set it.
DATA_PERCENTILES = (0.5, 99.5)
#: For a diverged run, the ranges are read from this leading share of its finite prefix: the run-up
#: to the first NaN does not set the scale.
DIVERGED_RANGE_SHARE = 0.8
SELECTED_COLUMNS = ("model", "asymptote", "asymptote_se", "asymptote_bits", "b", "t0", "tau", "b1", "b2", "at_bound", "aicc")
SHAPE_COLUMNS = ("knee_step", "knee_epoch", "plateau_step", "plateau_epoch", "first_nonfinite_step", "spectral_slope", "final_value", "final_loss_bits")


def primary_metric(metrics: list[str]) -> str | None:
    """The metric a project's figures show: the training loss when logged, else the first."""
    for name in curves_analysis.LOSS_METRICS:
        if name in metrics:
            return name
    return sorted(metrics)[0] if metrics else None


def _series(series: pl.DataFrame, run_ids: list[str], metric: str) -> pl.DataFrame:
    return (
        series.lazy()
        .filter(pl.col("run_id").is_in(run_ids) & (pl.col("metric") == metric))
        .sort("run_id", "step")
        .collect()
    )


def _model_curve(row: dict, t: np.ndarray) -> np.ndarray:
    if row["model"] == "power_law":
        return fits_analysis.power_law(t, row["a"], row["b"], row["c"])
    if row["model"] == "shifted_power_law":
        return fits_analysis.shifted_power_law(t, row["a"], row["b"], row["t0"], row["c"])
    if row["model"] == "exponential":
        return fits_analysis.exponential(t, row["a"], row["tau"], row["c"])
    break_t = row["break_step"] - row["first_step"] + 1.0
    return fits_analysis.two_power(t, row["a1"], row["b1"], row["a2"], row["b2"], row["c"], break_t)


def central_range(values: np.ndarray, percentiles: tuple[float, float], margin: float) -> tuple[float, float] | None:
    """An axis range around the central `percentiles` of the finite values, widened by `margin`
    of its width on each side; None without finite values."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    low, high = np.percentile(finite, percentiles)
    pad = margin * (float(high - low) or abs(float(high)) or 1.0)
    return float(low) - pad, float(high) + pad


def chosen_fit_runs(dynamics: pl.DataFrame, raw_runs: pl.DataFrame, metric: str) -> dict[str, str]:
    """run_id -> panel title for the fit figure: one run per setting (the sweep group, labelled
    with the derived format and optimizer), the lowest seed, then name; at most `MAX_FIT_PANELS`."""
    fitted = dynamics.filter(pl.col("metric") == metric).select("run_id").unique()
    if raw_runs.is_empty() or "project" not in raw_runs.columns:
        return {r: r for r in sorted(fitted["run_id"].to_list())[:MAX_FIT_PANELS]}
    groups = sweeps_analysis.sweep_groups(raw_runs).join(fitted, on="run_id").join(raw_runs.select("run_id", "name"), on="run_id", how="left")
    chosen = groups.sort("group_label", "seed", "name", nulls_last=True).unique("group_key", keep="first", maintain_order=True).head(MAX_FIT_PANELS)
    return {r: f"{label}\n{name or r}" for r, label, name in chosen.select("run_id", "group_label", "name").iter_rows()}


def fit_figure(dynamics: pl.DataFrame, series: pl.DataFrame, path: Path, *, metric: str, chosen: dict[str, str]) -> Path | None:
    """A grid of the `chosen` runs (run_id -> title) of one metric (`series`: the curve series,
    `curves.curve_series`): data and the fitted models
    (selected one thick), knee, plateau and divergence marked, and below each the residuals of the
    selected model on a scale set by their bulk (`RESIDUAL_PERCENTILES`)."""
    rows = dynamics.filter((pl.col("metric") == metric) & pl.col("run_id").is_in(list(chosen)))
    run_ids = [r for r in chosen if r in set(rows["run_id"])]
    if not run_ids:
        return None
    data = _series(series, run_ids, metric)
    n_columns = min(FIT_GRID_COLUMNS, len(run_ids))
    n_rows = -(-len(run_ids) // n_columns)
    with report_style():
        figure = blank_figure((3.9 * n_columns, 4.1 * n_rows + 0.6))
        grid = figure.add_gridspec(2 * n_rows, n_columns, height_ratios=[2.6, 1.0] * n_rows)
        handles: dict[str, object] = {}
        for index, run_id in enumerate(run_ids):
            top = figure.add_subplot(grid[2 * (index // n_columns), index % n_columns])
            bottom = figure.add_subplot(grid[2 * (index // n_columns) + 1, index % n_columns], sharex=top)
            run_rows = rows.filter(pl.col("run_id") == run_id).to_dicts()
            first = run_rows[0]
            points = data.filter((pl.col("run_id") == run_id) & (pl.col("step") <= first["last_step"]) & (pl.col("step") >= first["first_step"]))
            steps = points["step"].to_numpy().astype(float)
            values = points["value"].to_numpy().astype(float)
            t = steps - first["first_step"] + 1.0
            bulk = slice(0, max(1, int(DIVERGED_RANGE_SHARE * len(values)))) if first["first_nonfinite_step"] is not None else slice(None)
            handles["data"] = top.plot(steps, values, color="#7F7F7F", linewidth=0.8)[0]
            for row in run_rows:
                line = top.plot(steps, _model_curve(row, t), color=MODEL_COLOURS[row["model"]], linewidth=2.4 if row["selected"] else 1.0)[0]
                handles.setdefault(row["model"], line)
                if row["selected"]:
                    residuals = values - _model_curve(row, t)
                    bottom.plot(steps, residuals, color=MODEL_COLOURS[row["model"]], linewidth=0.8)
                    residual_range = central_range(residuals[bulk], RESIDUAL_PERCENTILES, RESIDUAL_MARGIN)
                    if residual_range is not None:
                        bottom.set_ylim(*residual_range)
                    limit = "no asymptote: decay at its bound" if first["asymptote"] is None else f"asymptote {format_cell(first['asymptote'])}"
                    # A diverged run's loss climbs into the top right, where its divergence marker stands.
                    x, y, ha, va = (0.02, 0.04, "left", "bottom") if first["first_nonfinite_step"] is not None else (0.98, 0.95, "right", "top")
                    top.text(x, y, f"selected: {row['model']}\n{limit}", transform=top.transAxes, ha=ha, va=va, fontsize=8)
            for marker, style, colour, name in (("knee_step", "--", "#000000", "knee"), ("plateau_step", ":", "#000000", "plateau"), ("first_nonfinite_step", "-", "#D55E00", "diverged (first NaN/inf)")):
                if first[marker] is not None:
                    handles[name] = top.axvline(first[marker], color=colour, linestyle=style, linewidth=1.0)
            data_range = central_range(values[bulk], DATA_PERCENTILES, 0.1)
            if data_range is not None:
                top.set_ylim(*data_range)  # neither a wild non-selected fit nor a divergence spike sets the scale
            bottom.axhline(0.0, color="#000000", linewidth=0.8)
            title = chosen[run_id] + ("\n(diverged, fitted up to the first NaN)" if first["first_nonfinite_step"] is not None else "")
            top.set_title(title, fontsize=10)
            top.tick_params(labelbottom=False)
            if index % n_columns == 0:
                top.set_ylabel(metric)
                bottom.set_ylabel("residual")
            bottom.set_xlabel("training step")
        figure.legend(list(handles.values()), list(handles), loc="outside upper center", ncols=min(len(handles), 4), fontsize=9)
        return save_figure(figure, path)


def write_training_dynamics_report(
    training_dynamics: pl.DataFrame,
    raw_runs: pl.DataFrame,
    learning_curves: pl.LazyFrame | pl.DataFrame,
    reports_dir: Path,
    *,
    built_at: dt.datetime | None = None,
) -> ReportResult:
    """`training_dynamics.md`: per project the selected model of every (run, metric) with its
    parameters, knee, plateau and residual spectrum, and a figure of fits over the data."""
    reports_dir = Path(reports_dir)
    lookup = run_lookup(raw_runs)
    lines = header(TRAINING_DYNAMICS_TITLE, "Which learning-curve model fits each run, where does burn-in end and when does it plateau?", built_at)
    figures: list[Path] = []
    if training_dynamics.is_empty():
        lines += [f"No run has logged a learning curve with at least {fits_analysis.MIN_POINTS} finite points yet, so there is nothing to fit.", ""]
    # Read once (from the `learning_curves` table) for every project's figure and quarter-epoch table.
    series = curves_analysis.curve_series(learning_curves).collect() if not training_dynamics.is_empty() else None
    for project in projects(training_dynamics) if not training_dynamics.is_empty() else []:
        frame = in_project(training_dynamics, project)
        selected = frame.filter(pl.col("selected")).sort("metric", "run_id")
        counts = selected.group_by("metric", "model").len("n_series").sort("metric", "model")
        n_knees = selected.filter(pl.col("knee_step").is_not_null()).height
        lines += [
            project_heading(project), "", (
                f"{format_cell(selected.height)} series fitted; {format_cell(n_knees)} with a knee, "
                f"{format_cell(selected.filter(pl.col('plateau_step').is_not_null()).height)} with a plateau. "
                f"Selected models (AICc, the simpler within {format_cell(fits_analysis.SELECTION_MARGIN)}):"
            ),
            "", data_table(counts, reports_dir, "training_dynamics", "selected_models", project=project), "",
        ]
        headers = ["run", "metric", *SELECTED_COLUMNS, *SHAPE_COLUMNS]
        rows = [
            [run_link(lookup.get(r["run_id"], {"run_id": r["run_id"]}), reports_dir), escape_markdown(r["metric"])]
            + [format_cell(r[c]) if c != "knee_step" or r[c] is not None else "no knee" for c in (*SELECTED_COLUMNS, *SHAPE_COLUMNS)]
            for r in selected.iter_rows(named=True)
        ]
        lines += [
            "### Selected fits", "",
            (
                "`asymptote` is the limit c of the model in the `model` column (its standard error beside it; in bits for a loss); "
                "`at_bound` lists parameters held by a bound (c = 0 for a loss), whose values the constraint, not the data, set."
            ), "",
            data_table(selected.select("run_id", "metric", *SELECTED_COLUMNS, *SHAPE_COLUMNS), reports_dir, "training_dynamics", "selected_fits",
                       project=project, markdown=table(headers, rows)), "",
        ]
        metric = primary_metric(frame["metric"].unique().to_list())
        chosen = chosen_fit_runs(frame, raw_runs, metric)
        figure = fit_figure(frame, series, figure_path(reports_dir / FIGURES_DIR, "dynamics_fits", project=project or "all"), metric=metric, chosen=chosen)
        lines += [f"### Fits of {escape_markdown(metric)}", ""]
        if figure is None:
            lines += ["No fitted series to draw.", ""]
        else:
            figures.append(figure)
            lines += [
                figure_block(figure, reports_dir, f"Fits of {metric}"),
                "",
                f"One run per setting (lowest seed). Grey: logged values (finite prefix); thick line: the selected model; dashed: knee; "
                f"dotted: plateau; orange: first NaN/inf (diverged). Below each: data minus the selected model, on a scale set by the "
                f"{RESIDUAL_PERCENTILES[0]:g}–{RESIDUAL_PERCENTILES[1]:g}th percentiles of the residuals. At most {MAX_FIT_PANELS} settings are drawn; the table lists all runs.",
                "",
            ]
        per_epoch = curves_analysis.quarter_epoch_aggregates(
            series.filter(pl.col("run_id").is_in(frame["run_id"].unique().to_list())),
            frame.select("run_id", "steps_per_epoch").unique("run_id"),
        )
        if not per_epoch.is_empty():
            lines += ["### Per quarter epoch", "", "Finite values of each series aggregated per quarter epoch (epoch = start of the quarter).", "", data_table(per_epoch, reports_dir, "training_dynamics", "per_quarter_epoch", project=project, markdown=markdown_table(per_epoch, max_rows=200)), ""]
    lines += ["## Method", "", (training_analysis.__doc__ or "").strip(), "", (fits_analysis.__doc__ or "").strip(), "", (curves_analysis.__doc__ or "").strip(), ""]
    lines += ["## Data", "", data_summary(raw_runs, reports_dir, "training_dynamics"), ""]
    return write_report(
        reports_dir, "training_dynamics", TRAINING_DYNAMICS_TITLE, "Learning-curve fits per run and metric, knee, plateau and residual spectrum.",
        "\n".join(lines), figures, figures[0] if figures else None,
    )

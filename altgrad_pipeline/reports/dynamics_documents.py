"""The training-dynamics and sweep-summary reports (`training_dynamics.md`, `sweep_summary.md`,
each with an `.html` copy and figures under `reports/figures/`), in the shared report style.

Numbers come from the asset frames and are printed with `format_cell`; run names, projects and
config values are escaped; figure file names come from fixed stems and `safe_filename` of the
project. An empty input gives a sentence saying there are no runs of that kind yet.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl

from altgrad_pipeline.dynamics import curves as curves_analysis
from altgrad_pipeline.dynamics import fits as fits_analysis
from altgrad_pipeline.dynamics import sweeps as sweeps_analysis
from altgrad_pipeline.dynamics import training as training_analysis
from altgrad_pipeline.escaping import escape_markdown
from altgrad_pipeline.markdown import format_cell, markdown_table
from altgrad_pipeline.reports.documents import (
    FIGURES_DIR,
    ReportResult,
    _header,
    _image,
    _in_project,
    _project_heading,
    _projects,
    _run_lookup,
    _write,
    data_summary,
    run_link,
    table,
)
from altgrad_pipeline.reports.figures import figure_path
from altgrad_pipeline.reports.style import FALLBACK_COLOURS, FORMAT_COLOURS, new_figure, report_style, save_figure

TRAINING_DYNAMICS_TITLE = "Training dynamics"
SWEEP_SUMMARY_TITLE = "Sweep summary"
#: Series drawn in the fit figure of each project (the first runs of its primary metric).
MAX_FIT_PANELS = 6
MODEL_COLOURS = {"power_law": "#0072B2", "exponential": "#E69F00", "two_power": "#009E73"}
GROUP_COLOURS = tuple(c for c in FORMAT_COLOURS.values() if c != "#000000") + FALLBACK_COLOURS
SELECTED_COLUMNS = ("model", "a", "b", "c", "tau", "b1", "b2", "break_step", "aicc")
SHAPE_COLUMNS = ("knee_step", "knee_epoch", "plateau_step", "plateau_epoch", "spectral_slope", "final_value", "final_loss_bits")
SWEEP_COLUMNS = (
    "group_label", "metric", "n_runs", "n_seeds", "n_complete", "completeness", "n_diverged", "n_values",
    "mean", "median", "iqm", "ci_low", "ci_high", "iqm_ci_low", "iqm_ci_high", "ci_method", "ci_note",
)


def _primary_metric(metrics: list[str]) -> str | None:
    """The metric a project's figures show: the training loss when logged, else the first."""
    for name in curves_analysis.LOSS_METRICS:
        if name in metrics:
            return name
    return sorted(metrics)[0] if metrics else None


def _series(histories: pl.LazyFrame | pl.DataFrame, run_ids: list[str], metric: str) -> pl.DataFrame:
    return (
        curves_analysis.curve_series(histories)
        .filter(pl.col("run_id").is_in(run_ids) & (pl.col("metric") == metric))
        .sort("run_id", "step")
        .collect()
    )


def _model_curve(row: dict, t: np.ndarray) -> np.ndarray:
    if row["model"] == "power_law":
        return fits_analysis.power_law(t, row["a"], row["b"], row["c"])
    if row["model"] == "exponential":
        return fits_analysis.exponential(t, row["a"], row["tau"], row["c"])
    break_t = row["break_step"] - row["first_step"] + 1.0
    return fits_analysis.two_power(t, row["a1"], row["b1"], row["a2"], row["b2"], row["c"], break_t)


def fit_figure(dynamics: pl.DataFrame, histories: pl.LazyFrame | pl.DataFrame, path: Path, *, metric: str, labels: dict[str, str]) -> Path | None:
    """Up to `MAX_FIT_PANELS` runs of one metric: data and the three fitted models (selected one
    thick), knee and plateau marked, and below each the residuals of the selected model."""
    rows = dynamics.filter(pl.col("metric") == metric).sort("run_id")
    run_ids = rows["run_id"].unique(maintain_order=True).to_list()[:MAX_FIT_PANELS]
    if not run_ids:
        return None
    data = _series(histories, run_ids, metric)
    with report_style():
        figure, axes = new_figure(2, len(run_ids), panel_size=(4.2, 2.6))
        axes = np.asarray(axes).reshape(2, len(run_ids))
        for column, run_id in enumerate(run_ids):
            run_rows = rows.filter(pl.col("run_id") == run_id).to_dicts()
            first = run_rows[0]
            points = data.filter((pl.col("run_id") == run_id) & (pl.col("step") <= first["last_step"]) & (pl.col("step") >= first["first_step"]))
            steps = points["step"].to_numpy().astype(float)
            values = points["value"].to_numpy().astype(float)
            t = steps - first["first_step"] + 1.0
            top, bottom = axes[0, column], axes[1, column]
            top.plot(steps, values, color="#7F7F7F", linewidth=0.8, label="data")
            for row in run_rows:
                top.plot(steps, _model_curve(row, t), color=MODEL_COLOURS[row["model"]], linewidth=2.4 if row["selected"] else 1.0,
                         label=f"{row['model']}{' (selected)' if row['selected'] else ''}")
                if row["selected"]:
                    bottom.plot(steps, values - _model_curve(row, t), color=MODEL_COLOURS[row["model"]], linewidth=0.8)
            for marker, style in (("knee_step", "--"), ("plateau_step", ":")):
                if first[marker] is not None:
                    top.axvline(first[marker], color="#000000", linestyle=style, linewidth=1.0, label=marker.replace("_step", ""))
            if len(values):
                margin = 0.1 * (float(values.max() - values.min()) or 1.0)
                top.set_ylim(float(values.min()) - margin, float(values.max()) + margin)  # a wild non-selected fit must not hide the data
            bottom.axhline(0.0, color="#000000", linewidth=0.8)
            top.set_title(labels.get(run_id, run_id)[:40])
            top.set_ylabel(f"{metric}")
            bottom.set_xlabel("training step")
            bottom.set_ylabel("residual (data − selected)")
            if column == 0:
                top.legend(loc="best", fontsize=7)
        return save_figure(figure, path)


def write_training_dynamics_report(
    training_dynamics: pl.DataFrame,
    raw_runs: pl.DataFrame,
    run_histories: pl.LazyFrame | pl.DataFrame,
    reports_dir: Path,
    *,
    built_at: dt.datetime | None = None,
) -> ReportResult:
    """`training_dynamics.md`: per project the selected model of every (run, metric) with its
    parameters, knee, plateau and residual spectrum, and a figure of fits over the data."""
    reports_dir = Path(reports_dir)
    lookup = _run_lookup(raw_runs)
    labels = {r: str(v.get("name") or r) for r, v in lookup.items()}
    lines = _header(TRAINING_DYNAMICS_TITLE, "Which learning-curve model fits each run, where does burn-in end and when does it plateau?", built_at)
    figures: list[Path] = []
    if training_dynamics.is_empty():
        lines += [f"No run has logged a learning curve with at least {fits_analysis.MIN_POINTS} finite points yet, so there is nothing to fit.", ""]
    for project in _projects(training_dynamics) if not training_dynamics.is_empty() else []:
        frame = _in_project(training_dynamics, project)
        selected = frame.filter(pl.col("selected")).sort("metric", "run_id")
        counts = selected.group_by("metric", "model").len("n_series").sort("metric", "model")
        lines += [_project_heading(project), "", f"{format_cell(selected.height)} series fitted. Selected models (lowest AICc):", "", markdown_table(counts), ""]
        headers = ["run", "metric", *SELECTED_COLUMNS, *SHAPE_COLUMNS]
        rows = [
            [run_link(lookup.get(r["run_id"], {"run_id": r["run_id"]}), reports_dir), escape_markdown(r["metric"])]
            + [format_cell(r[c]) for c in (*SELECTED_COLUMNS, *SHAPE_COLUMNS)]
            for r in selected.iter_rows(named=True)
        ]
        lines += ["### Selected fits", "", table(headers, rows), ""]
        metric = _primary_metric(frame["metric"].unique().to_list())
        figure = fit_figure(frame, run_histories, figure_path(reports_dir / FIGURES_DIR, "dynamics_fits", project=project or "all"), metric=metric, labels=labels)
        lines += [f"### Fits of {escape_markdown(metric)}", ""]
        if figure is None:
            lines += ["No fitted series to draw.", ""]
        else:
            figures.append(figure)
            lines += [
                _image(figure, reports_dir, f"Fits of {metric}"),
                "",
                f"Grey: logged values (finite prefix); thick line: the selected model; dashed: knee; dotted: plateau. "
                f"Bottom row: data minus the selected model. At most {MAX_FIT_PANELS} runs are drawn; the table lists all.",
                "",
            ]
    lines += ["## Method", "", (training_analysis.__doc__ or "").strip(), "", (fits_analysis.__doc__ or "").strip(), "", (curves_analysis.__doc__ or "").strip(), ""]
    lines += ["## Data", "", data_summary(raw_runs), ""]
    return _write(
        reports_dir, "training_dynamics", TRAINING_DYNAMICS_TITLE, "Learning-curve fits per run and metric, knee, plateau and residual spectrum.",
        "\n".join(lines), figures, figures[0] if figures else None,
    )


def grouped_curves_figure(summary: pl.DataFrame, labels: dict[str, str], path: Path, *, metric: str) -> Path | None:
    """Mean curve per group with its Student-t band (`curves.grouped_curves`)."""
    if summary.is_empty():
        return None
    with report_style():
        figure, axes = new_figure()
        for index, group in enumerate(summary["group"].unique(maintain_order=True).to_list()):
            curve = summary.filter(pl.col("group") == group)
            colour = GROUP_COLOURS[index % len(GROUP_COLOURS)]
            axes.plot(curve["step"], curve["mean"], color=colour, label=f"{labels.get(group, group)[:60]} (n ≤ {int(curve['n_runs'].max())})")
            band = curve.filter(pl.col("ci_low").is_not_null())
            if not band.is_empty():
                axes.fill_between(band["step"], band["ci_low"], band["ci_high"], color=colour, alpha=0.18, linewidth=0)
        axes.set_xlabel("training step")
        axes.set_ylabel(metric)
        axes.set_title(f"{metric} per group, mean and 95% t band over seeds")
        axes.legend(loc="best", fontsize=7)
        return save_figure(figure, path)


def write_sweep_summary_report(
    sweep_summary: pl.DataFrame,
    raw_runs: pl.DataFrame,
    run_histories: pl.LazyFrame | pl.DataFrame,
    reports_dir: Path,
    *,
    built_at: dt.datetime | None = None,
) -> ReportResult:
    """`sweep_summary.md`: per project the varying hyperparameters, the table of groups per
    metric with n, completeness, mean/median/IQM and CIs, and grouped curves with CI bands."""
    reports_dir = Path(reports_dir)
    lines = _header(SWEEP_SUMMARY_TITLE, "Which hyperparameters vary, and how does each setting do over seeds?", built_at)
    figures: list[Path] = []
    if sweep_summary.is_empty():
        lines += ["No runs with a learning-curve metric yet, so there is no sweep to summarise.", ""]
    groups = sweeps_analysis.sweep_groups(raw_runs) if not sweep_summary.is_empty() else None
    for project in _projects(sweep_summary) if not sweep_summary.is_empty() else []:
        frame = _in_project(sweep_summary, project)
        keys = list(frame["varying_keys"][0])
        lines += [_project_heading(project), ""]
        if keys:
            lines += ["Varying hyperparameters: " + ", ".join(f"`{escape_markdown(k)}`" for k in keys) + ".", ""]
        else:
            lines += ["No hyperparameter varies between this project's runs (noise keys aside), so all runs form one group.", ""]
        lines += [markdown_table(frame.select(SWEEP_COLUMNS)), ""]
        metric = _primary_metric(frame["metric"].unique().to_list())
        project_groups = _in_project(groups, project).select("run_id", pl.col("group_key").alias("group"))
        series = curves_analysis.curve_series(run_histories).filter(pl.col("metric") == metric)
        summary = curves_analysis.grouped_curves(series, project_groups)
        labels = dict(frame.select("group_key", "group_label").unique().iter_rows())
        figure = grouped_curves_figure(summary, labels, figure_path(reports_dir / FIGURES_DIR, "sweep_curves", project=project or "all"), metric=metric)
        lines += [f"### {escape_markdown(metric)} per group", ""]
        if figure is None:
            lines += ["No finite values of this metric to draw.", ""]
        else:
            figures.append(figure)
            lines += [_image(figure, reports_dir, f"{metric} per group"), "", "Mean over the group's runs at each logged step, shaded: 95% Student-t interval (none where one run is left).", ""]
    lines += ["## Method", "", (sweeps_analysis.__doc__ or "").strip(), "", (curves_analysis.__doc__ or "").strip(), ""]
    lines += ["## Data", "", data_summary(raw_runs), ""]
    return _write(
        reports_dir, "sweep_summary", SWEEP_SUMMARY_TITLE, "Varying hyperparameters per project; final metrics per setting with bootstrap CIs.",
        "\n".join(lines), figures, figures[0] if figures else None,
    )

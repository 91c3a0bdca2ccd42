"""The sweep-summary report (`sweep_summary.md`, with an `.html` copy and figures under
`reports/figures/`): varying hyperparameters per project, final metrics per setting with n,
completeness and bootstrap CIs, grouped curves with CI bands (conventions: `reports.page`)."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import polars as pl

from altgrad_pipeline.analysis import curves as curves_analysis
from altgrad_pipeline.analysis import sweeps as sweeps_analysis
from altgrad_pipeline.escaping import escape_markdown, markdown_code
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
    write_report,
)
from altgrad_pipeline.reports.style import FALLBACK_COLOURS, FORMAT_COLOURS, new_figure, report_style, save_figure
from altgrad_pipeline.reports.training_dynamics import central_range, primary_metric

SWEEP_SUMMARY_TITLE = "Sweep summary"
GROUP_COLOURS = tuple(c for c in FORMAT_COLOURS.values() if c != "#000000") + FALLBACK_COLOURS
LEGEND_WRAP = 40
SWEEP_COLUMNS = (
    "group_label", "metric", "n_runs", "n_seeds", "n_logged", "n_complete", "expected_steps", "completeness", "n_diverged", "n_values",
    "mean", "median", "iqm", "ci_low", "ci_high", "iqm_ci_low", "iqm_ci_high", "ci_method", "ci_note",
)


def grouped_curves_figure(summary: pl.DataFrame, labels: dict[str, str], path: Path, *, metric: str, diverged: frozenset[str] = frozenset()) -> Path | None:
    """Mean curve per group with its Student-t band (`curves.grouped_curves`). Groups with a
    diverged run (`diverged`) are dashed and do not set the y range; legend entries wrap, beside
    the axes, never cut."""
    if summary.is_empty():
        return None
    with report_style():
        figure, axes = new_figure(panel_size=(10.0, 5.0))
        for index, group in enumerate(summary["group"].unique(maintain_order=True).to_list()):
            curve = summary.filter(pl.col("group") == group)
            colour = GROUP_COLOURS[index % len(GROUP_COLOURS)]
            label = f"{labels.get(group, group)} · n≤{int(curve['n_runs'].max())}{' · diverged' if group in diverged else ''}"
            axes.plot(curve["step"], curve["mean"], color=colour, linestyle="--" if group in diverged else "-", label="\n".join(textwrap.wrap(label, LEGEND_WRAP)))
            band = curve.filter(pl.col("ci_low").is_not_null())
            if not band.is_empty():
                axes.fill_between(band["step"], band["ci_low"], band["ci_high"], color=colour, alpha=0.18, linewidth=0)
        steady = summary.filter(~pl.col("group").is_in(list(diverged)))
        y_range = central_range((steady if not steady.is_empty() else summary)["mean"].to_numpy().astype(float), (0.0, 100.0), 0.05)
        if y_range is not None:
            axes.set_ylim(*y_range)
        axes.set_xlabel("training step")
        axes.set_ylabel(metric)
        axes.set_title(f"{metric} per group, mean and 95% t band over seeds")
        figure.legend(loc="outside right upper", fontsize=9)
        return save_figure(figure, path)


def write_sweep_summary_report(
    sweep_summary: pl.DataFrame,
    raw_runs: pl.DataFrame,
    learning_curves: pl.LazyFrame | pl.DataFrame,
    reports_dir: Path,
    *,
    built_at: dt.datetime | None = None,
) -> ReportResult:
    """`sweep_summary.md`: per project the varying hyperparameters, the table of groups per
    metric with n, completeness, mean/median/IQM and CIs, and grouped curves with CI bands."""
    reports_dir = Path(reports_dir)
    lines = header(SWEEP_SUMMARY_TITLE, "Which hyperparameters vary, and how does each setting do over seeds?", built_at)
    figures: list[Path] = []
    if sweep_summary.is_empty():
        lines += ["No runs with a learning-curve metric yet, so there is no sweep to summarise.", ""]
    groups = sweeps_analysis.sweep_groups(raw_runs) if not sweep_summary.is_empty() else None
    # Read once (from the `learning_curves` table) for every project.
    curves = curves_analysis.curve_series(learning_curves).collect() if not sweep_summary.is_empty() else None
    for project in projects(sweep_summary) if not sweep_summary.is_empty() else []:
        frame = in_project(sweep_summary, project)
        keys = list(frame["varying_keys"][0])
        lines += [project_heading(project), ""]
        if keys:
            lines += ["Varying hyperparameters: " + ", ".join(markdown_code(k) for k in keys) + ".", ""]
        else:
            lines += ["No hyperparameter varies between this project's runs (noise keys aside), so all runs form one group.", ""]
        lines += [data_table(frame.select(SWEEP_COLUMNS), reports_dir, "sweep_summary", "groups", project=project), ""]
        metric = primary_metric(frame["metric"].unique().to_list())
        project_groups = in_project(groups, project).select("run_id", pl.col("group_key").alias("group"))
        series = curves.filter(pl.col("metric") == metric)
        summary = curves_analysis.grouped_curves(series, project_groups)
        labels = dict(frame.select("group_key", "group_label").unique().iter_rows())
        diverged = frozenset(frame.filter((pl.col("metric") == metric) & (pl.col("n_diverged") > 0))["group_key"].to_list())
        figure = grouped_curves_figure(summary, labels, figure_path(reports_dir / FIGURES_DIR, "sweep_curves", project=project or "all"), metric=metric, diverged=diverged)
        lines += [f"### {escape_markdown(metric)} per group", ""]
        if figure is None:
            lines += ["No finite values of this metric to draw.", ""]
        else:
            figures.append(figure)
            lines += [
                figure_block(figure, reports_dir, f"{metric} per group"), "",
                (
                    "Mean over the group's runs at each logged step, shaded: 95% Student-t interval (none where one run is left). "
                    "Dashed: a group with a diverged run; the y range is set by the others."
                ), "",
            ]
    lines += ["## Method", "", (sweeps_analysis.__doc__ or "").strip(), "", (curves_analysis.__doc__ or "").strip(), ""]
    lines += ["## Data", "", data_summary(raw_runs, reports_dir, "sweep_summary"), ""]
    return write_report(
        reports_dir, "sweep_summary", SWEEP_SUMMARY_TITLE, "Varying hyperparameters per project; final metrics per setting with bootstrap CIs.",
        "\n".join(lines), figures, figures[0] if figures else None,
    )

"""ANAL-01 report `format_comparison.md`: the sweet spot overall and per layer type, ranking tables
with n and completion rates, improvement over the baseline, loss curves with CI bands and the
format × layer-type heatmaps (conventions: `reports.page`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from altgrad_pipeline.analysis import rankings as rankings_analysis
from altgrad_pipeline.analysis.report_series import CURVE_BAND_METHOD, loss_curve_summary
from altgrad_pipeline.escaping import escape_markdown
from altgrad_pipeline.markdown import format_cell, markdown_table
from altgrad_pipeline.reports.figures import (
    figure_path,
    loss_curves_figure,
    score_heatmap_figure,
)
from altgrad_pipeline.reports.page import (
    FIGURES_DIR,
    ReportResult,
    data_summary,
    format_order,
    header,
    image,
    in_project,
    project_heading,
    projects,
    write_report,
)
from altgrad_pipeline.study import BASELINE_FORMAT, NO_FORMAT, STANDARD_OPTIMIZER

#: Columns of the overall ranking table; `n_completed` sits beside `final_loss`, the mean over
#: exactly those runs.
OVERALL_RANKING_COLUMNS = (
    "fp8_format", "rank", "is_sweet_spot", "final_loss", "n_completed", "n_runs", "completion_rate",
    "improvement_over_baseline", "baseline_final_loss", "common_step", "last_k",
)
#: Columns of each per-layer-type ranking table (the health criteria are means over n_completed runs).
LAYER_RANKING_COLUMNS = (
    "fp8_format", "rank", "is_sweet_spot", "health_score", "grad_snr", "grad_snr_rank", "sparsity",
    "sparsity_rank", "norm_cov", "norm_cov_rank", "n_completed", "n_runs", "completion_rate",
)
FORMAT_COMPARISON_TITLE = "FP8 format comparison (ANAL-01)"


def _sweet_spot_lines(ranking: pl.DataFrame) -> list[str]:
    overall = ranking.filter(pl.col("layer_type") == "all")
    candidates = overall.filter(pl.col("fp8_format") != BASELINE_FORMAT)
    lines: list[str] = []
    spots = overall.filter(pl.col("is_sweet_spot"))
    if candidates.is_empty():
        lines.append("- Overall: no FP8 runs in this project yet, so there is no sweet spot.")
    elif spots.is_empty():
        lines.append(f"- Overall: none of the {format_cell(candidates.height)} FP8 formats has a completed run yet, so there is no sweet spot.")
    for row in spots.iter_rows(named=True):
        lines.append(
            f"- Overall: **{escape_markdown(row['fp8_format'])}**, final loss {format_cell(row['final_loss'])} "
            f"(mean over n = {format_cell(row['n_completed'])} completed of {format_cell(row['n_runs'])} runs, "
            f"measured at step {format_cell(row['common_step'])}), improvement over {BASELINE_FORMAT} "
            f"{format_cell(row['improvement_over_baseline'])} ({BASELINE_FORMAT} final loss {format_cell(row['baseline_final_loss'])})."
        )
    for layer_type in sorted(set(ranking["layer_type"]) - {"all"}):
        layer = ranking.filter((pl.col("layer_type") == layer_type) & pl.col("is_sweet_spot"))
        if layer.is_empty():
            lines.append(f"- {escape_markdown(layer_type)}: no FP8 format with a completed run has a health score yet.")
            continue
        best = ", ".join(
            f"**{escape_markdown(r['fp8_format'])}** (health score {format_cell(r['health_score'])}, n = {format_cell(r['n_completed'])} completed runs)"
            for r in layer.iter_rows(named=True)
        )
        lines.append(f"- {escape_markdown(layer_type)}: {best}")
    return lines


def write_format_comparison_report(
    format_rankings: pl.DataFrame,
    raw_runs: pl.DataFrame,
    run_histories: pl.DataFrame | pl.LazyFrame,
    reports_dir: Path,
    *,
    built_at: dt.datetime | None = None,
) -> ReportResult:
    """`format_comparison.md`: the sweet spot overall and per layer type, the ranking tables,
    loss curves per format and a format × layer-type heatmap of the health score, per project."""
    reports_dir = Path(reports_dir)
    figures_dir = reports_dir / FIGURES_DIR
    # Rankings are per optimizer now; until this report renders both, it shows the study's standard optimizer.
    format_rankings = format_rankings.filter(pl.col("optimizer") == STANDARD_OPTIMIZER)
    lines = header(FORMAT_COMPARISON_TITLE, "Which FP8 format is the sweet spot, overall and per layer type?", built_at)
    figures: list[Path] = []
    runs = raw_runs.filter(pl.col("fp8_format") != NO_FORMAT)
    if format_rankings.is_empty():
        lines += ["No runs with a known format have been ranked yet, so there is no comparison to show.", ""]
    for project in projects(format_rankings) if not format_rankings.is_empty() else []:
        ranking = in_project(format_rankings, project)
        lines += [project_heading(project), "", "### Sweet spot", "", *_sweet_spot_lines(ranking), ""]
        overall = format_order(ranking.filter(pl.col("layer_type") == "all"))
        lines += [
            "### Overall ranking (by final loss)",
            "",
            "`final_loss` is the mean over the `n_completed` runs beside it; failed runs count only in `completion_rate`.",
            "",
            markdown_table(overall.select(OVERALL_RANKING_COLUMNS)),
            "",
            "### Ranking per layer type (by health score)",
            "",
        ]
        for layer_type in sorted(set(ranking["layer_type"]) - {"all"}):
            layer = format_order(ranking.filter(pl.col("layer_type") == layer_type))
            lines += [f"#### {escape_markdown(layer_type)}", "", markdown_table(layer.select(LAYER_RANKING_COLUMNS)), ""]
        if set(ranking["layer_type"]) == {"all"}:
            lines += ["No per-layer metrics were logged by these runs yet, so there is no per-layer ranking.", ""]

        project_runs = in_project(runs, project)
        curves = loss_curve_summary(run_histories, project_runs)
        curve_figure = loss_curves_figure(
            curves, figure_path(figures_dir, "loss_curves", project=project or "all"), title="Training loss per format (mean and 95% t-interval)"
        )
        lines += ["### Loss curves", ""]
        if curve_figure is None:
            lines += ["No loss history with a step ≥ 1 for these runs yet.", ""]
        else:
            figures.append(curve_figure)
            lines += [
                image(curve_figure, reports_dir, "Training loss per format"),
                "",
                f"All runs of each format (both optimizers, failed runs up to their last finite loss); band: {CURVE_BAND_METHOD}",
                "",
            ]
        layer_types = sorted(set(ranking["layer_type"]) - {"all"})
        heatmap = score_heatmap_figure(
            ranking,
            figure_path(figures_dir, "health_heatmap", project=project or "all"),
            score_column="health_score",
            score_label="health score (mean criterion rank, 1 = best)",
            layer_types=layer_types,
            lower_is_better=True,
        )
        lines += ["### Per-layer health score", ""]
        if heatmap is None:
            lines += ["No FP8 format has a per-layer health score yet (it needs completed runs with per-layer metrics).", ""]
        else:
            figures.append(heatmap)
            lines += [image(heatmap, reports_dir, "Health score per format and layer type"), "", "Each cell: health score and n_completed, the completed runs it is averaged over.", ""]
    lines += ["## Method", "", (rankings_analysis.__doc__ or "").strip(), "", f"Loss-curve band: {CURVE_BAND_METHOD}", ""]
    lines += ["## Data", "", data_summary(raw_runs), ""]
    return write_report(
        reports_dir, "format_comparison", FORMAT_COMPARISON_TITLE, "Sweet-spot FP8 format overall and per layer type, with rankings and loss curves.",
        "\n".join(lines), figures, figures[0] if figures else None,
    )

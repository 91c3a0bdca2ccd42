"""ANAL-02 report `failure_modes.md`: every failed run with mode, failure step, last finite loss and
evidence; per failing format the metric traces before collapse beside the successful formats
(conventions: `reports.page`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from altgrad_pipeline.analysis import failures as failures_analysis
from altgrad_pipeline.analysis.report_series import failure_trace_series
from altgrad_pipeline.escaping import escape_markdown
from altgrad_pipeline.markdown import format_cell, markdown_table
from altgrad_pipeline.reports.figures import (
    TRACE_PANELS,
    failure_trace_figure,
    figure_path,
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
    run_link,
    run_lookup,
    table,
    write_report,
)
from altgrad_pipeline.reports.style import ordered_formats
from altgrad_pipeline.study import NO_FORMAT

TREND_COLUMNS = tuple(failures_analysis.TREND_METRICS)

FAILURE_MODES_TITLE = "How FP8 formats fail (ANAL-02)"


def _evidence(row: dict) -> str:
    """One sentence of evidence for a failed run, from its own columns."""
    mode = row["failure_mode"]
    if mode == "nan_loss":
        first = row.get("first_nan_step")
        text = f"loss non-finite from step {format_cell(first)}" if first is not None else f"parameters hold NaN from step {format_cell(row['failure_step'])}"
        text += f" (patience {format_cell(row['nan_patience'])} steps)"
    elif mode == "bit_stall":
        text = f"bit-stall rate above {format_cell(row['bit_stall_threshold'])} from step {format_cell(row['bit_stall_onset_step'])}"
    elif mode == "overflow":
        text = f"overflow rate above {format_cell(row['overflow_threshold'])} from step {format_cell(row['overflow_onset_step'])}"
    else:
        text = f"last logged step {format_cell(row['last_step'])} of max_steps {format_cell(row['max_steps'])}"
    text += f"; loss slope {format_cell(row['loss_slope'])}/step vs {format_cell(row['ref_loss_slope'])} in completed runs of other formats"
    reason = row.get("report_collapse_reason")
    if reason:
        text += f"; failure report: {escape_markdown(reason)}"
    return text


def write_failure_modes_report(
    failure_modes: pl.DataFrame,
    raw_runs: pl.DataFrame,
    run_histories: pl.DataFrame | pl.LazyFrame,
    layer_metrics: pl.DataFrame | pl.LazyFrame,
    reports_dir: Path,
    *,
    built_at: dt.datetime | None = None,
) -> ReportResult:
    """`failure_modes.md`: a row per failed run with its evidence, and per failing format the
    key metrics up to the collapse beside completed runs of the other formats at the same steps."""
    reports_dir = Path(reports_dir)
    figures_dir = reports_dir / FIGURES_DIR
    lookup = run_lookup(raw_runs)
    lines = header(FAILURE_MODES_TITLE, "How and when does each failing format break down?", built_at)
    figures: list[Path] = []
    failed = failure_modes.filter(pl.col("failure_mode") != "none")
    if failure_modes.is_empty():
        lines += ["No runs have been classified yet, so there are no failures to report.", ""]
    elif failed.is_empty():
        lines += [f"No failed runs yet: all {format_cell(failure_modes.height)} classified runs have failure mode `none`.", ""]
    else:
        counts = failure_modes.group_by("failure_mode").len("n_runs").sort("failure_mode")
        lines += [f"{format_cell(failed.height)} of {format_cell(failure_modes.height)} runs failed.", "", markdown_table(counts), ""]
    for project in projects(failed) if not failed.is_empty() else []:
        project_failed = format_order(in_project(failed, project).sort("fp8_format", "optimizer", "failure_step", "run_id", nulls_last=True))
        rows = [
            [
                escape_markdown(r["fp8_format"]),
                escape_markdown(r["optimizer"]),
                run_link(lookup.get(r["run_id"], {"run_id": r["run_id"]}), reports_dir),
                escape_markdown(r["outcome"]),
                escape_markdown(r["failure_mode"]),
                format_cell(r["failure_step"]),
                format_cell(r["last_finite_loss"]),
                format_cell(r["last_finite_loss_step"]),
                _evidence(r),
            ]
            for r in project_failed.iter_rows(named=True)
        ]
        headers = ["fp8_format", "optimizer", "run", "outcome", "failure_mode", "failure_step", "last_finite_loss", "last_finite_loss_step", "evidence"]
        lines += [project_heading(project), "", "### Failed runs", "", table(headers, rows), ""]
        project_modes = in_project(failure_modes, project)
        references = project_modes.filter(pl.col("outcome") == "completed").select("run_id", "fp8_format")
        for fp8_format in ordered_formats(project_failed["fp8_format"].unique()):
            format_failed = project_failed.filter(pl.col("fp8_format") == fp8_format)
            format_refs = references.filter((pl.col("fp8_format") != fp8_format) & (pl.col("fp8_format") != NO_FORMAT))
            n_format = project_modes.filter(pl.col("fp8_format") == fp8_format).height
            lines += [
                f"### {escape_markdown(fp8_format)}",
                "",
                f"{format_cell(format_failed.height)} of {format_cell(n_format)} runs failed; reference: "
                f"{format_cell(format_refs.height)} completed runs of other formats.",
                "",
            ]
            trace = failure_trace_series(run_histories, layer_metrics, format_failed["run_id"].to_list() + format_refs["run_id"].to_list())
            figure = failure_trace_figure(
                trace,
                format_failed.select("run_id", "failure_step", "trend_start_step"),
                format_refs,
                figure_path(figures_dir, "failure_trace", project=project or "all", fp8_format=fp8_format),
                fp8_format=fp8_format,
            )
            if figure is None:
                lines += ["These runs logged none of the traced metrics, so there is no trace to show.", ""]
            else:
                figures.append(figure)
                lines += [
                    image(figure, reports_dir, f"{fp8_format} metrics before collapse"),
                    "",
                    "Thin lines: each failed run up to its collapse (dashed line); thick lines: mean of the completed runs "
                    "of each other format at the same steps; shaded: the trend window of the table below.",
                    "",
                ]
            trend_rows = [
                [
                    run_link(lookup.get(r["run_id"], {"run_id": r["run_id"]}), reports_dir),
                    format_cell(r["trend_start_step"]),
                    format_cell(r["trend_end_step"]),
                    *(cell for m in TREND_COLUMNS for cell in (format_cell(r[m]), format_cell(r[f"ref_{m}"]))),
                    format_cell(r["n_ref_runs"]),
                ]
                for r in format_failed.iter_rows(named=True)
            ]
            trend_headers = ["run", "trend_start_step", "trend_end_step", *(h for m in TREND_COLUMNS for h in (m, f"ref_{m}")), "n_ref_runs"]
            lines += [table(trend_headers, trend_rows), ""]
    panel_text = "; ".join(f"{name}: {title} ({unit})" for name, (title, unit) in TRACE_PANELS.items())
    lines += ["## Method", "", (failures_analysis.__doc__ or "").strip(), "", f"Trace panels: {panel_text}.", ""]
    lines += ["## Data", "", data_summary(raw_runs), ""]
    return write_report(
        reports_dir, "failure_modes", FAILURE_MODES_TITLE, "Every failed run with its failure mode and step, and the metric traces before collapse.",
        "\n".join(lines), figures, figures[0] if figures else None,
    )

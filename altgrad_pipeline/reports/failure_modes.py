"""ANAL-02 report `failure_modes.md`: runs without an exit record (and how long they have been
silent), every failed run with its mode, step, stage, evidence, prevention and the runner's failure
report; per failing format the metric traces up to each run's collapse beside the successful
formats, both optimizers told apart; and the conclusions (conventions: `reports.page`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from altgrad_pipeline.analysis import conclusions as conclusions_analysis
from altgrad_pipeline.analysis import failures as failures_analysis
from altgrad_pipeline.analysis.report_series import failure_trace_series, reference_trace_means
from altgrad_pipeline.escaping import escape_markdown
from altgrad_pipeline.markdown import format_cell
from altgrad_pipeline.reports.figures import (
    TRACE_PANELS,
    failure_trace_figure,
    figure_path,
)
from altgrad_pipeline.reports.page import (
    FIGURES_DIR,
    ReportResult,
    data_summary,
    data_table,
    figure_block,
    format_order,
    header,
    in_project,
    project_heading,
    projects,
    run_link,
    run_lookup,
    table,
    write_report,
)
from altgrad_pipeline.reports.style import optimizer_order, ordered_formats
from altgrad_pipeline.study import MANIFOLD_OPTIMIZER, NO_FORMAT, STANDARD_OPTIMIZER

REPORT = "failure_modes"
TREND_COLUMNS = tuple(failures_analysis.TREND_METRICS)
#: Columns of the failed-runs table after the run link.
FAILED_COLUMNS = ("outcome", "failure_mode", "failure_step", "failure_stage", "last_finite_loss", "last_finite_loss_step")
#: FormatExperimentRunner failure-report fields shown per failed run (columns of failure_modes).
RUNNER_COLUMNS = (
    "report_collapse_step", "report_collapse_reason", "report_gradient_sparsity", "report_n_zero_update_layers",
    "report_zero_update_layers", "report_bit_stall_rate", "report_overflow_rate", "report_underflow_rate",
)

FAILURE_MODES_TITLE = "How FP8 formats fail (ANAL-02)"


def _minutes_silent(last_write_at: dt.datetime | None, built: dt.datetime) -> int | None:
    """Whole minutes between the run's last write and the report's build time."""
    if last_write_at is None:
        return None
    if last_write_at.tzinfo is None:
        last_write_at = last_write_at.replace(tzinfo=dt.UTC)
    return max(0, int((built - last_write_at).total_seconds() // 60))


def minutes_text(minutes: int) -> str:
    """"1 minute", "42 minutes": a silence is read by people."""
    return f"{format_cell(minutes)} minute{'' if minutes == 1 else 's'}"


def _silent_lines(silent: pl.DataFrame, lookup: dict, reports_dir: Path, built: dt.datetime) -> list[str]:
    """One sentence per run without an exit record: how long it has been silent, where it stopped."""
    lines = []
    for r in silent.iter_rows(named=True):
        minutes = _minutes_silent(r["last_write_at"], built)
        silence = f"silent for {minutes_text(minutes)} (last write {format_cell(r['last_write_at'])} UTC)" if minutes is not None else "no write time known"
        lines.append(
            f"- {run_link(lookup.get(r['run_id'], {'run_id': r['run_id']}), reports_dir)} ({escape_markdown(r['fp8_format'])}, "
            f"{escape_markdown(r['optimizer'])}): no exit record, {silence}; last logged step {format_cell(r['last_step'])} of "
            f"max_steps {format_cell(r['max_steps'])}, last finite loss {format_cell(r['last_finite_loss'])}."
        )
    return lines


def _conclusion_lines(failure_modes: pl.DataFrame, silent: pl.DataFrame, built: dt.datetime) -> list[str]:
    """Per failing format: how (mode) and when (failure steps) it breaks per optimizer, where
    (stage), and the prevention rule; then the runs still undecided."""
    found = conclusions_analysis.failure_conclusions(failure_modes)
    lines: list[str] = []
    for fp8_format in ordered_formats(found["fp8_format"].unique()):
        rows = found.filter(pl.col("fp8_format") == fp8_format)
        ways = "; ".join(
            f"with {escape_markdown(r['optimizer'])} {format_cell(r['n_failed'])} of {format_cell(r['n_decided'])} runs fail by "
            f"{escape_markdown(r['failure_mode'])} at step {format_cell(r['first_failure_step'])}"
            + (f" to {format_cell(r['last_failure_step'])} (median {format_cell(r['median_failure_step'])})" if r["last_failure_step"] != r["first_failure_step"] else "")
            + f", stage {escape_markdown(r['failure_stage'])}"
            for optimizer in optimizer_order(rows["optimizer"].unique())
            for r in rows.filter(pl.col("optimizer") == optimizer).iter_rows(named=True)
        )
        prevention = " ".join(escape_markdown(text) for text in rows["recommendation"].drop_nulls().unique(maintain_order=True))
        lines.append(f"- **{escape_markdown(fp8_format)}**: {ways}. Prevention: {prevention}")
    if not lines:
        lines.append("- No format has a failed run, so there is no failure to explain.")
    for r in silent.iter_rows(named=True):
        minutes = _minutes_silent(r["last_write_at"], built)
        lines.append(
            f"- **{escape_markdown(r['fp8_format'])}**: one {escape_markdown(r['optimizer'])} run has no exit record"
            + (f" (silent for {minutes_text(minutes)})" if minutes is not None else "")
            + f" after step {format_cell(r['last_step'])} of {format_cell(r['max_steps'])}: undecided, it counts against the format's "
            "completion rate; a process that stays silent past the crash grace period is classified `early_stop`."
        )
    return lines


def write_failure_modes_report(
    failure_modes: pl.DataFrame,
    raw_runs: pl.DataFrame,
    learning_curves: pl.DataFrame | pl.LazyFrame,
    layer_metrics: pl.DataFrame | pl.LazyFrame,
    reports_dir: Path,
    *,
    built_at: dt.datetime | None = None,
) -> ReportResult:
    """`failure_modes.md`: runs without an exit record under their own heading, a row per failed
    run with its stage, evidence, recommendation and failure report, per failing format the key
    metrics up to each run's collapse beside completed runs of the other formats, and the conclusions."""
    reports_dir = Path(reports_dir)
    figures_dir = reports_dir / FIGURES_DIR
    built = built_at or dt.datetime.now(dt.UTC)
    lookup = run_lookup(raw_runs)
    lines = header(FAILURE_MODES_TITLE, "How, when and where does each failing format break down, and what prevents it?", built)
    figures: list[Path] = []
    failed = failure_modes.filter(~pl.col("failure_mode").is_in(conclusions_analysis.NOT_FAILED))
    silent = format_order(failure_modes.filter(pl.col("failure_mode") == "no_exit_record").sort("fp8_format", "run_id"))
    if failure_modes.is_empty():
        lines += ["No runs have been classified yet, so there are no failures to report.", ""]
    elif failed.is_empty() and silent.is_empty():
        lines += [f"No failed runs yet: all {format_cell(failure_modes.height)} classified runs have failure mode `none`.", ""]
    else:
        counts = failure_modes.group_by("failure_mode").len("n_runs").sort("failure_mode")
        lines += [
            f"{format_cell(failed.height)} of {format_cell(failure_modes.height)} runs failed; {format_cell(silent.height)} "
            f"{'has' if silent.height == 1 else 'have'} no exit record yet (undecided).",
            "",
            data_table(counts, reports_dir, REPORT, "runs_per_failure_mode"),
            "",
        ]
    for project in projects(failure_modes) if not (failed.is_empty() and silent.is_empty()) else []:
        project_silent = in_project(silent, project)
        project_failed = format_order(in_project(failed, project).sort("fp8_format", "optimizer", "failure_step", "run_id", nulls_last=True))
        lines += [project_heading(project), ""]
        if not project_silent.is_empty():
            lines += [
                "### Runs without an exit record",
                "",
                f"Silence is measured from the run's last write to this report's build time ({format_cell(built.astimezone(dt.UTC).replace(tzinfo=None))} UTC).",
                "",
                *_silent_lines(project_silent, lookup, reports_dir, built),
                "",
            ]
        if project_failed.is_empty():
            lines += ["No failed runs in this project.", ""]
            continue
        link = [run_link(lookup.get(r["run_id"], {"run_id": r["run_id"]}), reports_dir) for r in project_failed.iter_rows(named=True)]
        rows = [
            [escape_markdown(r["fp8_format"]), escape_markdown(r["optimizer"]), run, *(format_cell(r[c]) for c in FAILED_COLUMNS),
             escape_markdown(r["failure_evidence"]), escape_markdown(r["recommendation"])]
            for run, r in zip(link, project_failed.iter_rows(named=True), strict=True)
        ]
        headers = ["fp8_format", "optimizer", "run", *FAILED_COLUMNS, "evidence", "recommendation"]
        lines += [
            "### Failed runs",
            "",
            data_table(
                project_failed.select("run_id", "fp8_format", "optimizer", *FAILED_COLUMNS, pl.col("failure_evidence").alias("evidence"), "recommendation"),
                reports_dir, REPORT, "failed_runs", project=project, markdown=table(headers, rows),
            ),
            "",
            "### Failure reports (FormatExperimentRunner)",
            "",
        ]
        reported = [(run, r) for run, r in zip(link, project_failed.iter_rows(named=True), strict=True) if r["report_path"] is not None]
        if reported:
            lines += [
                "The runner's own failure report of each failed run that wrote one: collapse step and reason, gradient sparsity "
                "and the layers whose weights no longer update.",
                "",
                data_table(
                    project_failed.filter(pl.col("report_path").is_not_null()).select("run_id", *RUNNER_COLUMNS),
                    reports_dir, REPORT, "failure_reports", project=project,
                    markdown=table(["run", *RUNNER_COLUMNS], [[run, *(format_cell(r[c]) for c in RUNNER_COLUMNS)] for run, r in reported]),
                ),
                "",
            ]
        else:
            lines += ["No failed run in this project wrote a FormatExperimentRunner failure report.", ""]
        project_modes = in_project(failure_modes, project)
        references = project_modes.filter((pl.col("outcome") == "completed") & (pl.col("failure_mode") == "none") & (pl.col("fp8_format") != NO_FORMAT))
        for fp8_format in ordered_formats(project_failed["fp8_format"].unique()):
            format_failed = project_failed.filter(pl.col("fp8_format") == fp8_format)
            format_refs = references.filter(pl.col("fp8_format") != fp8_format).select("run_id", "fp8_format", "optimizer")
            n_format = project_modes.filter(pl.col("fp8_format") == fp8_format).height
            lines += [
                f"### {escape_markdown(fp8_format)}",
                "",
                f"{format_cell(format_failed.height)} of {format_cell(n_format)} runs failed; reference: "
                f"{format_cell(format_refs.height)} completed runs of other formats without a failure.",
                "",
            ]
            trace = failures_analysis.trace_to_collapse(
                failure_trace_series(learning_curves, layer_metrics, format_failed["run_id"].to_list()),
                format_failed.select("run_id", "failure_step"),
            )
            figure = failure_trace_figure(
                trace,
                format_failed.select("run_id", "optimizer", "failure_step", "trend_start_step"),
                reference_trace_means(learning_curves, layer_metrics, format_refs),
                figure_path(figures_dir, "failure_trace", project=project or "all", fp8_format=fp8_format),
                fp8_format=fp8_format,
            )
            if figure is None:
                lines += ["These runs logged none of the traced metrics, so there is no trace to show.", ""]
            else:
                figures.append(figure)
                lines += [
                    figure_block(figure, reports_dir, f"{fp8_format} metrics up to each collapse"),
                    "",
                    "Thin lines: each failed run, drawn only up to its own collapse (X); thick lines: mean of the completed runs "
                    f"of each other format with the same optimizer at the same steps; line style: solid {STANDARD_OPTIMIZER}, dashed "
                    f"{MANIFOLD_OPTIMIZER}; shaded: the trend window of the table below.",
                    "",
                ]
            trend_rows = [
                [
                    run_link(lookup.get(r["run_id"], {"run_id": r["run_id"]}), reports_dir),
                    escape_markdown(r["optimizer"]),
                    format_cell(r["trend_start_step"]),
                    format_cell(r["trend_end_step"]),
                    *(cell for m in TREND_COLUMNS for cell in (format_cell(r[m]), format_cell(r[f"ref_{m}"]))),
                    format_cell(r["n_ref_runs"]),
                ]
                for r in format_failed.iter_rows(named=True)
            ]
            trend_columns = ["optimizer", "trend_start_step", "trend_end_step", *(h for m in TREND_COLUMNS for h in (m, f"ref_{m}")), "n_ref_runs"]
            lines += [
                data_table(
                    format_failed.select("run_id", *trend_columns), reports_dir, REPORT, "trend", project=project, parts=(fp8_format,),
                    markdown=table(["run", *trend_columns], trend_rows),
                ),
                "",
            ]
    panel_text = "; ".join(f"{name}: {title} ({unit})" for name, (title, unit) in TRACE_PANELS.items())
    lines += ["## Method", "", (failures_analysis.__doc__ or "").strip(), "", f"Trace panels: {panel_text}.", ""]
    lines += ["## Data", "", data_summary(raw_runs, reports_dir, REPORT), ""]
    lines += ["## Conclusions", ""]
    if failure_modes.is_empty():
        lines += ["No runs have been classified yet, so there are no conclusions to draw.", ""]
    else:
        lines += [*_conclusion_lines(failure_modes, silent, built), ""]
    return write_report(
        reports_dir, REPORT, FAILURE_MODES_TITLE,
        "Every failed run with its mode, step, stage, evidence and prevention; runs without an exit record; traces up to each collapse.",
        "\n".join(lines), figures, figures[0] if figures else None,
    )

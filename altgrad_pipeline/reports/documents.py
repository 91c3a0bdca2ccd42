"""The analysis reports as Markdown files (plus a self-contained HTML copy of each) and an index.

Each `write_*_report` function takes the analysis frames and a reports directory, writes
`<reports_dir>/<name>.md`, `<reports_dir>/<name>.html` and its figures under
`<reports_dir>/figures/`, and returns a `ReportResult` (paths for the Dagster UI). Every number
in the text and tables is taken from the input frames and printed with `format_cell`; every run
name, tag, project and failure-report string is escaped; file names come from fixed stems,
format names and `safe_filename`, never from run names. An empty input gives a sentence saying
that there are no runs of that kind yet, never a stand-in text.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from markdown_it import MarkdownIt

from altgrad_pipeline import atomic
from altgrad_pipeline.analysis import failures as failures_analysis
from altgrad_pipeline.analysis import manifold as manifold_analysis
from altgrad_pipeline.analysis import rankings as rankings_analysis
from altgrad_pipeline.escaping import escape_html, escape_markdown
from altgrad_pipeline.markdown import format_cell, markdown_table
from altgrad_pipeline.reports.figures import (
    CURVE_BAND_METHOD,
    TRACE_PANELS,
    failure_trace_figure,
    failure_trace_series,
    figure_path,
    loss_curve_summary,
    loss_curves_figure,
    paired_seed_figure,
    score_heatmap_figure,
)
from altgrad_pipeline.reports.style import BASELINE_FORMAT, ordered_formats

FIGURES_DIR = "figures"
NO_FORMAT = rankings_analysis.NO_FORMAT

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
#: Columns of the manifold effect table, n beside each mean.
MANIFOLD_COLUMNS = (
    "fp8_format", "metric", "mean_standard", "n_standard", "mean_manifold", "n_manifold", "diff",
    "ci_low", "ci_high", "method", "prob_improvement", "low_n", "n_excluded_standard", "n_excluded_manifold",
)
TREND_COLUMNS = tuple(failures_analysis.TREND_METRICS)

HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""


@dataclass(frozen=True)
class ReportEntry:
    """One line of the index: a report's title, its Markdown file and what it answers."""

    title: str
    path: Path
    description: str


@dataclass(frozen=True)
class ReportResult:
    """What a report function wrote: the Markdown and HTML files and the figures (the main one
    is the figure to show in the Dagster UI; None when the report has no figure)."""

    entry: ReportEntry
    html_path: Path
    figure_paths: tuple[Path, ...] = field(default_factory=tuple)
    main_figure: Path | None = None

    @property
    def path(self) -> Path:
        return self.entry.path


# ---------------------------------------------------------------- Markdown building blocks


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table whose cells are already Markdown (escaped text, links); headers escaped."""
    lines = ["| " + " | ".join(escape_markdown(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _link_target(target: str) -> str:
    """A link destination with every character Markdown could read as syntax percent-encoded."""
    return urllib.parse.quote(target, safe=":/?#&=%@+,;~!$*'")


def run_link(run: dict, report_dir: Path) -> str:
    """Markdown for a run: its escaped name linked to its W&B page (API runs), or to its local
    directory (relative from the report when both sit under a common root below the filesystem
    root), else the escaped name with the absolute path as text."""
    text = escape_markdown(run.get("name") or run.get("run_id"))
    url = run.get("url")
    if url and urllib.parse.urlparse(url).scheme in ("http", "https"):
        return f"[{text}]({_link_target(url)})"
    location = run.get("location")
    if not location:
        return text
    path = Path(location)
    report_dir = Path(report_dir).resolve()
    if path.is_absolute() and os.path.commonpath([path, report_dir]) != path.anchor:
        return f"[{text}]({_link_target(Path(os.path.relpath(path, report_dir)).as_posix())})"
    return f"{text} ({escape_markdown(location)})"


def _run_lookup(raw_runs: pl.DataFrame) -> dict[str, dict]:
    columns = [c for c in ("run_id", "name", "url", "location") if c in raw_runs.columns]
    return {row["run_id"]: row for row in raw_runs.select(columns).iter_rows(named=True)}


def _image(figure: Path, reports_dir: Path, alt: str) -> str:
    return f"![{escape_markdown(alt)}]({_link_target(figure.relative_to(reports_dir).as_posix())})"


def _projects(frame: pl.DataFrame) -> list[str | None]:
    """The projects in a frame, sorted (a frame without a project column is one study)."""
    if "project" not in frame.columns:
        return [None]
    return sorted(frame["project"].unique().to_list(), key=lambda p: (p is None, p or ""))


def _in_project(frame: pl.DataFrame, project: str | None) -> pl.DataFrame:
    if "project" not in frame.columns:
        return frame
    return frame.filter(pl.col("project").is_null() if project is None else pl.col("project") == project)


def _project_heading(project: str | None) -> str:
    return f"## Project {escape_markdown(project)}" if project is not None else "## All runs"


def _format_order(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows in the report order of formats (baseline first, then study order)."""
    order = ordered_formats(frame["fp8_format"].unique())
    return frame.with_columns(pl.col("fp8_format").replace_strict(order, list(range(len(order))), return_dtype=pl.Int64).alias("_order")).sort(
        "_order", maintain_order=True
    ).drop("_order")


def data_summary(raw_runs: pl.DataFrame) -> str:
    """How many runs the reports were built from, by format and state, and the newest update."""
    if raw_runs.is_empty():
        return "No runs have been ingested yet."
    counts = (
        raw_runs.group_by("fp8_format", "state")
        .len("n_runs")
        .pivot(on="state", index="fp8_format", values="n_runs", sort_columns=True)
        .fill_null(0)
    )
    states = [c for c in counts.columns if c != "fp8_format"]
    counts = _format_order(counts.with_columns(pl.sum_horizontal(states).alias("total")))
    newest = raw_runs["updated_at"].max() if "updated_at" in raw_runs.columns else None
    newest_text = f"newest run update {format_cell(newest)} UTC" if newest is not None else "no run reports an update time"
    return f"Built from {format_cell(raw_runs.height)} runs ({newest_text}). Runs per format and tracker state:\n\n{markdown_table(counts)}"


# ---------------------------------------------------------------- HTML


def markdown_to_html(markdown: str, *, title: str, base_dir: Path) -> str:
    """A self-contained HTML page from report Markdown: raw HTML in the Markdown is not
    interpreted (html=False, so escaped names stay text), images under `base_dir` are embedded as
    base64 PNG data URIs, and links to sibling `.md` reports point at their `.html` copies."""
    renderer = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = renderer.parse(markdown)
    for token in tokens:
        for child in token.children or []:
            if child.type == "image":
                source = base_dir / urllib.parse.unquote(str(child.attrGet("src")))
                child.attrSet("src", "data:image/png;base64," + base64.b64encode(source.read_bytes()).decode("ascii"))
            elif child.type == "link_open":
                href = str(child.attrGet("href"))
                if not urllib.parse.urlparse(href).scheme and href.endswith(".md"):
                    child.attrSet("href", href[: -len(".md")] + ".html")
    body = renderer.renderer.render(tokens, renderer.options, {})
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{escape_html(title)}</title>\n<style>{HTML_STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


def _write(reports_dir: Path, name: str, title: str, description: str, markdown: str, figures: Sequence[Path], main: Path | None) -> ReportResult:
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / f"{name}.md"
    atomic.write_text(path, markdown)
    html_path = reports_dir / f"{name}.html"
    atomic.write_text(html_path, markdown_to_html(markdown, title=title, base_dir=reports_dir))
    return ReportResult(ReportEntry(title, path, description), html_path, tuple(figures), main)


def _header(title: str, question: str, built_at: dt.datetime | None) -> list[str]:
    built = built_at or dt.datetime.now(dt.UTC)
    if built.tzinfo is not None:
        built = built.astimezone(dt.UTC).replace(tzinfo=None)
    return [f"# {title}", "", question, "", f"Built {format_cell(built)} UTC.", ""]


# ---------------------------------------------------------------- ANAL-01: format comparison

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
    format_rankings = format_rankings.filter(pl.col("optimizer") == rankings_analysis.STANDARD)
    lines = _header(FORMAT_COMPARISON_TITLE, "Which FP8 format is the sweet spot, overall and per layer type?", built_at)
    figures: list[Path] = []
    runs = raw_runs.filter(pl.col("fp8_format") != NO_FORMAT)
    if format_rankings.is_empty():
        lines += ["No runs with a known format have been ranked yet, so there is no comparison to show.", ""]
    for project in _projects(format_rankings) if not format_rankings.is_empty() else []:
        ranking = _in_project(format_rankings, project)
        lines += [_project_heading(project), "", "### Sweet spot", "", *_sweet_spot_lines(ranking), ""]
        overall = _format_order(ranking.filter(pl.col("layer_type") == "all"))
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
            layer = _format_order(ranking.filter(pl.col("layer_type") == layer_type))
            lines += [f"#### {escape_markdown(layer_type)}", "", markdown_table(layer.select(LAYER_RANKING_COLUMNS)), ""]
        if set(ranking["layer_type"]) == {"all"}:
            lines += ["No per-layer metrics were logged by these runs yet, so there is no per-layer ranking.", ""]

        project_runs = _in_project(runs, project)
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
                _image(curve_figure, reports_dir, "Training loss per format"),
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
            lines += [_image(heatmap, reports_dir, "Health score per format and layer type"), "", "Each cell: health score and n_completed, the completed runs it is averaged over.", ""]
    lines += ["## Method", "", (rankings_analysis.__doc__ or "").strip(), "", f"Loss-curve band: {CURVE_BAND_METHOD}", ""]
    lines += ["## Data", "", data_summary(raw_runs), ""]
    return _write(
        reports_dir, "format_comparison", FORMAT_COMPARISON_TITLE, "Sweet-spot FP8 format overall and per layer type, with rankings and loss curves.",
        "\n".join(lines), figures, figures[0] if figures else None,
    )


# ---------------------------------------------------------------- ANAL-02: failure modes

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
    lookup = _run_lookup(raw_runs)
    lines = _header(FAILURE_MODES_TITLE, "How and when does each failing format break down?", built_at)
    figures: list[Path] = []
    failed = failure_modes.filter(pl.col("failure_mode") != "none")
    if failure_modes.is_empty():
        lines += ["No runs have been classified yet, so there are no failures to report.", ""]
    elif failed.is_empty():
        lines += [f"No failed runs yet: all {format_cell(failure_modes.height)} classified runs have failure mode `none`.", ""]
    else:
        counts = failure_modes.group_by("failure_mode").len("n_runs").sort("failure_mode")
        lines += [f"{format_cell(failed.height)} of {format_cell(failure_modes.height)} runs failed.", "", markdown_table(counts), ""]
    for project in _projects(failed) if not failed.is_empty() else []:
        project_failed = _format_order(_in_project(failed, project).sort("fp8_format", "optimizer", "failure_step", "run_id", nulls_last=True))
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
        lines += [_project_heading(project), "", "### Failed runs", "", table(headers, rows), ""]
        project_modes = _in_project(failure_modes, project)
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
                    _image(figure, reports_dir, f"{fp8_format} metrics before collapse"),
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
    panel_text = "; ".join(f"{name}: {title} ({unit})" for name, (_, title, unit) in TRACE_PANELS.items())
    lines += ["## Method", "", (failures_analysis.__doc__ or "").strip(), "", f"Trace panels: {panel_text}.", ""]
    lines += ["## Data", "", data_summary(raw_runs), ""]
    return _write(
        reports_dir, "failure_modes", FAILURE_MODES_TITLE, "Every failed run with its failure mode and step, and the metric traces before collapse.",
        "\n".join(lines), figures, figures[0] if figures else None,
    )


# ---------------------------------------------------------------- ANAL-03: ManifoldAdamW

MANIFOLD_TITLE = "ManifoldAdamW vs AdamW (ANAL-03)"


def _effect_sentence(row: dict) -> str:
    """One sentence per (format, metric): "observed" when n is low, "estimated" otherwise."""
    name = f"{escape_markdown(row['fp8_format'])} {escape_markdown(row['metric'])}"
    if row["diff"] is None:
        return (
            f"- {name}: no values in at least one arm (n = {format_cell(row['n_manifold'])} {manifold_analysis.MANIFOLD} "
            f"vs {format_cell(row['n_standard'])} {manifold_analysis.STANDARD} runs), so no difference."
        )
    interval = (
        f"95% CI [{format_cell(row['ci_low'])}, {format_cell(row['ci_high'])}] ({escape_markdown(row['method'])})"
        if row["ci_low"] is not None and row["ci_high"] is not None
        else f"no interval ({escape_markdown(row['method'])})"
    )
    counts = f"n = {format_cell(row['n_manifold'])} {manifold_analysis.MANIFOLD} vs {format_cell(row['n_standard'])} {manifold_analysis.STANDARD} runs"
    if row["low_n"]:
        return (
            f"- {name}: observed difference {format_cell(row['diff'])}, {interval}, {counts}; "
            f"{manifold_analysis.MANIFOLD} was lower in a share {format_cell(row['prob_improvement'])} of the observed comparisons. "
            f"Too few runs (< {manifold_analysis.LOW_N} per arm) to say what to expect."
        )
    return (
        f"- {name}: estimated difference {format_cell(row['diff'])}, {interval}, {counts}; "
        f"expected probability that {manifold_analysis.MANIFOLD} is lower {format_cell(row['prob_improvement'])}."
    )


def write_manifold_comparison_report(
    manifold_stats: pl.DataFrame,
    manifold_per_run: pl.DataFrame,
    raw_runs: pl.DataFrame,
    reports_dir: Path,
    *,
    built_at: dt.datetime | None = None,
) -> ReportResult:
    """`manifold_comparison.md`: ManifoldAdamW − AdamW per format and metric with CI, method and
    n, and a paired-seed plot of final_loss. `manifold_per_run` is the per-run frame the stats
    came from (`analysis.manifold.per_run_metrics`)."""
    reports_dir = Path(reports_dir)
    figures_dir = reports_dir / FIGURES_DIR
    lines = _header(MANIFOLD_TITLE, f"Does {manifold_analysis.MANIFOLD} help, and how sure can we be?", built_at)
    figures: list[Path] = []
    if manifold_stats.is_empty():
        lines += [f"No format has runs with both {manifold_analysis.STANDARD} and {manifold_analysis.MANIFOLD} yet, so there is nothing to compare.", ""]
    for project in _projects(manifold_stats) if not manifold_stats.is_empty() else []:
        stats = _format_order(_in_project(manifold_stats, project))
        per_format = stats.unique(["fp8_format"], keep="first", maintain_order=True)
        excluded_m = int(per_format["n_excluded_manifold"].sum())
        excluded_s = int(per_format["n_excluded_standard"].sum())
        lines += [
            _project_heading(project),
            "",
            f"`diff` = {manifold_analysis.MANIFOLD} − {manifold_analysis.STANDARD}; lower is better for every metric, so a negative "
            f"diff favours {manifold_analysis.MANIFOLD}. Excluded as not completed: {format_cell(excluded_m)} "
            f"{manifold_analysis.MANIFOLD} and {format_cell(excluded_s)} {manifold_analysis.STANDARD} runs.",
            "",
            "### Effects",
            "",
            *(_effect_sentence(r) for r in stats.iter_rows(named=True)),
            "",
            markdown_table(stats.select(MANIFOLD_COLUMNS)),
            "",
        ]
        per_run = _in_project(manifold_per_run, project).select("fp8_format", "optimizer", "seed", pl.col("final_loss").alias("value"))
        figure = paired_seed_figure(
            per_run,
            figure_path(figures_dir, "paired_seeds_final_loss", project=project or "all"),
            metric_label="final loss (mean of last k, nats)",
            optimizers=(manifold_analysis.STANDARD, manifold_analysis.MANIFOLD),
        )
        lines += ["### Final loss per seed", ""]
        if figure is None:
            lines += ["No completed run has a final loss yet, so there is no paired-seed plot.", ""]
        else:
            figures.append(figure)
            lines += [_image(figure, reports_dir, "Final loss per seed, AdamW to ManifoldAdamW"), "", "One line per seed; a lone point is a seed with one arm only.", ""]
    lines += ["## Method", "", (manifold_analysis.__doc__ or "").strip(), ""]
    lines += ["## Data", "", data_summary(raw_runs), ""]
    return _write(
        reports_dir, "manifold_comparison", MANIFOLD_TITLE, "Effect of ManifoldAdamW over AdamW per format, with 95% intervals (BCa bootstrap, or t for small arms).",
        "\n".join(lines), figures, figures[0] if figures else None,
    )


# ---------------------------------------------------------------- index


def write_index(
    entries: Sequence[ReportEntry],
    raw_runs: pl.DataFrame,
    reports_dir: Path,
    *,
    built_at: dt.datetime | None = None,
) -> ReportResult:
    """`index.md` linking every report in `entries` (any number, in the order given), with the
    build time and the runs the reports were built from."""
    reports_dir = Path(reports_dir)
    lines = _header("altgrad analysis reports", "The FP8 quantization study, report by report.", built_at)
    if not entries:
        lines += ["No reports have been built yet.", ""]
    for entry in entries:
        target = _link_target(Path(os.path.relpath(Path(entry.path).resolve(), reports_dir.resolve())).as_posix())
        lines.append(f"- [{escape_markdown(entry.title)}]({target}): {escape_markdown(entry.description)}")
    lines += ["", "## Data", "", data_summary(raw_runs), ""]
    return _write(reports_dir, "index", "altgrad analysis reports", "All reports.", "\n".join(lines), (), None)

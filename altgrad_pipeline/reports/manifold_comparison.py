"""ANAL-03 report `manifold_comparison.md`: ManifoldAdamW − AdamW per format and metric with CI,
method and n, a paired-seed plot, and 'observed' wording where n is low (conventions: `reports.page`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from altgrad_pipeline.analysis import manifold as manifold_analysis
from altgrad_pipeline.escaping import escape_markdown
from altgrad_pipeline.markdown import format_cell, markdown_table
from altgrad_pipeline.reports.figures import (
    figure_path,
    paired_seed_figure,
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
from altgrad_pipeline.study import MANIFOLD_OPTIMIZER, STANDARD_OPTIMIZER

#: Columns of the manifold effect table, n beside each mean.
MANIFOLD_COLUMNS = (
    "fp8_format", "metric", "mean_standard", "n_standard", "mean_manifold", "n_manifold", "diff",
    "ci_low", "ci_high", "method", "prob_improvement", "low_n", "n_excluded_standard", "n_excluded_manifold",
)
MANIFOLD_TITLE = "ManifoldAdamW vs AdamW (ANAL-03)"


def _effect_sentence(row: dict) -> str:
    """One sentence per (format, metric): "observed" when n is low, "estimated" otherwise."""
    name = f"{escape_markdown(row['fp8_format'])} {escape_markdown(row['metric'])}"
    if row["diff"] is None:
        return (
            f"- {name}: no values in at least one arm (n = {format_cell(row['n_manifold'])} {MANIFOLD_OPTIMIZER} "
            f"vs {format_cell(row['n_standard'])} {STANDARD_OPTIMIZER} runs), so no difference."
        )
    interval = (
        f"95% CI [{format_cell(row['ci_low'])}, {format_cell(row['ci_high'])}] ({escape_markdown(row['method'])})"
        if row["ci_low"] is not None and row["ci_high"] is not None
        else f"no interval ({escape_markdown(row['method'])})"
    )
    counts = f"n = {format_cell(row['n_manifold'])} {MANIFOLD_OPTIMIZER} vs {format_cell(row['n_standard'])} {STANDARD_OPTIMIZER} runs"
    if row["low_n"]:
        return (
            f"- {name}: observed difference {format_cell(row['diff'])}, {interval}, {counts}; "
            f"{MANIFOLD_OPTIMIZER} was lower in a share {format_cell(row['prob_improvement'])} of the observed comparisons. "
            f"Too few runs (< {manifold_analysis.LOW_N} per arm) to say what to expect."
        )
    return (
        f"- {name}: estimated difference {format_cell(row['diff'])}, {interval}, {counts}; "
        f"expected probability that {MANIFOLD_OPTIMIZER} is lower {format_cell(row['prob_improvement'])}."
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
    lines = header(MANIFOLD_TITLE, f"Does {MANIFOLD_OPTIMIZER} help, and how sure can we be?", built_at)
    figures: list[Path] = []
    if manifold_stats.is_empty():
        lines += [f"No format has runs with both {STANDARD_OPTIMIZER} and {MANIFOLD_OPTIMIZER} yet, so there is nothing to compare.", ""]
    for project in projects(manifold_stats) if not manifold_stats.is_empty() else []:
        stats = format_order(in_project(manifold_stats, project))
        per_format = stats.unique(["fp8_format"], keep="first", maintain_order=True)
        excluded_m = int(per_format["n_excluded_manifold"].sum())
        excluded_s = int(per_format["n_excluded_standard"].sum())
        lines += [
            project_heading(project),
            "",
            f"`diff` = {MANIFOLD_OPTIMIZER} − {STANDARD_OPTIMIZER}; lower is better for every metric, so a negative "
            f"diff favours {MANIFOLD_OPTIMIZER}. Excluded as not completed: {format_cell(excluded_m)} "
            f"{MANIFOLD_OPTIMIZER} and {format_cell(excluded_s)} {STANDARD_OPTIMIZER} runs.",
            "",
            "### Effects",
            "",
            *(_effect_sentence(r) for r in stats.iter_rows(named=True)),
            "",
            markdown_table(stats.select(MANIFOLD_COLUMNS)),
            "",
        ]
        per_run = in_project(manifold_per_run, project).select("fp8_format", "optimizer", "seed", pl.col("final_loss").alias("value"))
        figure = paired_seed_figure(
            per_run,
            figure_path(figures_dir, "paired_seeds_final_loss", project=project or "all"),
            metric_label="final loss (mean of last k, nats)",
            optimizers=(STANDARD_OPTIMIZER, MANIFOLD_OPTIMIZER),
        )
        lines += ["### Final loss per seed", ""]
        if figure is None:
            lines += ["No completed run has a final loss yet, so there is no paired-seed plot.", ""]
        else:
            figures.append(figure)
            lines += [image(figure, reports_dir, "Final loss per seed, AdamW to ManifoldAdamW"), "", "One line per seed; a lone point is a seed with one arm only.", ""]
    lines += ["## Method", "", (manifold_analysis.__doc__ or "").strip(), ""]
    lines += ["## Data", "", data_summary(raw_runs), ""]
    return write_report(
        reports_dir, "manifold_comparison", MANIFOLD_TITLE, "Effect of ManifoldAdamW over AdamW per format, with 95% intervals (BCa bootstrap, or t for small arms).",
        "\n".join(lines), figures, figures[0] if figures else None,
    )

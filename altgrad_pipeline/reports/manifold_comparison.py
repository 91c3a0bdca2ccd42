"""ANAL-03 report `manifold_comparison.md`: ManifoldAdamW − AdamW per format and metric, a verdict
per format read from the interval (helps / no detectable effect / hurts), effects in absolute
terms and in percent, the optimizer's effect on failure, observed counts instead of probabilities
for small arms, the formats lacking an arm, a paired-seed plot and the conclusions (conventions:
`reports.page`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from altgrad_pipeline.analysis import conclusions as conclusions_analysis
from altgrad_pipeline.analysis import manifold as manifold_analysis
from altgrad_pipeline.escaping import escape_markdown
from altgrad_pipeline.markdown import format_cell
from altgrad_pipeline.reports.figures import (
    figure_path,
    paired_seed_figure,
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
    write_report,
)
from altgrad_pipeline.study import MANIFOLD_OPTIMIZER, STANDARD_OPTIMIZER

REPORT = "manifold_comparison"
#: Columns of the manifold effect table, n beside each mean.
MANIFOLD_COLUMNS = (
    "fp8_format", "metric", "verdict", "mean_standard", "n_standard", "mean_manifold", "n_manifold", "diff", "diff_pct",
    "ci_low", "ci_high", "method", "n_lower", "n_pairs", "n_excluded_standard", "n_excluded_manifold",
)
#: Columns of the per-format verdict table (final loss).
VERDICT_COLUMNS = ("fp8_format", "verdict", "diff", "diff_pct", "ci_low", "ci_high", "method", "n_lower", "n_pairs", "n_standard", "n_manifold")
MANIFOLD_TITLE = "ManifoldAdamW vs AdamW (ANAL-03)"


def _pct(value: float | None) -> str:
    return f"{value:+.1f}%" if value is not None else "percentage undefined: the AdamW mean is 0"


def _interval(row: dict) -> str:
    if row["ci_low"] is None or row["ci_high"] is None:
        return f"no interval ({escape_markdown(row['method'])})"
    return f"95% CI [{format_cell(row['ci_low'])}, {format_cell(row['ci_high'])}] ({escape_markdown(row['method'])})"


def _counts(row: dict) -> str:
    """Observed counts: per seed when paired, over all ManifoldAdamW × AdamW pairs otherwise."""
    unit = "seeds" if row["paired"] else f"{MANIFOLD_OPTIMIZER} × {STANDARD_OPTIMIZER} pairs"
    better = "worse" if row["higher_is_better"] else "better"
    return f"{MANIFOLD_OPTIMIZER} lower ({better}) in {format_cell(row['n_lower'])} of {format_cell(row['n_pairs'])} {unit}"


def _effect_sentence(row: dict) -> str:
    """One sentence per (format, metric): the verdict, the difference with its interval and
    percentage, and the observed counts ("observed" below `MIN_BOOTSTRAP_N` runs per arm)."""
    name = f"{escape_markdown(row['fp8_format'])} {escape_markdown(row['metric'])}"
    arms = f"n = {format_cell(row['n_manifold'])} {MANIFOLD_OPTIMIZER} vs {format_cell(row['n_standard'])} {STANDARD_OPTIMIZER} runs"
    if row["diff"] is None:
        return f"- {name}: no values in at least one arm ({arms}), so no difference."
    small = min(row["n_manifold"], row["n_standard"]) < manifold_analysis.MIN_BOOTSTRAP_N
    kind = "observed" if small else "estimated"
    return (
        f"- {name}: **{escape_markdown(row['verdict'])}**; {kind} difference {format_cell(row['diff'])} ({_pct(row['diff_pct'])}), "
        f"{_interval(row)}, {arms}; {_counts(row)}."
    )


def _failure_lines(found: pl.DataFrame) -> list[str]:
    """Per format: the failure step and failure rate of each arm, and how far ManifoldAdamW moves the failure."""
    lines = []
    for r in found.iter_rows(named=True):
        if r["n_decided_standard"] is None:
            continue
        failed_s = round((r["failure_rate_standard"] or 0) * r["n_decided_standard"])
        failed_m = round((r["failure_rate_manifold"] or 0) * r["n_decided_manifold"])
        rate = (
            f"failed in {failed_s} of {format_cell(r['n_decided_standard'])} {STANDARD_OPTIMIZER} runs and "
            f"{failed_m} of {format_cell(r['n_decided_manifold'])} {MANIFOLD_OPTIMIZER} runs"
        )
        if r["failure_delay"] is None:
            lines.append(f"- {escape_markdown(r['fp8_format'])}: {rate}; no failure step to compare.")
            continue
        direction = "delayed" if r["failure_delay"] > 0 else "brought forward"
        lines.append(
            f"- {escape_markdown(r['fp8_format'])}: {rate}; mean failure step {format_cell(r['failure_step_standard'])} with "
            f"{STANDARD_OPTIMIZER}, {format_cell(r['failure_step_manifold'])} with {MANIFOLD_OPTIMIZER}: failure {direction} by "
            f"{format_cell(abs(r['failure_delay']))} steps ({_pct(r['failure_delay_pct'])}), verdict **{escape_markdown(r['failure_step_verdict'])}**."
        )
    return lines


def _methods_line(stats: pl.DataFrame) -> str:
    """The interval methods this report's rows actually used, with how many rows each."""
    used = stats.filter(pl.col("ci_low").is_not_null()).group_by("method").len().sort("method")
    if used.is_empty():
        return "No row has an interval yet (every arm has fewer than two values)."
    listed = ", ".join(f"{escape_markdown(m)} ({n} rows)" for m, n in used.iter_rows())
    return (
        f"**Intervals used**: 95% {listed}. Student/Welch t below {manifold_analysis.MIN_BOOTSTRAP_N} runs per arm, "
        f"the BCa bootstrap from {manifold_analysis.MIN_BOOTSTRAP_N}; below that the counts are observations "
        f"(\"lower in 3 of 3 seeds\"), not probabilities."
    )


def _conclusion_lines(found: pl.DataFrame, missing: pl.DataFrame) -> list[str]:
    lines = []
    for r in found.iter_rows(named=True):
        text = (
            f"- **{escape_markdown(r['fp8_format'])}**: {escape_markdown(r['verdict'])} on final loss, {format_cell(r['diff'])} nats "
            f"({_pct(r['diff_pct'])}; {_interval(r)}; {_counts({**r, 'higher_is_better': False})})"
        )
        if r["failure_delay"] is not None:
            direction = "delays" if r["failure_delay"] > 0 else "brings forward"
            text += (
                f"; {MANIFOLD_OPTIMIZER} {direction} the failure from step {format_cell(r['failure_step_standard'])} to "
                f"{format_cell(r['failure_step_manifold'])} ({format_cell(r['failure_delay'])} steps, {_pct(r['failure_delay_pct'])})"
            )
        lines.append(text + ".")
    best = found.filter(pl.col("benefits_most"))
    if best.is_empty():
        lines.append(f"- No format benefits detectably from {MANIFOLD_OPTIMIZER} on final loss.")
    for r in best.iter_rows(named=True):
        lines.append(
            f"- Benefits most: **{escape_markdown(r['fp8_format'])}**, final loss {format_cell(r['diff'])} nats ({_pct(r['diff_pct'])}) "
            f"with {MANIFOLD_OPTIMIZER}."
        )
    if not missing.is_empty():
        lines.append(f"- Not compared (one optimizer only): {', '.join(escape_markdown(f) for f in missing['fp8_format'])}.")
    return lines


def write_manifold_comparison_report(
    manifold_stats: pl.DataFrame,
    manifold_per_run: pl.DataFrame,
    raw_runs: pl.DataFrame,
    reports_dir: Path,
    *,
    built_at: dt.datetime | None = None,
) -> ReportResult:
    """`manifold_comparison.md`: per project the verdict per format, every metric's effect with its
    interval, the effect on failure, the formats lacking an arm, a paired-seed plot of final_loss
    and the conclusions. `manifold_per_run` is the per-run frame the stats came from
    (`analysis.manifold.per_run_metrics`)."""
    reports_dir = Path(reports_dir)
    figures_dir = reports_dir / FIGURES_DIR
    lines = header(MANIFOLD_TITLE, f"Does {MANIFOLD_OPTIMIZER} help, for which format, and how sure can we be?", built_at)
    figures: list[Path] = []
    missing_all = manifold_analysis.formats_missing_an_arm(raw_runs) if not raw_runs.is_empty() else pl.DataFrame(schema={"project": pl.String, "fp8_format": pl.String})
    conclusion_lines: list[str] = []
    if manifold_stats.is_empty():
        lines += [f"No format has runs with both {STANDARD_OPTIMIZER} and {MANIFOLD_OPTIMIZER} yet, so there is nothing to compare.", ""]
    else:
        lines += [_methods_line(manifold_stats), ""]
    for project in projects(manifold_stats) if not manifold_stats.is_empty() else []:
        stats = format_order(in_project(manifold_stats, project))
        found = format_order(conclusions_analysis.manifold_conclusions(stats))
        missing = format_order(in_project(missing_all, project))
        per_format = stats.unique(["fp8_format"], keep="first", maintain_order=True)
        lines += [
            project_heading(project),
            "",
            f"`diff` = {MANIFOLD_OPTIMIZER} − {STANDARD_OPTIMIZER}, `diff_pct` = diff as a percentage of the {STANDARD_OPTIMIZER} mean. "
            f"Lower is better for every metric but `failure_step` (later failure is better). Excluded as not completed: "
            f"{format_cell(int(per_format['n_excluded_manifold'].sum()))} {MANIFOLD_OPTIMIZER} and "
            f"{format_cell(int(per_format['n_excluded_standard'].sum()))} {STANDARD_OPTIMIZER} runs.",
            "",
            "### Verdict per format (final loss)",
            "",
            data_table(found.select(VERDICT_COLUMNS), reports_dir, REPORT, "verdicts", project=project),
            "",
            "### Effect on failure",
            "",
            *(_failure_lines(found) or ["No failure statistics: the failure-modes table was not joined."]),
            "",
            "### Formats lacking an arm",
            "",
        ]
        if missing.is_empty():
            lines += [f"Every format has runs with both {STANDARD_OPTIMIZER} and {MANIFOLD_OPTIMIZER}.", ""]
        else:
            lines += [
                *(
                    f"- {escape_markdown(r['fp8_format'])}: {format_cell(r['n_standard'])} {STANDARD_OPTIMIZER} and "
                    f"{format_cell(r['n_manifold'])} {MANIFOLD_OPTIMIZER} runs, no {escape_markdown(r['missing_optimizer'])} arm, so no comparison."
                    for r in missing.iter_rows(named=True)
                ),
                "",
            ]
        lines += [
            "### Effects per metric",
            "",
            *(_effect_sentence(r) for r in stats.iter_rows(named=True)),
            "",
            data_table(stats.select(MANIFOLD_COLUMNS), reports_dir, REPORT, "effects", project=project),
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
            lines += [figure_block(figure, reports_dir, "Final loss per seed, AdamW to ManifoldAdamW"), "", "One line per seed; a lone point is a seed with one arm only.", ""]
        if len(projects(manifold_stats)) > 1:
            conclusion_lines += [f"### Project {escape_markdown(project)}", ""]
        conclusion_lines += [*_conclusion_lines(found, missing), ""]
    lines += ["## Method", "", (manifold_analysis.__doc__ or "").strip(), ""]
    lines += ["## Data", "", data_summary(raw_runs, reports_dir, REPORT), ""]
    lines += ["## Conclusions", "", *(conclusion_lines or ["No format has runs with both optimizers yet, so there are no conclusions to draw.", ""])]
    return write_report(
        reports_dir, REPORT, MANIFOLD_TITLE,
        "Effect of ManifoldAdamW over AdamW per format: verdicts, effects in absolute and percent, effect on failure, formats lacking an arm.",
        "\n".join(lines), figures, figures[0] if figures else None,
    )

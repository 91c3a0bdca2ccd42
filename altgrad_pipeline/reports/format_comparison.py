"""ANAL-01 report `format_comparison.md`: the format ranking under the study's standard optimizer
(AdamW) first, ManifoldAdamW's own ranking beside it (never pooled), final losses with their
intervals, the sweet spot's lead over the runner-up, per-layer criteria with their spread, the
bit-stall ranking, loss curves, every run of the store, and the conclusions (conventions:
`reports.page`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from altgrad_pipeline.analysis import conclusions as conclusions_analysis
from altgrad_pipeline.analysis import rankings as rankings_analysis
from altgrad_pipeline.analysis.report_series import (
    CURVE_BAND_METHOD,
    ZOOM_FRACTION,
    loss_curve_summary,
    loss_curve_view,
)
from altgrad_pipeline.escaping import escape_markdown
from altgrad_pipeline.markdown import format_cell
from altgrad_pipeline.reports.figures import (
    figure_path,
    loss_curves_figure,
    score_heatmap_figure,
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
from altgrad_pipeline.reports.style import optimizer_order
from altgrad_pipeline.study import BASELINE_FORMAT, NO_FORMAT, STANDARD_OPTIMIZER

REPORT = "format_comparison"
#: Columns of the ranking by final loss; the interval and `n_completed` sit beside `final_loss`.
OVERALL_RANKING_COLUMNS = (
    "fp8_format", "rank", "is_sweet_spot", "final_loss", "final_loss_ci_low", "final_loss_ci_high", "final_loss_ci_method",
    "n_completed", "n_runs", "completion_rate", "improvement_over_baseline", "baseline_final_loss", "common_step", "last_k",
)
#: Columns of the bit-stall ranking (a ranking of its own, lower rate = better).
BIT_STALL_COLUMNS = ("fp8_format", "bit_stall_rank", "bit_stall_rate", "n_completed", "n_runs")
#: Columns of each per-layer-type table: each criterion with its spread over runs and its rank.
LAYER_RANKING_COLUMNS = (
    "fp8_format", "rank", "is_sweet_spot", "mean_rank", "grad_snr", "grad_snr_std", "grad_snr_rank", "sparsity", "sparsity_std",
    "sparsity_rank", "norm_cov", "norm_cov_std", "norm_cov_rank", "n_completed", "n_runs",
)
#: Columns of the per-run results table (the run column is the linked, escaped name).
RUN_RESULT_COLUMNS = (
    "fp8_format", "optimizer", "seed", "state", "outcome", "last_step", "max_steps", "final_loss", "best_loss", "final_bit_stall_rate",
)
FORMAT_COMPARISON_TITLE = "FP8 format comparison (ANAL-01)"
#: A run's final loss in the per-run table is the mean of its last this many finite losses.
RUN_RESULTS_LAST_K = 10


def _ranked_count() -> pl.Expr:
    """How many candidates hold a rank in the row's (project, optimizer, layer type): the "of N" of a rank."""
    return pl.col("rank").count().over("project", "optimizer", "layer_type").alias("n_ranked")


def _rank_text(mean_rank: float | None, n_ranked: int) -> str:
    return f"mean rank {mean_rank:.1f} of {n_ranked}" if mean_rank is not None else "no rank"


def _interval(low: float | None, high: float | None, method: str | None) -> str:
    if low is None or high is None:
        return f"no interval ({escape_markdown(method or 'too few runs')})"
    return f"95% CI [{format_cell(low)}, {format_cell(high)}], {escape_markdown(method)}"


def _lead_sentence(row: dict) -> str:
    """The sweet spot's lead over the runner-up, and whether the interval clears 0."""
    if row["runner_up"] is None:
        return "No other format has enough completed runs to be a runner-up, so there is no lead to measure."
    lead = (
        f"It leads the runner-up **{escape_markdown(row['runner_up'])}** by {format_cell(row['lead_over_runner_up'])} nats "
        f"({_interval(row['lead_ci_low'], row['lead_ci_high'], row['lead_ci_method'])})"
    )
    if row["lead_beyond_noise"]:
        return f"{lead}: the interval lies above 0, so the lead is beyond seed noise."
    return f"{lead}: the interval includes 0, so the lead is within seed noise."


def _sweet_spot_lines(ranking: pl.DataFrame) -> list[str]:
    overall = ranking.filter(pl.col("layer_type") == "all")
    candidates = overall.filter(pl.col("fp8_format") != BASELINE_FORMAT)
    lines: list[str] = []
    spots = overall.filter(pl.col("is_sweet_spot"))
    if candidates.is_empty():
        lines.append("- Overall: no FP8 runs yet, so there is no sweet spot.")
    elif spots.is_empty():
        lines.append(
            f"- Overall: none of the {format_cell(candidates.height)} FP8 formats has {rankings_analysis.MIN_SWEET_SPOT_RUNS} "
            "completed runs yet, so there is no sweet spot."
        )
    for row in spots.iter_rows(named=True):
        lines.append(
            f"- Overall: **{escape_markdown(row['fp8_format'])}**, final loss {format_cell(row['final_loss'])} "
            f"({_interval(row['final_loss_ci_low'], row['final_loss_ci_high'], row['final_loss_ci_method'])}; "
            f"mean over n = {format_cell(row['n_completed'])} completed of {format_cell(row['n_runs'])} runs at step "
            f"{format_cell(row['common_step'])}), {BASELINE_FORMAT} {format_cell(row['baseline_final_loss'])}. {_lead_sentence(row)}"
        )
    layers = ranking.filter(pl.col("layer_type") != "all").with_columns(_ranked_count())
    for layer_type in sorted(set(layers["layer_type"])):
        best = layers.filter((pl.col("layer_type") == layer_type) & pl.col("is_sweet_spot"))
        if best.is_empty():
            lines.append(f"- {escape_markdown(layer_type)}: no FP8 format with {rankings_analysis.MIN_SWEET_SPOT_RUNS} completed runs has a rank yet.")
            continue
        named = ", ".join(
            f"**{escape_markdown(r['fp8_format'])}** ({_rank_text(r['mean_rank'], r['n_ranked'])}, n = {format_cell(r['n_completed'])} completed runs)"
            for r in best.iter_rows(named=True)
        )
        lines.append(f"- {escape_markdown(layer_type)}: {named}")
    return lines


def _optimizer_section(
    ranking: pl.DataFrame, optimizer: str, project: str | None, runs: pl.DataFrame, learning_curves: pl.DataFrame | pl.LazyFrame, reports_dir: Path
) -> tuple[list[str], list[Path]]:
    """The rankings, curves and heatmap of one optimizer's runs (ranked among themselves only)."""
    figures: list[Path] = []
    parts = (optimizer,)
    role = "the study's method" if optimizer == STANDARD_OPTIMIZER else f"ranked among its own runs, beside {STANDARD_OPTIMIZER}, never pooled"
    overall = format_order(ranking.filter(pl.col("layer_type") == "all"))
    lines = [
        f"### {escape_markdown(optimizer)} ({role})",
        "",
        "#### Sweet spot",
        "",
        *_sweet_spot_lines(ranking),
        "",
        "#### Ranking by final loss",
        "",
        "`final_loss` is the mean over the `n_completed` runs beside it, with its 95% interval and the method that gave it; "
        "failed runs count only in `completion_rate`.",
        "",
        data_table(overall.select(OVERALL_RANKING_COLUMNS), reports_dir, REPORT, "ranking", project=project, parts=parts),
        "",
        "#### Bit-stall ranking",
        "",
        "Final cumulative bit-stall rate (share of weight updates too small to move the weight on the FP8 grid), mean over "
        "completed runs at the common step; rank 1 = the lowest rate.",
        "",
        data_table(
            overall.filter(pl.col("bit_stall_rank").is_not_null()).sort("bit_stall_rank", "fp8_format").select(BIT_STALL_COLUMNS),
            reports_dir, REPORT, "bit_stall_ranking", project=project, parts=parts,
        ),
        "",
        "#### Per-layer criteria",
        "",
        "Each criterion is the mean over completed runs with its sample standard deviation over those runs (`_std`) and its rank "
        "among the candidates; `mean_rank` is the mean of the three ranks: a rank, 1 = best, not a score.",
        "",
    ]
    layer_types = sorted(set(ranking["layer_type"]) - {"all"})
    for layer_type in layer_types:
        layer = format_order(ranking.filter(pl.col("layer_type") == layer_type))
        lines += [
            f"##### {escape_markdown(layer_type)}",
            "",
            data_table(layer.select(LAYER_RANKING_COLUMNS), reports_dir, REPORT, "layer_criteria", project=project, parts=(*parts, layer_type)),
            "",
        ]
    if not layer_types:
        lines += ["No per-layer metrics were logged by these runs yet, so there is no per-layer ranking.", ""]

    curves = loss_curve_summary(learning_curves, runs)
    curve_figure = loss_curves_figure(
        curves, loss_curve_view(curves),
        figure_path(reports_dir / FIGURES_DIR, "loss_curves", project=project or "all", fp8_format=optimizer),
        title=f"Training loss per format, {optimizer} (mean and 95% t-interval)",
    )
    lines += ["#### Loss curves", ""]
    if curve_figure is None:
        lines += ["No loss history with a step ≥ 1 for these runs yet.", ""]
    else:
        figures.append(curve_figure)
        lines += [
            figure_block(curve_figure, reports_dir, f"Training loss per format, {optimizer}"),
            "",
            f"Left: every step of every {escape_markdown(optimizer)} run of each format (failed runs up to their last finite loss), the y range "
            "set by the formats that train; a triangle marks where a diverging format leaves the frame. Right: the last "
            f"{ZOOM_FRACTION:.0%} of the steps all training formats reached. Band: {CURVE_BAND_METHOD}",
            "",
        ]
    heatmap = score_heatmap_figure(
        ranking,
        figure_path(reports_dir / FIGURES_DIR, "mean_rank_heatmap", project=project or "all", fp8_format=optimizer),
        score_column="mean_rank",
        score_label="mean rank (1 = best)",
        layer_types=layer_types,
        lower_is_better=True,
    )
    lines += ["#### Mean rank per layer type", ""]
    if heatmap is None:
        lines += ["No FP8 format has a per-layer rank yet (it needs completed runs with per-layer metrics).", ""]
    else:
        figures.append(heatmap)
        lines += [
            figure_block(heatmap, reports_dir, f"Mean rank per format and layer type, {optimizer}"),
            "",
            "Each cell: the mean of the format's three criterion ranks (1 = best) and n_completed, the completed runs behind it.",
            "",
        ]
    return lines, figures


def _results_table(results: pl.DataFrame, raw_runs: pl.DataFrame, reports_dir: Path, project: str | None) -> str:
    """Every run of the project: its escaped name linked to its run page, then its numbers."""
    lookup = run_lookup(raw_runs)
    ordered = format_order(results)
    rows = [
        [run_link(lookup.get(r["run_id"], {"run_id": r["run_id"], "name": r["name"]}), reports_dir), *(format_cell(r[c]) for c in RUN_RESULT_COLUMNS)]
        for r in ordered.iter_rows(named=True)
    ]
    markdown = table(["run", *RUN_RESULT_COLUMNS], rows)
    return data_table(ordered.select("run_id", "name", "url", *RUN_RESULT_COLUMNS), reports_dir, REPORT, "run_results", project=project, markdown=markdown)


def _conclusion_lines(ranking: pl.DataFrame, failure_modes: pl.DataFrame) -> list[str]:
    """Best format per optimizer, formats to avoid, format per layer type, distance to BF16."""
    found = conclusions_analysis.conclusions(ranking, failure_modes)
    lines = ["**Best format per optimizer.**", ""]
    for optimizer in optimizer_order(ranking["optimizer"].unique()):
        best = found.best.filter(pl.col("optimizer") == optimizer)
        if best.is_empty():
            lines.append(f"- {escape_markdown(optimizer)}: no format has {rankings_analysis.MIN_SWEET_SPOT_RUNS} completed runs yet, so none is best.")
        for row in best.iter_rows(named=True):
            lines.append(
                f"- {escape_markdown(optimizer)}: **{escape_markdown(row['fp8_format'])}**, final loss {format_cell(row['final_loss'])} "
                f"(95% CI [{format_cell(row['final_loss_ci_low'])}, {format_cell(row['final_loss_ci_high'])}], "
                f"{format_cell(row['n_completed'])} of {format_cell(row['n_runs'])} runs completed). {_lead_sentence(row)}"
            )
    lines += ["", "**Formats to avoid.**", ""]
    if found.avoid.is_empty():
        lines.append("- None: no format failed in at least half of its decided runs.")
    for row in found.avoid.iter_rows(named=True):
        lines.append(
            f"- {escape_markdown(row['fp8_format'])} with {escape_markdown(row['optimizer'])}: completed {format_cell(row['n_completed'])} of "
            f"{format_cell(row['n_decided'])} runs; {format_cell(row['n_failed'])} failed ({format_cell(row['failure_modes'])}, "
            f"stage {format_cell(row['failure_stages'])}; see the failure-modes report)."
        )
    lines += ["", "**Recommended format per layer type** (best mean rank of the three per-layer criteria).", ""]
    per_layer = found.per_layer.join(
        ranking.with_columns(_ranked_count()).select("project", "optimizer", "layer_type", "fp8_format", "n_ranked"),
        on=["project", "optimizer", "layer_type", "fp8_format"], how="left",
    )
    if per_layer.is_empty():
        lines.append("- No per-layer ranking yet.")
    for layer_type in sorted(set(per_layer["layer_type"])):
        picks = "; ".join(
            f"**{escape_markdown(r['fp8_format'])}** with {escape_markdown(r['optimizer'])} ({_rank_text(r['mean_rank'], r['n_ranked'])})"
            for optimizer in optimizer_order(per_layer["optimizer"].unique())
            for r in per_layer.filter((pl.col("layer_type") == layer_type) & (pl.col("optimizer") == optimizer)).iter_rows(named=True)
        )
        lines.append(f"- {escape_markdown(layer_type)}: {picks}")
    lines += ["", f"**Distance to {BASELINE_FORMAT}** (final loss at the common step; positive = behind {BASELINE_FORMAT}).", ""]
    if found.vs_baseline.is_empty():
        lines.append(f"- No ranked format has a {BASELINE_FORMAT} baseline to compare with yet.")
    for optimizer in optimizer_order(found.vs_baseline["optimizer"].unique()):
        rows = found.vs_baseline.filter(pl.col("optimizer") == optimizer)
        step = format_cell(ranking["common_step"].drop_nulls().first())
        if (rows["trails_by"] > 0).all():
            lines.append(f"- {escape_markdown(optimizer)}: every FP8 format trails {BASELINE_FORMAT} at step {step}.")
        for row in rows.iter_rows(named=True):
            direction = "trails" if row["trails_by"] > 0 else "leads"
            lines.append(
                f"  - {escape_markdown(row['fp8_format'])} {direction} {BASELINE_FORMAT} by {format_cell(abs(row['trails_by']))} nats "
                f"({abs(row['trails_by_pct']):.1f}%): {format_cell(row['final_loss'])} vs {format_cell(row['baseline_final_loss'])}."
            )
    return lines


def write_format_comparison_report(
    format_rankings: pl.DataFrame,
    raw_runs: pl.DataFrame,
    learning_curves: pl.DataFrame | pl.LazyFrame,
    run_outcomes: pl.DataFrame,
    failure_modes: pl.DataFrame,
    reports_dir: Path,
    *,
    built_at: dt.datetime | None = None,
) -> ReportResult:
    """`format_comparison.md`: per project, the standard optimizer's rankings first and each other
    optimizer's beside them, the per-run results of every run and the conclusions."""
    reports_dir = Path(reports_dir)
    lines = header(FORMAT_COMPARISON_TITLE, "Which FP8 format is the sweet spot, overall and per layer type, under each optimizer?", built_at)
    figures: list[Path] = []
    runs = raw_runs.filter(pl.col("fp8_format") != NO_FORMAT)
    results = conclusions_analysis.run_results(raw_runs, learning_curves, run_outcomes, last_k=RUN_RESULTS_LAST_K) if not raw_runs.is_empty() else None
    if format_rankings.is_empty():
        lines += ["No runs with a known format have been ranked yet, so there is no comparison to show.", ""]
    conclusion_lines: list[str] = []
    for project in projects(format_rankings) if not format_rankings.is_empty() else []:
        ranking = in_project(format_rankings, project)
        lines += [project_heading(project), ""]
        for optimizer in optimizer_order(ranking["optimizer"].unique()):
            section, drawn = _optimizer_section(
                ranking.filter(pl.col("optimizer") == optimizer), optimizer, project,
                in_project(runs, project).filter(pl.col("optimizer") == optimizer), learning_curves, reports_dir,
            )
            lines += section
            figures += drawn
        if len(projects(format_rankings)) > 1:
            conclusion_lines += [f"### Project {escape_markdown(project)}", ""]
        conclusion_lines += [*_conclusion_lines(ranking, in_project(failure_modes, project)), ""]
    if results is not None:
        for project in projects(results):
            lines += [
                f"## Results per run{'' if project is None else ', project ' + escape_markdown(project)}",
                "",
                f"Every run of the store, whatever its format or outcome. `final_loss`: mean of the run's last {RUN_RESULTS_LAST_K} finite losses "
                "(up to its own last step, so it differs from the ranking's common-step value for longer runs); `best_loss`: its "
                "lowest finite loss; `final_bit_stall_rate`: its last cumulative bit-stall rate.",
                "",
                _results_table(in_project(results, project), raw_runs, reports_dir, project),
                "",
            ]
    lines += ["## Method", "", (rankings_analysis.__doc__ or "").strip(), "", f"Loss-curve band: {CURVE_BAND_METHOD}", ""]
    lines += ["## Data", "", data_summary(raw_runs, reports_dir, REPORT), ""]
    lines += ["## Conclusions", "", *(conclusion_lines or ["No runs have been ranked yet, so there are no conclusions to draw.", ""])]
    return write_report(
        reports_dir, REPORT, FORMAT_COMPARISON_TITLE,
        "Sweet-spot FP8 format per optimizer and per layer type, with intervals, bit-stall ranking, per-run results and conclusions.",
        "\n".join(lines), figures, figures[0] if figures else None,
    )

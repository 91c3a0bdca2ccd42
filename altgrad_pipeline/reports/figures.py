"""Figure builders for the three analysis reports.

Each builder takes already-computed frames, draws one PNG with the shared style (fixed colour per
format, labelled axes with units) and returns the path written, or None when there is nothing to
draw, so a report can say "no runs of this kind yet" instead of shipping an empty plot. The
numbers drawn come from small summary frames computed in analysis (`analysis.report_series`:
`loss_curve_summary`, `failure_trace_series`), so tests and report text can use exactly the
values the figure shows.

File names are built from format names (checked by `study.is_safe_format_name`) and fixed stems,
never from run names or tags.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.lines import Line2D

from altgrad_pipeline.analysis.report_series import LossCurveView
from altgrad_pipeline.analysis.stats import finite
from altgrad_pipeline.escaping import safe_filename
from altgrad_pipeline.reports.style import (
    checked_format_name,
    format_colour,
    new_figure,
    optimizer_line_style,
    optimizer_order,
    ordered_formats,
    plain_log_ticks,
    report_style,
    save_figure,
)

#: Failure-trace panels, one per series of `report_series.TRACE_SERIES`: panel title, y-axis label with unit.
TRACE_PANELS: dict[str, tuple[str, str]] = {
    "loss": ("training loss", "cross-entropy (nats)"),
    "grad_norm": ("gradient norm before clipping", "global L2 norm"),
    "bit_stall_rate": ("bit-stall rate (cumulative)", "fraction of weight updates"),
    "dead_neuron_frac_ex_embedding": ("dead neurons, embeddings excluded", "fraction of gradient elements"),
}


def figure_path(figures_dir: Path, stem: str, *, project: str | None = None, fp8_format: str | None = None) -> Path:
    """`<figures_dir>/<stem>[_<project>][_<format>].png`. The stem is fixed by the caller, the
    project name (free text from the tracker) goes through `safe_filename`, and the format name is
    checked, never cleaned."""
    parts = [checked_format_name(stem)]
    if project is not None:
        parts.append(safe_filename(project))
    if fp8_format is not None:
        parts.append(checked_format_name(fp8_format))
    return Path(figures_dir) / ("_".join(parts) + ".png")


def loss_curves_figure(summary: pl.DataFrame, view: LossCurveView | None, path: Path, *, title: str) -> Path | None:
    """Mean training loss per format with its confidence band, framed by `view`
    (`report_series.loss_curve_view`): left, every step on a log axis (step 0 cannot sit there and
    is left out) with the y range of the formats that train and a marker where a diverging format
    leaves the frame; right, the last steps on a linear axis, where the formats separate. None when
    no format has a finite mean at a step >= 1."""
    shown = summary.filter(pl.col("step") >= 1)
    if view is None or shown.is_empty():
        return None
    with report_style():
        figure, (overview, zoom) = new_figure(1, 2, panel_size=(6.0, 4.6))
        for fp8_format in ordered_formats(shown["fp8_format"].unique()):
            curve = shown.filter(pl.col("fp8_format") == fp8_format).sort("step")
            colour = format_colour(fp8_format)
            n_max = int(curve["n_runs"].max())
            band = curve.filter(pl.col("ci_low").is_not_null())
            for panel in (overview, zoom):
                panel.plot(curve["step"], curve["mean"], color=colour, label=f"{fp8_format} (n ≤ {n_max})" if panel is overview else None)
                if not band.is_empty():
                    panel.fill_between(band["step"], band["ci_low"], band["ci_high"], color=colour, alpha=0.18, linewidth=0)
        overview.set_xscale("log")
        plain_log_ticks(overview.xaxis)
        overview.set_ylim(*view.y_range)
        for row in view.exits.iter_rows(named=True):
            colour = format_colour(row["fp8_format"])
            overview.plot([row["step"]], [view.y_range[1]], marker="^", markersize=10, color=colour, clip_on=False, linestyle="none")
            overview.annotate(
                f"{row['fp8_format']} diverges:\nleaves the frame at step {row['step']},\npeaks at {row['peak']:.3g}",
                (row["step"], view.y_range[1]), xytext=(8, -4), textcoords="offset points", va="top", color=colour, fontsize=9,
            )
        overview.set_xlabel("training step (log scale)")
        overview.set_ylabel("training loss (cross-entropy, nats)")
        overview.set_title("all steps")
        overview.legend(title="format (runs)", loc="lower left")
        zoom.set_xlim(*view.zoom_steps)
        zoom.set_ylim(*view.zoom_range)
        zoom.set_xlabel("training step")
        zoom.set_ylabel("training loss (cross-entropy, nats)")
        zoom.set_title(f"steps {view.zoom_steps[0]}-{view.zoom_steps[1]}, where the formats separate")
        figure.suptitle(title)
        return save_figure(figure, path)


def score_heatmap_figure(
    rankings: pl.DataFrame,
    path: Path,
    *,
    score_column: str,
    score_label: str,
    layer_types: list[str],
    lower_is_better: bool,
) -> Path | None:
    """Format × layer-type grid of `score_column`, each cell annotated with its value and
    n_completed (the runs it is averaged over).
    Brighter is better whichever direction the score runs. None when no cell has a finite score."""
    cells = rankings.filter(pl.col("layer_type").is_in(layer_types) & finite(pl.col(score_column)))
    if cells.is_empty():
        return None
    formats = ordered_formats(cells["fp8_format"].unique())
    columns = [t for t in layer_types if t in set(cells["layer_type"])]
    grid = np.full((len(formats), len(columns)), np.nan)
    labels: dict[tuple[int, int], str] = {}
    for row in cells.iter_rows(named=True):
        i, j = formats.index(row["fp8_format"]), columns.index(row["layer_type"])
        grid[i, j] = row[score_column]
        labels[(i, j)] = f"{row[score_column]:.3g}\nn={row['n_completed']}"
    with report_style():
        figure, axes = new_figure(panel_size=(1.3 * len(columns) + 2.5, 0.6 * len(formats) + 1.8))
        image = axes.imshow(grid, cmap="viridis_r" if lower_is_better else "viridis", aspect="auto")
        axes.grid(False)
        axes.set_xticks(range(len(columns)), columns)
        axes.set_yticks(range(len(formats)), formats)
        axes.set_xlabel("layer type")
        axes.set_ylabel("format")
        middle = np.nanmean(grid)
        for (i, j), text in labels.items():
            dark_cell = (grid[i, j] > middle) == lower_is_better
            axes.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark_cell else "black")
        colourbar = figure.colorbar(image, ax=axes)
        colourbar.set_label(score_label)
        axes.set_title(f"{score_label} per format and layer type")
        return save_figure(figure, path)


def failure_trace_figure(
    trace: pl.DataFrame,
    failed_runs: pl.DataFrame,
    reference_means: pl.DataFrame,
    path: Path,
    *,
    fp8_format: str,
) -> Path | None:
    """One panel per `TRACE_PANELS` series: each failed run of `fp8_format` (failed_runs: run_id,
    optimizer, failure_step, trend_start_step; a thin line per run, an X at its collapse) beside
    the mean of the completed runs of each reference format per optimizer (reference_means:
    `report_series.reference_trace_means`; thick lines), the line style telling the optimizers
    apart and the trend window shaded. `trace` should already end each failed run at its own collapse
    (`failures.trace_to_collapse`). None when the failed runs logged none of the series."""
    failed_ids = failed_runs["run_id"].to_list()
    failed_trace = trace.filter(pl.col("run_id").is_in(failed_ids))
    if failed_trace.is_empty():
        return None
    collapse_steps = [s for s in failed_runs["failure_step"].to_list() if s is not None]
    last_step = max(collapse_steps) if collapse_steps else int(failed_trace["step"].max())
    window_starts = [s for s in failed_runs["trend_start_step"].to_list() if s is not None]
    optimizers = optimizer_order(failed_runs["optimizer"].unique())
    references = reference_means.filter(pl.col("optimizer").is_in(optimizers))
    reference_formats = ordered_formats(references["fp8_format"].unique())
    colour = format_colour(fp8_format)
    with report_style():
        figure, axes = new_figure(2, 2)
        for panel, (series, (title, unit)) in zip(axes.flat, TRACE_PANELS.items(), strict=True):
            values = trace.filter((pl.col("series") == series) & (pl.col("step") <= last_step))
            for run in failed_runs.iter_rows(named=True):
                line = values.filter((pl.col("run_id") == run["run_id"]) & finite(pl.col("value"))).sort("step")
                if line.is_empty():
                    continue
                style = optimizer_line_style(run["optimizer"])
                panel.plot(line["step"], line["value"], color=colour, linewidth=1.0, linestyle=style)
                panel.plot(line["step"][-1:], line["value"][-1:], color=colour, marker="X", markersize=7, linestyle="none")
            for reference_format in reference_formats:
                for optimizer in optimizers:
                    reference = references.filter(
                        (pl.col("fp8_format") == reference_format) & (pl.col("optimizer") == optimizer)
                        & (pl.col("series") == series) & (pl.col("step") <= last_step)
                    ).sort("step")
                    if not reference.is_empty():
                        panel.plot(reference["step"], reference["value"], color=format_colour(reference_format), linewidth=2.0, alpha=0.7,
                                   linestyle=optimizer_line_style(optimizer))
            if window_starts and collapse_steps:
                panel.axvspan(max(0, min(window_starts)), last_step, color="#999999", alpha=0.12, linewidth=0)
            if values.filter(pl.col("run_id").is_in(failed_ids)).is_empty():
                panel.text(0.5, 0.5, "not logged by the failed runs", ha="center", va="center", transform=panel.transAxes)
            panel.set_title(title)
            panel.set_xlabel("training step")
            panel.set_ylabel(unit)
        handles = [
            Line2D([], [], color=colour, linewidth=1.0, label=f"{fp8_format} (failed runs, thin)"),
            *(Line2D([], [], color=format_colour(f), linewidth=2.0, alpha=0.7, label=f"{f} (completed, mean)") for f in reference_formats),
            *(Line2D([], [], color="#444444", linestyle=optimizer_line_style(o), label=o) for o in optimizers),
            Line2D([], [], color=colour, marker="X", linestyle="none", label="collapse of a failed run"),
        ]
        figure.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)))
        figure.suptitle(f"{fp8_format}: key metrics up to each failed run's collapse")
        return save_figure(figure, path)


def paired_seed_figure(per_run: pl.DataFrame, path: Path, *, metric_label: str, optimizers: tuple[str, str]) -> Path | None:
    """One panel per format: each seed a line from its first-optimizer value to its
    second-optimizer value (per_run: fp8_format, optimizer, seed, value). Seeds with only one
    arm are drawn as a lone marker. None when there are no finite values."""
    values = per_run.filter(finite(pl.col("value")) & pl.col("optimizer").is_in(optimizers))
    if values.is_empty():
        return None
    formats = ordered_formats(values["fp8_format"].unique())
    ncols = min(3, len(formats))
    nrows = math.ceil(len(formats) / ncols)
    with report_style():
        figure, axes = new_figure(nrows, ncols)
        panels = list(np.atleast_1d(axes).flat)
        for panel, fp8_format in zip(panels, formats, strict=False):
            colour = format_colour(fp8_format)
            runs = values.filter(pl.col("fp8_format") == fp8_format)
            n_pairs = 0
            for _seed, seed_runs in runs.group_by("seed", maintain_order=True):
                by_optimizer = {o: seed_runs.filter(pl.col("optimizer") == o)["value"].mean() for o in optimizers}
                xs = [i for i, o in enumerate(optimizers) if by_optimizer[o] is not None]
                panel.plot(xs, [by_optimizer[optimizers[i]] for i in xs], color=colour, marker="o", alpha=0.8)
                n_pairs += len(xs) == 2
            panel.set_xticks([0, 1], list(optimizers))
            panel.set_xlim(-0.3, 1.3)
            panel.set_title(f"{fp8_format} ({n_pairs} paired seeds)")
            panel.set_xlabel("optimizer")
            panel.set_ylabel(metric_label)
        for panel in panels[len(formats):]:
            panel.set_visible(False)
        return save_figure(figure, path)


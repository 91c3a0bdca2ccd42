"""The media report `media.md` (+ `.html`): attention heads from W&B Tables, histograms over
training, and KL divergence / validation loss curves of a group of runs.

Every figure is drawn from all the values it names (no sampling) and its title names the run and
the step(s); file names are hashes of (run, key, step), never run names. With nothing of a kind
logged, the section says so instead of showing an empty plot.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import polars.selectors as cs
from matplotlib.colors import LogNorm, to_rgb
from matplotlib.patches import Patch

from altgrad_pipeline.analysis.attention import AttentionShape, attention_weights
from altgrad_pipeline.analysis.sweeps import run_labels
from altgrad_pipeline.escaping import escape_markdown, markdown_code
from altgrad_pipeline.ingest.media.tables import TableRows
from altgrad_pipeline.ingest.model import numeric_history
from altgrad_pipeline.markdown import format_cell
from altgrad_pipeline.notebook import differing_config
from altgrad_pipeline.reports.page import FIGURES_DIR, ReportResult, data_table, figure_block, header, write_report
from altgrad_pipeline.reports.style import FALLBACK_COLOURS, FORMAT_COLOURS, new_figure, report_style, save_figure

MEDIA_REPORT_NAME = "media"
MEDIA_REPORT_TITLE = "Logged media: attention heads, histograms, KL and validation loss"
#: One colour per head (or per config group): Okabe-Ito first, then the fallback colours.
PALETTE: tuple[str, ...] = tuple(c for c in FORMAT_COLOURS.values() if c != "#000000") + FALLBACK_COLOURS


@dataclass(frozen=True)
class MediaReportOptions:
    """What the media report draws. `runs`/`steps` None: every run that logged an attention
    table, at the last step it logged one. `curve_pattern` picks the keys of the KL / validation
    loss figure (a regular expression, searched); `histogram_keys` None draws every histogram key."""

    runs: tuple[str, ...] | None = None
    steps: tuple[int, ...] | None = None
    attention: AttentionShape = field(default_factory=AttentionShape)
    curve_pattern: str = r"(^|[/_.])kl($|[/_.])|kl_div|val_loss|val/loss"
    histogram_keys: tuple[str, ...] | None = None


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:16]


def _label(run_id: str, names: dict[str, str]) -> str:
    name = names.get(run_id)
    return f"{name} ({run_id})" if name and name != run_id else run_id


# ---------------------------------------------------------------- attention


def load_attention(media_tables: pl.DataFrame, options: MediaReportOptions) -> pl.DataFrame:
    """Attention weights of the chosen tables (see `MediaReportOptions`), read from their Parquet files."""
    index = media_tables
    if options.runs is not None:
        index = index.filter(pl.col("run_id").is_in(list(options.runs)))
    if options.steps is not None:
        index = index.filter(pl.col("step").is_in(list(options.steps)))
    frames = []
    for row in index.sort("run_id", "key", "step").iter_rows(named=True):
        path = Path(row["table_file"])
        if not path.exists():
            continue
        table = TableRows(row["run_id"], row["step"], row["key"], list(row["columns"]), pl.read_parquet(path))
        weights = attention_weights(table, options.attention)
        if weights is not None:
            frames.append(weights)
    if not frames:
        return pl.DataFrame()
    weights = pl.concat(frames)
    if options.steps is None:
        last = weights.group_by("run_id", "table_key").agg(pl.col("step").max())
        weights = weights.join(last, on=["run_id", "table_key", "step"], how="semi")
    return weights


def _matrix(head: pl.DataFrame) -> np.ndarray:
    """query × key matrix of one head (NaN where a cell was not logged)."""
    n_q, n_k = int(head["query"].max()) + 1, int(head["key_position"].max()) + 1
    matrix = np.full((n_q, n_k), np.nan)
    matrix[head["query"].to_numpy(), head["key_position"].to_numpy()] = head["weight"].to_numpy()
    return matrix


def attention_heads_figure(layer: pl.DataFrame, path: Path, *, title: str) -> Path:
    """One heatmap per head of one layer (same colour scale), query on y, key on x."""
    heads = sorted(layer["head"].unique().to_list(), key=lambda h: (len(h), h))
    ncols = min(4, len(heads))
    nrows = -(-len(heads) // ncols)
    vmin, vmax = float(layer["weight"].min()), float(layer["weight"].max())
    with report_style():
        figure, axes = new_figure(nrows, ncols, panel_size=(3.4, 3.0))
        flat = np.atleast_1d(axes).ravel()
        image = None
        for ax, head in zip(flat, heads):
            image = ax.imshow(_matrix(layer.filter(pl.col("head") == head)), cmap="viridis", vmin=vmin, vmax=vmax, origin="upper")
            ax.set_title(f"head {head}")
            ax.set_xlabel("key position")
            ax.set_ylabel("query position")
            ax.grid(False)
        for ax in flat[len(heads) :]:
            ax.set_visible(False)
        figure.colorbar(image, ax=list(flat[: len(heads)]), label="attention weight", shrink=0.8)
        figure.suptitle(title)
        return save_figure(figure, path)


def attention_channels_figure(layer: pl.DataFrame, path: Path, *, title: str) -> Path:
    """The heads of one layer in one picture, each head in its own colour: a cell's hue is the
    mix of the head colours weighted by each head's weight there (each head scaled by its own
    maximum), its strength the largest scaled weight (white: no head attends)."""
    heads = sorted(layer["head"].unique().to_list(), key=lambda h: (len(h), h))
    matrices = [_matrix(layer.filter(pl.col("head") == h)) for h in heads]
    n_q, n_k = max(m.shape[0] for m in matrices), max(m.shape[1] for m in matrices)
    scaled = np.zeros((len(heads), n_q, n_k))
    for index, matrix in enumerate(matrices):
        peak = np.nanmax(matrix) if np.isfinite(matrix).any() else 0.0
        scaled[index, : matrix.shape[0], : matrix.shape[1]] = np.nan_to_num(matrix / peak) if peak > 0 else 0.0
    colours = np.array([to_rgb(PALETTE[i % len(PALETTE)]) for i in range(len(heads))])
    total = scaled.sum(axis=0)
    mix = np.einsum("hqk,hc->qkc", scaled, colours) / np.where(total > 0, total, 1.0)[..., None]
    strength = scaled.max(axis=0)[..., None]
    picture = np.clip(1.0 - strength * (1.0 - mix), 0.0, 1.0)
    with report_style():
        figure, ax = new_figure(panel_size=(6.0, 5.0))
        ax.imshow(picture, origin="upper", interpolation="nearest")
        ax.grid(False)
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
        ax.set_title(title)
        handles = [Patch(color=PALETTE[i % len(PALETTE)], label=f"head {h}") for i, h in enumerate(heads)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="colour = head")
        return save_figure(figure, path)


# ---------------------------------------------------------------- histograms


def histogram_heatmap_figure(series: pl.DataFrame, path: Path, *, title: str) -> Path:
    """Step × bin heatmap of one histogram key of one run: each logged step is a column drawn
    with its own bin edges (W&B re-bins every step), counts on a log colour scale."""
    series = series.sort("step")
    steps = series["step"].to_numpy().astype(float)
    if len(steps) > 1:
        middles = (steps[1:] + steps[:-1]) / 2
        bounds = np.concatenate([[steps[0] - (middles[0] - steps[0])], middles, [steps[-1] + (steps[-1] - middles[-1])]])
    else:
        bounds = np.array([steps[0] - 0.5, steps[0] + 0.5])
    positive = [c for counts in series["counts"].to_list() for c in counts if c > 0]
    norm = LogNorm(vmin=min(positive), vmax=max(positive)) if positive else None
    with report_style():
        figure, ax = new_figure()
        mesh = None
        for i, (edges, counts) in enumerate(zip(series["bin_edges"].to_list(), series["counts"].to_list())):
            values = np.ma.masked_less_equal(np.asarray(counts, dtype=float)[:, None], 0)
            mesh = ax.pcolormesh([bounds[i], bounds[i + 1]], edges, values, cmap="magma_r", norm=norm, shading="flat")
        if mesh is not None and norm is not None:
            figure.colorbar(mesh, ax=ax, label="count per bin (log scale)")
        ax.set_xlabel("step")
        ax.set_ylabel("value (bin edges as logged)")
        ax.grid(False)
        ax.set_title(title)
        return save_figure(figure, path)


# ---------------------------------------------------------------- KL / validation loss


#: Characters per legend line: long differing-config labels wrap instead of leaving the figure.
LEGEND_WRAP = 90


def _plain(value: object) -> str:
    """A config value as plain text for a legend (escaping happens where Markdown is written)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def config_labels(raw_runs: pl.DataFrame, run_ids: Sequence[str]) -> dict[str, str]:
    """run_id -> the setting that differs between these runs ("format=BF16, lr=0.001"), labelled
    as the sweep summary labels groups (`analysis.sweeps.run_labels`: derived format and
    optimizer, noise keys left out)."""
    runs = raw_runs.filter(pl.col("run_id").is_in(list(run_ids)))
    keys = [c.removeprefix("config.") for c in differing_config(runs).columns if c.startswith("config.")]
    plain = runs.with_columns((cs.starts_with("config.") & cs.float()).map_elements(_plain, return_dtype=pl.String))
    labels = run_labels(plain, keys) if runs.height else {}
    return {r: labels.get(r, "config unknown").replace("all runs", "same config") for r in run_ids}


def curves_figure(curves: pl.DataFrame, keys: list[str], labels: dict[str, str], names: dict[str, str], path: Path) -> Path:
    """One panel per key, one line per run, the colour shared by runs whose differing config is
    equal; one legend entry per colour, below the panels (run names are listed in the report)."""
    groups = sorted(set(labels.values()))
    colours = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    with report_style():
        figure, axes = new_figure(1, len(keys), panel_size=(8.0, 4.0 + 0.3 * len(groups)))
        for ax, key in zip(np.atleast_1d(axes).ravel(), keys):
            for run_id in sorted(labels):
                line = curves.filter((pl.col("run_id") == run_id) & (pl.col("key") == key)).sort("step")
                if not line.is_empty():
                    ax.plot(line["step"].to_numpy(), line["value"].to_numpy(), color=colours[labels[run_id]], linewidth=1.0)
            ax.set_title(key)
            ax.set_xlabel("training step")
            ax.set_ylabel(key)
        handles = [Patch(color=colours[g], label="\n".join(textwrap.wrap(g, LEGEND_WRAP))) for g in groups]
        figure.legend(handles=handles, loc="outside lower center", fontsize=8, title="config values that differ")
        figure.suptitle("colour = config values that differ between the runs")
        return save_figure(figure, path)


# ---------------------------------------------------------------- the report


def write_media_report(
    run_media: pl.DataFrame,
    media_tables: pl.DataFrame,
    histograms: pl.DataFrame,
    run_histories: pl.DataFrame | pl.LazyFrame,
    run_summaries: pl.DataFrame | pl.LazyFrame,
    raw_runs: pl.DataFrame,
    reports_dir: Path,
    *,
    options: MediaReportOptions = MediaReportOptions(),
    built_at: dt.datetime | None = None,
) -> ReportResult:
    """Write `media.md`/`media.html` and their figures; returns what was written. The numeric keys
    logged come from `run_summaries` (one row per run and numeric key), so the histories are read
    only for the rows of the keys the curve pattern picks (finding the keys in the histories read
    every row's key: 0.6 CPU-s for 14 M values)."""
    reports_dir = Path(reports_dir)
    figures_dir = reports_dir / FIGURES_DIR
    names = dict(raw_runs.select("run_id", "name").iter_rows()) if {"run_id", "name"} <= set(raw_runs.columns) else {}
    figures: list[Path] = []
    lines = header(MEDIA_REPORT_TITLE, "What the runs logged besides scalars: W&B Tables, histograms, and the KL / validation-loss curves.", built_at)

    lines += ["## Media logged", ""]
    if run_media.is_empty():
        lines += ["No media (tables, histograms, images) logged yet.", ""]
    else:
        counts = run_media.group_by("run_id", "media_type").agg(pl.len().alias("values"), pl.col("key").n_unique().alias("keys"),
                                                                pl.col("step").min().alias("first_step"), pl.col("step").max().alias("last_step"))  # fmt: skip
        lines += [data_table(counts.sort("run_id", "media_type"), reports_dir, MEDIA_REPORT_NAME, "media_logged"), ""]

    lines += ["## Attention heads", ""]
    weights = load_attention(media_tables, options)
    if media_tables.is_empty():
        lines += ["No tables logged yet.", ""]
    elif weights.is_empty():
        lines += [f"None of the {format_cell(media_tables.height)} logged tables has the attention shape (columns matching "
                  f"{markdown_code(options.attention.matrix_column)}, or `head`, `query`, `key`, `weight`).", ""]  # fmt: skip
    else:
        for (run_id, step, table_key, layer), frame in weights.group_by("run_id", "step", "table_key", "layer", maintain_order=True):
            where = f"run {_label(run_id, names)}, step {step}, table {table_key}, layer {layer}"
            stem = _digest(run_id, step, table_key, layer)
            heads = attention_heads_figure(frame, figures_dir / f"media_attention_heads_{stem}.png", title=f"Attention per head\n{where}")
            channels = attention_channels_figure(frame, figures_dir / f"media_attention_channels_{stem}.png", title=f"Heads as colours\n{where}")
            figures += [heads, channels]
            lines += [f"### {escape_markdown(where)}", "", f"{format_cell(frame['head'].n_unique())} heads, "
                      f"{format_cell(frame.height)} weights (every logged cell drawn).", "",  # fmt: skip
                      figure_block(heads, reports_dir, f"attention per head, {where}"), "",
                      figure_block(channels, reports_dir, f"heads as colour channels, {where}"), ""]  # fmt: skip

    lines += ["## Histograms over training", ""]
    chosen = histograms if options.histogram_keys is None else histograms.filter(pl.col("key").is_in(list(options.histogram_keys)))
    if chosen.is_empty():
        lines += ["No histograms logged yet.", ""]
    for (run_id, key), series in chosen.group_by("run_id", "key", maintain_order=True):
        steps = series["step"]
        where = f"{key}, run {_label(run_id, names)}, steps {steps.min()}–{steps.max()} ({series.height} logged)"
        path = histogram_heatmap_figure(series, figures_dir / f"media_histogram_{_digest(run_id, key)}.png", title=f"Histogram of {where}")
        figures.append(path)
        lines += [f"### {escape_markdown(where)}", "", figure_block(path, reports_dir, f"histogram heatmap of {where}"), ""]

    lines += ["## KL divergence and validation loss", ""]
    pattern = re.compile(options.curve_pattern)
    logged = run_summaries.lazy().select(pl.col("key").unique()).collect().to_series().to_list()
    keys = sorted(k for k in logged if pattern.search(k))
    if not keys:
        lines += [f"No history key matches {markdown_code(options.curve_pattern)} yet.", ""]
    else:
        curves = numeric_history(run_histories).filter(pl.col("key").is_in(keys)).select("run_id", "step", "key", "value").collect()
        run_ids = sorted(curves["run_id"].unique().to_list())
        labels = config_labels(raw_runs, run_ids)
        path = curves_figure(curves, keys, labels, names, figures_dir / f"media_curves_{_digest(*keys, *run_ids)}.png")
        figures.append(path)
        described = ", ".join(escape_markdown(_label(r, names)) for r in run_ids)
        lines += [f"Keys {', '.join(markdown_code(k) for k in keys)} of {format_cell(len(run_ids))} runs ({described}), "
                  f"every logged step; colour = config values that differ between them.", "",  # fmt: skip
                  figure_block(path, reports_dir, "KL divergence and validation loss over training"), ""]
        lines += [f"- {escape_markdown(_label(r, names))}: {escape_markdown(labels[r])}" for r in run_ids] + [""]
    return write_report(reports_dir, MEDIA_REPORT_NAME, MEDIA_REPORT_TITLE, "Attention heads from W&B Tables, histograms over training, KL and validation loss.",
                  "\n".join(lines), figures, figures[0] if figures else None)  # fmt: skip

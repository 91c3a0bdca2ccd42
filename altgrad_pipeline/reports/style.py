"""One look for every report figure: a fixed colour per FP8 format (E5M2 is the same blue in the
loss curves, the failure traces and the paired-seed plot), fonts readable at 100% zoom, and one
way to save a figure.

Figures are built as `matplotlib.figure.Figure` objects on the Agg canvas, never through the
pyplot registry, so report assets can run in any thread or process without a display and
without leaking open figures.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import matplotlib
import matplotlib.image

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedFormatter, FixedLocator, FuncFormatter, NullFormatter, NullLocator  # noqa: E402

from altgrad_pipeline import atomic  # noqa: E402
from altgrad_pipeline.reports.twin_renderer import PngSvgCanvas  # noqa: E402
from altgrad_pipeline.study import (  # noqa: E402
    BASELINE_FORMAT,
    MANIFOLD_OPTIMIZER,
    SAFE_FORMAT_NAME,
    STANDARD_OPTIMIZER,
    is_safe_format_name,
)

#: Fixed colours (Okabe-Ito, readable for colour-blind readers); the baseline is black.
FORMAT_COLOURS: dict[str, str] = {
    BASELINE_FORMAT: "#000000",
    "E5M2": "#0072B2",
    "E3M4": "#E69F00",
    "E1M6": "#009E73",
    "E0M7": "#D55E00",
    "E7M0": "#CC79A7",
}

#: Colours for formats not listed above (E2M5, E4M3, ...), picked by a hash of the name so a
#: format keeps its colour across figures, runs and processes.
FALLBACK_COLOURS: tuple[str, ...] = ("#56B4E9", "#8C564B", "#7F7F7F", "#BCBD22", "#17BECF", "#9467BD", "#F0E442")

#: Every figure is also written in this vector format beside its PNG (same stem).
VECTOR_FORMAT = "svg"

#: Rendering resolution of saved PNGs: sharp enough on a laptop screen, small enough to embed.
FIGURE_DPI = 110

#: zlib level of saved PNGs: the same pixels at 3 as at PIL's default 6, in 60% of the encoding CPU
#: (the bench study's nine figures 0.31 -> 0.19 CPU-s) and 2% more bytes.
PNG_COMPRESS_LEVEL = 3

#: Figure sizes in inches: one panel, and one panel of a multi-panel grid.
SINGLE_PANEL_SIZE = (7.5, 4.5)
GRID_PANEL_SIZE = (4.2, 3.0)

REPORT_RC: dict[str, object] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
    # Titles and legends carry run names and metric keys (untrusted text): a `$` must stay a `$`,
    # never start a mathtext formula that mangles the label or fails to render.
    "text.parse_math": False,
    # The same figure gives the same SVG bytes (ids do not change from build to build).
    "svg.hashsalt": "altgrad-pipeline",
}


def format_colour(fp8_format: str | None) -> str:
    """The colour of a format in every figure; unknown formats get a stable fallback colour."""
    name = "" if fp8_format is None else str(fp8_format)
    if name in FORMAT_COLOURS:
        return FORMAT_COLOURS[name]
    digest = int(hashlib.sha256(name.encode()).hexdigest(), 16)
    return FALLBACK_COLOURS[digest % len(FALLBACK_COLOURS)]


#: Line style per optimizer wherever both appear in one figure (colour stays the format's).
OPTIMIZER_LINE_STYLES: dict[str, str] = {STANDARD_OPTIMIZER: "-", MANIFOLD_OPTIMIZER: "--"}


def optimizer_line_style(optimizer: str | None) -> str:
    """Solid for the standard optimizer, dashed for ManifoldAdamW, dotted for any other."""
    return OPTIMIZER_LINE_STYLES.get(str(optimizer), ":")


def optimizer_order(optimizers: Iterable[str | None]) -> list[str]:
    """The standard optimizer first (the study's method), then ManifoldAdamW, then others by name."""
    present = {str(o) for o in optimizers if o is not None}
    return [o for o in OPTIMIZER_LINE_STYLES if o in present] + sorted(present - set(OPTIMIZER_LINE_STYLES))


def ordered_formats(formats: Iterable[str | None]) -> list[str]:
    """Baseline first, then the known formats in study order, then any others alphabetically, so
    legends and table rows list formats the same way everywhere."""
    known = list(FORMAT_COLOURS)
    present = {str(f) for f in formats if f is not None}
    return [f for f in known if f in present] + sorted(present - set(known))


def checked_format_name(fp8_format: str) -> str:
    """A format name that is safe inside a file name; anything else is refused, not cleaned, because
    a format name that needs cleaning means the upstream parsing went wrong."""
    if not is_safe_format_name(fp8_format):
        raise ValueError(f"format name {fp8_format!r} does not match {SAFE_FORMAT_NAME.pattern}")
    return fp8_format


@contextlib.contextmanager
def report_style() -> Iterator[None]:
    """The report fonts and grid, applied while a figure is drawn (global rcParams untouched)."""
    with matplotlib.rc_context(REPORT_RC):
        yield


def new_figure(nrows: int = 1, ncols: int = 1, *, panel_size: tuple[float, float] | None = None) -> tuple[Figure, object]:
    """A figure with an nrows x ncols grid of axes (squeezed like pyplot.subplots); call inside
    `report_style()` so the axes pick up the report fonts."""
    width, height = panel_size or (SINGLE_PANEL_SIZE if nrows * ncols == 1 else GRID_PANEL_SIZE)
    figure = blank_figure((width * ncols, height * nrows))
    axes = figure.subplots(nrows, ncols, squeeze=True)
    return figure, axes


def blank_figure(size: tuple[float, float]) -> Figure:
    """A figure of `size` inches with no axes yet, for layouts `new_figure`'s grid cannot express
    (a figure made with axes and cleared costs their construction for nothing)."""
    return Figure(figsize=size, layout="constrained")


def plain_log_ticks(axis: object) -> None:
    """Tick labels of a log-scaled axis as plain numbers (1, 10, 100): matplotlib's log labels are
    mathtext (`$\\mathdefault{10^{0}}$`), which `text.parse_math` off would print literally."""
    axis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def save_figure(figure: Figure, path: Path, *, dpi: int = FIGURE_DPI) -> Path:
    """Write the figure as PNG and its `VECTOR_FORMAT` twin beside it (parents created), then
    release it; returns the PNG path (the one reports show inline).

    The figure is laid out once, on the Agg canvas at the PNG's dpi, and drawn once for both files
    (`PngSvgRenderer`): the PNG has the bytes `savefig` gives, and the SVG is the same picture in
    points at the PNG's positions (its own text metrics would move them by up to 6 pt, which no
    reader sees, for a second layout and a second draw, each a third of a save). `savefig` on a
    figure with a layout engine would also lay it out inside a whole draw with rendering disabled
    before drawing it again, so the engine is run here and the figure drawn without one."""
    path = Path(path)
    layout = figure.get_layout_engine()
    # No engine means none only while the rc asks for no default layout (else it installs one).
    no_default_layout = {"figure.autolayout": False, "figure.constrained_layout.use": False}
    with matplotlib.rc_context({"svg.hashsalt": REPORT_RC["svg.hashsalt"], **no_default_layout}):
        figure.set_layout_engine(None)
        figure.dpi = dpi
        for colour in ("facecolor", "edgecolor"):
            # The figure's background as `savefig` paints it.
            saved_colour = matplotlib.rcParams[f"savefig.{colour}"]
            if saved_colour != "auto":
                getattr(figure, f"set_{colour}")(saved_colour)
        # Each file whole or not at all: a kill or a full disk never leaves half a PNG or SVG. The
        # SVG is written while the figure is drawn, the PNG from the drawn pixels after it.
        with atomic.atomic_path(path.with_suffix(f".{VECTOR_FORMAT}")) as svg_tmp, open(svg_tmp, "w", encoding="utf-8") as svg_file:
            renderer = PngSvgCanvas(figure, svg_file, metadata={"Date": None}).get_renderer()
            if layout is not None:
                layout.execute(figure)
            freeze_ticks(figure)
            figure.draw(renderer)
            renderer.finalize()
        with atomic.atomic_path(path) as png_tmp:
            matplotlib.image.imsave(
                png_tmp,
                renderer.agg.buffer_rgba(),
                format="png",
                origin="upper",
                dpi=dpi,
                pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL},
            )
    figure.clear()
    return path


def freeze_ticks(figure: Figure) -> None:
    """Fix every axis' tick positions and labels to the ones its locator and formatter give now.
    Once a figure is laid out its view limits and axes sizes are final, so these are the ticks both
    draws would compute, each several times per axis."""
    for axes in figure.axes:
        for axis in (axes.xaxis, axes.yaxis):
            for ticker, locations, set_locator, set_formatter in (
                (axis.major, axis.get_majorticklocs, axis.set_major_locator, axis.set_major_formatter),
                (axis.minor, axis.get_minorticklocs, axis.set_minor_locator, axis.set_minor_formatter),
            ):
                if isinstance(ticker.locator, NullLocator) or (isinstance(ticker.locator, FixedLocator) and isinstance(ticker.formatter, FixedFormatter)):
                    continue
                positions = locations()
                labels = FixedFormatter(ticker.formatter.format_ticks(positions))
                labels.set_offset_string(ticker.formatter.get_offset())
                set_locator(FixedLocator(positions))
                set_formatter(labels)

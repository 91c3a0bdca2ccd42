"""One draw of a figure for both of its files: the PNG's pixels and the SVG twin.

`savefig` draws the whole artist tree once per file, and each draw repeats matplotlib's per-artist
Python work (tick updates, text layout, transforms). `PngSvgRenderer` takes every drawing primitive
of one draw at the PNG's dpi and hands it to matplotlib's Agg renderer unchanged and to its SVG
renderer in points (pixel coordinates scaled by 72 / dpi; text positions, top-down for both, too),
so a figure is drawn once for both files. Line widths, dashes, hatches and font sizes are in points
in every primitive and need no scaling.
"""

from __future__ import annotations

from typing import IO

import numpy as np
from matplotlib import cbook
from matplotlib.backend_bases import FigureCanvasBase, GraphicsContextBase, RendererBase
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.backends.backend_svg import RendererSVG
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, fontManager, get_font
from matplotlib.transforms import Affine2D, TransformedPath

#: The SVG's unit: a point, 1/72 inch.
POINTS_PER_INCH = 72


class PngSvgRenderer(RendererBase):
    """A renderer drawing into `agg` (the PNG's pixels at the figure's dpi) and `svg` (written to
    `svg_file`) at once. Artists see the Agg renderer's answers (dpi, text metrics, canvas size,
    image options), so the pixels are the ones `savefig` draws. Artists drawn rasterised (a colour
    bar's mesh of many colours) reach the SVG as an image at the PNG's dpi, as in `savefig`'s SVG;
    agg filters are not supported (no report figure uses one)."""

    def __init__(self, figure: Figure, svg_file: IO[str], *, metadata: dict[str, object]) -> None:
        super().__init__()
        # The canvas' integral size (a size a hair under a whole pixel rounds up), as `savefig` sizes it.
        width, height = figure.canvas.get_width_height(physical=True)
        self.agg = RendererAgg(width, height, figure.dpi)
        width_in, height_in = figure.get_size_inches()
        self.svg = RendererSVG(
            width_in * POINTS_PER_INCH, height_in * POINTS_PER_INCH, svg_file, image_dpi=figure.dpi, metadata=metadata
        )
        self._scale = POINTS_PER_INCH / figure.dpi
        self._to_points = Affine2D().scale(self._scale)
        self._height_pixels = height_in * figure.dpi
        self._font_height_metrics: dict[FontProperties, tuple[float, float, float] | tuple[None, None, None]] = {}
        #: While an artist is drawn rasterised: the SVG's picture of it, in pixels.
        self._raster: RendererAgg | None = None

    # What artists ask of a renderer: the Agg renderer's answers.
    def flipy(self) -> bool:
        return self.agg.flipy()

    def get_canvas_width_height(self) -> tuple[float, float]:
        return self.agg.get_canvas_width_height()

    def points_to_pixels(self, points):
        return self.agg.points_to_pixels(points)

    def get_text_width_height_descent(self, s, prop, ismath):
        return self.agg.get_text_width_height_descent(s, prop, ismath)

    def _get_font_height_metrics(self, prop):
        """A font's ascent, descent and line gap in pixels, which `Text` needs for every layout of
        every text: measured once per font and size here (the hook matplotlib's PDF and PS
        renderers provide), where `Text` would otherwise look the font up and read two of its
        tables each time. The values are the ones `Text` computes itself, from the same tables."""
        metrics = self._font_height_metrics.get(prop)
        if metrics is None:
            metrics = self._font_height_metrics[prop.copy()] = font_height_metrics(prop, self.agg.dpi)
        return metrics

    def get_image_magnification(self) -> float:
        return self.agg.get_image_magnification()

    def option_image_nocomposite(self) -> bool:
        return self.agg.option_image_nocomposite()

    def option_scale_image(self) -> bool:
        return self.agg.option_scale_image()

    # Groups exist in the SVG only (Agg ignores them), and not inside a rasterised artist.
    def open_group(self, s, gid=None) -> None:
        if self._raster is None:
            self.svg.open_group(s, gid)

    def close_group(self, s) -> None:
        if self._raster is None:
            self.svg.close_group(s)

    # Drawing primitives: to Agg as given, to the SVG in points.
    def draw_path(self, gc, path, transform, rgbFace=None) -> None:
        for pixels in self._pixels():
            pixels.draw_path(gc, path, transform, rgbFace)
        if self._raster is None:
            self.svg.draw_path(self._in_points(gc), path, self._points(transform), rgbFace)

    def draw_markers(self, gc, marker_path, marker_trans, path, trans, rgbFace=None) -> None:
        for pixels in self._pixels():
            pixels.draw_markers(gc, marker_path, marker_trans, path, trans, rgbFace)
        if self._raster is None:
            self.svg.draw_markers(
                self._in_points(gc), marker_path, self._points(marker_trans), path, self._points(trans), rgbFace
            )

    def draw_path_collection(
        self,
        gc,
        master_transform,
        paths,
        all_transforms,
        offsets,
        offset_trans,
        facecolors,
        edgecolors,
        linewidths,
        linestyles,
        antialiaseds,
        urls,
        offset_position,
        *,
        hatchcolors=None,
    ) -> None:
        collection = (paths, all_transforms, offsets)
        styles = (facecolors, edgecolors, linewidths, linestyles, antialiaseds, urls, offset_position)
        # Agg's default for no hatch colours is an empty array, not None.
        hatches = {} if hatchcolors is None else {"hatchcolors": hatchcolors}
        for pixels in self._pixels():
            pixels.draw_path_collection(gc, master_transform, *collection, offset_trans, *styles, **hatches)
        if self._raster is None:
            self.svg.draw_path_collection(
                self._in_points(gc),
                self._points(master_transform),
                *collection,
                self._points(offset_trans),
                *styles,
                **hatches,
            )

    def draw_quad_mesh(
        self,
        gc,
        master_transform,
        meshWidth,
        meshHeight,
        coordinates,
        offsets,
        offsetTrans,
        facecolors,
        antialiased,
        edgecolors,
    ) -> None:
        mesh = (meshWidth, meshHeight, coordinates, offsets)
        for pixels in self._pixels():
            pixels.draw_quad_mesh(gc, master_transform, *mesh, offsetTrans, facecolors, antialiased, edgecolors)
        if self._raster is None:
            self.svg.draw_quad_mesh(
                self._in_points(gc),
                self._points(master_transform),
                *mesh,
                self._points(offsetTrans),
                facecolors,
                antialiased,
                edgecolors,
            )

    def draw_gouraud_triangles(self, gc, triangles_array, colors_array, transform) -> None:
        for pixels in self._pixels():
            pixels.draw_gouraud_triangles(gc, triangles_array, colors_array, transform)
        if self._raster is None:
            self.svg.draw_gouraud_triangles(self._in_points(gc), triangles_array, colors_array, self._points(transform))

    def draw_image(self, gc, x, y, im, transform=None) -> None:
        # Agg does not scale images (`option_scale_image`), so `transform` is always None here
        # and `im` is already resampled at the PNG's dpi: the SVG sizes it by its `image_dpi`.
        for pixels in self._pixels():
            pixels.draw_image(gc, x, y, im)
        if self._raster is None:
            self.svg.draw_image(self._in_points(gc), x * self._scale, y * self._scale, im)

    def draw_text(self, gc, x, y, s, prop, angle, ismath=False, mtext=None) -> None:
        for pixels in self._pixels():
            pixels.draw_text(gc, x, y, s, prop, angle, ismath, mtext)
        if self._raster is None:
            self.svg.draw_text(self._in_points(gc), x * self._scale, y * self._scale, s, prop, angle, ismath, mtext)

    def draw_tex(self, gc, x, y, s, prop, angle, *, mtext=None) -> None:
        for pixels in self._pixels():
            pixels.draw_tex(gc, x, y, s, prop, angle, mtext=mtext)
        if self._raster is None:
            self.svg.draw_tex(self._in_points(gc), x * self._scale, y * self._scale, s, prop, angle, mtext=mtext)

    def start_rasterizing(self) -> None:
        """Draw what follows into a second Agg canvas for the SVG (matplotlib's `MixedModeRenderer`
        does the same for `savefig`'s SVG, at the same dpi: the PNG's)."""
        self._raster = RendererAgg(self.agg.width, self.agg.height, self.agg.dpi)

    def stop_rasterizing(self) -> None:
        """Put what was drawn rasterised into the SVG as one image cropped to its pixels, placed as
        `MixedModeRenderer` places it."""
        raster, self._raster = self._raster, None
        pixels = np.asarray(raster.buffer_rgba())
        rows, columns = cbook._get_nonzero_slices(pixels[..., 3])
        cropped = pixels[rows, columns]
        if cropped.size:
            self.svg.draw_image(
                self.svg.new_gc(),
                columns.start * self._scale,
                (self._height_pixels - rows.stop) * self._scale,
                cropped[::-1],
            )

    def finalize(self) -> None:
        """Close the SVG document (its clip paths and hatches are written last)."""
        self.svg.finalize()

    def _pixels(self) -> tuple[RendererAgg, ...]:
        """The pixel canvases a primitive goes to: the PNG's, and the SVG's raster while rasterising."""
        return (self.agg,) if self._raster is None else (self.agg, self._raster)

    def _points(self, transform):
        """`transform` (to the PNG's pixels) followed by the scaling to points, as one affine
        where it is affine."""
        scaled = transform + self._to_points
        return scaled.frozen() if transform.is_affine else scaled

    def _in_points(self, gc: GraphicsContextBase) -> GraphicsContextBase:
        """A copy of `gc` with its clip rectangle and clip path in points (its widths already
        are); the original goes to Agg untouched."""
        scaled = GraphicsContextBase()
        scaled.copy_properties(gc)
        rectangle = gc.get_clip_rectangle()
        if rectangle is not None:
            scaled.set_clip_rectangle(rectangle.transformed(self._to_points))
        path, affine = gc.get_clip_path()
        scaled.set_clip_path(None if path is None else TransformedPath(path, affine + self._to_points))
        return scaled


def font_height_metrics(prop: FontProperties, dpi: float) -> tuple[float, float, float] | tuple[None, None, None]:
    """Ascent, descent and line gap of the font `prop` selects at `dpi`, from its OS/2 or hhea
    table as `Text._get_layout` reads them (None: neither table, `Text` measures "lp" instead)."""
    font = get_font(fontManager._find_fonts_by_props(prop))
    for table_name, line_gap_key, ascent_key, descent_key in (
        ("OS/2", "sTypoLineGap", "sTypoAscender", "sTypoDescender"),
        ("hhea", "lineGap", "ascent", "descent"),
    ):
        table = font.get_sfnt_table(table_name)
        if table is None:
            continue
        scale = 1 / font.get_sfnt_table("head")["unitsPerEm"] * prop.get_size_in_points() * dpi / 72
        return table[ascent_key] * scale, -table[descent_key] * scale, table[line_gap_key] * scale
    return None, None, None


class PngSvgCanvas(FigureCanvasBase):
    """The canvas of a figure being saved as PNG and SVG: its renderer is the `PngSvgRenderer`
    that draws both, so a layout engine measures text with the renderer that draws it and the
    draw finds every text extent the layout measured in that renderer's metric cache."""

    def __init__(self, figure: Figure, svg_file: IO[str], *, metadata: dict[str, object]) -> None:
        super().__init__(figure)
        self.renderer = PngSvgRenderer(figure, svg_file, metadata=metadata)

    def get_renderer(self) -> PngSvgRenderer:
        return self.renderer

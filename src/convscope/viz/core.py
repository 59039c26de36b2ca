"""What every convscope figure shares: Agg figures, colour scales, tile mosaics, PNG output.

A figure is a plain :class:`matplotlib.figure.Figure` on its own Agg canvas, never ``pyplot``:
pyplot keeps every figure in a global registry until it is closed, picks a GUI backend from
the environment and is not thread-safe. Here nothing global refers to a figure, so dropping
it frees it, and rendering never depends on ``$DISPLAY`` or ``MPLBACKEND``.

Grids of tiles (kernels, feature maps, class means) are drawn as ONE image per grid: the tiles
are packed into a mosaic with NaN gutters (drawn in the background colour) rather than one
``Axes`` per tile, which keeps a 512-tile figure as cheap as a 16-tile one.

Colour: signed values (kernels) use :data:`DIVERGING` on a symmetric scale, so zero sits at
the map's centre; non-negative values (ReLU activations) use :data:`SEQUENTIAL` from zero.
PNGs carry no timestamp or software tag, so the same figure gives the same bytes.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from convscope.files import atomic_path
from convscope.validation import ValidationError, check_float, check_int

#: signed values (kernels, raw feature maps): centred on zero
DIVERGING = "RdBu_r"
#: non-negative values (ReLU activations, pooled maps, class means): from zero up
SEQUENTIAL = "viridis"
#: gutters between tiles (NaN in a mosaic) take the figure background colour
GAP_COLOR = "white"


@dataclass
class Plot:
    """A rendered figure plus the facts the manifest records about it.

    ``figure`` is None for a file written by other means (the evolution GIF). ``shape`` is the
    shape of the data drawn, ``grid`` the (rows, cols) of its tiles, ``cmap``/``vmin``/``vmax``
    the main image's one colour scale, ``extra`` anything kind-specific (dead filters, ...).
    """

    figure: Figure | None
    kind: str
    layer: str | None
    shape: tuple[int, ...]
    grid: tuple[int, int] | None
    cmap: str
    vmin: float
    vmax: float
    extra: dict[str, Any] = field(default_factory=dict)


def new_figure(
    width_in: float, height_in: float, dpi: int = 100, layout: str | None = "constrained"
) -> Figure:
    """A figure on its own Agg canvas, exactly ``width_in*dpi x height_in*dpi`` pixels.

    ``constrained`` keeps titles, labels and colour bars apart without resizing the figure;
    ``None`` is for :class:`MosaicLayout` figures, whose margins are known in advance.
    """
    check_float(width_in, "width_in", min=0, min_open=True)
    check_float(height_in, "height_in", min=0, min_open=True)
    fig = Figure(figsize=(width_in, height_in), dpi=check_int(dpi, "dpi", min=1), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def close_figure(fig: Figure) -> None:
    """Release a written figure's Agg frame buffer now.

    A Figure and its canvas refer to each other, so the cyclic collector frees them some time
    later; dropping the renderer returns the largest piece (4 bytes per pixel) at once.
    ``fig.clear()`` is not called: it rebuilds every axis and costs as much as drawing.
    """
    if getattr(fig.canvas, "renderer", None) is not None:
        fig.canvas.renderer = None


def figure_rgb(fig: Figure) -> np.ndarray:
    """Render ``fig`` (this runs its layout) and return its pixels as (height, width, 3) uint8.

    Every text is drawn as plain text: run names, params and tags reach titles and legends,
    and matplotlib would read a ``$...$`` in one as mathtext (and fail on a stray ``$``).
    convscope's figures write no mathtext of their own.
    """
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_parse_math(False)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _save_png(fig: Figure | Plot, dest, close: bool) -> tuple[int, int]:
    from PIL import Image

    fig = fig.figure if isinstance(fig, Plot) else fig
    try:
        # One render, encoded by Pillow: savefig would render twice with a layout engine and
        # add a software tag. No "tight" bbox, so the PNG keeps the figure's pixel size.
        rgb = figure_rgb(fig)
        Image.fromarray(rgb).save(dest, format="PNG", compress_level=6)
        return rgb.shape[1], rgb.shape[0]
    finally:
        if close:
            close_figure(fig)


def write_png(
    fig: Figure | Plot, path: str | os.PathLike[str], *, close: bool = True
) -> tuple[int, int]:
    """Save ``fig`` as a PNG through :func:`convscope.files.atomic_path`; (width, height) px.

    The figure is closed afterwards unless ``close=False``: a stage draws many figures.
    """
    if Path(path).suffix.lower() != ".png":
        raise ValidationError(f"path={str(path)!r} is not allowed: expected a .png file")
    with atomic_path(path) as tmp:
        return _save_png(fig, tmp, close)


def png_bytes(fig: Figure | Plot, *, close: bool = True) -> bytes:
    """``fig`` encoded as PNG in memory (for reports that embed their images)."""
    buf = io.BytesIO()
    _save_png(fig, buf, close)
    return buf.getvalue()


# --------------------------------------------------------------------------- colour scales


def _extreme(arrays: Sequence[np.ndarray], fn) -> float:
    m = max((float(fn(a)) for a in map(np.asarray, arrays) if a.size), default=0.0)
    if not math.isfinite(m):
        raise ValidationError("cannot build a colour scale from non-finite values")
    return m


def symmetric_limits(*arrays: np.ndarray) -> tuple[float, float]:
    """(-m, m) with m = max |value|: zero sits at the colormap's centre; all zero -> (-1, 1)."""
    m = _extreme(arrays, lambda a: np.nanmax(np.abs(a)))
    return (-m, m) if m > 0 else (-1.0, 1.0)


def sequential_limits(*arrays: np.ndarray) -> tuple[float, float]:
    """(0, max) for non-negative data; (0, 1) when everything is zero."""
    m = _extreme(arrays, np.nanmax)
    return 0.0, (m if m > 0 else 1.0)


def activation_scale(*arrays: np.ndarray) -> tuple[str, float, float]:
    """(cmap, vmin, vmax) for activations: sequential from zero when every value is >= 0.

    A tanh or linear layer has negative outputs, which a scale from zero would clip; those get
    the diverging, zero-centred scale.
    """
    lo = min((float(np.nanmin(a)) for a in map(np.asarray, arrays) if a.size), default=0.0)
    if lo < 0:
        return (DIVERGING, *symmetric_limits(*arrays))
    return (SEQUENTIAL, *sequential_limits(*arrays))


# --------------------------------------------------------------------------- mosaics


def grid_shape(n: int, max_cols: int | None = None) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for ``n`` tiles (16 -> 4 x 4, 10 -> 3 x 4)."""
    n = check_int(n, "n", min=1)
    cols = min(math.ceil(math.sqrt(n)), max_cols or n)
    return math.ceil(n / cols), cols


def tile_mosaic(tiles: np.ndarray, gap: int = 1) -> np.ndarray:
    """Pack ``tiles`` shaped (rows, cols, h, w) into one 2-D float array with NaN gutters.

    Tile (r, c) starts at row ``r*(h+gap)`` and column ``c*(w+gap)``; NaN tiles stay blank.
    """
    tiles = np.asarray(tiles, dtype=np.float64)
    rows, cols, h, w = tiles.shape
    padded = np.full((rows, cols, h + gap, w + gap), np.nan)
    padded[:, :, :h, :w] = tiles
    mosaic = padded.transpose(0, 2, 1, 3).reshape(rows * (h + gap), cols * (w + gap))
    return mosaic[: mosaic.shape[0] - gap, : mosaic.shape[1] - gap]


def tiles_from_channels(maps: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Arrange (h, w, c) channel maps row-major into (rows, cols, h, w), NaN-filling the rest."""
    h, w, c = maps.shape
    flat = np.full((rows * cols, h, w), np.nan)
    flat[:c] = np.moveaxis(maps, 2, 0)
    return flat.reshape(rows, cols, h, w)


def tile_centres(n: int, size: int, gap: int = 1) -> np.ndarray:
    """Mosaic coordinates of the centres of ``n`` tiles of ``size`` pixels (for tick labels)."""
    return np.arange(n) * (size + gap) + (size - 1) / 2


def text_width(labels, fontsize: float) -> float:
    """Inches taken by the longest of ``labels`` at ``fontsize`` points (generous estimate)."""
    return max((len(str(t)) for t in labels), default=0) * 0.62 * fontsize / 72


def text_height(fontsize: float, lines: int = 1) -> float:
    """Inches taken by ``lines`` lines of text at ``fontsize`` points."""
    return lines * 1.35 * fontsize / 72


@dataclass
class MosaicLayout:
    """Where a mosaic figure's parts go: rectangles ``[left, bottom, width, height]`` in figure
    fractions for the mosaic, its colour bar and an optional side panel (the input image)."""

    figsize: tuple[float, float]
    ax: list[float]
    cax: list[float] | None
    side: list[float] | None
    title_y: float = 1.0

    def figure(self, dpi: int = 100) -> Figure:
        return new_figure(*self.figsize, dpi=dpi, layout=None)

    def axes(self, fig: Figure):
        """(mosaic axes, colour-bar axes or None, side axes or None) added to ``fig``."""
        return tuple(None if r is None else fig.add_axes(r) for r in (self.ax, self.cax, self.side))

    def title(self, fig: Figure, text: str, fontsize: float = 9):
        return fig.text(0.5, self.title_y, text, ha="center", va="top", fontsize=fontsize)


def mosaic_layout(
    mosaic_hw: tuple[int, int],
    *,
    cell_in: float = 0.16,
    left: float = 0.2,
    right: float = 0.2,
    top: float = 0.2,
    bottom: float = 0.2,
    colorbar: bool = True,
    side_in: float = 0.0,
    title: str | None = None,
    title_fontsize: float = 9,
    min_mosaic_in: float = 1.4,
    min_in: tuple[float, float] = (3.0, 2.2),
    max_in: tuple[float, float] = (16.0, 12.0),
) -> MosaicLayout:
    """Lay out a mosaic at ``cell_in`` inches per data pixel (less if it would not fit).

    Margins are in inches: ``left``/``bottom`` hold tick labels, ``top`` anything above the
    mosaic plus the ``title``'s lines; the colour bar (0.15 in plus 0.75 in of labels) sits
    right of the mosaic. A small mosaic (the lines model's 3x3 maps) is enlarged to
    ``min_mosaic_in`` on its longer side, and the figure is at least as wide as the title.
    Whole figure sizes are rounded to 1/100 inch, so pixel sizes are whole at common dpis.
    """
    mh, mw = (int(d) for d in mosaic_hw)
    lines = title.split("\n") if title else []
    top += text_height(title_fontsize, len(lines)) + 0.1 if lines else 0.0
    bar = 0.9 if colorbar else 0.0
    gap_side = 0.15 if side_in else 0.0
    fixed_w, fixed_h = left + side_in + gap_side + bar + right, top + bottom
    scale = max(cell_in, min_mosaic_in / max(mh, mw))
    scale = min(scale, (max_in[0] - fixed_w) / mw, (max_in[1] - fixed_h) / mh)
    img_w, img_h = mw * scale, mh * scale
    fig_w = round(max(min_in[0], text_width(lines, title_fontsize) + 0.3, fixed_w + img_w), 2)
    fig_h = round(max(min_in[1], fixed_h + img_h), 2)
    x0 = left + side_in + gap_side + (fig_w - fixed_w - img_w) / 2
    y0 = bottom + (fig_h - fixed_h - img_h) / 2

    def box(x: float, height: float, width: float = 0.15) -> list[float]:
        height = min(height, fig_h - fixed_h)
        y = bottom + (fig_h - fixed_h - height) / 2
        return [x / fig_w, y / fig_h, width / fig_w, height / fig_h]

    return MosaicLayout(
        (fig_w, fig_h),
        ax=[x0 / fig_w, y0 / fig_h, img_w / fig_w, img_h / fig_h],
        cax=box(x0 + img_w + 0.15, max(img_h, 1.2)) if colorbar else None,
        side=box(x0 - gap_side - side_in, side_in, side_in) if side_in else None,
        title_y=1 - 0.08 / fig_h,
    )


def show_mosaic(ax, mosaic: np.ndarray, cmap: str, vmin: float, vmax: float):
    """``imshow`` a mosaic with nearest-neighbour pixels and background-coloured gutters."""
    import matplotlib as mpl

    cm = mpl.colormaps[cmap].with_extremes(bad=GAP_COLOR)
    im = ax.imshow(mosaic, cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest", resample=False)
    ax.spines[:].set_visible(False)
    return im


@dataclass
class TileFigure:
    """A grid of equally sized tiles on one colour scale, with labels: every grid figure.

    ``tiles`` is (rows, cols, h, w), NaN where no tile is. Labelled either by tick labels
    (``col_labels`` under the columns, rotated when ``rotate_cols``; ``row_labels`` left of
    the rows; ``xlabel``/``ylabel``) or, for wrapped grids whose rows mean nothing, by
    ``tile_labels`` written above each tile (row-major). ``side_image`` is drawn in grey left
    of the grid (the input of a feature-map figure). The other fields go into the :class:`Plot`.
    """

    tiles: np.ndarray
    cmap: str
    vmin: float
    vmax: float
    title: str
    kind: str
    layer: str | None
    shape: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)
    col_labels: Sequence[str] = ()
    row_labels: Sequence[str] = ()
    rotate_cols: bool = False
    xlabel: str | None = None
    ylabel: str | None = None
    tile_labels: Sequence[str] = ()
    side_image: np.ndarray | None = None
    bar_label: str = "weight"
    cell_in: float = 0.16

    @property
    def rows(self) -> int:
        return self.tiles.shape[0]

    @property
    def cols(self) -> int:
        return self.tiles.shape[1]

    def mosaic(self) -> np.ndarray:
        return tile_mosaic(self.tiles)

    def layout(self, colorbar: bool = True) -> MosaicLayout:
        """Figure size and axes positions, with margins sized for this grid's labels."""
        mh, mw = self.mosaic().shape
        if self.tile_labels:  # one extra gutter row above the tiles holds the top labels
            return mosaic_layout(
                (mh + 1, mw), cell_in=self.cell_in, title=self.title, colorbar=colorbar
            )
        cols = text_width(self.col_labels, 6) if self.rotate_cols else text_height(6)
        return mosaic_layout(
            (mh, mw),
            cell_in=self.cell_in,
            title=self.title,
            colorbar=colorbar,
            side_in=1.6 if self.side_image is not None else 0.0,
            top=text_height(9) + 0.1 if self.side_image is not None else 0.2,
            left=text_width(self.row_labels, 7) + text_height(8) * bool(self.ylabel) + 0.2,
            bottom=cols + text_height(8) * bool(self.xlabel) + 0.2,
        )

    def draw(self, fig: Figure, layout: MosaicLayout):
        """Draw onto ``fig``; returns the image and title artists (an animation swaps them)."""
        ax, cax, side = layout.axes(fig)
        if side is not None:
            img = self.side_image
            lo, hi = min(0.0, img.min()), max(1.0, img.max())
            side.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            side.set_title("input", fontsize=9)
            side.set_axis_off()
        im = show_mosaic(ax, self.mosaic(), self.cmap, self.vmin, self.vmax)
        h, w = self.tiles.shape[2:]
        if self.tile_labels:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylim(self.rows * (h + 1) - 1.5, -1.5)  # the gutter row above the top tiles
            for i, label in enumerate(self.tile_labels):
                r, c = divmod(i, self.cols)
                x, y = c * (w + 1) + (w - 1) / 2, r * (h + 1) - 0.6
                ax.text(x, y, label, ha="center", va="bottom", fontsize=7)
        else:
            rotation = 90 if self.rotate_cols else 0
            ax.set_xticks(
                tile_centres(self.cols, w), self.col_labels, fontsize=6, rotation=rotation
            )
            ax.set_yticks(tile_centres(self.rows, h), self.row_labels, fontsize=7)
            ax.tick_params(length=0)
            ax.set_xlabel(self.xlabel or "", fontsize=8)
            ax.set_ylabel(self.ylabel or "", fontsize=8)
        title = layout.title(fig, self.title)
        if cax is not None:
            fig.colorbar(im, cax=cax, label=self.bar_label)
        return im, title

    def plot(self, dpi: int = 100) -> Plot:
        """Render the figure; the returned :class:`Plot` carries the manifest facts."""
        layout = self.layout()
        fig = layout.figure(dpi)
        self.draw(fig, layout)
        grid = (self.rows, self.cols)
        facts = (self.kind, self.layer, tuple(self.shape), grid, self.cmap, self.vmin, self.vmax)
        return Plot(fig, *facts, self.extra)

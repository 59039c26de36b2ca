"""Rendering core shared by every convscope figure: Agg figures, tile mosaics, atomic PNG output.

Why this module exists rather than ``pyplot``: pyplot keeps every figure it creates in a
global registry until ``plt.close`` is called, selects a GUI backend from the environment and
is not safe to use from several threads. A pipeline stage that draws hundreds of figures needs
none of that. Here a figure is a plain :class:`matplotlib.figure.Figure` attached to an Agg
canvas: nothing global refers to it, so dropping the last reference frees it, and rendering
never depends on ``$DISPLAY`` or ``MPLBACKEND``.

Grids of tiles (kernels, feature maps, class means) are drawn as ONE image per grid: the
tiles are packed into a mosaic array with NaN gutters between them (NaN is drawn in the
figure's background colour), instead of one ``Axes`` per tile. A 16 x 32 kernel grid is then one
``imshow`` instead of 512 axes, which is what keeps every figure of the pipeline well under a
second and its memory small.
"""

from __future__ import annotations

import gc
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from convscope.files import atomic_path

__all__ = [
    "DIVERGING",
    "GAP_COLOR",
    "SEQUENTIAL",
    "Plot",
    "close_figure",
    "figure_rgb",
    "grid_shape",
    "new_figure",
    "sequential_limits",
    "symmetric_limits",
    "tile_mosaic",
    "write_png",
]

#: signed values (kernels, raw feature maps): centred on zero
DIVERGING = "RdBu_r"
#: non-negative values (ReLU activations, pooled maps, class means): from zero up
SEQUENTIAL = "viridis"
#: gutters between tiles (NaN in a mosaic) take the figure background colour
GAP_COLOR = "white"


@dataclass
class Plot:
    """A rendered figure plus the facts the manifest records about it.

    Attributes:
        figure: the Agg-backed figure (call :func:`write_png` or :func:`close_figure`).
        kind: what the figure shows (``kernels``, ``feature_maps``, ...).
        layer: the network layer shown, or None for figures that span layers.
        shape: shape of the data drawn (e.g. the HWIO kernel, the NHWC activation of one image).
        grid: (rows, cols) of the tile grid, or None when the figure has no grid.
        cmap, vmin, vmax: the colour scale of the main image (one scale per figure).
        extra: anything kind-specific (dead filters, epochs shown, max difference, ...).
    """

    figure: Figure
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
    """A figure on its own Agg canvas; nothing global holds it.

    ``constrained`` layout keeps titles, tick labels and colour bars from overlapping without
    changing the figure's size, so the PNG is exactly ``width_in*dpi x height_in*dpi`` pixels.
    ``layout=None`` is for figures placed by :class:`MosaicLayout`: measuring every label for
    the layout engine costs about as much as drawing it, and the mosaic figures, which a stage
    draws by the dozen, know their margins in advance.
    """
    if not (width_in > 0 and height_in > 0):
        raise ValueError(f"figure size must be positive, got {width_in} x {height_in} inches")
    if isinstance(dpi, bool) or int(dpi) != dpi or dpi < 1:
        raise ValueError(f"dpi must be a positive int, got {dpi!r}")
    fig = Figure(figsize=(width_in, height_in), dpi=int(dpi), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def close_figure(fig: Figure) -> None:
    """Drop a written figure's frame buffer now; the rest goes with the figure's last reference.

    Without pyplot there is no registry to close: once the caller drops the figure it is
    garbage. A Figure and its canvas refer to each other, though, so it is the cyclic collector
    that frees them, some allocations later; releasing the Agg renderer at once returns the
    largest piece (the RGBA frame buffer, 4 bytes per pixel) without waiting. ``fig.clear()``
    is deliberately not called: it rebuilds every axis's ticks and costs as much as drawing.
    """
    canvas = fig.canvas
    if getattr(canvas, "renderer", None) is not None:
        canvas.renderer = None


def _pixel_size(fig: Figure) -> tuple[int, int]:
    w, h = fig.get_size_inches() * fig.dpi
    return int(round(w)), int(round(h))


def write_png(
    fig: Figure | Plot, path: str | os.PathLike[str], *, close: bool = True
) -> tuple[int, int]:
    """Save ``fig`` (a Figure or a :class:`Plot`) as a PNG atomically (temp file, then rename).

    Returns the image's (width, height) in pixels. The figure is closed afterwards unless
    ``close=False``, because a stage draws many figures and keeping them would grow memory.
    """
    if isinstance(fig, Plot):
        fig = fig.figure
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    try:
        from PIL import Image

        # One render: draw the canvas (this runs the layout) and encode its RGB buffer with
        # Pillow. ``savefig`` would render twice with a layout engine (a dry run, then the
        # real one). No "tight" bbox either, so the PNG keeps the figure's exact pixel size,
        # which the manifest records and the tests check.
        rgb = figure_rgb(fig)
        with atomic_path(path) as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG", compress_level=6)
        return rgb.shape[1], rgb.shape[0]
    finally:
        if close:
            close_figure(fig)


def png_bytes(fig: Figure | Plot, *, close: bool = True) -> bytes:
    """``fig`` encoded as PNG in memory (for reports that embed their images)."""
    import io

    from PIL import Image

    if isinstance(fig, Plot):
        fig = fig.figure
    try:
        buf = io.BytesIO()
        Image.fromarray(figure_rgb(fig)).save(buf, format="PNG", compress_level=6)
        return buf.getvalue()
    finally:
        if close:
            close_figure(fig)


def figure_rgb(fig: Figure) -> np.ndarray:
    """Render ``fig`` and return its pixels as a (height, width, 3) uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def collect_garbage() -> None:
    """Run the cyclic collector; a stage calls it between batches of figures."""
    gc.collect()


# --------------------------------------------------------------------------- colour scales


def symmetric_limits(*arrays: np.ndarray) -> tuple[float, float]:
    """(-m, m) with m = max |value| over ``arrays``: zero sits at the colormap's centre.

    An all-zero input gives (-1, 1) rather than a degenerate (0, 0) scale.
    """
    m = 0.0
    for a in arrays:
        a = np.asarray(a)
        if a.size:
            m = max(m, float(np.nanmax(np.abs(a))))
    if not math.isfinite(m):
        raise ValueError("cannot build a colour scale from non-finite values")
    if m == 0.0:
        m = 1.0
    return -m, m


def sequential_limits(*arrays: np.ndarray) -> tuple[float, float]:
    """(0, max) for non-negative data; (0, 1) when everything is zero."""
    m = 0.0
    for a in arrays:
        a = np.asarray(a)
        if a.size:
            m = max(m, float(np.nanmax(a)))
    if not math.isfinite(m):
        raise ValueError("cannot build a colour scale from non-finite values")
    return 0.0, (m if m > 0 else 1.0)


def activation_scale(*arrays: np.ndarray) -> tuple[str, float, float]:
    """Colour scale for activations: sequential from zero when all values are >= 0.

    ReLU and sigmoid outputs are non-negative and read best on a sequential map starting at
    zero. A tanh (or linear) layer has negative outputs; forcing those onto a scale starting at
    zero would clip them, so they get the diverging, zero-centred scale instead.
    """
    lo = min((float(np.nanmin(a)) for a in map(np.asarray, arrays) if a.size), default=0.0)
    if lo < 0:
        return (DIVERGING, *symmetric_limits(*arrays))
    return (SEQUENTIAL, *sequential_limits(*arrays))


# --------------------------------------------------------------------------- mosaics


def grid_shape(n: int, max_cols: int | None = None) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for ``n`` tiles (16 -> 4 x 4, 32 -> 5 x 7... )."""
    if n < 1:
        raise ValueError(f"n must be >= 1 tiles, got {n}")
    cols = math.ceil(math.sqrt(n))
    if max_cols is not None:
        cols = min(cols, max_cols)
    rows = math.ceil(n / cols)
    return rows, cols


def tile_mosaic(tiles: np.ndarray, gap: int = 1) -> np.ndarray:
    """Pack ``tiles`` shaped (rows, cols, h, w) into one 2-D float array with NaN gutters.

    The result is ``(rows*(h+gap)-gap, cols*(w+gap)-gap)``; tile (r, c) starts at row
    ``r*(h+gap)`` and column ``c*(w+gap)``. Missing tiles can be passed as NaN.
    """
    tiles = np.asarray(tiles, dtype=np.float64)
    if tiles.ndim != 4:
        raise ValueError(f"tiles must be shaped (rows, cols, h, w), got shape {tiles.shape}")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    rows, cols, h, w = tiles.shape
    padded = np.full((rows, cols, h + gap, w + gap), np.nan)
    padded[:, :, :h, :w] = tiles
    # (rows, h+gap, cols, w+gap): rows of tiles stacked, then tiles side by side.
    mosaic = padded.transpose(0, 2, 1, 3).reshape(rows * (h + gap), cols * (w + gap))
    return mosaic[: mosaic.shape[0] - gap, : mosaic.shape[1] - gap]


def tiles_from_channels(maps: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Arrange (h, w, c) channel maps row-major into (rows, cols, h, w), NaN-filling the rest."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"maps must be shaped (h, w, channels), got shape {maps.shape}")
    h, w, c = maps.shape
    if c > rows * cols:
        raise ValueError(f"{c} channels do not fit a {rows} x {cols} grid")
    flat = np.full((rows * cols, h, w), np.nan)
    flat[:c] = maps.transpose(2, 0, 1)
    return flat.reshape(rows, cols, h, w)


def tile_centres(n: int, size: int, gap: int = 1) -> np.ndarray:
    """Mosaic coordinates of the centres of ``n`` tiles of ``size`` pixels (for tick labels)."""
    return np.arange(n) * (size + gap) + (size - 1) / 2


def mosaic_figsize(
    mosaic_hw: tuple[int, int],
    *,
    cell_in: float = 0.18,
    min_in: float = 3.5,
    max_in: tuple[float, float] = (16.0, 12.0),
    extra_w: float = 1.2,
    extra_h: float = 0.9,
) -> tuple[float, float]:
    """Figure size (inches) that shows a mosaic at ``cell_in`` inches per data pixel.

    The scale shrinks so the figure fits ``max_in``; ``extra_w``/``extra_h`` leave room for
    labels, a title and a colour bar.
    """
    h, w = mosaic_hw
    scale = min(cell_in, (max_in[0] - extra_w) / w, (max_in[1] - extra_h) / h)
    width = max(min_in, w * scale + extra_w)
    height = max(min_in * 0.6, h * scale + extra_h)
    # Whole pixels at common dpis: round to 1/100 inch.
    return round(width, 2), round(height, 2)


@dataclass
class MosaicLayout:
    """Where a mosaic figure's parts go, computed from the mosaic's size and fixed margins.

    All rectangles are ``[left, bottom, width, height]`` in figure fractions, ready for
    ``fig.add_axes``. ``side`` is an optional panel left of the mosaic (the input image).
    """

    figsize: tuple[float, float]
    ax: list[float]
    cax: list[float] | None
    side: list[float] | None
    scale: float
    title_y: float = 1.0

    def figure(self, dpi: int = 100) -> Figure:
        return new_figure(*self.figsize, dpi=dpi, layout=None)

    def axes(self, fig: Figure):
        """(mosaic axes, colour-bar axes or None, side axes or None) added to ``fig``."""
        ax = fig.add_axes(self.ax)
        cax = fig.add_axes(self.cax) if self.cax is not None else None
        side = fig.add_axes(self.side) if self.side is not None else None
        return ax, cax, side

    def title(self, fig: Figure, text: str, fontsize: float = 9):
        """The figure's title, centred at the top (the layout reserved room for it)."""
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
    mosaic, plus the ``title``'s lines; the colour bar (0.15 in wide plus 0.75 in for its
    labels) goes right of the mosaic, before ``right``. A small mosaic (the lines model's 3x3
    maps) is enlarged to at least ``min_mosaic_in`` on its longer side, and the figure is at
    least as wide as the title. Extra space is shared evenly around the mosaic.
    """
    mh, mw = (int(d) for d in mosaic_hw)
    if mh < 1 or mw < 1:
        raise ValueError(f"mosaic must have a positive size, got {mosaic_hw}")
    lines = title.split("\n") if title else []
    top = top + (text_height(title_fontsize, len(lines)) + 0.1 if lines else 0.0)
    min_w = max(min_in[0], text_width(lines, title_fontsize) + 0.3)
    bar = 0.9 if colorbar else 0.0
    gap_side = 0.15 if side_in else 0.0
    fixed_w = left + side_in + gap_side + bar + right
    fixed_h = top + bottom
    scale = max(cell_in, min_mosaic_in / max(mh, mw))
    scale = min(scale, (max_in[0] - fixed_w) / mw, (max_in[1] - fixed_h) / mh)
    img_w, img_h = mw * scale, mh * scale
    fig_w = round(max(min_w, fixed_w + img_w), 2)
    fig_h = round(max(min_in[1], fixed_h + img_h), 2)
    x0 = left + side_in + gap_side + (fig_w - fixed_w - img_w) / 2
    y0 = bottom + (fig_h - fixed_h - img_h) / 2
    ax = [x0 / fig_w, y0 / fig_h, img_w / fig_w, img_h / fig_h]
    cax = None
    if colorbar:
        bar_h = min(max(img_h, 1.2), fig_h - fixed_h)
        cax = [
            (x0 + img_w + 0.15) / fig_w,
            (bottom + (fig_h - fixed_h - bar_h) / 2) / fig_h,
            0.15 / fig_w,
            bar_h / fig_h,
        ]
    side = None
    if side_in:
        side_h = min(side_in, fig_h - fixed_h)
        side = [
            (x0 - gap_side - side_in) / fig_w,
            (bottom + (fig_h - fixed_h - side_h) / 2) / fig_h,
            side_in / fig_w,
            side_h / fig_h,
        ]
    return MosaicLayout((fig_w, fig_h), ax, cax, side, scale, title_y=1 - 0.08 / fig_h)


def text_width(labels, fontsize: float) -> float:
    """Inches taken by the longest of ``labels`` at ``fontsize`` points (generous estimate)."""
    longest = max((len(str(t)) for t in labels), default=0)
    return longest * 0.62 * fontsize / 72


def text_height(fontsize: float, lines: int = 1) -> float:
    """Inches taken by ``lines`` lines of text at ``fontsize`` points."""
    return lines * 1.35 * fontsize / 72


def show_mosaic(ax, mosaic: np.ndarray, cmap: str, vmin: float, vmax: float):
    """``imshow`` a mosaic with nearest-neighbour pixels and background-coloured gutters."""
    import matplotlib as mpl

    cm = mpl.colormaps[cmap].with_extremes(bad=GAP_COLOR)
    im = ax.imshow(mosaic, cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest", resample=False)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    return im

"""Kernel images for MLflow's image cards: one RGB image per conv layer and epoch.

MLflow's run page shows a logged image in a card through a thumbnail whose longer side is
256 px (``mlflow.tracking.multimedia.COMPRESSED_IMAGE_SIZE``), centred in a square box under
the run's name; the card is 360 px tall and cuts what does not fit. Measured in Chromium on
MLflow 3.17, a thumbnail 256 px wide shows whole when it is at most about 170 px tall, so
every card image here is :data:`CARD_SIZE` (1.6:1), drawn at four times the thumbnail so
that a click on the card (the full image) is sharp too. :func:`fit_card` pads any other
image (a figure) to that shape.

What a card shows must read at 256 px: a first layer (one input channel) is one tile per
filter; a deeper layer would be filters x input channels (512 tiles of 3x3 for a 16 -> 32
layer), too small to read, so its card has one tile per filter, the mean of that filter's
kernels over its input channels, and says so. The whole filters x channels grid, labelled,
is :func:`kernel_grid_image`, which the run keeps as an artifact.

Colour is a diverging map centred on zero with ONE symmetric scale per layer for the whole
run (the caller passes ``vmax``, the largest ``|value|`` over every epoch), so stepping
through epochs shows weights growing or shrinking rather than each epoch stretched to full
colour; the scale is printed under the tiles with a colour bar. Tiles are upscaled by whole
pixels (nearest neighbour), so a 3x3 kernel stays nine sharp squares. A colormap lookup on
an array and a few lines of text, no matplotlib figure: each image costs milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from convscope.validation import check_kernel

__all__ = [
    "CARD_SIZE",
    "card_scale",
    "card_tiles",
    "colour_values",
    "fit_card",
    "kernel_card",
    "kernel_grid_image",
    "kernel_mosaic",
    "mosaic_values",
    "tile_grid",
    "upscale",
]

CMAP = "RdBu_r"
GAP_RGB = (128, 128, 128)
#: (width, height) of a card image: 4x MLflow's 256 px thumbnail, 1.6:1 (see the docstring)
CARD_SIZE = (1024, 640)
#: first-layer grids aim at this width:height, leaving room for the scale band below them
CARD_ASPECT = 2.0


def tile_grid(kernel: np.ndarray) -> np.ndarray:
    """(rows, cols, kh, kw) tiles with NaN for unused slots: a first layer (one input
    channel) as a grid near :data:`CARD_ASPECT`, one tile per filter; any other layer with
    one row per input channel and one column per filter."""
    w = check_kernel(kernel)
    kh, kw, cin, cout = w.shape
    if cin == 1:
        return _filter_grid(np.moveaxis(w[:, :, 0, :], -1, 0), CARD_ASPECT)
    return np.transpose(w, (2, 3, 0, 1))  # (in_channels, filters, kh, kw)


def _filter_grid(tiles: np.ndarray, aspect: float) -> np.ndarray:
    """``tiles`` (n, kh, kw) laid out row by row in a grid near ``aspect`` (width:height)."""
    n, kh, kw = tiles.shape
    cols = max(1, min(n, math.ceil(math.sqrt(n * aspect * kh / kw))))
    rows = math.ceil(n / cols)
    grid = np.full((rows * cols, kh, kw), np.nan)
    grid[:n] = tiles
    return grid.reshape(rows, cols, kh, kw)


def colour_values(values: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W, 3) uint8 of ``values`` on the diverging map ``±vmax``; NaN is the gap grey."""
    from matplotlib import colormaps

    finite = np.isfinite(values)
    scale = vmax if vmax > 0 else 1.0
    unit = np.clip((np.where(finite, values, 0.0) / scale + 1.0) / 2.0, 0.0, 1.0)
    rgb = (colormaps[CMAP](unit)[..., :3] * 255.0 + 0.5).astype(np.uint8)
    rgb[~finite] = GAP_RGB
    return rgb


def mosaic_values(tiles: np.ndarray, gap: int) -> np.ndarray:
    """(rows, cols, kh, kw) tiles as one 2-D array with NaN gutters ``gap`` wide."""
    rows, cols, kh, kw = tiles.shape
    padded = np.pad(tiles, ((0, 0), (0, 0), (0, gap), (0, gap)), constant_values=np.nan)
    canvas = padded.transpose(0, 2, 1, 3).reshape(rows * (kh + gap), cols * (kw + gap))
    return np.pad(canvas, ((gap, 0), (gap, 0)), constant_values=np.nan)


def upscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1) if factor > 1 else rgb


def kernel_mosaic(
    kernel: np.ndarray, max_side: int = 768, gap: int = 1, vmax: float | None = None
) -> np.ndarray:
    """An (H, W, 3) uint8 image of ``kernel`` (HWIO) laid out by :func:`tile_grid` on the
    colour scale ``±vmax`` (default ``max |kernel|``), upscaled by whole pixels (nearest
    neighbour) to ~max_side."""
    if gap < 0 or max_side < 1:
        raise ValueError(
            f"gap={gap}, max_side={max_side} are not allowed: need gap >= 0 and max_side >= 1"
        )
    canvas = mosaic_values(tile_grid(kernel), gap)
    finite = np.isfinite(canvas)
    if vmax is None:
        vmax = float(np.abs(canvas[finite]).max()) if finite.any() else 0.0
    return upscale(colour_values(canvas, vmax), max(1, max_side // max(canvas.shape)))


def card_tiles(kernel: np.ndarray) -> np.ndarray:
    """What a card shows of ``kernel`` (HWIO): (filters, kh, kw), each filter's kernel for a
    one-channel input, else the mean of its kernels over the input channels."""
    w = check_kernel(kernel)
    return np.moveaxis(w.mean(axis=2), -1, 0)


def card_scale(kernels: Iterable[np.ndarray]) -> float:
    """The one colour bound of a layer's cards over all ``kernels`` (its epochs): the
    largest ``|value|`` a card shows (1.0 when every value is zero)."""
    bound = max((float(np.abs(card_tiles(k)).max()) for k in kernels), default=0.0)
    return bound or 1.0


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _scale_bar(draw, image, box: tuple[int, int, int, int], vmax: float, font) -> None:
    """A horizontal colour bar in ``box`` (left, top, right, bottom) labelled -v, 0, +v."""
    from PIL import Image

    left, top, right, bottom = box
    size = font.size
    bar_h = max(4, bottom - top - size - size // 4)
    ramp = colour_values(np.linspace(-vmax, vmax, right - left)[None, :], vmax)
    image.paste(Image.fromarray(np.repeat(ramp, bar_h, axis=0)), (left, top))
    y = top + bar_h + size // 8
    for text, anchor, x in (
        (f"-{vmax:.3g}", "la", left),
        ("0", "ma", (left + right) // 2),
        (f"+{vmax:.3g}", "ra", right),
    ):
        draw.text((x, y), text, fill="black", font=font, anchor=anchor)


def kernel_card(kernel: np.ndarray, vmax: float, layer: str, epoch: int) -> np.ndarray:
    """The (640, 1024, 3) uint8 card image of one layer at one epoch: a title line, one tile
    per filter (:func:`card_tiles`) on ``±vmax`` and a labelled colour bar."""
    from PIL import Image, ImageDraw

    w = check_kernel(kernel)
    _, _, cin, filters = w.shape
    width, height = CARD_SIZE
    pad, title_size, bar_size = 16, 44, 32
    title_font, bar_font = _font(title_size), _font(bar_size)
    what = f"{filters} filters" if cin == 1 else f"{filters} filters, mean of {cin} inputs"
    title_h = title_size + 2 * pad
    bar_h = 2 * bar_size + pad
    room_w, room_h = width - 2 * pad, height - title_h - bar_h - 2 * pad

    tiles = card_tiles(w)
    grid = _filter_grid(tiles, room_w / room_h)
    values = mosaic_values(grid, gap=1)
    factor = max(1, min(room_w // values.shape[1], room_h // values.shape[0]))
    mosaic = upscale(colour_values(values, vmax), factor)

    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), f"{layer}  epoch {epoch}", fill="black", font=title_font)
    draw.text((width - pad, pad), what, fill="black", font=bar_font, anchor="ra")
    top = title_h + (room_h - mosaic.shape[0]) // 2
    canvas.paste(Image.fromarray(mosaic), ((width - mosaic.shape[1]) // 2, top))
    bar_box = (pad, height - bar_h - pad // 2, width - pad, height - pad // 2)
    _scale_bar(draw, canvas, bar_box, vmax, bar_font)
    return np.asarray(canvas)


def kernel_grid_image(kernel: np.ndarray, vmax: float, layer: str, epoch: int) -> np.ndarray:
    """Every kernel of ``kernel`` (HWIO) as one labelled (H, W, 3) uint8 image: a column per
    filter, a row per input channel (:func:`tile_grid`), the axes numbered every 4, the scale
    under it. The card of a deeper layer summarises this; the run keeps it as an artifact."""
    from PIL import Image, ImageDraw

    w = check_kernel(kernel)
    kh, kw, cin, filters = w.shape
    mosaic = kernel_mosaic(w, max_side=max(768, 8 * (kw + 1) * filters), vmax=vmax)
    cell_w = (mosaic.shape[1]) / (filters * (kw + 1) + 1) * (kw + 1)
    cell_h = (mosaic.shape[0]) / (cin * (kh + 1) + 1) * (kh + 1) if cin > 1 else 0
    size = 18
    font = _font(size)
    left, top, pad = 5 * size, 3 * size, size
    width = left + mosaic.shape[1] + pad
    height = top + mosaic.shape[0] + 4 * size + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    rows = "rows: input channels" if cin > 1 else "one input channel"
    draw.text((pad, 4), f"{layer}  epoch {epoch}: columns: filters, {rows}", "black", font)
    canvas.paste(Image.fromarray(mosaic), (left, top))
    for f in range(0, filters, 4):
        x = left + int((f + 0.5) * cell_w)
        draw.text((x, top - 4), str(f), fill="black", font=font, anchor="md")
    for c in range(0, cin if cin > 1 else 0, 4):
        y = top + int((c + 0.5) * cell_h)
        draw.text((left - 6, y), str(c), fill="black", font=font, anchor="rm")
    bar_top = top + mosaic.shape[0] + size // 2
    _scale_bar(draw, canvas, (left, bar_top, width - pad, height - pad // 2), vmax, font)
    return np.asarray(canvas)


def fit_card(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` (H, W, 3) on a white canvas of the card's 1.6:1 shape, centred, so MLflow's
    card shows it whole; an image already at least that wide is returned as it is."""
    image = np.asarray(rgb)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"rgb has shape {image.shape}: expected (H, W, 3)")
    height, width = image.shape[:2]
    card_w, card_h = CARD_SIZE
    if width * card_h >= height * card_w:
        return image
    new_w = math.ceil(height * card_w / card_h)
    canvas = np.full((height, new_w, 3), 255, np.uint8)
    left = (new_w - width) // 2
    canvas[:, left : left + width] = image
    return canvas

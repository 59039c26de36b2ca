"""Kernels as one RGB mosaic for MLflow's stepped images (NumPy + a matplotlib colormap only).

This is the cheap per-epoch picture that feeds the MLflow UI's image slider; the annotated
figures with colour bars belong to ``convscope.viz``. No pyplot, no Figure: a colormap lookup
on an array is all that is needed, so logging a kernel image costs milliseconds.

Layout follows the kernel grids of the visuals stage: a first layer (one input channel) is a
near-square grid with one tile per filter; a deeper layer has one row per input channel and one
column per filter. Colour is a diverging map centred on zero with one symmetric scale for the
whole layer (``vmax = max |w|``), so tiles of one image compare directly; separators are grey.
"""

from __future__ import annotations

import math

import numpy as np

CMAP = "RdBu_r"
GAP_RGB = (128, 128, 128)


def _as_hwio(kernel: np.ndarray) -> np.ndarray:
    w = np.asarray(kernel, dtype=np.float64)
    if w.ndim == 2:
        return w[:, :, None, None]
    if w.ndim == 3:
        return w[:, :, None, :]
    if w.ndim == 4:
        return w
    raise ValueError(
        f"kernel with shape {w.shape} is not allowed: expected (kh, kw), (kh, kw, filters) "
        "or HWIO (kh, kw, in_channels, filters)"
    )


def tile_grid(kernel: np.ndarray) -> np.ndarray:
    """(rows, cols, kh, kw) tiles with NaN for unused slots; see the module docstring."""
    w = _as_hwio(kernel)
    kh, kw, cin, cout = w.shape
    if cin == 1:
        cols = math.ceil(math.sqrt(cout))
        rows = math.ceil(cout / cols)
        tiles = np.full((rows * cols, kh, kw), np.nan)
        tiles[:cout] = np.moveaxis(w[:, :, 0, :], -1, 0)
        return tiles.reshape(rows, cols, kh, kw)
    return np.transpose(w, (2, 3, 0, 1))  # (in_channels, filters, kh, kw)


def kernel_mosaic(kernel: np.ndarray, max_side: int = 768, gap: int = 1) -> np.ndarray:
    """An (H, W, 3) uint8 image of ``kernel`` (HWIO), upscaled by whole pixels to ~max_side."""
    if gap < 0 or max_side < 1:
        raise ValueError(
            f"gap={gap}, max_side={max_side} are not allowed: need gap >= 0 and max_side >= 1"
        )
    from matplotlib import colormaps

    tiles = tile_grid(kernel)
    rows, cols, kh, kw = tiles.shape
    padded = np.pad(tiles, ((0, 0), (0, 0), (0, gap), (0, gap)), constant_values=np.nan)
    canvas = padded.transpose(0, 2, 1, 3).reshape(rows * (kh + gap), cols * (kw + gap))
    canvas = np.pad(canvas, ((gap, 0), (gap, 0)), constant_values=np.nan)

    finite = np.isfinite(canvas)
    vmax = float(np.abs(canvas[finite]).max()) if finite.any() else 0.0
    scale = vmax if vmax > 0 else 1.0
    unit = np.clip((np.where(finite, canvas, 0.0) / scale + 1.0) / 2.0, 0.0, 1.0)
    rgb = (colormaps[CMAP](unit)[..., :3] * 255.0 + 0.5).astype(np.uint8)
    rgb[~finite] = GAP_RGB

    factor = max(1, max_side // max(canvas.shape))
    if factor > 1:
        rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
    return rgb

"""Figures of the explanations (:mod:`convscope.interpret`): attributions, maximising inputs,
and the lines model's orientation selectivity per epoch.

Colour follows :mod:`convscope.viz.core`: saliency and Grad-CAM maps are >= 0 and use the
sequential map from zero, one scale per figure so images compare; maximising inputs are
signed and use the diverging map on one symmetric scale per layer; the orientation curves are
coloured by their final selectivity on the diverging map (red vertical, blue horizontal).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convscope.validation import ValidationError, check_array
from convscope.viz.core import (
    DIVERGING,
    SEQUENTIAL,
    Plot,
    TileFigure,
    grid_shape,
    new_figure,
    sequential_limits,
    symmetric_limits,
)

__all__ = ["attribution_plot", "maximisation_plot", "orientation_plot"]


def attribution_plot(
    images: np.ndarray,
    maps: np.ndarray,
    labels: Sequence[str],
    kind: str,
    title: str,
    layer: str | None = None,
    dpi: int = 100,
    zero_note: str = "no\ngradient",
    zero_reason: str = "the gradient of the label's score is zero at every pixel",
) -> Plot:
    """Each input once (grey) with its attribution map laid over it, one panel per image.

    ``images`` (n, H, W[, 1]) and ``maps`` (n, H, W): Grad-CAM maps upsampled to the input
    size first (:func:`convscope.interpret.upsample`). Each map is drawn as a fraction of its
    own maximum, on one 0..1 scale: an attribution's size differs by orders of magnitude
    between images (a confident image has small gradients), and what a map says is where,
    within its image, the evidence lies. The map's colour is laid over the digit with an
    opacity that grows with the value, so the digit shows through where the map is low. A
    map that is zero everywhere is not drawn: its panel says "all zero" and ``zero_note``
    (a few short lines), and a line under the panels gives ``zero_reason`` (why, e.g. for
    Grad-CAM: its ReLU keeps only positive evidence, and the layer had none for that image).
    """
    import matplotlib as mpl

    x = check_array(images, "images", dtype=np.float64, finite=True, nonempty=True)
    x = x[..., 0] if x.ndim == 4 else x
    m = check_array(maps, "maps", ndim=3, dtype=np.float64, finite=True)
    if x.shape != m.shape or len(labels) != len(x):
        raise ValidationError(
            f"images {x.shape}, maps {m.shape} and {len(labels)} labels do not line up"
        )
    n = len(x)
    peak = m.reshape(n, -1).max(axis=1)
    m = m / np.where(peak > 0, peak, 1.0)[:, None, None]
    vmin, vmax = sequential_limits(m)
    cmap = mpl.colormaps[SEQUENTIAL]
    zero = [str(labels[i]) for i in range(n) if not peak[i] > 0]
    fig = new_figure(1.0 * n + 1.1, 1.95 if zero else 1.75, dpi=dpi)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for i, ax in enumerate(axes):
        ax.imshow(x[i], cmap="gray", vmin=min(0.0, x[i].min()), vmax=max(1.0, x[i].max()))
        ax.set_title(labels[i], fontsize=7)
        ax.set_axis_off()
        if peak[i] > 0:
            overlay = cmap((m[i] - vmin) / ((vmax - vmin) or 1.0))
            overlay[..., 3] = 0.2 + 0.7 * m[i]
            ax.imshow(overlay, interpolation="nearest")
        else:
            ax.text(0.5, 0.5, f"all zero:\n{zero_note}", transform=ax.transAxes, ha="center",
                    va="center", fontsize=6, color="white",
                    bbox={"facecolor": "black", "alpha": 0.7, "linewidth": 0})  # fmt: skip
    scale = mpl.cm.ScalarMappable(mpl.colors.Normalize(vmin, vmax), cmap)
    bar = fig.colorbar(scale, ax=axes.tolist(), shrink=0.9)
    bar.set_label("/ image max", fontsize=7)
    fig.suptitle(title, fontsize=9)
    if zero:
        fig.supxlabel(f"all zero ({', '.join(zero)}): {zero_reason}", fontsize=7)
    extra = {"all_zero": zero} if zero else {}
    return Plot(fig, kind, layer, tuple(m.shape), (1, n), SEQUENTIAL, vmin, vmax, extra)


def maximisation_plot(inputs: np.ndarray, layer: str, model: str, dpi: int = 100) -> Plot:
    """The inputs (filters, H, W, 1) that maximise each filter of ``layer``, as a tile grid."""
    x = check_array(inputs, "inputs", ndim=4, dtype=np.float64, finite=True, nonempty=True)
    n, h, w, _ = x.shape
    rows, cols = grid_shape(n)
    tiles = np.full((rows * cols, h, w), np.nan)
    tiles[:n] = x.mean(axis=-1)  # a multi-channel input is shown as its channel mean
    vmin, vmax = symmetric_limits(tiles[:n])
    return TileFigure(
        tiles.reshape(rows, cols, h, w),
        DIVERGING,
        vmin,
        vmax,
        title=f"{model} {layer}: the input each filter responds to most",
        kind="activation_maximisation",
        layer=layer,
        shape=tuple(x.shape),
        tile_labels=[str(i) for i in range(n)],
        bar_label="input value",
        cell_in=0.05,
    ).plot(dpi)


def orientation_plot(selectivity: np.ndarray, layer: str, dpi: int = 100) -> Plot:
    """Selectivity (epochs + 1, filters) per epoch, one line per filter, epoch 0 = untrained."""
    s = check_array(selectivity, "selectivity", ndim=2, dtype=np.float64, finite=True)
    import matplotlib as mpl

    cmap = mpl.colormaps[DIVERGING]
    fig = new_figure(5.0, 3.0, dpi=dpi)
    ax = fig.add_subplot()
    epochs = np.arange(len(s))
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    for f in range(s.shape[1]):
        colour = cmap((s[-1, f] + 1.0) / 2.0)
        ax.plot(epochs, s[:, f], color=colour, marker="o", markersize=2.5, label=f"filter {f}")
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("epoch (0 = before training)", fontsize=8)
    ax.set_ylabel("orientation selectivity", fontsize=8)
    ax.set_yticks([-1, 0, 1], ["-1 horizontal", "0", "+1 vertical"], fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    if s.shape[1] <= 8:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{layer}: response to vertical vs horizontal lines", fontsize=9)
    return Plot(fig, "orientation", layer, tuple(s.shape), None, DIVERGING, -1.0, 1.0)

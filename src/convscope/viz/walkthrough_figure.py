"""The seed's part 1 as one figure: image, kernel, padded image, feature map, ReLU, pooled map.

The seed prints each intermediate of :mod:`convscope.scratch.layer_walkthrough` as a matrix;
here each is a small heat map with its numbers in the cells, so the figure reads like the
printout and shows the pattern at a glance. Signed arrays (kernel, feature map) are on a
zero-centred diverging scale; the image and the non-negative ReLU and pooled maps on a
sequential scale from zero. ReLU and pooled maps share the feature map's upper bound, so a
value keeps its colour from step to step.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from convscope.validation import ValidationError, check_array
from convscope.viz.core import (
    DIVERGING,
    SEQUENTIAL,
    Plot,
    new_figure,
    sequential_limits,
    symmetric_limits,
)

__all__ = ["STEPS", "walkthrough_figure"]

#: (field, panel title) in the order of the forward pass
STEPS = (
    ("image", "1. image"),
    ("kernel", "kernel"),
    ("padded", "2. padded"),
    ("feature_map", "3. feature map"),
    ("activated", "4. ReLU"),
    ("pooled", "5. max pool"),
)


def _fmt(v: float) -> str:
    if v == round(v) and abs(v) < 1e6:
        return str(int(round(v)))
    return f"{v:.2g}" if abs(v) < 0.01 or abs(v) >= 1000 else f"{v:.2f}"


def _annotate(ax, a: np.ndarray, cmap: str, vmin: float, vmax: float, fontsize: float) -> None:
    """Write every cell's value, black or white by the cell's luminance so it stays legible."""
    import matplotlib as mpl

    rgba = mpl.colormaps[cmap](mpl.colors.Normalize(vmin, vmax)(a))
    lum = rgba[..., :3] @ np.array([0.2126, 0.7152, 0.0722])
    for (r, c), v in np.ndenumerate(a):
        color = "white" if lum[r, c] < 0.5 else "black"
        ax.text(c, r, _fmt(v), ha="center", va="center", fontsize=fontsize, color=color)


def walkthrough_figure(wt, dpi: int = 100, cell_in: float = 0.3) -> Plot:
    """Draw a ``Walkthrough``, its ``to_arrays()`` dict or the loaded ``walkthrough.npz``."""
    get = wt.get if isinstance(wt, Mapping) else lambda k: getattr(wt, k, None)
    missing = [name for name, _ in STEPS if get(name) is None]
    if missing:
        raise ValidationError(f"walkthrough is missing {missing} (needs {[s for s, _ in STEPS]})")
    a = {
        # each step is a 2-D map as it is; a 1x1 pooled map (no padding) stays 2-D
        name: check_array(get(name), f"walkthrough {name!r}", ndim=2, dtype=np.float64)
        for name, _ in STEPS
    }
    widths = [a[name].shape[1] for name, _ in STEPS]
    height_cells = max(a[name].shape[0] for name, _ in STEPS)
    fig = new_figure(sum(widths) * cell_in + 0.45 * len(STEPS), height_cells * cell_in + 1.5, dpi)
    img_lim = sequential_limits(a["image"], a["padded"])
    fmap_lim = symmetric_limits(a["feature_map"])
    scales = {
        "image": (SEQUENTIAL, *img_lim),
        "padded": (SEQUENTIAL, *img_lim),
        "kernel": (DIVERGING, *symmetric_limits(a["kernel"])),
        "feature_map": (DIVERGING, *fmap_lim),
        "activated": (SEQUENTIAL, 0.0, fmap_lim[1]),
        "pooled": (SEQUENTIAL, 0.0, fmap_lim[1]),
    }
    fontsize = 7 if max(widths) <= 8 else 5
    for ax, (name, title) in zip(
        fig.subplots(1, len(STEPS), width_ratios=widths), STEPS, strict=True
    ):
        cmap, vmin, vmax = scales[name]
        ax.imshow(a[name], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        _annotate(ax, a[name], cmap, vmin, vmax, fontsize)
        ax.set_title(f"{title}\n{a[name].shape[0]}x{a[name].shape[1]}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("One conv layer step by step (seed part 1)", fontsize=10)
    return Plot(
        figure=fig,
        kind="walkthrough",
        layer=None,
        shape=a["image"].shape,
        grid=(1, len(STEPS)),
        cmap=DIVERGING,
        vmin=fmap_lim[0],
        vmax=fmap_lim[1],
        extra={
            "panels": [name for name, _ in STEPS],
            "scales": {k: {"cmap": v[0], "vmin": v[1], "vmax": v[2]} for k, v in scales.items()},
        },
    )

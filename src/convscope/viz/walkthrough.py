"""The seed's part 1 as one figure: image, kernel, padded image, feature map, ReLU, pooled map.

The seed prints each intermediate as a matrix; here each is a small heat map with its numbers
written in the cells, so the figure reads like the printout and shows the pattern at a glance.
Signed arrays (kernel, feature map) are on a zero-centred diverging scale; the image and the
non-negative ReLU and pooled maps on a sequential scale from zero. The ReLU and pooled maps
share the feature map's upper bound, so a value keeps its colour from step to step.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

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


def _fields(wt) -> dict[str, np.ndarray]:
    get = wt.__getitem__ if isinstance(wt, Mapping) else lambda k: getattr(wt, k)
    out = {}
    for name, _ in STEPS:
        try:
            a = np.asarray(get(name), dtype=np.float64)
        except (KeyError, AttributeError) as e:
            needs = [s for s, _ in STEPS]
            raise ValueError(f"walkthrough is missing {name!r} (needs {needs})") from e
        a = np.squeeze(a)
        if a.ndim != 2:
            raise ValueError(f"walkthrough {name!r} must be 2-D, got shape {np.shape(get(name))}")
        out[name] = a
    return out


def _fmt(v: float) -> str:
    if v == round(v) and abs(v) < 1e6:
        return str(int(round(v)))
    return f"{v:.2g}" if abs(v) < 0.01 or abs(v) >= 1000 else f"{v:.2f}"


def _annotate(ax, a: np.ndarray, cmap, vmin: float, vmax: float, fontsize: float) -> None:
    import matplotlib as mpl

    norm = mpl.colors.Normalize(vmin, vmax)
    rgba = mpl.colormaps[cmap](norm(a))
    # Relative luminance decides black or white text, so numbers stay legible on any cell.
    lum = rgba[..., :3] @ np.array([0.2126, 0.7152, 0.0722])
    for (r, c), v in np.ndenumerate(a):
        ax.text(
            c,
            r,
            _fmt(v),
            ha="center",
            va="center",
            fontsize=fontsize,
            color="white" if lum[r, c] < 0.5 else "black",
        )


def walkthrough_figure(wt, dpi: int = 100, cell_in: float = 0.3) -> Plot:
    """Draw a :class:`~convscope.scratch.Walkthrough` (or a mapping of its arrays).

    Accepts the dataclass, its ``to_arrays()`` dict or the loaded ``walkthrough.npz``.
    """
    a = _fields(wt)
    widths = [a[name].shape[1] for name, _ in STEPS]
    height_cells = max(a[name].shape[0] for name, _ in STEPS)
    fig = new_figure(sum(widths) * cell_in + 0.45 * len(STEPS), height_cells * cell_in + 1.5, dpi)
    axes = fig.subplots(1, len(STEPS), width_ratios=widths)
    img_lim = sequential_limits(a["image"], a["padded"])
    fmap_lim = symmetric_limits(a["feature_map"])
    act_lim = (0.0, fmap_lim[1])
    scales = {
        "image": (SEQUENTIAL, *img_lim),
        "padded": (SEQUENTIAL, *img_lim),
        "kernel": (DIVERGING, *symmetric_limits(a["kernel"])),
        "feature_map": (DIVERGING, *fmap_lim),
        "activated": (SEQUENTIAL, *act_lim),
        "pooled": (SEQUENTIAL, *act_lim),
    }
    fontsize = 7 if max(widths) <= 8 else 5
    for ax, (name, title) in zip(axes, STEPS, strict=True):
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
        shape=tuple(a["image"].shape),
        grid=(1, len(STEPS)),
        cmap=DIVERGING,
        vmin=fmap_lim[0],
        vmax=fmap_lim[1],
        extra={
            "panels": [name for name, _ in STEPS],
            "scales": {k: {"cmap": v[0], "vmin": v[1], "vmax": v[2]} for k, v in scales.items()},
        },
    )

"""Figures of ``convscope compare``: overlaid loss curves, and each matched filter as a tile.

The comparison itself (selecting runs, matching filters, the HTML) is :mod:`convscope.compare`.
matplotlib is imported inside the figure functions, so importing this module stays cheap.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["colour_bar_png", "filter_tile_png", "loss_curves_png", "run_colors"]

LINESTYLES = ("-", "--", ":", "-.")


def run_colors(n: int) -> list:
    """``n`` distinguishable colours: tab10 up to 10 runs, then a gradient."""
    import matplotlib as mpl

    if n <= 10:
        return [mpl.colormaps["tab10"](i) for i in range(n)]
    return [mpl.colormaps["turbo"](v) for v in np.linspace(0.05, 0.95, n)]


def loss_curves_png(
    curves: Sequence[tuple[str, Mapping[str, Sequence[tuple[int, float]]]]],
    keys: Sequence[str] = ("loss", "val_loss"),
    dpi: int = 100,
) -> bytes:
    """One figure: every run's curves, one colour per run, one line style per metric key.

    ``curves`` is ``[(run label, {key: [(step, value), ...]}), ...]``. The legend lists the
    runs (colours) and, separately, the keys (line styles); with many runs it moves outside
    the axes and shrinks, so any number of runs stays readable.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from convscope.viz.core import new_figure, png_bytes

    n = len(curves)
    many = n > 8
    fig = new_figure(11.0 if many else 8.0, 4.8, dpi=dpi)
    ax = fig.add_subplot()
    colors = run_colors(n)
    for (_, hist), color in zip(curves, colors, strict=True):
        for key, style in zip(keys, LINESTYLES, strict=False):
            if hist.get(key):
                steps, values = zip(*hist[key], strict=True)
                marker = "." if len(steps) < 30 else None
                ax.plot(steps, values, linestyle=style, color=color, marker=marker)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch (step)", ylabel="loss")
    ax.grid(True, alpha=0.3)
    runs = [Line2D([], [], color=c, label=lab) for (lab, _), c in zip(curves, colors, strict=True)]
    styles = zip(keys, LINESTYLES, strict=False)
    key_handles = [Line2D([], [], color="black", linestyle=s, label=k) for k, s in styles]
    # The key legend is added as a plain artist; the runs' legend is the axes' own, which is
    # the one the layout engine makes room for when it sits outside the axes.
    ax.add_artist(ax.legend(handles=key_handles, fontsize=8, loc="lower left"))
    outside = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "ncol": 1 + (n - 1) // 30}
    place = outside if many else {"loc": "upper right"}
    ax.legend(handles=runs, fontsize=6 if many else 8, title="runs", **place)
    ax.set_title(f"loss per epoch, {n} run(s)", fontsize=10)
    return png_bytes(fig)


def filter_tile_png(filter_kernel: np.ndarray, vmax: float, cell: int = 22) -> bytes:
    """One filter (``(kh, kw, in_channels)``, NaN for a blank slot) as a PNG: its input
    channels stacked top to bottom, each weight ``cell`` px square (nearest neighbour), on
    the diverging scale ``±vmax`` shared by the whole report."""
    from PIL import Image

    from convscope.viz.kernel_cards import colour_values, mosaic_values, upscale

    k = np.asarray(filter_kernel, dtype=np.float64)
    if k.ndim != 3:
        raise ValueError(f"filter_kernel has shape {k.shape}: expected (kh, kw, in_channels)")
    tiles = np.moveaxis(k, -1, 0)[:, None]  # (in_channels, 1, kh, kw)
    rgb = upscale(colour_values(mosaic_values(tiles, gap=0), vmax), cell)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def colour_bar_png(vmax: float, width: int = 240, height: int = 14) -> bytes:
    """The report's colour scale ``-vmax .. +vmax`` as a horizontal ramp."""
    from PIL import Image

    from convscope.viz.kernel_cards import colour_values

    ramp = colour_values(np.linspace(-vmax, vmax, width)[None, :], vmax)
    buf = io.BytesIO()
    Image.fromarray(np.repeat(ramp, height, axis=0)).save(buf, format="PNG")
    return buf.getvalue()

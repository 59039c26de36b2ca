"""Figures of ``convscope compare``: overlaid loss curves, and one run's matched kernels.

The comparison itself (selecting runs, matching filters, the HTML) is :mod:`convscope.compare`.
matplotlib is imported inside the figure functions, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["loss_curves_png", "matched_kernels_png", "run_colors"]

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


def matched_kernels_png(
    kernel: np.ndarray,
    order: Sequence[int],
    similarity: Sequence[float],
    vmax: float,
    title: str,
    dpi: int = 100,
) -> bytes:
    """One run's first-layer filters in matched order as a strip (rows: input channels).

    ``kernel`` is HWIO already in display order (NaN for blank slots); under each column its
    original filter index (``order``) and its cosine similarity with the reference filter.
    The colour scale ``±vmax`` is shared by all runs of a report.
    """
    from convscope.viz.core import (
        DIVERGING,
        mosaic_layout,
        png_bytes,
        show_mosaic,
        text_height,
        tile_centres,
        tile_mosaic,
    )

    k = np.asarray(kernel, dtype=np.float64)
    kh, kw, cin, nf = k.shape
    mosaic = tile_mosaic(k.transpose(2, 3, 0, 1))
    labels = [
        ("-" if int(o) < 0 else f"f{int(o)}") + ("" if not np.isfinite(s) else f"\n{s:.2f}")
        for o, s in zip(order, similarity, strict=True)
    ]
    layout = mosaic_layout(
        mosaic.shape,
        # 22 px a weight at 100 dpi: a 3x3 kernel is 66 px, a 5x5 one 70 px
        cell_in=(0.22 if max(kh, kw) <= 3 else 0.14) * 100 / dpi,
        title=title,
        left=0.45 if cin > 1 else 0.2,
        bottom=text_height(6, 2) + 0.15,
        min_mosaic_in=0.5,
        min_in=(3.0, 1.0),
    )
    fig = layout.figure(dpi)
    ax, cax, _ = layout.axes(fig)
    im = show_mosaic(ax, mosaic, DIVERGING, -vmax, vmax)
    ax.set_xticks(tile_centres(nf, kw), labels, fontsize=6)
    if cin > 1:
        ax.set_yticks(tile_centres(cin, kh), [f"in{i}" for i in range(cin)], fontsize=6)
    else:
        ax.set_yticks([])
    ax.tick_params(length=0)
    layout.title(fig, title, fontsize=9)
    fig.colorbar(im, cax=cax).ax.tick_params(labelsize=6)
    return png_bytes(fig)

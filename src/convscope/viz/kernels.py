"""Kernel grids: the filters of one conv layer on one zero-centred colour scale.

Kernels are signed, so they use a diverging colormap centred on zero with ONE symmetric scale
per layer (``±max|w|``). Per-filter grey scales, as in the seed, make a filter of weights
around 0.01 look as strong as one around 1 and hide the sign; a shared scale shows both which
filters matter and whether a weight excites (red) or inhibits (blue).

Layout (kernels are HWIO, like Keras): a layer on a one-channel image gets one tile per filter
in a near-square grid (the seed's 4 x 4 for 16 filters); any other layer gets rows = input
channels and columns = filters, so a column is everything one filter looks at. Filters are
numbered from 0, like the array index ``kernel[..., f]`` and the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convscope.validation import check_array, check_float, check_int
from convscope.viz.core import (
    DIVERGING,
    MosaicLayout,
    TileFigure,
    grid_shape,
    symmetric_limits,
    tiles_from_channels,
)

__all__ = ["DEAD_COLOR", "KernelGrid"]

DEAD_COLOR = "#d62728"


class KernelGrid(TileFigure):
    """The kernels of one conv layer as a tile grid with one symmetric colour scale.

    Args:
        kernel: HWIO array ``(kh, kw, in_channels, filters)``.
        layer: the layer's name (titles, manifest).
        dead: filters that never activate on the sample (all-zero ReLU output); they are
            labelled "dead" and outlined in red. None: not checked.
        vmax: the scale's bound; default ``max |kernel|``. A shared value draws several grids
            (the frames of an evolution) on one scale.
        title: figure title; default names the layer, its shape and the scale.
    """

    def __init__(
        self,
        kernel,
        layer: str = "conv",
        dead: Sequence[int] | None = None,
        vmax: float | None = None,
        title: str | None = None,
    ):
        k = check_array(kernel, "kernel (HWIO)", ndim=4, dtype=np.float64, finite=True)
        kh, kw, cin, nf = k.shape
        if vmax is None:
            vmin, vmax = symmetric_limits(k)
        else:
            vmax = check_float(vmax, "vmax", min=0, min_open=True)
            vmin = -vmax
        self.kernel = k
        self.dead = (
            None
            if dead is None
            else sorted({check_int(f, "dead filter", min=0, max=nf - 1) for f in dead})
        )
        self.per_filter = cin == 1
        names = [f"f{f} dead" if f in (self.dead or ()) else f"f{f}" for f in range(nf)]
        if self.per_filter:
            tiles = tiles_from_channels(k[:, :, 0, :], *grid_shape(nf))
            labels = {"tile_labels": names}
        else:
            tiles = k.transpose(2, 3, 0, 1)  # (in, filters, kh, kw)
            labels = {
                "col_labels": names,
                "rotate_cols": True,
                "row_labels": [f"in{i}" for i in range(cin)],
                "xlabel": "filter",
                "ylabel": "input channel",
            }
        title = title or f"{layer}: {kh}x{kw} kernels, {cin} in -> {nf} filters\nscale ±{vmax:.3g}"
        if self.dead:
            title += f"\n{len(self.dead)} dead (never active on the sample)"
        super().__init__(
            tiles,
            DIVERGING,
            vmin,
            vmax,
            title,
            kind="kernels",
            layer=layer,
            shape=k.shape,
            extra={"tiles": nf if self.per_filter else cin * nf, "dead_filters": self.dead},
            cell_in=0.16 if max(kh, kw) <= 3 else 0.1,
            **labels,
        )

    @property
    def n_tiles(self) -> int:
        """Tiles drawn: filters for a one-channel layer, in_channels x filters otherwise."""
        return self.extra["tiles"]

    def draw(self, fig, layout: MosaicLayout):
        """The grid, with dead filters' labels in red and their tiles (or columns) outlined."""
        im, title = super().draw(fig, layout)
        if self.dead:
            from matplotlib.patches import Rectangle

            ax = im.axes
            for text in [*ax.texts, *ax.get_xticklabels()]:
                if text.get_text().endswith(" dead"):
                    text.set_color(DEAD_COLOR)
            kh, kw = self.tiles.shape[2:]
            height = kh if self.per_filter else self.rows * (kh + 1) - 1
            for f in self.dead:
                r, c = divmod(f, self.cols) if self.per_filter else (0, f)
                corner = (c * (kw + 1) - 0.5, r * (kh + 1) - 0.5)
                ax.add_patch(
                    Rectangle(corner, kw, height, fill=False, edgecolor=DEAD_COLOR, linewidth=1.5)
                )
        return im, title

"""Kernel figures: the grid of one conv layer's filters, and how filters evolved over epochs.

Colour: kernels are signed, so they use a diverging colormap centred on zero with ONE
symmetric scale per layer (``vmin = -max|w|``, ``vmax = max|w|``). The seed drew each filter
with its own grey scale, which makes a filter of weights around 0.01 look as strong as one
around 1 and hides the sign; a shared zero-centred scale shows both which filters matter and
whether a weight excites (red) or inhibits (blue).

Layout (kernels are HWIO, like Keras):

* a first layer on a one-channel image (``I == 1``): one tile per filter in a near-square grid
  (the seed's 4 x 4 for 16 filters);
* any other layer: one tile per (input channel, filter), rows = input channels, columns =
  filters, so a column is everything one filter looks at.

Filters are numbered from 0, like the array index (``kernel[..., f]``) and the manifest.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from convscope.files import atomic_path
from convscope.viz.core import (
    DIVERGING,
    MosaicLayout,
    Plot,
    close_figure,
    grid_shape,
    mosaic_layout,
    show_mosaic,
    symmetric_limits,
    text_height,
    text_width,
    tile_centres,
    tile_mosaic,
)

__all__ = ["KernelGrid", "kernel_filmstrip", "kernel_evolution_gif", "select_epochs"]

DEAD_COLOR = "#d62728"


def _check_hwio(kernel, name: str = "kernel") -> np.ndarray:
    k = np.asarray(kernel)
    if k.ndim != 4:
        raise ValueError(
            f"{name} must be HWIO (height, width, in channels, filters), got shape {k.shape}"
        )
    if not np.issubdtype(k.dtype, np.number) or not np.all(np.isfinite(k)):
        raise ValueError(f"{name} must hold finite numbers (shape {k.shape}, dtype {k.dtype})")
    return k.astype(np.float64)


class KernelGrid:
    """The kernels of one conv layer as a tile grid with one symmetric colour scale.

    Args:
        kernel: HWIO array ``(kh, kw, in_channels, filters)``.
        layer: the layer's name (titles, manifest).
        dead: indices of filters that never activate on the sample (all-zero ReLU output);
            they are outlined and labelled "dead". None: not checked.
        vmax: the scale's bound; default ``max |kernel|``. Pass a shared value to draw several
            grids (e.g. the epochs of an evolution) on one scale.
        title: figure title; default names the layer and the scale.
        cmap: a diverging colormap (centred on zero by the symmetric scale).

    Attributes:
        rows, cols: the tile grid; ``tiles`` (rows, cols, kh, kw) holds NaN where no filter is.
    """

    def __init__(
        self,
        kernel,
        layer: str = "conv",
        dead: Sequence[int] | None = None,
        vmax: float | None = None,
        title: str | None = None,
        cmap: str = DIVERGING,
    ):
        self.kernel = _check_hwio(kernel)
        kh, kw, cin, nf = self.kernel.shape
        self.layer = layer
        self.cmap = cmap
        if vmax is None:
            self.vmin, self.vmax = symmetric_limits(self.kernel)
        else:
            if not (np.isfinite(vmax) and vmax > 0):
                raise ValueError(f"vmax must be a finite value > 0, got {vmax!r}")
            self.vmin, self.vmax = -float(vmax), float(vmax)
        self.dead = sorted({int(f) for f in dead}) if dead is not None else None
        if self.dead and not all(0 <= f < nf for f in self.dead):
            raise ValueError(f"dead filters {self.dead} out of range for {nf} filters")
        self.per_filter = cin == 1
        if self.per_filter:
            self.rows, self.cols = grid_shape(nf)
            flat = np.full((self.rows * self.cols, kh, kw), np.nan)
            flat[:nf] = self.kernel[:, :, 0, :].transpose(2, 0, 1)
            self.tiles = flat.reshape(self.rows, self.cols, kh, kw)
        else:
            self.rows, self.cols = cin, nf
            self.tiles = self.kernel.transpose(2, 3, 0, 1)  # (in, filters, kh, kw)
        self.title = title or (
            f"{layer}: {kh}x{kw} kernels, {cin} in -> {nf} filters\nscale ±{self.vmax:.3g}"
        )

    @property
    def n_tiles(self) -> int:
        """Tiles drawn: filters for a one-channel layer, in_channels x filters otherwise."""
        kh, kw, cin, nf = self.kernel.shape
        return nf if self.per_filter else cin * nf

    def mosaic(self) -> np.ndarray:
        return tile_mosaic(self.tiles)

    def _tile_of_filter(self, f: int) -> tuple[int, int]:
        return divmod(f, self.cols) if self.per_filter else (0, f)

    def _title(self) -> str:
        title = self.title
        if self.dead:
            title += f"\n{len(self.dead)} dead (never active on the sample)"
        return title

    def layout(self, colorbar: bool = True) -> MosaicLayout:
        """Figure size and axes positions (fixed margins sized for this grid's labels)."""
        kh, kw, cin, nf = self.kernel.shape
        mh, mw = self.mosaic().shape
        cell = 0.16 if max(kh, kw) <= 3 else 0.1
        if self.per_filter:
            # one extra gutter row above the tiles holds the top row's labels
            return mosaic_layout((mh + 1, mw), cell_in=cell, title=self._title(), colorbar=colorbar)
        names = [f"f{f} dead" for f in range(nf)] if self.dead else [f"f{f}" for f in range(nf)]
        return mosaic_layout(
            (mh, mw),
            cell_in=cell,
            title=self._title(),
            left=text_width([f"in{cin - 1}"], 6) + text_height(10) + 0.2,
            bottom=text_width(names, 6) + text_height(10) + 0.2,
            colorbar=colorbar,
        )

    def draw(self, fig, layout: MosaicLayout | None = None):
        """Draw onto ``fig``; returns the image and title artists (swapped for animation)."""
        kh, kw, cin, nf = self.kernel.shape
        layout = layout or self.layout()
        ax, cax, _ = layout.axes(fig)
        im = show_mosaic(ax, self.mosaic(), self.cmap, self.vmin, self.vmax)
        dead = set(self.dead or ())
        if self.per_filter:
            _label_space_above(ax, im)
            for f in range(nf):
                r, c = divmod(f, self.cols)
                ax.text(
                    c * (kw + 1) + (kw - 1) / 2,
                    r * (kh + 1) - 0.6,
                    f"f{f}" + (" dead" if f in dead else ""),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color=DEAD_COLOR if f in dead else "black",
                )
        else:
            names = [f"f{f} dead" if f in dead else f"f{f}" for f in range(nf)]
            ax.set_xticks(tile_centres(nf, kw), names, fontsize=6, rotation=90)
            ax.set_yticks(tile_centres(cin, kh), [f"in{i}" for i in range(cin)], fontsize=6)
            ax.tick_params(length=0)
            ax.set_xlabel("filter")
            ax.set_ylabel("input channel")
            for label, f in zip(ax.get_xticklabels(), range(nf), strict=True):
                if f in dead:
                    label.set_color(DEAD_COLOR)
        if dead:
            from matplotlib.patches import Rectangle

            for f in sorted(dead):
                r, c = self._tile_of_filter(f)
                height = kh if self.per_filter else self.rows * (kh + 1) - 1
                ax.add_patch(
                    Rectangle(
                        (c * (kw + 1) - 0.5, r * (kh + 1) - 0.5),
                        kw,
                        height,
                        fill=False,
                        edgecolor=DEAD_COLOR,
                        linewidth=1.5,
                    )
                )
        title = layout.title(fig, self._title())
        if cax is not None:
            fig.colorbar(im, cax=cax, label="weight")
        return im, title

    def figsize(self) -> tuple[float, float]:
        return self.layout().figsize

    def plot(self, dpi: int = 100) -> Plot:
        """Render the grid; the returned :class:`Plot` carries the manifest facts."""
        layout = self.layout()
        fig = layout.figure(dpi)
        self.draw(fig, layout)
        return Plot(
            figure=fig,
            kind="kernels",
            layer=self.layer,
            shape=tuple(self.kernel.shape),
            grid=(self.rows, self.cols),
            cmap=self.cmap,
            vmin=self.vmin,
            vmax=self.vmax,
            extra={"tiles": self.n_tiles, "dead_filters": self.dead},
        )


def _label_space_above(ax, im) -> None:
    """Hide ticks and open one gutter row above the mosaic, inside the axes, for tile labels.

    Labels are written in the gutter above each tile; the top row's gutter would otherwise lie
    outside the axes, under the title.
    """
    ax.set_xticks([])
    ax.set_yticks([])
    h = im.get_array().shape[0]
    ax.set_ylim(h - 0.5, -1.5)


# --------------------------------------------------------------------------- evolution


def _check_history(kernels, name: str = "kernels") -> np.ndarray:
    """Per-epoch kernels as one (epochs, kh, kw, in, filters) float array."""
    try:
        arr = np.stack([np.asarray(k, dtype=np.float64) for k in kernels])
    except ValueError as e:
        shapes = [np.shape(k) for k in kernels]
        raise ValueError(f"{name}: every epoch's kernel must have one shape, got {shapes}") from e
    if arr.ndim != 5 or arr.shape[0] < 1:
        raise ValueError(
            f"{name} must be a sequence of HWIO kernels (epochs, kh, kw, in, filters), "
            f"got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (shape {arr.shape})")
    return arr


def select_epochs(n: int, max_rows: int = 12) -> list[int]:
    """Up to ``max_rows`` snapshot indices spread evenly over ``n``, always first and last."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n <= max_rows:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, max_rows)})


def _epoch_label(index: int, first_is_initial: bool) -> str:
    return ("init" if index == 0 else f"ep {index}") if first_is_initial else f"ep {index + 1}"


def kernel_filmstrip(
    kernels,
    layer: str = "conv",
    channel: int | str = "dominant",
    max_rows: int = 12,
    first_is_initial: bool = True,
    dpi: int = 100,
) -> Plot:
    """Filters over training as one image: rows = epochs (evenly selected), cols = filters.

    ``kernels`` is a sequence of HWIO arrays, one per snapshot; with ``first_is_initial``
    snapshot 0 is the initial weights and snapshot ``e`` the weights after epoch ``e``. One
    symmetric scale over all snapshots, so a colour means the same weight in every row. A layer
    with one filter (the lines mini-CNN) is laid out as a wrapped strip of epochs instead.

    A deeper layer has a 2-D slice per (input channel, filter); one slice per filter is shown:
    ``channel="dominant"`` picks, for each filter, the input channel its final weights weigh
    most (largest L2 norm), the slice where training shows most; an int shows that channel for
    every filter. Column labels say which (``f3<in7``).
    """
    hist = _check_history(kernels)
    n, kh, kw, cin, nf = hist.shape
    if channel == "dominant":
        norms = np.sqrt((hist[-1] ** 2).sum(axis=(0, 1)))  # (in, filters)
        chans = norms.argmax(axis=0)
    elif isinstance(channel, int | np.integer) and 0 <= channel < cin:
        chans = np.full(nf, int(channel))
    else:
        raise ValueError(
            f"channel={channel!r} is not allowed: expected 'dominant' or an input channel "
            f"in [0, {cin}) (kernels shape {hist.shape[1:]})"
        )
    epochs = select_epochs(n, max_rows if nf > 1 else max(max_rows, 24))
    sel = hist[epochs][..., chans, np.arange(nf)]  # (E, kh, kw, F)
    vmin, vmax = symmetric_limits(sel)
    labels = [_epoch_label(e, first_is_initial) for e in epochs]
    if nf == 1:
        rows, cols = grid_shape(len(epochs), max_cols=8)
        flat = np.full((rows * cols, kh, kw), np.nan)
        flat[: len(epochs)] = sel[..., 0]
        tiles = flat.reshape(rows, cols, kh, kw)
    else:
        rows, cols = len(epochs), nf
        tiles = sel.transpose(0, 3, 1, 2)
    mosaic = tile_mosaic(tiles)
    ch = ", one input channel per filter" if cin > 1 else ""
    names = [f"f{f}<in{c}" if cin > 1 else f"f{f}" for f, c in enumerate(chans)]
    title = f"{layer}: kernels over training{ch}\nscale ±{vmax:.3g}"
    if nf == 1:
        layout = mosaic_layout((mosaic.shape[0] + 1, mosaic.shape[1]), title=title)
    else:
        layout = mosaic_layout(
            mosaic.shape,
            title=title,
            left=text_width(labels, 7) + 0.2,
            bottom=text_width(names, 6) + text_height(10) + 0.2,
        )
    fig = layout.figure(dpi)
    ax, cax, _ = layout.axes(fig)
    im = show_mosaic(ax, mosaic, DIVERGING, vmin, vmax)
    if nf == 1:
        _label_space_above(ax, im)
        for i, label in enumerate(labels):
            r, c = divmod(i, cols)
            ax.text(
                c * (kw + 1) + (kw - 1) / 2,
                r * (kh + 1) - 0.6,
                label,
                ha="center",
                va="bottom",
                fontsize=7,
            )
    else:
        ax.set_xticks(tile_centres(nf, kw), names, fontsize=6, rotation=90)
        ax.set_yticks(tile_centres(rows, kh), labels, fontsize=7)
        ax.tick_params(length=0)
        ax.set_xlabel("filter")
    layout.title(fig, title)
    fig.colorbar(im, cax=cax, label="weight")
    return Plot(
        figure=fig,
        kind="kernel_filmstrip",
        layer=layer,
        shape=tuple(hist.shape),
        grid=(rows, cols),
        cmap=DIVERGING,
        vmin=vmin,
        vmax=vmax,
        extra={"epochs_shown": epochs, "snapshots": n, "channels": [int(c) for c in chans]},
    )


def kernel_evolution_gif(
    kernels,
    path: str | os.PathLike[str],
    layer: str = "conv",
    fps: int = 4,
    dpi: int = 60,
    first_is_initial: bool = True,
    max_frames: int = 60,
    on_frame: Callable[[int, np.ndarray], object] | None = None,
) -> dict:
    """Write an animated GIF, one frame per snapshot, of a layer's kernel grid; atomic.

    The grid is drawn once; each frame swaps the image data and the title and re-renders the
    same Agg canvas, so a 50-epoch animation costs 50 cheap redraws and one figure. Frames use
    one symmetric scale over all snapshots (a changing scale would make colours flicker without
    the weights changing). ``on_frame(snapshot index, rgb array)`` sees every frame (the
    visuals stage logs them to MLflow with the epoch as step). Returns the manifest facts
    (grid, scale, frames, pixel size).
    """
    from PIL import Image

    hist = _check_history(kernels)
    n = hist.shape[0]
    if isinstance(fps, bool) or int(fps) != fps or fps < 1:
        raise ValueError(f"fps must be a positive int, got {fps!r}")
    frames_idx = select_epochs(n, max_frames)
    vmin, vmax = symmetric_limits(hist[frames_idx])
    grid = KernelGrid(hist[frames_idx[0]], layer=layer, vmax=vmax)
    layout = grid.layout()
    fig = layout.figure(dpi)
    try:
        im, title = grid.draw(fig, layout)
        ax = im.axes
        # Blit: every frame restores the static background (axes, labels, colour bar) and
        # redraws only the image and the title.
        im.set_animated(True)
        title.set_animated(True)
        fig.canvas.draw()
        background = fig.canvas.copy_from_bbox(fig.bbox)
        frames = []
        for e in frames_idx:
            fig.canvas.restore_region(background)
            im.set_data(KernelGrid(hist[e], layer=layer, vmax=vmax).mosaic())
            title.set_text(f"{layer}: {_epoch_label(e, first_is_initial)}\nscale ±{vmax:.3g}")
            ax.draw_artist(im)
            fig.draw_artist(title)
            rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
            if on_frame is not None:
                on_frame(e, rgb)
            frames.append(Image.fromarray(rgb).quantize(colors=64))
        width, height = frames[0].size
    finally:
        close_figure(fig)
    with atomic_path(Path(path)) as tmp:
        frames[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=frames[1:],
            duration=int(1000 / fps),
            loop=0,
            optimize=True,
        )
    return {
        "kind": "kernel_evolution_gif",
        "layer": layer,
        "shape": tuple(hist.shape),
        "grid": (grid.rows, grid.cols),
        "cmap": DIVERGING,
        "vmin": vmin,
        "vmax": vmax,
        "width": width,
        "height": height,
        "extra": {"frames": len(frames_idx), "epochs_shown": frames_idx, "fps": int(fps)},
    }

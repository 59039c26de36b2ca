"""How kernels changed over training: a filmstrip (epochs x filters) and an animated GIF.

Both take a layer's kernel snapshots, HWIO arrays stacked as ``(snapshots, kh, kw, in,
filters)``; snapshot 0 is the initial weights and snapshot ``e`` the weights after epoch
``e``, the numbering of :mod:`convscope.recording`. Both draw every snapshot on ONE symmetric
scale over the snapshots shown, so a colour means the same weight in every row and frame (a
scale per frame would make colours flicker while the weights stay put).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from convscope.files import DataError, atomic_path, load_arrays
from convscope.validation import check_array, check_int
from convscope.viz.core import (
    DIVERGING,
    Plot,
    TileFigure,
    close_figure,
    grid_shape,
    symmetric_limits,
    tiles_from_channels,
)
from convscope.viz.kernels import KernelGrid

__all__ = ["kernel_evolution_gif", "kernel_filmstrip", "load_kernel_history", "select_epochs"]


def load_kernel_history(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict]:
    """A per-epoch kernels file -> ({layer: (snapshots, kh, kw, in, out)}, metadata)."""
    arrays, meta = load_arrays(path)
    out = {}
    for name, a in arrays.items():
        if name == "steps":
            continue
        out[name] = a
        if a.ndim != 5:
            raise DataError(
                f"{path}: {name!r} has shape {a.shape}; expected (snapshots, kh, kw, in, out)"
            )
    return out, meta


def _history(kernels) -> np.ndarray:
    name = "kernels (snapshots, kh, kw, in, filters)"
    return check_array(kernels, name, ndim=5, dtype=np.float64, finite=True, nonempty=True)


def select_epochs(n: int, max_rows: int = 12) -> list[int]:
    """Up to ``max_rows`` snapshot indices spread evenly over ``n``, always first and last."""
    n = check_int(n, "n", min=1)
    if n <= max_rows:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, max_rows)})


def _epoch_label(index: int, first_is_initial: bool) -> str:
    if not first_is_initial:
        return f"ep {index + 1}"
    return "init" if index == 0 else f"ep {index}"


def kernel_filmstrip(
    kernels,
    layer: str = "conv",
    channel: int | str = "dominant",
    max_rows: int = 12,
    first_is_initial: bool = True,
    dpi: int = 100,
) -> Plot:
    """Filters over training as one image: rows = snapshots (evenly selected), cols = filters.

    A deeper layer has a 2-D slice per (input channel, filter); one slice per filter is shown:
    ``channel="dominant"`` picks, per filter, the input channel its final weights weigh most
    (largest L2 norm), where training shows most; an int shows that channel for every filter.
    Column labels say which (``f3<in7``). A layer with one filter (the lines mini-CNN) wraps
    its snapshots into a grid, as one tall column would be unreadable.
    """
    hist = _history(kernels)
    n, kh, kw, cin, nf = hist.shape
    if channel == "dominant":
        chans = np.sqrt((hist[-1] ** 2).sum(axis=(0, 1))).argmax(axis=0)  # (filters,)
    else:
        chans = np.full(nf, check_int(channel, "channel", min=0, max=cin - 1))
    epochs = select_epochs(n, max_rows if nf > 1 else max(max_rows, 24))
    sel = hist[epochs][..., chans, np.arange(nf)]  # (epochs, kh, kw, filters)
    vmin, vmax = symmetric_limits(sel)
    labels = [_epoch_label(e, first_is_initial) for e in epochs]
    if nf == 1:
        tiles = tiles_from_channels(np.moveaxis(sel[..., 0], 0, -1), *grid_shape(len(epochs), 8))
        layout = {"tile_labels": labels}
    else:
        names = [f"f{f}<in{c}" if cin > 1 else f"f{f}" for f, c in enumerate(chans)]
        tiles = sel.transpose(0, 3, 1, 2)
        layout = {
            "row_labels": labels,
            "col_labels": names,
            "rotate_cols": True,
            "xlabel": "filter",
        }
    channels = ", one input channel per filter" if cin > 1 else ""
    return TileFigure(
        tiles,
        DIVERGING,
        vmin,
        vmax,
        f"{layer}: kernels over training{channels}\nscale ±{vmax:.3g}",
        kind="kernel_filmstrip",
        layer=layer,
        shape=hist.shape,
        extra={"epochs_shown": epochs, "snapshots": n, "channels": [int(c) for c in chans]},
        **layout,
    ).plot(dpi)


def kernel_evolution_gif(
    kernels,
    path: str | os.PathLike[str],
    layer: str = "conv",
    fps: int = 4,
    dpi: int = 120,
    first_is_initial: bool = True,
    max_frames: int = 60,
    on_frame: Callable[[int, np.ndarray], Any] | None = None,
) -> Plot:
    """Write an animated GIF of a layer's :class:`KernelGrid`, one frame per snapshot.

    At 120 dpi its smallest labels (7 pt) are about 12 px high: readable at 100% zoom.

    The grid is drawn once; each frame swaps the image data and the title on the same Agg
    canvas and redraws only those two. ``on_frame(snapshot index, rgb array)`` sees every
    frame (the visuals stage logs them to MLflow with the epoch as step). Returns the
    manifest facts as a :class:`Plot` without a figure.
    """
    from PIL import Image

    hist = _history(kernels)
    fps = check_int(fps, "fps", min=1)
    shown = select_epochs(len(hist), max_frames)
    vmin, vmax = symmetric_limits(hist[shown])
    grid = KernelGrid(hist[shown[0]], layer=layer, vmax=vmax)
    layout = grid.layout()
    fig = layout.figure(dpi)
    frames = []
    try:
        im, title = grid.draw(fig, layout)
        im.set_animated(True)
        title.set_animated(True)
        fig.canvas.draw()
        background = fig.canvas.copy_from_bbox(fig.bbox)  # axes, labels, colour bar
        for e in shown:
            fig.canvas.restore_region(background)
            im.set_data(KernelGrid(hist[e], vmax=vmax).mosaic())
            title.set_text(f"{layer}: {_epoch_label(e, first_is_initial)}\nscale ±{vmax:.3g}")
            im.axes.draw_artist(im)
            fig.draw_artist(title)
            rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
            if on_frame is not None:
                on_frame(e, rgb)
            frames.append(Image.fromarray(rgb).quantize(colors=64))
    finally:
        close_figure(fig)
    with atomic_path(Path(path)) as tmp:
        frames[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=frames[1:],
            duration=1000 // fps,
            loop=0,
            optimize=True,
        )
    extra = {"frames": len(shown), "epochs_shown": shown, "fps": fps}
    grid_rc = (grid.rows, grid.cols)
    return Plot(
        None, "kernel_evolution_gif", layer, hist.shape, grid_rc, DIVERGING, vmin, vmax, extra
    )

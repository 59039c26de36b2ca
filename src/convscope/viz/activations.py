"""Activation figures: feature maps of one image, per-class mean activations, dead filters.

The numbers come from either network through one interface, a *maps function*
``maps_fn(x_batch) -> {layer name: NHWC array}`` giving every conv and pool layer's output:
:func:`engine_feature_maps` for the NumPy engine, ``convscope.keras_cnn.feature_maps`` for
Keras. This module never imports TensorFlow; the visuals stage hands it the Keras function.

Colour: activations after ReLU (and pooled maps) are >= 0 and use a sequential colormap that
starts at zero, one scale per figure; a layer with negative outputs (tanh) falls back to the
zero-centred diverging scale (see :func:`convscope.viz.core.activation_scale`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from convscope.viz.core import (
    Plot,
    activation_scale,
    grid_shape,
    mosaic_layout,
    show_mosaic,
    text_height,
    text_width,
    tile_centres,
    tile_mosaic,
    tiles_from_channels,
)

__all__ = [
    "ClassMeans",
    "MapsFn",
    "class_mean_activations",
    "class_mean_figure",
    "dead_filters",
    "engine_feature_maps",
    "engine_maps_fn",
    "feature_map_figure",
]

MapsFn = Callable[[np.ndarray], dict[str, np.ndarray]]


# --------------------------------------------------------------------------- engine maps


def engine_feature_maps(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every conv and pool layer's output of an engine ``Sequential`` for the batch ``x``.

    A conv layer's map is taken after its activation, as Keras reports it: the conv's own
    output when the activation is fused (``Conv2D(..., activation="relu")``), else the output
    of the activation layer right after it (``Conv2D`` then ``ReLU()``, the seed's mini-CNN).
    Keys are the conv/pool layer names; arrays are copies (later forwards do not change them).
    """
    from convscope.scratch.layers import Activation, Conv2D, MaxPool2D

    outputs = model.activations(x)
    layers = model.layers
    maps: dict[str, np.ndarray] = {}
    for i, layer in enumerate(layers):
        if isinstance(layer, Conv2D):
            out = outputs[i][1]
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if layer.activation == "linear" and isinstance(nxt, Activation):
                out = outputs[i + 1][1]
            maps[layer.name] = np.array(out, copy=True)
        elif isinstance(layer, MaxPool2D):
            maps[layer.name] = np.array(outputs[i][1], copy=True)
    if not maps:
        raise ValueError(f"model {model!r} has no Conv2D or MaxPool2D layer to show")
    return maps


def engine_maps_fn(model) -> MapsFn:
    """``engine_feature_maps`` bound to ``model`` (the maps-function interface)."""
    return lambda x: engine_feature_maps(model, x)


def conv_activations(model) -> dict[str, str]:
    """Activation applied to each engine conv layer's map (fused or the following layer)."""
    from convscope.scratch.layers import Activation, Conv2D

    out = {}
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Conv2D):
            act = layer.activation
            nxt = model.layers[i + 1] if i + 1 < len(model.layers) else None
            if act == "linear" and isinstance(nxt, Activation):
                act = nxt.activation
            out[layer.name] = act
    return out


# --------------------------------------------------------------------------- statistics


@dataclass
class ClassMeans:
    """Per-class mean activations over a sample, and per-channel extremes.

    Attributes:
        means: layer -> (classes, h, w, channels) mean map of each class's images.
        counts: images per class in the sample.
        channel_max / channel_min: layer -> (channels,) extreme activation over the sample.
        n: images in the sample.
    """

    means: dict[str, np.ndarray]
    counts: np.ndarray
    channel_max: dict[str, np.ndarray]
    channel_min: dict[str, np.ndarray]
    n: int


def class_mean_activations(
    maps_fn: MapsFn,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int | None = None,
    batch_size: int = 128,
    layers: Sequence[str] | None = None,
) -> ClassMeans:
    """Mean activation map per class for every layer ``maps_fn`` reports, in batches.

    Sums are accumulated per batch (float64) so the sample never needs all its activation maps
    in memory at once. A class absent from the sample gets a NaN mean (drawn blank) rather
    than a misleading zero.
    """
    x = np.asarray(x)
    y = np.asarray(y).reshape(-1)
    if x.ndim != 4 or len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"x must be a non-empty NHWC batch with one label per image; got x.shape={x.shape}, "
            f"y.shape={y.shape}"
        )
    if y.dtype.kind not in "iu" or y.min() < 0:
        raise ValueError(f"y must hold integer class labels >= 0, got dtype {y.dtype}")
    k = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if y.max() >= k:
        raise ValueError(f"labels go up to {int(y.max())} but num_classes={k}")
    if isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    sums: dict[str, np.ndarray] = {}
    cmax: dict[str, np.ndarray] = {}
    cmin: dict[str, np.ndarray] = {}
    onehot_all = np.eye(k)[y]  # (n, k)
    for start in range(0, len(x), batch_size):
        maps = maps_fn(x[start : start + batch_size])
        onehot = onehot_all[start : start + batch_size]
        for name, m in maps.items():
            if layers is not None and name not in layers:
                continue
            m = np.asarray(m, dtype=np.float64)
            # (k, n) @ (n, h*w*c): every class's sum in one matmul.
            s = (onehot.T @ m.reshape(len(m), -1)).reshape(k, *m.shape[1:])
            sums[name] = sums[name] + s if name in sums else s
            bmax, bmin = m.max(axis=(0, 1, 2)), m.min(axis=(0, 1, 2))
            cmax[name] = np.maximum(cmax[name], bmax) if name in cmax else bmax
            cmin[name] = np.minimum(cmin[name], bmin) if name in cmin else bmin
    counts = np.bincount(y, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = {name: s / counts[:, None, None, None] for name, s in sums.items()}
    return ClassMeans(means=means, counts=counts, channel_max=cmax, channel_min=cmin, n=len(x))


def dead_filters(channel_max: np.ndarray) -> list[int]:
    """Channels whose activation is exactly zero on every image of the sample.

    Only meaningful for ReLU outputs: such a filter's pre-activation is <= 0 everywhere on the
    sample, so it passes no signal and gets no gradient ("dead ReLU").
    """
    return [int(i) for i in np.flatnonzero(np.asarray(channel_max) <= 0)]


# --------------------------------------------------------------------------- figures


def _image_2d(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"image must be (h, w) or (h, w, 1), got shape {np.shape(image)}")
    return img


def feature_map_figure(
    image: np.ndarray,
    maps: np.ndarray,
    layer: str,
    title: str | None = None,
    dpi: int = 100,
) -> Plot:
    """One image's feature maps of one layer: the input beside a grid with a tile per channel.

    ``maps`` is the layer's output for the image, (h, w, channels). One colour scale for the
    whole layer (sequential from zero for non-negative maps), so tiles compare directly.
    """
    img = _image_2d(image)
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 4 and maps.shape[0] == 1:
        maps = maps[0]
    if maps.ndim != 3:
        raise ValueError(f"maps must be (h, w, channels) for one image, got shape {maps.shape}")
    if not np.all(np.isfinite(maps)):
        raise ValueError(f"maps of layer {layer!r} contain non-finite values")
    h, w, c = maps.shape
    rows, cols = grid_shape(c)
    mosaic = tile_mosaic(tiles_from_channels(maps, rows, cols))
    cmap, vmin, vmax = activation_scale(maps)
    row_labels = [str(i * cols) for i in range(rows)]
    title = title or f"{layer}: {c} feature maps {h}x{w}"
    layout = mosaic_layout(
        mosaic.shape,
        cell_in=min(0.1, 1.1 / max(h, w)),
        side_in=1.6,
        title=title,
        top=text_height(9) + 0.1,
        left=text_width(row_labels, 6) + 0.2,
        bottom=text_height(6) + text_height(7) + 0.2,
    )
    fig = layout.figure(dpi)
    ax, cax, ax_img = layout.axes(fig)
    ax_img.imshow(
        img,
        cmap="gray",
        vmin=min(0.0, img.min()),
        vmax=max(1.0, img.max()),
        interpolation="nearest",
    )
    ax_img.set_title("input", fontsize=9)
    ax_img.set_xticks([])
    ax_img.set_yticks([])
    im = show_mosaic(ax, mosaic, cmap, vmin, vmax)
    ax.set_xticks(tile_centres(cols, w), [str(i) for i in range(cols)], fontsize=6)
    ax.set_yticks(tile_centres(rows, h), row_labels, fontsize=6)
    ax.tick_params(length=0)
    ax.set_xlabel("channel = row label + column", fontsize=7)
    layout.title(fig, title)
    fig.colorbar(im, cax=cax, label="activation")
    return Plot(
        figure=fig,
        kind="feature_maps",
        layer=layer,
        shape=tuple(maps.shape),
        grid=(rows, cols),
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        extra={"tiles": c},
    )


def class_mean_figure(
    means: np.ndarray,
    layer: str,
    counts: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    dpi: int = 100,
) -> Plot:
    """A classes x channels grid of mean activation maps (rows: classes, columns: channels).

    Reading down a column shows which digits a filter responds to; reading across a row shows
    how a class lights up the layer. One colour scale for the whole grid.
    """
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 4:
        raise ValueError(f"means must be (classes, h, w, channels), got shape {means.shape}")
    k, h, w, c = means.shape
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names for {k} classes")
    if counts is not None:
        names = [f"{n} ({int(m)})" for n, m in zip(names, counts, strict=True)]
    mosaic = tile_mosaic(means.transpose(0, 3, 1, 2))
    finite = means[np.isfinite(means)]
    cmap, vmin, vmax = activation_scale(finite)
    layout = mosaic_layout(
        mosaic.shape,
        cell_in=min(0.1, 1.2 / max(h, w)),
        title=f"{layer}: mean activation per class",
        left=text_width(names, 7) + text_height(10) + 0.25,
        bottom=text_height(6) + text_height(10) + 0.25,
    )
    fig = layout.figure(dpi)
    ax, cax, _ = layout.axes(fig)
    im = show_mosaic(ax, mosaic, cmap, vmin, vmax)
    ax.set_xticks(tile_centres(c, w), [str(i) for i in range(c)], fontsize=6)
    ax.set_yticks(tile_centres(k, h), names, fontsize=7)
    ax.tick_params(length=0)
    ax.set_xlabel("channel")
    ax.set_ylabel("class (images)")
    layout.title(fig, f"{layer}: mean activation per class")
    fig.colorbar(im, cax=cax, label="mean activation")
    return Plot(
        figure=fig,
        kind="class_means",
        layer=layer,
        shape=tuple(means.shape),
        grid=(k, c),
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        extra={"tiles": k * c, "counts": None if counts is None else [int(v) for v in counts]},
    )

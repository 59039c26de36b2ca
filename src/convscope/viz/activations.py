"""Activation figures: one image's feature maps, per-class mean activations, dead filters.

The numbers come from either network through one interface, a *maps function*
``maps_fn(x_batch) -> {layer name: NHWC array}`` giving every conv and pool layer's output:
:func:`engine_feature_maps` for the NumPy engine, ``convscope.keras_cnn.feature_maps`` for
Keras. This module never imports TensorFlow; the visuals stage hands it the Keras function.

Colour: activations after ReLU (and pooled maps) are >= 0 and use a sequential colormap from
zero, one scale per figure; a layer with negative outputs (tanh) falls back to the
zero-centred diverging scale (:func:`convscope.viz.core.activation_scale`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from convscope.scratch.layers import Activation, Conv2D, MaxPool2D
from convscope.validation import ValidationError, check_array, check_int, check_xy
from convscope.viz.core import Plot, TileFigure, activation_scale, grid_shape, tiles_from_channels

__all__ = [
    "ClassMeans",
    "MapsFn",
    "class_mean_activations",
    "class_mean_figure",
    "dead_filters",
    "engine_conv_layers",
    "engine_feature_maps",
    "feature_map_figure",
]

MapsFn = Callable[[np.ndarray], dict[str, np.ndarray]]


def _conv_map(layers, i: int) -> tuple[str, int]:
    """(activation, index of the layer whose output is conv ``i``'s map), as Keras reports it:
    the conv's own output when the activation is fused (``Conv2D(..., activation="relu")``),
    else the activation layer right after a linear conv (the seed's ``Conv2D`` then ``ReLU``)."""
    nxt = layers[i + 1] if i + 1 < len(layers) else None
    if layers[i].activation == "linear" and isinstance(nxt, Activation):
        return nxt.activation, i + 1
    return layers[i].activation, i


def engine_feature_maps(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every conv (after its activation) and pool layer's output of an engine model for ``x``.

    Keys are the conv/pool layer names; arrays are copies, unchanged by later forwards.
    """
    outputs = model.activations(x)
    maps = {}
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Conv2D | MaxPool2D):
            j = _conv_map(model.layers, i)[1] if isinstance(layer, Conv2D) else i
            maps[layer.name] = np.array(outputs[j][1])
    if not maps:
        raise ValidationError(f"model {model!r} has no Conv2D or MaxPool2D layer to show")
    return maps


def engine_conv_layers(model) -> tuple[dict[str, np.ndarray], set[str]]:
    """(conv layer -> HWIO kernel, names of the conv layers whose map is a ReLU output)."""
    kernels, relu = {}, set()
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Conv2D):
            kernels[layer.name] = np.array(layer.kernel)
            if _conv_map(model.layers, i)[0] == "relu":
                relu.add(layer.name)
    return kernels, relu


@dataclass
class ClassMeans:
    """Per-class mean activations over a sample, and per-channel extremes.

    ``means``: layer -> (classes, h, w, channels); ``counts``: images per class;
    ``channel_max``/``channel_min``: layer -> (channels,) extremes over the sample; ``n``: images.
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
) -> ClassMeans:
    """Mean activation map per class for every layer ``maps_fn`` reports, in batches.

    Sums are accumulated per batch in float64, so the sample's maps never all sit in memory
    at once. A class absent from the sample gets a NaN mean (drawn blank), not a false zero.
    """
    x, y = check_xy(x, y, dtype=None)
    x, y = check_array(x, "x (NHWC)", ndim=4), y.reshape(-1)
    if y.dtype.kind not in "iu" or y.min() < 0:
        raise ValidationError(f"y must hold integer class labels >= 0, got dtype {y.dtype}")
    k = int(y.max()) + 1 if num_classes is None else num_classes
    k = check_int(k, "num_classes", min=int(y.max()) + 1)
    batch_size = check_int(batch_size, "batch_size", min=1)
    sums: dict[str, np.ndarray] = {}
    cmax: dict[str, np.ndarray] = {}
    cmin: dict[str, np.ndarray] = {}
    onehot = np.eye(k)[y]  # (n, k)
    for start in range(0, len(x), batch_size):
        hot = onehot[start : start + batch_size]
        for name, m in maps_fn(x[start : start + batch_size]).items():
            m = np.asarray(m, dtype=np.float64)
            s = (hot.T @ m.reshape(len(m), -1)).reshape(k, *m.shape[1:])  # every class at once
            sums[name] = sums[name] + s if name in sums else s
            cmax[name] = np.fmax(cmax.get(name, -np.inf), m.max(axis=(0, 1, 2)))
            cmin[name] = np.fmin(cmin.get(name, np.inf), m.min(axis=(0, 1, 2)))
    counts = np.bincount(y, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = {name: s / counts[:, None, None, None] for name, s in sums.items()}
    return ClassMeans(means=means, counts=counts, channel_max=cmax, channel_min=cmin, n=len(x))


def dead_filters(channel_max: np.ndarray) -> list[int]:
    """Channels whose activation is zero on every image of the sample.

    Meaningful for ReLU outputs only: such a filter's pre-activation is <= 0 everywhere on the
    sample, so it passes no signal and gets no gradient ("dead ReLU").
    """
    return [int(i) for i in np.flatnonzero(np.asarray(channel_max) <= 0)]


def feature_map_figure(
    image: np.ndarray, maps: np.ndarray, layer: str, title: str | None = None, dpi: int = 100
) -> Plot:
    """One image's maps of one layer: the input beside a grid with a tile per channel.

    ``maps`` is the layer's output for the image, (h, w, channels). One colour scale for the
    whole layer, so tiles compare directly.
    """
    img = check_array(np.squeeze(image), "image (h, w)", ndim=2, dtype=np.float64)
    maps = check_array(
        maps, f"maps of {layer} (h, w, channels)", ndim=3, dtype=np.float64, finite=True
    )
    h, w, c = maps.shape
    rows, cols = grid_shape(c)
    return TileFigure(
        tiles_from_channels(maps, rows, cols),
        *activation_scale(maps),
        title or f"{layer}: {c} feature maps {h}x{w}",
        kind="feature_maps",
        layer=layer,
        shape=maps.shape,
        extra={"tiles": c},
        col_labels=[str(i) for i in range(cols)],
        row_labels=[str(i * cols) for i in range(rows)],
        xlabel="channel = row label + column",
        side_image=img,
        bar_label="activation",
        cell_in=min(0.1, 1.1 / max(h, w)),
    ).plot(dpi)


def class_mean_figure(
    means: np.ndarray,
    layer: str,
    counts: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    dpi: int = 100,
) -> Plot:
    """A classes x channels grid of mean activation maps, on one colour scale.

    Down a column: which classes a filter responds to; across a row: how a class lights up
    the layer. Row labels carry the number of images per class when ``counts`` is given.
    """
    means = check_array(means, "means (classes, h, w, channels)", ndim=4, dtype=np.float64)
    k, h, w, c = means.shape
    names = [str(i) for i in range(k)] if class_names is None else list(class_names)
    if len(names) != k:
        raise ValidationError(f"class_names has {len(names)} names for {k} classes")
    if counts is not None:
        names = [f"{n} ({int(m)})" for n, m in zip(names, counts, strict=True)]
    return TileFigure(
        means.transpose(0, 3, 1, 2),
        *activation_scale(means[np.isfinite(means)]),
        f"{layer}: mean activation per class",
        kind="class_means",
        layer=layer,
        shape=means.shape,
        extra={"tiles": k * c, "counts": None if counts is None else [int(v) for v in counts]},
        col_labels=[str(i) for i in range(c)],
        row_labels=names,
        xlabel="channel",
        ylabel="class (images)",
        bar_label="mean activation",
        cell_in=min(0.1, 1.2 / max(h, w)),
    ).plot(dpi)

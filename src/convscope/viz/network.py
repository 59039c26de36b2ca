"""Every figure of one network: kernel grids, feature maps, class means, filmstrips, GIF.

A :class:`Network` says what to draw from (the engine and Keras alike, through a maps
function), :func:`draw_network` draws and records it all in a :class:`Manifest`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from convscope.viz.activations import (
    MapsFn,
    class_mean_activations,
    class_mean_figure,
    dead_filters,
    engine_conv_layers,
    engine_feature_maps,
    feature_map_figure,
)
from convscope.viz.evolution import kernel_evolution_gif, kernel_filmstrip
from convscope.viz.kernels import KernelGrid
from convscope.viz.manifest import Manifest, figure_name

__all__ = ["Network", "draw_network"]


@dataclass
class Network:
    """What the figures of one network are drawn from.

    ``kernels``: conv layer -> HWIO; ``relu``: conv layers whose dead filters can be seen (a
    sigmoid or tanh output is never exactly zero); ``maps_fn``: batch -> conv/pool layer ->
    NHWC, conv after its activation; ``images``: indices into ``x`` to draw; ``sample``:
    (x, y) for the class means; ``classes``: class names.
    """

    kernels: dict[str, np.ndarray]
    relu: set[str]
    maps_fn: MapsFn
    x: np.ndarray
    images: list[int]
    sample: tuple[np.ndarray, np.ndarray]
    classes: tuple[str, ...]

    @classmethod
    def engine(cls, model, *args) -> Network:
        return cls(*engine_conv_layers(model), partial(engine_feature_maps, model), *args)


def draw_network(
    man: Manifest,
    model: str,
    net: Network,
    history: dict[str, np.ndarray],
    meta: dict[str, Any],
    dpi: int = 100,
    fps: int = 4,
    on_frame: Callable[[str, int, np.ndarray], Any] | None = None,
    source: str | None = None,
) -> dict[str, list[int]]:
    """Draw one network's figures into ``man``; returns the dead filters per ReLU conv layer.

    ``history``/``meta``: its per-epoch kernels file (:func:`~convscope.viz.evolution.
    load_kernel_history`); ``meta["epochs"]`` is the kernel grids' step. ``source``: the
    model file the figures show, recorded in the manifest. A filmstrip per conv layer, and a
    GIF of the first one, whose frames go to ``on_frame(layer, epoch, rgb)``.
    """
    where = {"source": source}
    stats = class_mean_activations(net.maps_fn, *net.sample, num_classes=len(net.classes))
    dead = {name: dead_filters(stats.channel_max[name]) for name in net.kernels if name in net.relu}
    for name, kernel in net.kernels.items():
        grid = KernelGrid(kernel, layer=name, dead=dead.get(name)).plot(dpi)
        man.save_plot(grid, model, step=meta.get("epochs"), **where)
    maps = net.maps_fn(net.x[net.images])
    for j, idx in enumerate(net.images):
        for name, m in maps.items():
            title = f"{model} {name}: image {idx}"
            plot = feature_map_figure(net.x[idx], m[j], name, title=title, dpi=dpi)
            man.save_plot(plot, model, image_index=idx, **where)
    for name in net.kernels:
        plot = class_mean_figure(stats.means[name], name, stats.counts, net.classes, dpi=dpi)
        man.save_plot(plot, model, **where)
        if name in history:
            man.save_plot(kernel_filmstrip(history[name], layer=name, dpi=dpi), model, **where)
    first = next(iter(net.kernels))
    if first in history:
        rel = man.rel(figure_name(model, "kernel_evolution", first, suffix=".gif"))
        frame = None if on_frame is None else partial(on_frame, first)
        gif = kernel_evolution_gif(history[first], man.target(rel), first, fps, on_frame=frame)
        man.add(gif, rel, model, **where)
    return dead

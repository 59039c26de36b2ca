"""Engine vs Keras, side by side: the same weights must give the same feature maps.

The NumPy engine loaded with a trained Keras model's weights (``convscope.scratch.bridge``)
runs the same image; this figure puts Keras's maps, the engine's maps and their absolute
difference next to each other for every conv and pool layer. The difference is drawn on the
layer's own activation scale, so agreement reads as a blank panel rather than as amplified
float32 rounding noise; its exact maximum is in the panel title and in the returned numbers,
which the visuals stage checks against a tolerance.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from convscope.viz.core import (
    SEQUENTIAL,
    Plot,
    activation_scale,
    grid_shape,
    mosaic_figsize,
    new_figure,
    show_mosaic,
    tile_mosaic,
    tiles_from_channels,
)

__all__ = ["ParityError", "check_parity", "engine_vs_keras_figure", "map_differences"]


class ParityError(ValueError):
    """The engine's feature maps differ from Keras's by more than the tolerance."""


def map_differences(
    keras_maps: Mapping[str, np.ndarray], engine_maps: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Max |keras - engine| per layer, pairing the layers in order (names may differ).

    Raises ValueError when the two networks expose a different number of layers or a pair of
    maps differs in shape: that is a wrong bridge, not a numerical difference.
    """
    k_items, e_items = list(keras_maps.items()), list(engine_maps.items())
    if len(k_items) != len(e_items):
        raise ValueError(
            f"keras has {len(k_items)} conv/pool layers {[n for n, _ in k_items]}, the engine "
            f"{len(e_items)} {[n for n, _ in e_items]}"
        )
    out = {}
    for (kn, km), (en, em) in zip(k_items, e_items, strict=True):
        km, em = np.asarray(km, dtype=np.float64), np.asarray(em, dtype=np.float64)
        if km.shape != em.shape:
            raise ValueError(
                f"layer {kn!r} (keras) has shape {km.shape} but {en!r} (engine) has {em.shape}"
            )
        out[kn] = float(np.max(np.abs(km - em))) if km.size else 0.0
    return out


def engine_vs_keras_figure(
    image: np.ndarray,
    keras_maps: Mapping[str, np.ndarray],
    engine_maps: Mapping[str, np.ndarray],
    dpi: int = 100,
) -> Plot:
    """Rows: conv/pool layers; columns: Keras, engine, |difference| (one image, index 0).

    ``*_maps`` map layer name -> NHWC output (the first image of the batch is drawn).
    ``extra`` carries ``max_abs_diff`` (overall) and ``layer_max_abs_diff``; check them with
    :func:`check_parity` after saving the figure, so a failing comparison can still be seen.
    """
    diffs = map_differences(keras_maps, engine_maps)
    names = list(keras_maps)
    engine_names = list(engine_maps)
    img = np.squeeze(np.asarray(image, dtype=np.float64))
    panels = []
    for kn, en in zip(names, engine_names, strict=True):
        km = np.asarray(keras_maps[kn], dtype=np.float64)[0]
        em = np.asarray(engine_maps[en], dtype=np.float64)[0]
        rows, cols = grid_shape(km.shape[-1])
        mk = tile_mosaic(tiles_from_channels(km, rows, cols))
        me = tile_mosaic(tiles_from_channels(em, rows, cols))
        md = tile_mosaic(tiles_from_channels(np.abs(km - em), rows, cols))
        panels.append((kn, en, mk, me, md, activation_scale(km, em)))
    cell = 0.045
    widest = max(p[2].shape[1] for p in panels)
    tallest = sum(p[2].shape[0] for p in panels)
    pw, ph = mosaic_figsize((tallest, 3 * widest), cell_in=cell, extra_w=2.6, extra_h=1.0)
    fig = new_figure(pw + 1.2, ph + 0.4 * len(panels), dpi=dpi)
    heights = [p[2].shape[0] for p in panels]
    axes = fig.subplots(
        len(panels),
        4,
        width_ratios=[0.6 * widest, widest, widest, widest],
        height_ratios=heights,
        squeeze=False,
    )
    for r, (kn, en, mk, me, md, (cmap, vmin, vmax)) in enumerate(panels):
        ax_in = axes[r, 0]
        if r == 0:
            ax_in.imshow(img, cmap="gray", interpolation="nearest")
            ax_in.set_title("input", fontsize=8)
        ax_in.axis("off")
        for c, (m, label, cm) in enumerate(
            (
                (mk, f"keras {kn}", cmap),
                (me, f"engine {en}", cmap),
                (md, f"|diff| max {diffs[kn]:.2g}", SEQUENTIAL),
            ),
            start=1,
        ):
            ax = axes[r, c]
            lo = 0.0 if cm == SEQUENTIAL and c == 3 else vmin
            im = show_mosaic(ax, m, cm, lo, vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=8)
        fig.colorbar(im, ax=list(axes[r, 1:]), shrink=0.8, fraction=0.03)
    overall = max(diffs.values())
    fig.suptitle(f"engine vs keras, same weights: max |difference| = {overall:.3g}", fontsize=10)
    first = np.asarray(keras_maps[names[0]])
    return Plot(
        figure=fig,
        kind="engine_vs_keras",
        layer=None,
        shape=tuple(first.shape[1:]),
        grid=(len(panels), 3),
        cmap=panels[0][5][0],
        vmin=panels[0][5][1],
        vmax=panels[0][5][2],
        extra={"max_abs_diff": overall, "layer_max_abs_diff": diffs, "layers": names},
    )


def check_parity(layer_diffs: Mapping[str, float], tolerance: float = 1e-4) -> float:
    """The overall max difference; :class:`ParityError` when it exceeds ``tolerance``.

    Float32 convolutions summed in a different order (im2col matmul vs TensorFlow's kernels)
    differ by a few ulps of the activations' size, around 1e-6 for MNIST maps; 1e-4 leaves
    room for that while catching any real disagreement (a flipped kernel, a wrong padding).
    """
    overall = max(layer_diffs.values()) if layer_diffs else 0.0
    if not overall <= tolerance:  # also catches NaN
        raise ParityError(
            f"engine and keras feature maps differ by {overall:.3g} > tolerance {tolerance:g} "
            f"(per layer: {dict(layer_diffs)})"
        )
    return overall

"""Engine vs Keras, side by side: the same weights must give the same feature maps.

The NumPy engine loaded with a trained Keras model's weights (``convscope.scratch.bridge``)
runs the same image; the figure puts Keras's maps, the engine's maps and their absolute
difference next to each other for every conv and pool layer. The difference is drawn on the
layer's own activation scale, so agreement reads as a blank panel rather than as amplified
float32 rounding noise; its exact maximum is in the panel title and in ``extra``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from convscope.viz.core import (
    SEQUENTIAL,
    Plot,
    activation_scale,
    grid_shape,
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
    """Max |keras - engine| per Keras layer, pairing the layers in order (names may differ).

    A different number of layers or a pair of maps of different shapes raises ValueError:
    that is a wrong bridge, not a numerical difference.
    """
    if len(keras_maps) != len(engine_maps):
        raise ValueError(
            f"keras has {len(keras_maps)} conv/pool layers {list(keras_maps)}, the engine "
            f"{len(engine_maps)} {list(engine_maps)}"
        )
    out = {}
    for (kn, km), (en, em) in zip(keras_maps.items(), engine_maps.items(), strict=True):
        km, em = np.asarray(km, dtype=np.float64), np.asarray(em, dtype=np.float64)
        if km.shape != em.shape:
            raise ValueError(
                f"layer {kn!r} (keras) has shape {km.shape} but {en!r} (engine) has {em.shape}"
            )
        out[kn] = float(np.max(np.abs(km - em))) if km.size else 0.0
    return out


def check_parity(layer_diffs: Mapping[str, float], tolerance: float = 1e-4) -> float:
    """The overall max difference; :class:`ParityError` when it exceeds ``tolerance``.

    Float32 convolutions summed in a different order (im2col matmul vs TensorFlow's kernels)
    differ by a few ulps of the activations' size; 1e-4 leaves room for that while catching
    any real disagreement (a flipped kernel, a wrong padding).
    """
    overall = max(layer_diffs.values(), default=0.0)
    if not overall <= tolerance:  # also catches NaN
        raise ParityError(
            f"engine and keras feature maps differ by {overall:.3g} > tolerance {tolerance:g} "
            f"(per layer: {dict(layer_diffs)})"
        )
    return overall


def engine_vs_keras_figure(
    image: np.ndarray,
    keras_maps: Mapping[str, np.ndarray],
    engine_maps: Mapping[str, np.ndarray],
    dpi: int = 100,
) -> Plot:
    """Rows: conv/pool layers; columns: input, Keras, engine, |difference|.

    ``*_maps`` map layer name -> NHWC output; the batch's first image is drawn. ``extra``
    carries ``max_abs_diff`` (overall) and ``layer_max_abs_diff``.
    """
    diffs = map_differences(keras_maps, engine_maps)
    panels = []
    for (kn, km), (en, em) in zip(keras_maps.items(), engine_maps.items(), strict=True):
        km, em = np.asarray(km, dtype=np.float64)[0], np.asarray(em, dtype=np.float64)[0]
        grid = grid_shape(km.shape[-1])
        mosaics = [tile_mosaic(tiles_from_channels(m, *grid)) for m in (km, em, np.abs(km - em))]
        panels.append((kn, en, mosaics, activation_scale(km, em)))
    heights = [p[2][0].shape[0] for p in panels]
    widest = max(p[2][0].shape[1] for p in panels)
    # 0.045 in per data pixel, less if needed to fit 16 x 12 in with room for the labels
    scale = min(0.045, 13.4 / (3 * widest), 11.0 / sum(heights))
    width = round(max(3.5, 3 * widest * scale + 2.6), 2) + 1.2
    height = round(max(2.1, sum(heights) * scale + 1.0), 2) + 0.4 * len(panels)
    fig = new_figure(width, height, dpi=dpi)
    axes = fig.subplots(
        len(panels),
        4,
        width_ratios=[0.6 * widest, widest, widest, widest],
        height_ratios=heights,
        squeeze=False,
    )
    for r, (kn, en, mosaics, (cmap, vmin, vmax)) in enumerate(panels):
        axes[r, 0].axis("off")
        if r == 0:
            axes[r, 0].imshow(np.squeeze(image), cmap="gray", interpolation="nearest")
            axes[r, 0].set_title("input", fontsize=8)
        labels = (f"keras {kn}", f"engine {en}", f"|diff| max {diffs[kn]:.2g}")
        scales = ((cmap, vmin), (cmap, vmin), (SEQUENTIAL, 0.0))
        for ax, mosaic, label, (cm, lo) in zip(axes[r, 1:], mosaics, labels, scales, strict=True):
            im = show_mosaic(ax, mosaic, cm, lo, vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=8)
        fig.colorbar(im, ax=list(axes[r, 1:]), shrink=0.8, fraction=0.03)
    overall = max(diffs.values())
    fig.suptitle(f"engine vs keras, same weights: max |difference| = {overall:.3g}", fontsize=10)
    cmap, vmin, vmax = panels[0][3]
    return Plot(
        figure=fig,
        kind="engine_vs_keras",
        layer=None,
        shape=tuple(np.shape(next(iter(keras_maps.values())))[1:]),
        grid=(len(panels), 3),
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        extra={"max_abs_diff": overall, "layer_max_abs_diff": diffs, "layers": list(keras_maps)},
    )

"""Which pixels a class score depends on: saliency maps and Grad-CAM.

Both explain the target class's logit (the pre-softmax score, see ``networks``), for an engine
``Sequential`` or a Keras model of the same architecture, and return NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convscope.interpret.factory import as_network
from convscope.interpret.networks import check_images, check_layer, target_weights
from convscope.validation import ValidationError, check_array, check_int

__all__ = ["grad_cam", "saliency", "upsample"]


def saliency(model: Any, images: Any, target: int | Sequence[int]) -> np.ndarray:
    """|d logit_target / d input|, the largest over channels: shape (n, H, W).

    Simonyan et al.'s saliency map: how strongly each pixel moves the target score at this
    image. ``target`` is one class for all images or one per image.
    """
    net = as_network(model)
    x = check_images(net, images)
    _, grad = net.logit_gradient(x, target_weights(net, target, len(x)), None)
    return np.abs(grad).max(axis=-1)


def grad_cam(model: Any, images: Any, target: int | Sequence[int], layer: str) -> np.ndarray:
    """Grad-CAM maps at ``layer``'s resolution: shape (n, h, w), >= 0.

    ReLU(sum_c alpha_c * A_c) where A are the layer's feature maps and alpha_c the spatial
    mean of d logit_target / d A_c (Selvaraju et al.): the regions of the maps that raise the
    target score. ``layer`` names a layer with (h, w, channels) outputs, usually the last conv
    layer; :func:`upsample` brings the maps to the input size for display.
    """
    net = as_network(model)
    layer = check_layer(net, layer)
    if len(net.output_shapes[layer]) != 3:
        raise ValidationError(
            f"layer={layer!r} is not allowed: Grad-CAM needs (h, w, channels) feature maps, its "
            f"output has shape {net.output_shapes[layer]}"
        )
    x = check_images(net, images)
    acts, grad = net.logit_gradient(x, target_weights(net, target, len(x)), layer)
    alpha = grad.mean(axis=(1, 2))
    return np.maximum(np.einsum("nhwc,nc->nhw", acts, alpha), 0.0)


def _linear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # half-pixel centres (output pixel i samples input coordinate (i + 0.5) * n_in/n_out - 0.5),
    # clamped at the borders: tf.image.resize's bilinear convention
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    return lo, np.minimum(lo + 1, n_in - 1), pos - lo


def upsample(maps: Any, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of (n, h, w) maps to (n, *size), as ``tf.image.resize`` does it.

    Grad-CAM maps are coarse (one value per feature-map cell); overlaid on the image they
    need its size. Bilinear keeps them non-negative and smooth.
    """
    maps = check_array(maps, "maps", ndim=3, finite=True, nonempty=True, dtype=np.float64)
    if not isinstance(size, Sequence) or len(size) != 2:
        raise ValidationError(f"size={size!r} is not allowed: expected (height, width)")
    height, width = (check_int(s, "size", min=1) for s in size)
    r0, r1, fr = _linear_weights(maps.shape[1], height)
    c0, c1, fc = _linear_weights(maps.shape[2], width)
    rows = maps[:, r0] * (1 - fr)[:, None] + maps[:, r1] * fr[:, None]
    return rows[:, :, c0] * (1 - fc) + rows[:, :, c1] * fc

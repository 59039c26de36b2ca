"""How alike two layers' representations are: linear centred kernel alignment (CKA).

Linear CKA (Kornblith et al., 2019) compares two activation matrices X (n, p) and Y (n, q)
of the same n inputs, after centring each feature:

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)

It is 1 for representations that differ by an orthogonal transform and an isotropic scale
(rotated, reflected or rescaled features), near 0 for unrelated ones, and needs no matching
of units, so it compares layers of different widths, or of the engine and Keras networks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convscope.interpret.factory import as_network
from convscope.interpret.networks import check_images, check_layer
from convscope.validation import ValidationError, check_array

__all__ = ["cka", "layer_similarity"]


def _cross(a: np.ndarray, b: np.ndarray) -> float:
    """||b^T a||_F^2, through the cheaper of the feature (p, q) and sample (n, n) products."""
    n = len(a)
    if a.shape[1] * b.shape[1] <= n * n:
        return float(np.sum((b.T @ a) ** 2))
    return float(np.sum((a @ a.T) * (b @ b.T)))


def cka(acts_a: Any, acts_b: Any) -> float:
    """Linear CKA in [0, 1] of two activation matrices (n, features) over the same n inputs."""
    a = check_array(acts_a, "acts_a", ndim=2, dtype=np.float64, finite=True)
    b = check_array(acts_b, "acts_b", ndim=2, dtype=np.float64, finite=True)
    if len(a) != len(b) or len(a) < 2:
        raise ValidationError(
            f"acts_a and acts_b need the same number (>= 2) of rows, got shapes {a.shape} "
            f"and {b.shape}"
        )
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    for name, m in (("acts_a", a), ("acts_b", b)):
        if not np.any(m):
            raise ValidationError(f"{name} is constant across samples: CKA is undefined")
    return float(_cross(a, b) / np.sqrt(_cross(a, a) * _cross(b, b)))


def layer_similarity(
    model_a: Any, model_b: Any, images: Any, layer: str | tuple[str, str]
) -> float:
    """Linear CKA of one layer's outputs in two models on the same images.

    ``layer`` is one name for both models (the bridge keeps Keras's names, so it addresses
    the same layer in an engine model and its Keras twin) or a pair (name in a, name in b).
    Each output is flattened to one row per image.
    """
    names = (layer, layer) if isinstance(layer, str) else tuple(layer)
    if len(names) != 2:
        raise ValidationError(f"layer={layer!r} is not allowed: expected a name or a pair")
    acts = []
    for model, name in zip((model_a, model_b), names, strict=True):
        net = as_network(model)
        name = check_layer(net, name)
        x = check_images(net, images)
        acts.append(net.activations(x, name).reshape(len(x), -1))
    return cka(*acts)

"""Finite-difference gradient checking shared by the engine's tests.

Central differences in float64: with ``eps = 1e-6`` the truncation error is ~eps**2 and the
rounding error ~1e-16 / eps relative to f, so an analytic gradient that is right agrees to
~1e-9 or better, far inside the 1e-7 the tests demand, while a wrong one misses by O(1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def numeric_grad(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences, one element at a time.

    ``f`` maps an array shaped like ``x`` to a scalar.  ``x`` must be float64 (a float32 check
    would only measure float32 rounding); it is perturbed in place and restored exactly, so
    ``f`` may close over it or receive it.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise ValueError(
            f"numeric_grad needs a float64 ndarray, got x of type {type(x).__name__} "
            f"with dtype {getattr(x, 'dtype', None)}"
        )
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("numeric_grad needs a contiguous x (it perturbs x in place)")
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + eps
        plus = float(f(x))
        flat[i] = orig - eps
        minus = float(f(x))
        flat[i] = orig
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def rel_error(a, b) -> float:
    """``||a - b|| / (||a|| + ||b||)``, the relative error of two whole gradients.

    A norm-wise ratio rather than an element-wise one: an element that is ~0 in both would
    otherwise turn pure rounding noise into a huge "relative" error.  Two exact zeros give 0.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error needs equal shapes, got {a.shape} and {b.shape}")
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)

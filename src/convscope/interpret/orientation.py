"""How much a first-layer kernel prefers vertical to horizontal lines (the seed's exercise).

The lines mini-CNN is meant to become a vertical-line detector. A kernel's preference is read
from its responses to the seed's two clean test images (a centred vertical and a horizontal
line, :func:`convscope.data.lines.clean_pair`):

    R_v, R_h = the largest cross-correlation of the kernel with each image (valid positions)
    selectivity = (R_v - R_h) / (|R_v| + |R_h|)   in [-1, 1]

+1: the kernel responds to vertical lines only, -1: to horizontal ones, 0: no preference. The
largest response is the one that counts because in the mini-CNN a ReLU and a max-pool follow
the conv: what reaches the classifier is each map's peak. Kernel only (no bias, no activation),
so the index needs nothing but the kernel snapshots both trainers record per epoch.
NumPy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convscope.validation import ValidationError, check_int, check_kernel

__all__ = ["line_responses", "orientation_selectivity"]


def line_responses(kernel: Any, size: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(R_v, R_h), one per filter of an HWIO kernel, on ``size x size`` clean line images.

    A kernel with several input channels sees the line image in every channel.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    from convscope.data.lines import clean_pair

    k = check_kernel(kernel, "kernel").astype(np.float64)
    size = check_int(size, "size", min=3)
    kh, kw, cin, _ = k.shape
    if kh > size or kw > size:
        raise ValidationError(f"size={size} is not allowed: the {kh}x{kw} kernel must fit")
    lines = clean_pair(size)[0][..., 0].astype(np.float64)  # (2, size, size): vertical, horizontal
    windows = sliding_window_view(lines, (kh, kw), axis=(1, 2))  # (2, oh, ow, kh, kw)
    response = np.einsum("nijab,abo->nijo", windows, k.sum(axis=2))
    peak = response.max(axis=(1, 2))
    return peak[0], peak[1]


def orientation_selectivity(kernel: Any, size: int = 5) -> np.ndarray:
    """(R_v - R_h) / (|R_v| + |R_h|) per filter, in [-1, 1] (0 when both responses are 0)."""
    r_v, r_h = line_responses(kernel, size)
    scale = np.abs(r_v) + np.abs(r_h)
    return np.divide(r_v - r_h, scale, out=np.zeros_like(scale), where=scale > 0)

"""Naive loop versions of the conv and max-pool ops, written the way the seed notebook does.

One output position at a time: slice the receptive field, multiply by the kernel and sum (conv),
or take its max (pool).  They are deliberately slow and obvious, so a reader can check them by
eye; the tests then hold the vectorised ops in :mod:`convscope.scratch.ops` to them over many
random shapes.

Signatures and conventions (NHWC, HWIO, cross-correlation, TensorFlow 'same', first-max
tie rule) are the same as the fast ops; only padding resolution and validation are shared.
"""

from __future__ import annotations

import numpy as np

from convscope.scratch.ops import _conv_setup, _lowest, _pool_setup, pad2d

__all__ = ["conv2d_loop", "conv2d_backward_loop", "max_pool2d_loop", "max_pool2d_backward_loop"]


def conv2d_loop(x, w, b=None, stride=1, padding="valid") -> np.ndarray:
    """Cross-correlation, one sample, output row and column at a time."""
    x, w, b, (_, _, sh, sw, pads, oh, ow) = _conv_setup("conv2d_loop", x, w, b, stride, padding)
    kh, kw, _, f = w.shape
    dtype = np.result_type(x, w) if b is None else np.result_type(x, w, b)
    xp = pad2d(x, pads)
    out = np.zeros((x.shape[0], oh, ow, f), dtype=dtype)
    for n in range(x.shape[0]):
        for y in range(oh):
            for xx in range(ow):
                region = xp[n, y * sh : y * sh + kh, xx * sw : xx * sw + kw, :]
                for k in range(f):
                    out[n, y, xx, k] = np.sum(region * w[:, :, :, k])
                    if b is not None:
                        out[n, y, xx, k] += b[k]
    return out


def conv2d_backward_loop(dy, x, w, stride=1, padding="valid"):
    """``(dx, dw, db)``: every output position sends ``dy`` back through its receptive field."""
    x, w, _, (_, _, sh, sw, pads, oh, ow) = _conv_setup(
        "conv2d_backward_loop", x, w, None, stride, padding
    )
    dy = np.asarray(dy)
    kh, kw, _, f = w.shape
    dtype = np.result_type(dy, x, w)
    xp = pad2d(x, pads)
    dxp = np.zeros(xp.shape, dtype=dtype)
    dw = np.zeros(w.shape, dtype=dtype)
    db = np.zeros(f, dtype=dtype)
    for n in range(x.shape[0]):
        for y in range(oh):
            for xx in range(ow):
                rows = slice(y * sh, y * sh + kh)
                cols = slice(xx * sw, xx * sw + kw)
                region = xp[n, rows, cols, :]
                for k in range(f):
                    g = dy[n, y, xx, k]
                    dw[:, :, :, k] += region * g
                    dxp[n, rows, cols, :] += w[:, :, :, k] * g
                    db[k] += g
    (t, _), (l, _) = pads
    dx = dxp[:, t : t + x.shape[1], l : l + x.shape[2], :]
    return dx, dw, db


def max_pool2d_loop(x, pool_size=2, stride=None, padding="valid") -> np.ndarray:
    """Max of each window, one sample, position and channel at a time."""
    x, (ph, pw, sh, sw, pads, oh, ow), _ = _pool_setup(
        "max_pool2d_loop", x, pool_size, stride, padding
    )
    xp = pad2d(x, pads, value=_lowest(x.dtype))
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]), dtype=x.dtype)
    for n in range(x.shape[0]):
        for y in range(oh):
            for xx in range(ow):
                for c in range(x.shape[3]):
                    region = xp[n, y * sh : y * sh + ph, xx * sw : xx * sw + pw, c]
                    out[n, y, xx, c] = np.max(region)
    return out


def max_pool2d_backward_loop(dy, x, pool_size=2, stride=None, padding="valid") -> np.ndarray:
    """Each window's gradient goes to its first maximum in row-major order (``np.argmax``)."""
    x, (ph, pw, sh, sw, pads, oh, ow), _ = _pool_setup(
        "max_pool2d_backward_loop", x, pool_size, stride, padding
    )
    dy = np.asarray(dy)
    xp = pad2d(x, pads, value=_lowest(x.dtype))
    dxp = np.zeros(xp.shape, dtype=dy.dtype if dy.dtype.kind == "f" else np.float64)
    for n in range(x.shape[0]):
        for y in range(oh):
            for xx in range(ow):
                for c in range(x.shape[3]):
                    region = xp[n, y * sh : y * sh + ph, xx * sw : xx * sw + pw, c]
                    i, j = np.unravel_index(np.argmax(region), region.shape)
                    dxp[n, y * sh + i, xx * sw + j, c] += dy[n, y, xx, c]
    (t, _), (l, _) = pads
    return dxp[:, t : t + x.shape[1], l : l + x.shape[2], :]

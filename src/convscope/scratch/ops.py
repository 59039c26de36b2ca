"""Vectorised forward and backward CNN ops on NHWC tensors, in NumPy only.

Conventions follow Keras/TensorFlow so the engine can be checked against them number for number:

* tensors are NHWC, conv kernels HWIO ``(KH, KW, C, F)``, and conv is cross-correlation
  (the kernel is not flipped), exactly what ``keras.layers.Conv2D`` computes;
* ``"same"`` padding is TensorFlow's rule: ``out = ceil(in / stride)`` and an odd total pad
  puts the extra row/column at the bottom/right (see :func:`same_padding`);
* max pooling defaults to ``stride = pool_size``, pads ``"same"`` with ``-inf`` (padding never
  wins a max), and routes the gradient of a window to ONE max only, the first in row-major
  order, as TensorFlow's CPU kernel does;
* ReLU's gradient at exactly 0 is 0.

How the speed comes about: nothing here loops over samples or pixels.  Convolution is im2col
(one gather: a strided copy, or a ``take`` through a cached index for one channel) followed
by a single BLAS matmul; its backward is one matmul for ``dw``, one for the input columns and
a col2im scatter-add, one NumPy call per kernel offset.  Max pooling gathers every window and
keeps each one's arg-max on small outputs (the backward is then one scatter) and takes a
running maximum over the window offsets on large ones.  Dtypes are kept (float32 stays
float32) and the big operands of every matmul are C-contiguous so BLAS gets them without
copies.

Two layers of functions: the public ops validate every argument and check finiteness on
every call (bad input -> ValueError naming it); behind them, private unchecked kernels
(``_conv2d_forward``, ``_conv2d_backward``, ``_max_pool2d_forward``, ...) take a
pre-resolved :class:`_Geometry`.  The layers call the kernels, with the checks done once at
the boundary (the layer's build, the model's input), because on one small image the checks
cost several times the arithmetic: a checked ``conv2d`` of a 5x5 image takes ~30 us, the
kernel ~5 us.  Element-wise kernels also avoid what costs most on tiny arrays: Python-scalar
operands (typed 0-d constants instead) and, where the arrays are always small (the losses),
in-place ops, whose memory-overlap checks double a call's cost.

The naive loop versions that the tests compare against live in
:mod:`convscope.scratch.reference`.
"""

from __future__ import annotations

import functools
import numbers
from typing import NamedTuple

import numpy as np

__all__ = [
    "pad2d",
    "same_padding",
    "resolve_padding",
    "conv_output_shape",
    "conv2d",
    "conv2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "relu",
    "relu_backward",
    "sigmoid",
    "sigmoid_backward",
    "tanh",
    "tanh_backward",
    "softmax",
    "softmax_backward",
]


# --------------------------------------------------------------------------------------------
# argument handling
# --------------------------------------------------------------------------------------------


def _is_int(v) -> bool:
    # bool is an int subclass in Python, but padding=True or stride=False is always a mistake.
    # The exact-type test first: plain ints are what nearly every call passes, and the ABC
    # check behind isinstance(v, numbers.Integral) costs ~10x more.
    if type(v) is int:
        return True
    return isinstance(v, numbers.Integral) and not isinstance(v, bool | np.bool_)


def _pair(value, name: str, ctx: str = "", minimum: int = 1) -> tuple[int, int]:
    """An int ``v`` or a pair ``(a, b)`` of ints, each ``>= minimum``, as a tuple of two ints."""
    if _is_int(value):
        pair = (int(value), int(value))
    elif (
        isinstance(value, tuple | list | np.ndarray)
        and len(value) == 2
        and all(_is_int(v) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(
            f"{name} must be an int or a pair of ints, got {name}={value!r}{_suffix(ctx)}"
        )
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value!r}{_suffix(ctx)}")
    return pair


def _suffix(ctx: str) -> str:
    return f" ({ctx})" if ctx else ""


def _shapes(**arrays) -> str:
    return ", ".join(f"{k}.shape={tuple(np.shape(v))}" for k, v in arrays.items())


def _as_array(a, name: str, ndim: int | None, ctx: str) -> np.ndarray:
    a = np.asarray(a)
    if ndim is not None and a.ndim != ndim:
        what = {4: " (NHWC)" if name in ("x", "dy") else " (KH, KW, C, F)"}.get(ndim, "")
        raise ValueError(
            f"{name} must be {ndim}-D{what}, got {name}.ndim={a.ndim}, {name}.shape={a.shape}"
            f"{_suffix(ctx)}"
        )
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(
            f"{name} must hold real numbers (integer or floating dtype), got "
            f"{name}.dtype={a.dtype}, {name}.shape={a.shape}{_suffix(ctx)}"
        )
    return a


def _check_finite(a: np.ndarray, name: str, ctx: str) -> None:
    """Reject NaN/inf once per call.  Integer arrays are finite by construction."""
    if a.dtype.kind != "f" or a.size == 0:
        return
    # One isfinite pass and an all(): faster than min() and max() at every size measured
    # (one 5x5 image to 256 MNIST images), at the price of a one-byte mask per value.
    finite = np.isfinite(a)
    if finite.all():
        return
    bad = np.argwhere(~finite)
    first = tuple(int(i) for i in bad[0])
    raise ValueError(
        f"{name} contains {len(bad)} non-finite value(s) (NaN or inf), first "
        f"{name}[{', '.join(map(str, first))}]={a[first]}, {name}.shape={a.shape}{_suffix(ctx)}"
    )


@functools.cache
def _consts(dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Read-only 0-d arrays ``(0, 1)`` of ``dtype``, for the element-wise kernels.

    A ufunc given a Python scalar converts it on every call, which on a one-element array
    doubles the call's cost (~0.9 us against ~0.45 us); a 0-d array of the operand's own
    dtype computes the same numbers without that.
    """
    zero, one = np.zeros((), dtype=dtype), np.ones((), dtype=dtype)
    zero.setflags(write=False)
    one.setflags(write=False)
    return zero, one


def _lowest(dtype: np.dtype):
    """The fill value that can never win a max: -inf for floats, the minimum for integers."""
    if dtype.kind == "f":
        return -np.inf
    return np.iinfo(dtype).min


# --------------------------------------------------------------------------------------------
# padding and shapes
# --------------------------------------------------------------------------------------------

Pads = tuple[tuple[int, int], tuple[int, int]]


def _explicit_pads(padding, name: str = "padding", ctx: str = "") -> Pads:
    """int p, pair (ph, pw) or ((top, bottom), (left, right)) -> ((t, b), (l, r)), all >= 0."""
    bad = ValueError(
        f"{name} must be 'valid', 'same', an int p, a pair (ph, pw) or "
        f"((top, bottom), (left, right)) of non-negative ints, got {name}={padding!r}"
        f"{_suffix(ctx)}"
    )
    if _is_int(padding):
        pads = ((int(padding),) * 2,) * 2
    elif isinstance(padding, tuple | list) and len(padding) == 2:
        if all(_is_int(p) for p in padding):
            ph, pw = int(padding[0]), int(padding[1])
            pads = ((ph, ph), (pw, pw))
        elif all(
            isinstance(p, tuple | list) and len(p) == 2 and all(_is_int(q) for q in p)
            for p in padding
        ):
            pads = tuple((int(p[0]), int(p[1])) for p in padding)
        else:
            raise bad
    else:
        raise bad
    if min(pads[0] + pads[1]) < 0:
        raise bad
    return pads


def pad2d(x, padding, value=0) -> np.ndarray:
    """Pad the two spatial axes of an NHWC tensor with a constant (zero by default).

    ``padding`` is an int ``p`` (all four sides), a pair ``(ph, pw)`` (top=bottom=ph,
    left=right=pw) or ``((top, bottom), (left, right))``.  Strings such as ``"same"`` need the
    kernel and stride to mean anything, so they go through :func:`resolve_padding` first.

    Returns ``x`` itself, not a copy, when every pad is zero: the ops never write into their
    inputs, and skipping the copy matters on the 'valid' hot path.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (NHWC), got x.ndim={x.ndim}, x.shape={x.shape}")
    if isinstance(padding, str):
        raise ValueError(
            f"pad2d needs explicit padding, got padding={padding!r} (x.shape={x.shape}); "
            "turn 'valid'/'same' into numbers with resolve_padding(padding, x.shape, kernel, "
            "stride)"
        )
    return _pad(x, _explicit_pads(padding, ctx=f"x.shape={x.shape}"), value)


def _pad(x: np.ndarray, pads: Pads, value=0) -> np.ndarray:
    """:func:`pad2d` without the checks, for explicit pads already validated."""
    (t, b), (l, r) = pads
    if t == b == l == r == 0:
        return x
    n, h, w, c = x.shape
    out = np.full((n, h + t + b, w + l + r, c), value, dtype=x.dtype)
    out[:, t : t + h, l : l + w, :] = x
    return out


def same_padding(in_h: int, in_w: int, kh: int, kw: int, stride_h: int, stride_w: int) -> Pads:
    """TensorFlow's 'same' padding as ``((top, bottom), (left, right))``.

    ``out = ceil(in / stride)``; ``total = max((out - 1) * stride + k - in, 0)``;
    ``top = total // 2`` and the odd leftover goes to the bottom (right), which is where
    TensorFlow puts it, unlike a symmetric pad that would shift every output by one pixel.
    """

    def one(n: int, k: int, s: int) -> tuple[int, int]:
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        return total // 2, total - total // 2

    return one(in_h, kh, stride_h), one(in_w, kw, stride_w)


def _hw(x_shape) -> tuple[int, int]:
    shape = tuple(int(s) for s in x_shape)
    if len(shape) == 4:
        return shape[1], shape[2]
    if len(shape) == 2:
        return shape
    raise ValueError(
        f"x_shape must be an NHWC shape (N, H, W, C) or a spatial shape (H, W), got x_shape={shape}"
    )


def resolve_padding(padding, x_shape, kernel_hw, stride) -> Pads:
    """Any accepted ``padding`` -> explicit ``((top, bottom), (left, right))``.

    ``padding`` is ``"valid"`` or ``"same"`` (any case), an int, a pair, or already explicit.
    ``x_shape`` is an NHWC shape or ``(H, W)``; ``kernel_hw`` and ``stride`` are an int or a
    pair.  Anything else raises ValueError naming the value.
    """
    ctx = f"x_shape={tuple(x_shape)}, kernel_hw={kernel_hw!r}, stride={stride!r}"
    return _resolve(padding, x_shape, kernel_hw, stride, ctx)


def _resolve(padding, x_shape, kernel_hw, stride, ctx: str) -> Pads:
    in_h, in_w = _hw(x_shape)
    kh, kw = _pair(kernel_hw, "kernel_hw", ctx)
    sh, sw = _pair(stride, "stride", ctx)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0), (0, 0)
        if mode == "same":
            return same_padding(in_h, in_w, kh, kw, sh, sw)
    return _explicit_pads(padding, ctx=ctx)


def _out_hw(
    in_h: int, in_w: int, kh: int, kw: int, sh: int, sw: int, pads: Pads, ctx: str, what: str
) -> tuple[int, int]:
    (t, b), (l, r) = pads
    hp, wp = in_h + t + b, in_w + l + r
    if kh > hp or kw > wp:
        raise ValueError(
            f"{what}=({kh}, {kw}) is larger than the padded input ({hp}, {wp}); "
            f"pads ((top, bottom), (left, right))={pads}{_suffix(ctx)}"
        )
    return (hp - kh) // sh + 1, (wp - kw) // sw + 1


class _Geometry(NamedTuple):
    """Where a conv kernel or pool window goes over inputs of one spatial size, resolved once.

    The public ops rebuild it on every call from their arguments (validating them); a layer
    builds it once when it learns its input shape and hands it to the unchecked kernels
    (``_conv2d_forward`` and friends) on every batch, so the hot path never re-parses
    strides and padding (about a quarter of a call's cost on a small image).
    """

    kh: int
    kw: int
    sh: int
    sw: int
    pads: Pads
    oh: int
    ow: int


def _plan(x_shape, window, stride=1, padding="valid") -> _Geometry:
    """Validated :class:`_Geometry` of a ``window`` over inputs of ``x_shape`` (NHWC or (H, W))."""
    in_h, in_w = _hw(x_shape)
    ctx = f"x_shape={tuple(x_shape)}, kernel_hw={window!r}, stride={stride!r}"
    kh, kw = _pair(window, "kernel_hw", ctx)
    sh, sw = _pair(stride, "stride", ctx)
    pads = _resolve(padding, (in_h, in_w), (kh, kw), (sh, sw), ctx)
    oh, ow = _out_hw(in_h, in_w, kh, kw, sh, sw, pads, ctx, "kernel_hw")
    return _Geometry(kh, kw, sh, sw, pads, oh, ow)


def conv_output_shape(x_shape, kernel_hw, stride=1, padding="valid") -> tuple[int, int]:
    """Spatial output size ``(OH, OW)`` of a conv or pool window over an input of ``x_shape``.

    ``out = (in + pad_before + pad_after - k) // stride + 1``, with the pads from
    :func:`resolve_padding`; raises ValueError when the window does not fit the padded input.
    """
    g = _plan(x_shape, kernel_hw, stride, padding)
    return g.oh, g.ow


def _window(xp: np.ndarray, i: int, j: int, sh: int, sw: int, oh: int, ow: int) -> np.ndarray:
    """View of the input pixels that kernel offset (i, j) meets at every output position."""
    return xp[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]


def _sliding(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int):
    """Zero-copy view ``(N, OH, OW, KH, KW, C)``: ``[n, y, x, i, j] = xp[n, y*sh+i, x*sw+j]``.

    Made with ndarray's own constructor over ``xp``'s buffer when ``xp`` is C-contiguous
    (about 0.5 us, against 4.5 us for ``as_strided``, which matters when a whole conv on one
    5x5 image costs a few microseconds); the constructor checks the view stays inside the
    buffer. Never written through.
    """
    s0, s1, s2, s3 = xp.strides
    shape = (xp.shape[0], oh, ow, kh, kw, xp.shape[3])
    strides = (s0, s1 * sh, s2 * sw, s1, s2, s3)
    if xp.flags.c_contiguous and xp.size:
        return np.ndarray(shape, xp.dtype, xp, 0, strides)
    return np.lib.stride_tricks.as_strided(xp, shape, strides, writeable=False)


# --------------------------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------------------------


def _conv_setup(op: str, x, w, b, stride, padding):
    x = np.asarray(x)
    w = np.asarray(w)
    ctx = f"{op}: {_shapes(x=x, w=w)}"
    x = _as_array(x, "x", 4, ctx)
    w = _as_array(w, "w", 4, ctx)
    n, h, wd, c = x.shape
    kh, kw, kc, f = w.shape
    if kc != c:
        raise ValueError(
            f"w has {kc} input channels but x has {c}: w.shape[2]={kc} must equal "
            f"x.shape[3]={c}{_suffix(ctx)}"
        )
    if b is not None:
        b = _as_array(b, "b", None, ctx)
        if b.shape != (f,):
            raise ValueError(
                f"b must have shape ({f},) (one bias per filter, w.shape[3]={f}), got "
                f"b.shape={b.shape}{_suffix(ctx)}"
            )
    sh, sw = _pair(stride, "stride", ctx)
    pads = _resolve(padding, x.shape, (kh, kw), (sh, sw), ctx)
    oh, ow = _out_hw(h, wd, kh, kw, sh, sw, pads, ctx, "kernel w.shape[:2]")
    return x, w, b, (sh, sw), pads, (oh, ow), ctx


@functools.lru_cache(maxsize=32)
def _patch_index(hp: int, wp: int, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int):
    """``idx[p, k]``: flat position in one single-channel ``(hp, wp)`` image of kernel offset
    ``k`` (row-major) at output position ``p`` (row-major). Cached, read-only."""
    rows = np.arange(oh)[:, None] * (sh * wp) + np.arange(ow) * sw
    offsets = np.arange(kh)[:, None] * wp + np.arange(kw)
    idx = (rows.reshape(-1, 1) + offsets.reshape(1, -1)).astype(np.intp)
    idx.setflags(write=False)
    return idx


def _im2col(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int, dtype):
    """Columns ``(N*OH*OW, KH*KW*C)``, C-contiguous, row = one receptive field in HWC order.

    Two ways to gather, picked by speed: with several channels a zero-copy strided view
    ``(N, OH, OW, KH, KW, C)`` copied out in one go is fastest, since every inner run is C
    contiguous values; with a single channel that copy degenerates to one-element runs, and
    one ``np.take`` of every image through a cached index of its patches is faster at every
    size measured (one 5x5 image 2.4 -> 1.8 us, 100 of them 22 -> 8 us, 32 MNIST images
    156 -> 145 us, also ahead of KH*KW strided slice copies).
    """
    n, hp, wp, c = xp.shape
    shape = (n * oh * ow, kh * kw * c)
    if c == 1:
        idx = _patch_index(hp, wp, kh, kw, sh, sw, oh, ow)
        cols = xp.reshape(n, hp * wp).take(idx, axis=1).reshape(shape)
        return cols if cols.dtype == dtype else cols.astype(dtype)
    view = _sliding(xp, kh, kw, sh, sw, oh, ow)
    if xp.dtype == dtype:
        return view.reshape(shape)  # the strided view cannot be reshaped in place: a copy
    cols = np.empty(view.shape, dtype=dtype)
    np.copyto(cols, view, casting="unsafe")
    return cols.reshape(shape)


def _conv2d_forward(x: np.ndarray, w: np.ndarray, b, g: _Geometry, dtype):
    """:func:`conv2d` without any checks: ``(out, cols)``.

    The im2col columns come back too, so that a layer can keep them for the backward pass
    (:func:`_conv2d_backward` takes them) instead of gathering them a second time.
    """
    kh, kw, c, f = w.shape
    n = x.shape[0]
    cols = _im2col(_pad(x, g.pads), kh, kw, g.sh, g.sw, g.oh, g.ow, dtype)
    out = cols @ w.reshape(kh * kw * c, f).astype(dtype, copy=False)
    if b is not None:
        # Broadcasting a (F,) bias over (M, F) runs NumPy's inner loop only F elements long;
        # adding a per-sample row of the bias repeated OH*OW times is ~5x faster for small F.
        row = np.empty((g.oh * g.ow, f), dtype=dtype)
        row[...] = b
        out.reshape(n, g.oh * g.ow * f)[...] += row.reshape(-1)
    return out.reshape(n, g.oh, g.ow, f), cols


def conv2d(x, w, b=None, stride=1, padding="valid") -> np.ndarray:
    """2-D cross-correlation of NHWC ``x`` with HWIO ``w`` (what Keras's Conv2D computes).

    ``x``: (N, H, W, C); ``w``: (KH, KW, C, F); ``b``: (F,) or None; ``stride``: int or
    (sh, sw); ``padding``: "valid", "same" (TensorFlow's rule), an int, a pair, or
    ((top, bottom), (left, right)).  Returns (N, OH, OW, F) in the result dtype of x, w (and b):
    float32 inputs give float32, integer inputs give exact integer sums.
    """
    x, w, b, (sh, sw), pads, (oh, ow), ctx = _conv_setup("conv2d", x, w, b, stride, padding)
    _check_finite(x, "x", ctx)
    _check_finite(w, "w", ctx)
    dtype = np.result_type(x, w) if b is None else np.result_type(x, w, b)
    g = _Geometry(w.shape[0], w.shape[1], sh, sw, pads, oh, ow)
    return _conv2d_forward(x, w, b, g, dtype)[0]


def conv2d_backward(dy, x, w, stride=1, padding="valid", *, compute_dx: bool = True):
    """Gradients ``(dx, dw, db)`` of :func:`conv2d` given the upstream gradient ``dy``.

    ``dy`` has the forward output's shape (N, OH, OW, F).  ``dw = cols^T @ dy`` is one matmul
    over the im2col columns (recomputed here; a layer hands over the forward's instead);
    ``dx`` is one matmul back to column space followed by col2im, a scatter-add per kernel
    offset into the padded input, then the padding is cropped away.  Overlapping windows
    (stride < kernel) accumulate, as they must.  ``compute_dx=False`` skips dx (returned as
    None), which the first layer of a network never needs.
    """
    x, w, _, (sh, sw), pads, (oh, ow), ctx = _conv_setup(
        "conv2d_backward", x, w, None, stride, padding
    )
    dy = _as_array(dy, "dy", 4, ctx)
    n, f = x.shape[0], w.shape[3]
    if dy.shape != (n, oh, ow, f):
        raise ValueError(
            f"dy must have the forward output's shape {(n, oh, ow, f)}, got dy.shape={dy.shape}"
            f"{_suffix(ctx)}"
        )
    _check_finite(dy, "dy", ctx)
    _check_finite(x, "x", ctx)
    _check_finite(w, "w", ctx)
    g = _Geometry(w.shape[0], w.shape[1], sh, sw, pads, oh, ow)
    return _conv2d_backward(dy, x, w, g, compute_dx=compute_dx)


def _conv2d_backward(
    dy: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    g: _Geometry,
    *,
    cols: np.ndarray | None = None,
    compute_dx: bool = True,
    compute_db: bool = True,
):
    """:func:`conv2d_backward` without any checks.

    ``cols``: the forward's im2col columns of ``x`` (from :func:`_conv2d_forward`), reused when
    their dtype is the gradient's; ``compute_db=False`` returns None for db (no bias).
    """
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    sh, sw, pads, oh, ow = g.sh, g.sw, g.pads, g.oh, g.ow
    dtype = dy.dtype if dy.dtype == x.dtype == w.dtype else np.result_type(dy, x, w)
    m = n * oh * ow
    dy2 = np.ascontiguousarray(dy.reshape(m, f), dtype=dtype)

    # A matrix-vector product reduces over the M rows several times faster than
    # dy2.sum(axis=0), whose strided reduction is slow when F is small.
    db = np.ones(m, dtype=dtype) @ dy2 if compute_db else None
    if cols is None or cols.dtype != dtype:
        cols = _im2col(_pad(x, pads), kh, kw, sh, sw, oh, ow, dtype)
    dw = (cols.T @ dy2).reshape(kh, kw, c, f)
    if not compute_dx:
        return None, dw, db

    # Columns of dx, one contiguous (M, C) block per kernel offset: a batch of KH*KW matmuls
    # costs a little more than one (M, KH*KW*C) product, but the scatter-add below then reads
    # contiguous memory, which more than pays for it (2.7 ms -> 1.7 ms on 100x13x13x16).
    w_t = np.ascontiguousarray(w.transpose(0, 1, 3, 2), dtype=dtype).reshape(kh * kw, f, c)
    dcols = np.matmul(dy2, w_t)
    (t, bt), (l, r) = pads
    dxp = np.zeros((n, h + t + bt, wd + l + r, c), dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            _window(dxp, i, j, sh, sw, oh, ow)[...] += dcols[i * kw + j].reshape(n, oh, ow, c)
    if t or bt or l or r:
        dxp = np.ascontiguousarray(dxp[:, t : t + h, l : l + wd, :])
    return dxp, dw, db


# --------------------------------------------------------------------------------------------
# max pooling
# --------------------------------------------------------------------------------------------


def _pool_setup(op: str, x, pool_size, stride, padding):
    x = np.asarray(x)
    ctx = f"{op}: x.shape={x.shape}, pool_size={pool_size!r}, stride={stride!r}"
    x = _as_array(x, "x", 4, ctx)
    ph, pw = _pair(pool_size, "pool_size", ctx)
    sh, sw = (ph, pw) if stride is None else _pair(stride, "stride", ctx)
    pads = _resolve(padding, x.shape, (ph, pw), (sh, sw), ctx)
    (t, b), (l, r) = pads
    if max(t, b) >= ph or max(l, r) >= pw:
        # Otherwise a window could hold nothing but padding and "pool" -inf.  'same' never
        # does this (its pads are < the pool size), so only explicit pads can trip it.
        raise ValueError(
            f"padding must be smaller than pool_size on every side so that each window holds "
            f"at least one pixel of x, got padding={padding!r} -> pads ((top, bottom), "
            f"(left, right))={pads} with pool_size={(ph, pw)}{_suffix(ctx)}"
        )
    oh, ow = _out_hw(x.shape[1], x.shape[2], ph, pw, sh, sw, pads, ctx, "pool_size")
    return x, (ph, pw), (sh, sw), pads, (oh, ow), ctx


#: Pooling gathers every window and takes its arg-max while outputs x window size stay up to
#: this; above it, a running maximum over the window offsets (see :func:`_max_pool2d_forward`).
_POOL_GATHER_MAX = 1 << 15


@functools.lru_cache(maxsize=32)
def _pool_starts(n: int, hp: int, wp: int, c: int, oh: int, ow: int, sh: int, sw: int):
    """Flat index into a C-ordered ``(n, hp, wp, c)`` array of every window's top-left pixel.

    Shaped like the pool output ``(n, oh, ow, c)``. Cached (read-only): training asks for the
    same few batch shapes over and over.
    """
    starts = (
        np.arange(n)[:, None, None, None] * (hp * wp * c)
        + np.arange(oh)[:, None, None] * (sh * wp * c)
        + np.arange(ow)[:, None] * (sw * c)
        + np.arange(c)
    )
    starts.setflags(write=False)
    return starts


@functools.lru_cache(maxsize=32)
def _pool_windows(hp: int, wp: int, c: int, ph: int, pw: int, sh: int, sw: int, oh: int, ow: int):
    """``(windows, offsets)`` for one C-ordered ``(hp, wp, c)`` image, cached and read-only.

    ``windows[p, k]``: flat position of window offset ``k`` (row-major in the window) of output
    ``p`` (row-major over ``(oh, ow, c)``); ``offsets[k]``: the same relative to the window's
    top-left pixel.
    """
    corners = (np.arange(oh)[:, None, None] * (sh * wp) + np.arange(ow)[:, None] * sw) * c
    corners = (corners + np.arange(c)).reshape(-1, 1)
    offsets = ((np.arange(ph)[:, None] * wp + np.arange(pw)) * c).reshape(-1)
    windows = (corners + offsets).astype(np.intp)
    windows.setflags(write=False)
    offsets = offsets.astype(np.intp)
    offsets.setflags(write=False)
    return windows, offsets


def _max_pool2d_forward(xp: np.ndarray, g: _Geometry):
    """Max pooling of the already padded ``xp`` without checks: ``(y, index)``.

    ``index`` holds, for every output, the flat position in ``xp`` of its window's FIRST
    maximum in row-major order (TensorFlow's tie rule), which turns the backward pass into
    a single scatter. It comes from one ``take`` of every window (through a cached index)
    and one ``argmax``: the fewest NumPy calls, hence the fastest on small outputs (forward
    and backward of 100 3x3 maps: 15 us against 65 us). ``argmax`` over a short axis costs
    per window, though, so above ``_POOL_GATHER_MAX`` (about where the two meet; MNIST's
    32x26x26x16 is ten times past it) the output is a running ``np.maximum`` over the window
    offsets and ``index`` is None; the backward then matches values instead.
    """
    ph, pw, sh, sw, _, oh, ow = g
    n, hp, wp, c = xp.shape
    if n * oh * ow * c * ph * pw > _POOL_GATHER_MAX:
        return _window_max(xp, ph, pw, sh, sw, oh, ow), None
    windows, offsets = _pool_windows(hp, wp, c, ph, pw, sh, sw, oh, ow)
    first = xp.reshape(n, hp * wp * c).take(windows, axis=1).argmax(axis=2)
    index = offsets[first.reshape(n, oh, ow, c)] + _pool_starts(n, hp, wp, c, oh, ow, sh, sw)
    return xp.reshape(-1)[index], index


def max_pool2d(x, pool_size=2, stride=None, padding="valid") -> np.ndarray:
    """Max pooling over NHWC ``x``; ``stride`` defaults to ``pool_size`` (like Keras).

    ``pool_size`` and ``stride`` are an int or a pair; ``padding`` is "valid", "same"
    (TensorFlow's rule, padded with -inf so padding never wins) or explicit pads (also -inf).
    Either one gather of every window and an arg-max (small outputs) or a running
    ``np.maximum`` over the ``PH * PW`` window offsets, each step one vectorised pass over
    the output with no window tensor materialised (large ones).
    """
    x, (ph, pw), (sh, sw), pads, (oh, ow), ctx = _pool_setup(
        "max_pool2d", x, pool_size, stride, padding
    )
    _check_finite(x, "x", ctx)
    xp = _pad(x, pads, value=_lowest(x.dtype))
    return _max_pool2d_forward(xp, _Geometry(ph, pw, sh, sw, pads, oh, ow))[0]


def _window_max(xp: np.ndarray, ph: int, pw: int, sh: int, sw: int, oh: int, ow: int):
    out = _window(xp, 0, 0, sh, sw, oh, ow).copy()
    for i in range(ph):
        for j in range(pw):
            if i or j:
                np.maximum(out, _window(xp, i, j, sh, sw, oh, ow), out=out)
    return out


def max_pool2d_backward(dy, x, pool_size=2, stride=None, padding="valid", *, y=None) -> np.ndarray:
    """Gradient of :func:`max_pool2d` w.r.t. ``x``: each window's ``dy`` goes to its max.

    On ties the whole gradient goes to the FIRST maximum in row-major order within the window,
    which is what TensorFlow does (the seed notebook's mask sent it to every tied max, which
    over-counts; ties are common after a ReLU, where whole windows are 0).  Overlapping
    windows (stride < pool) accumulate into the pixels they share.  ``y``, the forward output
    ``max_pool2d(x, ...)``, may be passed when the caller kept it, to skip recomputing it
    on large inputs (about a quarter of the cost); it must be exactly that output.
    """
    x, (ph, pw), (sh, sw), pads, (oh, ow), ctx = _pool_setup(
        "max_pool2d_backward", x, pool_size, stride, padding
    )
    dy = _as_array(dy, "dy", 4, ctx)
    n, h, wd, c = x.shape
    if dy.shape != (n, oh, ow, c):
        raise ValueError(
            f"dy must have the forward output's shape {(n, oh, ow, c)}, got dy.shape={dy.shape}"
            f"{_suffix(ctx)}"
        )
    if y is not None:
        y = np.asarray(y)
        if y.shape != dy.shape:
            raise ValueError(
                f"y must be the forward output, shaped like dy {dy.shape}, got y.shape="
                f"{y.shape}{_suffix(ctx)}"
            )
    _check_finite(x, "x", ctx)
    _check_finite(dy, "dy", ctx)
    xp = _pad(x, pads, value=_lowest(x.dtype))
    return _max_pool2d_backward(dy, xp, _Geometry(ph, pw, sh, sw, pads, oh, ow), h, wd, y=y)


def _max_pool2d_backward(
    dy: np.ndarray,
    xp: np.ndarray,
    g: _Geometry,
    h: int,
    w: int,
    *,
    y: np.ndarray | None = None,
    index: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`max_pool2d_backward` without checks, from the padded input ``xp``.

    ``index`` (from :func:`_max_pool2d_forward`) makes it one scatter; without it the index is
    gathered here when the output is small, and otherwise the gradient is routed by matching
    ``xp`` against ``y`` (computed when not given). ``h``, ``w``: the unpadded input size.
    """
    ph, pw, sh, sw, pads, oh, ow = g
    n, hp, wp, c = xp.shape
    dtype = dy.dtype if dy.dtype.kind == "f" else np.dtype(np.float64)
    disjoint = sh >= ph and sw >= pw
    if index is None and n * oh * ow * c * ph * pw <= _POOL_GATHER_MAX:
        index = _max_pool2d_forward(xp, g)[1]
    if index is not None:
        if disjoint:  # every pixel is the max of at most one window
            dxp = np.zeros(xp.shape, dtype=dtype)
            dxp.reshape(-1)[index] = dy
        else:  # overlapping windows add up (bincount sums in float64, then one rounding)
            dxp = np.bincount(index.reshape(-1), dy.reshape(-1), xp.size).reshape(xp.shape)
            dxp = dxp.astype(dtype, copy=False)
    else:
        dxp = _max_pool2d_backward_by_value(dy, xp, g, dtype, y)
    (t, b), (l, r) = pads
    if t or b or l or r:
        dxp = np.ascontiguousarray(dxp[:, t : t + h, l : l + w, :])
    return dxp


def _max_pool2d_backward_by_value(dy, xp, g: _Geometry, dtype, y) -> np.ndarray:
    """Route each window's gradient to the first offset (row-major) equal to the window max.

    After an offset takes a window's gradient it is zeroed in ``remaining``, so no later tied
    offset receives it. Every step is a plain ufunc pass over the output: ufuncs with
    ``where=`` masks were ~8x slower here.
    """
    ph, pw, sh, sw, _, oh, ow = g
    n, hp, wp, c = xp.shape
    out = _window_max(xp, ph, pw, sh, sw, oh, ow) if y is None else y
    remaining = np.array(dy, dtype=dtype)
    hit = np.empty(out.shape, dtype=bool)
    share = np.empty(out.shape, dtype=dtype)
    # Windows that tile the padded input exactly write every pixel once: no zero-fill needed.
    tiles = (sh, sw) == (ph, pw) and (oh * ph, ow * pw) == (hp, wp)
    disjoint = sh >= ph and sw >= pw
    dxp = (np.empty if tiles else np.zeros)((n, hp, wp, c), dtype=dtype)
    last = (ph - 1, pw - 1)
    for i in range(ph):
        for j in range(pw):
            target = _window(dxp, i, j, sh, sw, oh, ow)
            np.equal(_window(xp, i, j, sh, sw, oh, ow), out, out=hit)
            if disjoint:
                np.multiply(remaining, hit, out=target)
                if (i, j) != last:
                    remaining -= target
            else:
                np.multiply(remaining, hit, out=share)
                target += share
                remaining -= share
    return dxp


# --------------------------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------------------------


def _float(x) -> np.ndarray:
    """Floating arrays pass through untouched (float32 stays float32); integers -> float64."""
    x = np.asarray(x)
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def _same_shape(op: str, dy, other, name: str) -> tuple[np.ndarray, np.ndarray]:
    dy, other = np.asarray(dy), np.asarray(other)
    if dy.shape != other.shape:
        raise ValueError(
            f"{op}: dy must have the shape of {name}, got dy.shape={dy.shape}, "
            f"{name}.shape={other.shape}"
        )
    return dy, other


# The unchecked backward kernels below are what layers call (they check shapes once, at the
# layer boundary); the public functions check, then call them.


def relu(x) -> np.ndarray:
    """``max(x, 0)``, dtype kept."""
    x = np.asarray(x)
    return np.maximum(x, _consts(x.dtype)[0])


def _relu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    # (np.heaviside(x, 0) would give the mask in x's dtype, saving the boolean cast on tiny
    # arrays, but it is 20x slower than this on a batch of MNIST feature maps.)
    return dy * np.greater(x, _consts(x.dtype)[0])


def relu_backward(dy, x) -> np.ndarray:
    """``dy`` where ``x > 0`` else 0: the gradient at exactly 0 is 0, as in TensorFlow."""
    return _relu_backward(*_same_shape("relu_backward", dy, x, "x"))


def sigmoid(x) -> np.ndarray:
    """Logistic function without overflow: only ``exp(-|x|) <= 1`` is ever computed.

    ``1 / (1 + e)`` for ``x >= 0`` and ``e / (1 + e)`` below, with ``e = exp(-|x|)``; the
    numerator is ``exp(min(x, 0))``, which is exactly 1 or exactly e. Written this way it is a
    few whole-array ufunc calls and no ``np.where``, which matters on a batch of one.
    """
    x = _float(x)
    zero, one = _consts(x.dtype)
    return np.exp(np.minimum(x, zero)) / (np.exp(-np.abs(x)) + one)


def _sigmoid_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    return dy * y * (1 - y)


def sigmoid_backward(dy, y) -> np.ndarray:
    """Gradient through sigmoid from its output ``y``: ``dy * y * (1 - y)``."""
    return _sigmoid_backward(*_same_shape("sigmoid_backward", dy, y, "y"))


def tanh(x) -> np.ndarray:
    """Hyperbolic tangent (NumPy's is already stable for large |x|)."""
    return np.tanh(_float(x))


def _tanh_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    return dy * (1 - y * y)


def tanh_backward(dy, y) -> np.ndarray:
    """Gradient through tanh from its output ``y``: ``dy * (1 - y**2)``."""
    return _tanh_backward(*_same_shape("tanh_backward", dy, y, "y"))


def softmax(x, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, shifted by the max so ``exp`` never overflows."""
    x = _float(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def _softmax_backward(dy: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def softmax_backward(dy, y, axis: int = -1) -> np.ndarray:
    """Vector-Jacobian product of softmax from its output: ``y * (dy - sum(dy * y))``."""
    return _softmax_backward(*_same_shape("softmax_backward", dy, y, "y"), axis=axis)

"""Forward and backward CNN ops on NHWC tensors, vectorised, in NumPy only.

Keras/TensorFlow's conventions, so the engines agree number for number: NHWC tensors, HWIO
kernels ``(KH, KW, C, F)``, cross-correlation (no kernel flip); ``"same"`` padding is
TensorFlow's (``out = ceil(in / stride)``, an odd pad's extra row/column at the
bottom/right); max pooling's stride defaults to its size, its padding is ``-inf`` and a
window's gradient goes to its FIRST max in row-major order; ReLU's gradient at 0 is 0.

Nothing loops over samples or pixels: convolution is im2col (one gather into a C-contiguous
``(N*OH*OW, KH*KW*C)`` matrix) and one BLAS matmul; max pooling finds each window's first
maximum, so that its backward is one scatter. Dtypes are kept (float32 stays float32).
Sizes (kernel, pool, stride) are an int or a pair of ints; ``padding`` is ``"valid"``,
``"same"`` (any case), an int ``p``, a pair ``(ph, pw)`` or ``((top, bottom), (left, right))``.

Every op checks its arguments and raises a one-line ValueError naming the argument, its
value and the shapes. The checks are plain comparisons, and a message is formatted only when
one fails: a training step on one 5x5 image calls a dozen ops, whose checks must cost little
next to the arithmetic. Values are not scanned: like TensorFlow's ops, NaN propagates; the
model and the trainers check their data where it enters. The tests hold these ops to
the loop versions in :mod:`convscope.scratch.reference`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np

Pads = tuple[tuple[int, int], tuple[int, int]]
#: a call's context for an error message, formatted only when a check fails
Where = Callable[[], str]


# -- argument handling -----------------------------------------------------------------------


def _is_int(v) -> bool:
    # bool is an int in Python, but stride=True is always a mistake
    if type(v) is int:
        return True
    return isinstance(v, numbers.Integral) and not isinstance(v, bool | np.bool_)


def _suffix(where: Where | None) -> str:
    return f" ({where()})" if where else ""


def _pair(value, name: str, where: Where | None = None) -> tuple[int, int]:
    """A size (int or pair, each ``>= 1``) as a tuple of two ints."""
    if type(value) is int and value >= 1:
        return value, value
    if _is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, tuple | list) and len(value) == 2 and all(map(_is_int, value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(
            f"{name} must be an int or a pair of ints, got {name}={value!r}{_suffix(where)}"
        )
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1, got {name}={value!r}{_suffix(where)}")
    return pair


def _as_array(a, name: str, ndim: int | None, where: Where | None) -> np.ndarray:
    """``a`` as an ndarray of real numbers with ``ndim`` axes (any rank when None)."""
    if type(a) is not np.ndarray:
        a = np.asarray(a)
    if (ndim is None or a.ndim == ndim) and a.dtype.kind in "iuf":
        return a
    if ndim is not None and a.ndim != ndim:
        what = " (NHWC)" if name in ("x", "dy") else " (KH, KW, C, F)"
        raise ValueError(
            f"{name} must be {ndim}-D{what}, got {name}.ndim={a.ndim}, {name}.shape={a.shape}"
            f"{_suffix(where)}"
        )
    raise ValueError(
        f"{name} must hold real numbers (integer or floating dtype), got "
        f"{name}.dtype={a.dtype}, {name}.shape={a.shape}{_suffix(where)}"
    )


def _check_shape(a, name: str, expected: tuple, what: str, where: Where | None) -> None:
    """``what`` reads "<name> must ...", with ``{}`` where the expected shape goes."""
    if a.shape != expected:
        raise ValueError(
            f"{name} must {what.format(expected)}, got {name}.shape={a.shape}{_suffix(where)}"
        )


def _lowest(dtype: np.dtype):
    """The fill value that can never win a max: -inf for floats, the minimum for integers."""
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


# -- padding and shapes ----------------------------------------------------------------------


def _explicit_pads(padding, where: Where | None = None) -> Pads:
    """Numeric ``padding`` -> ``((top, bottom), (left, right))``, all >= 0."""
    pads = None
    if _is_int(padding):
        pads = ((int(padding),) * 2,) * 2
    elif isinstance(padding, tuple | list) and len(padding) == 2:
        if all(map(_is_int, padding)):
            pads = tuple((int(p), int(p)) for p in padding)
        elif all(
            isinstance(p, tuple | list) and len(p) == 2 and all(map(_is_int, p)) for p in padding
        ):
            pads = tuple((int(p[0]), int(p[1])) for p in padding)
    if pads is None or min(pads[0] + pads[1]) < 0:
        raise ValueError(
            "padding must be 'valid', 'same', an int p, a pair (ph, pw) or "
            f"((top, bottom), (left, right)) of non-negative ints, got padding={padding!r}"
            f"{_suffix(where)}"
        )
    return pads


def pad2d(x, padding, value=0) -> np.ndarray:
    """Pad the two spatial axes of an NHWC tensor with a constant (zero by default).

    ``padding`` is numeric: ``"same"`` needs the kernel and stride, see
    :func:`resolve_padding`. Returns ``x`` itself when every pad is zero (the ops never
    write into their inputs, so no copy is needed).
    """
    x = _as_array(x, "x", 4, None)
    if isinstance(padding, str):
        raise ValueError(
            f"pad2d needs numeric padding, got padding={padding!r} (x.shape={x.shape}); "
            "resolve_padding(padding, x.shape, kernel, stride) gives it"
        )
    return _pad(x, _explicit_pads(padding, lambda: f"x.shape={x.shape}"), value)


def same_padding(in_h: int, in_w: int, kh: int, kw: int, stride_h: int, stride_w: int) -> Pads:
    """TensorFlow's 'same' padding as ``((top, bottom), (left, right))``.

    ``out = ceil(in / stride)``; ``total = max((out - 1) * stride + k - in, 0)``;
    ``top = total // 2`` and the odd leftover goes to the bottom (right), where TensorFlow
    puts it; a symmetric pad would shift every output by one pixel.
    """

    def one(n: int, k: int, s: int) -> tuple[int, int]:
        total = max((-(-n // s) - 1) * s + k - n, 0)
        return total // 2, total - total // 2

    return one(in_h, kh, stride_h), one(in_w, kw, stride_w)


def _geometry(x_shape, kernel_hw, stride):
    """``(H, W)``, kernel and stride pairs and the error context of an ``x_shape`` query."""

    def where() -> str:
        return f"x_shape={tuple(x_shape)}, kernel_hw={kernel_hw!r}, stride={stride!r}"

    shape = tuple(int(s) for s in x_shape)
    if len(shape) not in (2, 4):
        raise ValueError(
            f"x_shape must be an NHWC shape (N, H, W, C) or (H, W), got x_shape={shape}"
        )
    hw = shape[1:3] if len(shape) == 4 else shape
    return hw, _pair(kernel_hw, "kernel_hw", where), _pair(stride, "stride", where), where


def resolve_padding(padding, x_shape, kernel_hw, stride) -> Pads:
    """Any accepted ``padding`` -> explicit ``((top, bottom), (left, right))``.

    ``x_shape`` is an NHWC shape or ``(H, W)``.
    """
    return _resolve(padding, *_geometry(x_shape, kernel_hw, stride))


def _resolve(padding, hw, khw, stride, where: Where | None) -> Pads:
    if type(padding) is str:
        mode = padding.lower()
        if mode == "valid":
            return (0, 0), (0, 0)
        if mode == "same":
            return same_padding(*hw, *khw, *stride)
    return _explicit_pads(padding, where)


def _out_hw(hw, khw, stride, pads: Pads, where: Where | None, what: str) -> tuple[int, int]:
    (t, b), (l, r) = pads
    hp, wp = hw[0] + t + b, hw[1] + l + r
    if khw[0] > hp or khw[1] > wp:
        raise ValueError(
            f"{what}={tuple(khw)} is larger than the padded input ({hp}, {wp}); "
            f"pads ((top, bottom), (left, right))={pads}{_suffix(where)}"
        )
    return (hp - khw[0]) // stride[0] + 1, (wp - khw[1]) // stride[1] + 1


def conv_output_shape(x_shape, kernel_hw, stride=1, padding="valid") -> tuple[int, int]:
    """Spatial output size ``(OH, OW)`` of a conv or pool window over an input of ``x_shape``.

    ``out = (in + pad_before + pad_after - k) // stride + 1`` with the pads of
    :func:`resolve_padding`; a ValueError when the window does not fit the padded input.
    """
    hw, khw, stride, where = _geometry(x_shape, kernel_hw, stride)
    return _out_hw(hw, khw, stride, _resolve(padding, hw, khw, stride, where), where, "kernel_hw")


def _pad(x: np.ndarray, pads: Pads, value=0) -> np.ndarray:
    (t, b), (l, r) = pads
    if t == b == l == r == 0:
        return x
    n, h, w, c = x.shape
    out = np.full((n, h + t + b, w + l + r, c), value, dtype=x.dtype)
    out[:, t : t + h, l : l + w, :] = x
    return out


def _crop(xp: np.ndarray, pads: Pads, h: int, w: int) -> np.ndarray:
    """Inverse of :func:`_pad` (a contiguous copy when there was padding)."""
    (t, b), (l, r) = pads
    if t == b == l == r == 0:
        return xp
    return np.ascontiguousarray(xp[:, t : t + h, l : l + w, :])


def _window(xp: np.ndarray, i: int, j: int, sh: int, sw: int, oh: int, ow: int) -> np.ndarray:
    """View of the input pixels that kernel offset (i, j) meets at every output position."""
    return xp[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]


def _windows(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int):
    """View ``(N, OH, OW, KH, KW, C)`` of every receptive field, no copy; read it only.

    ``sliding_window_view``'s view, from the ``ndarray`` constructor (which checks that it
    fits the buffer): their argument handling costs more than copying a few small images.
    """
    xp = np.ascontiguousarray(xp)
    s0, s1, s2, s3 = xp.strides
    shape = (xp.shape[0], oh, ow, kh, kw, xp.shape[3])
    return np.ndarray(shape, xp.dtype, xp, 0, (s0, s1 * sh, s2 * sw, s1, s2, s3))


# -- convolution -----------------------------------------------------------------------------


def _conv_setup(op: str, x, w, b, stride, padding):
    """Checked arrays and geometry of a conv: ``x, w, b, (sh, sw), pads, (oh, ow)``."""

    def where() -> str:
        return f"{op}: x.shape={np.shape(x)}, w.shape={np.shape(w)}"

    x = _as_array(x, "x", 4, where)
    w = _as_array(w, "w", 4, where)
    kh, kw, kc, f = w.shape
    if kc != x.shape[3]:
        raise ValueError(
            f"x has {x.shape[3]} channels but w has {kc}: w.shape[2]={kc} must equal "
            f"x.shape[3]={x.shape[3]}{_suffix(where)}"
        )
    if b is not None:
        b = _as_array(b, "b", None, where)
        _check_shape(b, "b", (f,), "have shape {} (one bias per filter of w)", where)
    stride = _pair(stride, "stride", where)
    hw = x.shape[1:3]
    pads = _resolve(padding, hw, (kh, kw), stride, where)
    out_hw = _out_hw(hw, (kh, kw), stride, pads, where, "kernel w.shape[:2]")
    return x, w, b, stride, pads, out_hw


def _im2col(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int, dtype):
    """Columns ``(N*OH*OW, KH*KW*C)``, C-contiguous, one receptive field per row in HWC order.

    With several channels, or one image, one copy of the strided window view. With one
    channel that copy moves one value at a time, so a batch is gathered by one ``take`` of
    every image through the window positions of a single image instead.
    """
    n, hp, wp, c = xp.shape
    shape = (n * oh * ow, kh * kw * c)
    if c > 1 or n == 1:
        cols = _windows(xp.astype(dtype, copy=False), kh, kw, sh, sw, oh, ow)
        return cols.reshape(shape)  # a copy, unless the windows already lie in order
    positions = _windows(np.arange(hp * wp).reshape(1, hp, wp, 1), kh, kw, sh, sw, oh, ow)
    cols = xp.reshape(n, hp * wp).take(positions.reshape(-1), axis=1)
    return cols.reshape(shape).astype(dtype, copy=False)


def conv2d(x, w, b=None, stride=1, padding="valid", *, return_cols: bool = False):
    """2-D cross-correlation of ``x`` with ``w`` (what Keras's Conv2D computes), bias ``b`` (F,).

    Returns (N, OH, OW, F) in the result dtype of x, w (and b): integers give exact integer
    sums. ``return_cols=True`` returns ``(out, cols)``: the im2col columns, which
    :func:`conv2d_backward` can reuse.
    """
    x, w, b, (sh, sw), pads, (oh, ow) = _conv_setup("conv2d", x, w, b, stride, padding)
    kh, kw, c, f = w.shape
    n = x.shape[0]
    dtype = np.result_type(x, w) if b is None else np.result_type(x, w, b)
    cols = _im2col(_pad(x, pads), kh, kw, sh, sw, oh, ow, dtype)
    out = cols @ w.reshape(kh * kw * c, f)  # matmul casts w to the columns' dtype
    if b is not None:
        # Broadcasting (F,) over (M, F) runs NumPy's inner loop F elements long; adding one
        # sample's worth of repeated bias per row is several times faster for small F.
        row = np.empty((oh * ow, f), dtype=dtype)
        row[...] = b
        out.reshape(n, oh * ow * f)[...] += row.reshape(-1)
    out = out.reshape(n, oh, ow, f)
    return (out, cols) if return_cols else out


def conv2d_backward(
    dy, x, w, stride=1, padding="valid", *, cols=None, compute_dx=True, compute_db=True
):
    """Gradients ``(dx, dw, db)`` of :func:`conv2d` given the upstream gradient ``dy``.

    ``dw = cols^T @ dy`` over the im2col columns (``cols`` from :func:`conv2d` for the same
    ``x``, or gathered again); ``dx`` is one matmul back to column space and a scatter-add
    per kernel offset into the padded input, so overlapping windows accumulate.
    ``compute_dx=False`` / ``compute_db=False`` return None for dx / db: a network's first
    layer never needs dx, a conv without bias no db.
    """
    x, w, _, (sh, sw), pads, (oh, ow) = _conv_setup("conv2d_backward", x, w, None, stride, padding)
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    dy = _as_array(dy, "dy", 4, None)
    _check_shape(dy, "dy", (n, oh, ow, f), "have the forward output's shape {}", None)
    dtype = np.result_type(dy, x, w)
    m = n * oh * ow
    dy2 = np.ascontiguousarray(dy.reshape(m, f), dtype=dtype)
    # a matrix-vector product reduces over the M rows faster than dy2.sum(axis=0) for small F
    db = np.ones(m, dtype=dtype) @ dy2 if compute_db else None
    if cols is None or cols.dtype != dtype or cols.shape != (m, kh * kw * c):
        cols = _im2col(_pad(x, pads), kh, kw, sh, sw, oh, ow, dtype)
    dw = (cols.T @ dy2).reshape(kh, kw, c, f)
    if not compute_dx:
        return None, dw, db
    # One contiguous (M, C) block of dx's columns per kernel offset, so that the scatter-add
    # below reads contiguous memory.
    w_t = np.ascontiguousarray(w.transpose(0, 1, 3, 2), dtype=dtype).reshape(kh * kw, f, c)
    dcols = np.matmul(dy2, w_t)
    (t, bt), (l, r) = pads
    dxp = np.zeros((n, h + t + bt, wd + l + r, c), dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            _window(dxp, i, j, sh, sw, oh, ow)[...] += dcols[i * kw + j].reshape(n, oh, ow, c)
    return _crop(dxp, pads, h, wd), dw, db


# -- max pooling -----------------------------------------------------------------------------


def _pool_setup(op: str, x, pool_size, stride, padding):
    """Checked input and geometry of a pool: ``x, (ph, pw), (sh, sw), pads, (oh, ow), where``."""

    def where() -> str:
        return f"{op}: x.shape={np.shape(x)}, pool_size={pool_size!r}, stride={stride!r}"

    x = _as_array(x, "x", 4, where)
    pool = _pair(pool_size, "pool_size", where)
    stride = pool if stride is None else _pair(stride, "stride", where)
    pads = _resolve(padding, x.shape[1:3], pool, stride, where)
    (t, b), (l, r) = pads
    if max(t, b) >= pool[0] or max(l, r) >= pool[1]:
        # a window of padding alone would "pool" -inf; 'same' pads are always smaller
        raise ValueError(
            f"padding must be smaller than pool_size on every side so that each window holds "
            f"at least one pixel of x, got padding={padding!r} -> pads ((top, bottom), "
            f"(left, right))={pads} with pool_size={pool}{_suffix(where)}"
        )
    out_hw = _out_hw(x.shape[1:3], pool, stride, pads, where, "pool_size")
    return x, pool, stride, pads, out_hw, where


#: Pools whose outputs times window size stay up to this find each window's first maximum with
#: one gather and an ``argmax``; larger ones take a running maximum (see :func:`max_pool2d`).
POOL_ARGMAX_MAX = 1 << 13


def _first_max(xp: np.ndarray, ph: int, pw: int, sh: int, sw: int, oh: int, ow: int):
    """``(y, index)``: each window's max and the flat position in ``xp`` of its first max."""
    position = np.arange(xp.size).reshape(xp.shape)
    corners = _window(position, 0, 0, sh, sw, oh, ow)  # (N, OH, OW, C)
    offsets = position[0, :ph, :pw, 0].reshape(-1)  # window offsets, row-major
    flat = xp.reshape(-1)
    first = flat[corners[..., None] + offsets].argmax(axis=4)  # argmax picks the first max
    index = corners + offsets[first]
    return flat[index], index


def _window_max(xp: np.ndarray, ph: int, pw: int, sh: int, sw: int, oh: int, ow: int):
    out = _window(xp, 0, 0, sh, sw, oh, ow).copy()
    for i in range(ph):
        for j in range(pw):
            if i or j:
                np.maximum(out, _window(xp, i, j, sh, sw, oh, ow), out=out)
    return out


def max_pool2d(x, pool_size=2, stride=None, padding="valid", *, return_index: bool = False):
    """Max pooling over ``x``; ``stride`` defaults to ``pool_size``, pads hold -inf.

    Up to :data:`POOL_ARGMAX_MAX` window elements, one gather of every window and an
    ``argmax`` find the first maxima in the fewest NumPy calls; ``argmax`` costs per window,
    so larger pools (MNIST's) take a running ``np.maximum`` over the window offsets.
    ``return_index=True`` returns ``(y, index)``: the flat positions of the first maxima in
    the padded input (None for the running maximum), for the backward.
    """
    x, (ph, pw), (sh, sw), pads, (oh, ow), _ = _pool_setup(
        "max_pool2d", x, pool_size, stride, padding
    )
    xp = _pad(x, pads, _lowest(x.dtype))
    if 0 < x.shape[0] * oh * ow * x.shape[3] * ph * pw <= POOL_ARGMAX_MAX:
        y, index = _first_max(xp, ph, pw, sh, sw, oh, ow)
    else:
        y, index = _window_max(xp, ph, pw, sh, sw, oh, ow), None
    return (y, index) if return_index else y


def max_pool2d_backward(
    dy, x, pool_size=2, stride=None, padding="valid", *, y=None, index=None
) -> np.ndarray:
    """Gradient of :func:`max_pool2d` w.r.t. ``x``: each window's ``dy`` goes to its max.

    On ties all of it goes to the FIRST maximum in row-major order, as in TensorFlow (ties
    are common after a ReLU, where whole windows are 0); overlapping windows accumulate.
    ``index`` or ``y`` from the forward skip recomputing it. With the maxima's positions the
    gradient is one scatter; without (large pools), the offsets are visited in row-major
    order and each takes the windows whose max it equals that no earlier offset took.
    """
    x, (ph, pw), (sh, sw), pads, (oh, ow), where = _pool_setup(
        "max_pool2d_backward", x, pool_size, stride, padding
    )
    n, h, wd, c = x.shape
    dy = _as_array(dy, "dy", 4, where)
    _check_shape(dy, "dy", (n, oh, ow, c), "have the forward output's shape {}", where)
    for name, given in (("y", y), ("index", index)):
        if given is not None:
            _check_shape(np.asarray(given), name, dy.shape, "be shaped like dy {}", where)
    xp = _pad(x, pads, _lowest(x.dtype))
    dtype = dy.dtype if dy.dtype.kind == "f" else np.dtype(np.float64)
    disjoint = sh >= ph and sw >= pw
    if index is None and 0 < n * oh * ow * c * ph * pw <= POOL_ARGMAX_MAX:
        index = _first_max(xp, ph, pw, sh, sw, oh, ow)[1]
    if index is not None:
        dxp = np.zeros(xp.shape, dtype=dtype)
        if disjoint:  # each pixel is the first max of at most one window
            dxp.reshape(-1)[index] = dy
        else:  # overlapping windows add up, in row-major order of the window offsets
            np.add.at(dxp.reshape(-1), index.reshape(-1)[::-1], dy.reshape(-1)[::-1])
        return _crop(dxp, pads, h, wd)
    if y is None:
        y = _window_max(xp, ph, pw, sh, sw, oh, ow)
    remaining = np.array(dy, dtype=dtype)
    hit = np.empty(dy.shape, dtype=bool)
    share = np.empty(dy.shape, dtype=dtype)
    dxp = np.zeros(xp.shape, dtype=dtype)
    for i in range(ph):
        for j in range(pw):
            target = _window(dxp, i, j, sh, sw, oh, ow)
            np.equal(_window(xp, i, j, sh, sw, oh, ow), y, out=hit)
            if disjoint:  # every pixel belongs to one window: write, don't add
                np.multiply(remaining, hit, out=target)
                remaining -= target
            else:
                np.multiply(remaining, hit, out=share)
                target += share
                remaining -= share
    return _crop(dxp, pads, h, wd)


# -- activations -----------------------------------------------------------------------------


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


def relu(x) -> np.ndarray:
    """``max(x, 0)``, dtype kept."""
    x = np.asarray(x)
    return np.maximum(x, x.dtype.type(0))


def relu_backward(dy, x) -> np.ndarray:
    """``dy`` where ``x > 0`` else 0: the gradient at exactly 0 is 0, as in TensorFlow."""
    dy, x = _same_shape("relu_backward", dy, x, "x")
    return dy * (x > 0)


def sigmoid(x) -> np.ndarray:
    """Logistic function without overflow: only ``exp(-|x|) <= 1`` is ever computed.

    ``exp(min(x, 0)) / (1 + exp(-|x|))`` is ``1 / (1 + e)`` for ``x >= 0`` and
    ``e / (1 + e)`` below, with ``e = exp(-|x|)``.
    """
    x = _float(x)
    return np.exp(np.minimum(x, 0)) / (np.exp(-np.abs(x)) + 1)


def sigmoid_backward(dy, y) -> np.ndarray:
    """Gradient through sigmoid from its output ``y``: ``dy * y * (1 - y)``."""
    dy, y = _same_shape("sigmoid_backward", dy, y, "y")
    return dy * y * (1 - y)


def tanh(x) -> np.ndarray:
    """Hyperbolic tangent (NumPy's is already stable for large |x|)."""
    return np.tanh(_float(x))


def tanh_backward(dy, y) -> np.ndarray:
    """Gradient through tanh from its output ``y``: ``dy * (1 - y**2)``."""
    dy, y = _same_shape("tanh_backward", dy, y, "y")
    return dy * (1 - y * y)


def softmax(x, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, shifted by the max so ``exp`` never overflows."""
    x = _float(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def softmax_backward(dy, y, axis: int = -1) -> np.ndarray:
    """Vector-Jacobian product of softmax from its output: ``y * (dy - sum(dy * y))``."""
    dy, y = _same_shape("softmax_backward", dy, y, "y")
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


#: the public functions above
__all__ = sorted(
    n for n, v in globals().items() if n[0] != "_" and getattr(v, "__module__", "") == __name__
)

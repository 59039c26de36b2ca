"""Forward and backward CNN ops on NHWC tensors, vectorised, in NumPy only.

Keras/TensorFlow's conventions, so the engines agree number for number: NHWC tensors, HWIO
kernels ``(KH, KW, C, F)``, cross-correlation (no kernel flip); ``"same"`` padding is
TensorFlow's (``out = ceil(in / stride)``, an odd pad's extra row/column at the
bottom/right); max pooling's stride defaults to its size, its padding is ``-inf`` and a
window's gradient goes to its FIRST max in row-major order; ReLU's gradient at 0 is 0.

Nothing loops over samples or pixels. Convolution is im2col (one gather into an
``(N*OH*OW, KH*KW*C)`` matrix, plus a column of ones when there is a bias) and one BLAS matmul
by the kernel reshaped to ``(KH*KW*C, F)`` (plus the bias row); its backward is one matmul over
the same columns for ``dw`` and ``db``, and one batched matmul and KH*KW shifted slice-adds
for ``dx``. Max pooling copies the input once into window-major order, so that the max and the
first-maximum rule of its backward run as contiguous element-wise passes; a conv whose output
a max pool tiles (:func:`_tiles`) can compute that output in the pool's order instead, so that
neither copies. Dtypes are kept
(float32 stays float32).
Sizes (kernel, pool, stride) are an int or a pair of ints; ``padding`` is ``"valid"``,
``"same"`` (any case), an int ``p``, a pair ``(ph, pw)`` or ``((top, bottom), (left, right))``.

Every public op checks its arguments and raises a one-line ValueError naming the argument,
its value and the shapes; a message is formatted only when a check fails. The kernels behind
them (``_conv_forward``, ``_pool_backward``, ...) check nothing: the layers, which checked their
configuration and input shape once, call them directly with a :class:`Window` resolved when
built and a :class:`Workspace` that keeps their scratch arrays from step to step. Values are
not scanned: like TensorFlow's ops, NaN propagates; the model and the trainers check their
data where it enters. The tests hold these ops to the loop versions in
:mod:`convscope.scratch.reference`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from convscope.validation import ValidationError, standardize_tuple

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
    """A size or stride (an int or two, each ``>= 1``) as a pair of ints."""
    if type(value) is int and value >= 1:  # the common case, without a call
        return value, value
    try:
        return standardize_tuple(value, 2, name)  # type: ignore[return-value]
    except ValidationError as e:
        raise ValidationError(f"{e}{_suffix(where)}") from None


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


class Window(NamedTuple):
    """A conv or pool window over inputs of one spatial size: all a kernel needs to know.

    ``kh, kw`` its size, ``sh, sw`` its stride, ``pads`` ``((top, bottom), (left, right))``,
    ``oh, ow`` the output size. A layer resolves it once, when built.
    """

    kh: int
    kw: int
    sh: int
    sw: int
    pads: Pads
    oh: int
    ow: int

    @property
    def disjoint(self) -> bool:
        """True when no two windows share a pixel (stride >= size)."""
        return self.sh >= self.kh and self.sw >= self.kw


def window(x_shape, kernel_hw, stride=1, padding="valid") -> Window:
    """The :class:`Window` of a conv or pool over inputs of ``x_shape`` (NHWC or ``(H, W)``).

    A ValueError, as in :func:`conv_output_shape`, when the window does not fit.
    """
    hw, khw, stride, where = _geometry(x_shape, kernel_hw, stride)
    pads = _resolve(padding, hw, khw, stride, where)
    return Window(*khw, *stride, pads, *_out_hw(hw, khw, stride, pads, where, "kernel_hw"))


class Workspace:
    """The arrays the kernels below write, kept from call to call when that is safe.

    ``scratch`` arrays never leave a kernel's caller (padded inputs, im2col columns and their
    gradient, pooling's window-major copy): they are allocated once per name, shape and dtype
    and handed back on every later call, so a layer's steps on one batch shape allocate
    nothing. ``result`` arrays are what a kernel returns (outputs, gradients): new arrays
    unless the workspace was made with ``keep_results=True``, a training step's, whose
    results the next step overwrites. ``fill`` initialises a scratch array once, when it is
    created: a padded input's border and the columns' column of ones are never written again.
    """

    #: distinct (name, shape, dtype) kept at most; a few batch sizes need a few each
    LIMIT = 64

    def __init__(self, keep_results: bool = False) -> None:
        self.keep_results = keep_results
        self._arrays: dict[tuple, np.ndarray] = {}

    def scratch(self, name: str, shape: tuple[int, ...], dtype, fill=None) -> np.ndarray:
        key = (name, shape, dtype)
        a = self._arrays.get(key)
        if a is None:
            if len(self._arrays) >= self.LIMIT:
                self._arrays.clear()
            a = np.empty(shape, dtype) if fill is None else np.full(shape, fill, dtype)
            self._arrays[key] = a
        return a

    def result(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        return self.scratch(name, shape, dtype) if self.keep_results else np.empty(shape, dtype)


def _padded(x: np.ndarray, pads: Pads, value, ws: Workspace, name: str) -> np.ndarray:
    """``x`` padded with ``value`` into a workspace array (``x`` itself without padding)."""
    (t, b), (l, r) = pads
    if t == b == l == r == 0:
        return x
    n, h, w, c = x.shape
    xp = ws.scratch(name, (n, h + t + b, w + l + r, c), x.dtype, fill=value)
    xp[:, t : t + h, l : l + w, :] = x
    return xp


def _cropped(xp: np.ndarray, pads: Pads, h: int, w: int, ws: Workspace) -> np.ndarray:
    """The inverse of :func:`_padded`: ``xp`` without its pads, a result array (``dx``)."""
    (t, b), (l, r) = pads
    if t == b == l == r == 0:
        return xp
    out = ws.result("dx", (xp.shape[0], h, w, xp.shape[3]), xp.dtype)
    np.copyto(out, xp[:, t : t + h, l : l + w, :])
    return out


def _gradient_canvas(shape: tuple[int, ...], pads: Pads, dtype, ws: Workspace, zero: bool):
    """The padded input's gradient to accumulate into: the result ``dx`` itself when there
    is no padding, else a scratch array that :func:`_cropped` copies from; zeroed if asked."""
    (t, b), (l, r) = pads
    n, h, w, c = shape
    if t == b == l == r == 0:
        dxp = ws.result("dx", shape, dtype)
    else:
        dxp = ws.scratch("dx_padded", (n, h + t + b, w + l + r, c), dtype)
    if zero:
        dxp.fill(0)
    return dxp


def _window(xp: np.ndarray, i: int, j: int, sh: int, sw: int, oh: int, ow: int) -> np.ndarray:
    """View of the input pixels that kernel offset (i, j) meets at every output position."""
    return xp[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]


def _windows(xp: np.ndarray, win: Window, offsets_first: bool = False) -> np.ndarray:
    """View ``(N, OH, OW, KH, KW, C)`` of every receptive field, no copy; read it only.

    ``offsets_first``: ``(KH, KW, N, OH, OW, C)``, pooling's window-major order. Built with
    the ``ndarray`` constructor (which checks that it fits the buffer), as
    ``sliding_window_view`` would but without its argument handling.
    """
    xp = np.ascontiguousarray(xp)
    s0, s1, s2, s3 = xp.strides
    n, c = xp.shape[0], xp.shape[3]
    outer = ((n, s0), (win.oh, s1 * win.sh), (win.ow, s2 * win.sw))
    inner = ((win.kh, s1), (win.kw, s2))
    axes = inner + outer if offsets_first else outer + inner
    shape = tuple(a[0] for a in axes) + (c,)
    strides = tuple(a[1] for a in axes) + (s3,)
    return np.ndarray(shape, xp.dtype, xp, 0, strides)


def _gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = a @ b`` for 2-D ``a`` and ``b``, through ``np.dot``: the same BLAS product
    as ``np.matmul``, made with the GIL released whatever its size.

    ``np.matmul`` is a generalized ufunc, which keeps the GIL when its output is small, however
    long the product: a shard's ``(16, 10)`` dense forward or ``(10, 16)`` conv dW over every
    pixel would run while the other shards' threads wait. ``out`` is C-contiguous, in the
    product's dtype.
    """
    return np.dot(a, b, out=out)


def _pixels(a: np.ndarray) -> np.ndarray:
    """``a`` (last axis contiguous) with each pixel's channels as one opaque element.

    Rearranging pixels moves NumPy's innermost copy loop from one pixel's few channels to a
    run of pixels, which makes the pooling's window-major copies several times faster.
    """
    return a.view(np.dtype((np.void, a.shape[-1] * a.itemsize)))


# -- convolution -----------------------------------------------------------------------------


def _conv_setup(op: str, x, w, b, stride, padding):
    """Checked arrays and geometry of a conv: ``x, w, b, window``."""

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
    return x, w, b, Window(kh, kw, *stride, pads, *out_hw)


def _tiles(conv: Window, pool: Window) -> tuple[int, int] | None:
    """``(PH, PW)`` when the max pool ``pool`` tiles the output of the conv ``conv`` exactly
    (its windows side by side, no padding, every output pixel in one window), else None.

    Then the conv can compute its output in the pool's window-major order (see
    :func:`_columns`), and the pool needs no copy of its own.
    """
    (t, b), (l, r) = pool.pads
    if (pool.kh, pool.kw) != (pool.sh, pool.sw) or t or b or l or r:
        return None
    if (conv.oh, conv.ow) != (pool.oh * pool.kh, pool.ow * pool.kw):
        return None
    return pool.kh, pool.kw


def _split_tiles(a: np.ndarray, axis: int, tile: tuple[int, int]) -> np.ndarray:
    """View of ``a`` with its axes ``axis`` (OH) and ``axis + 1`` (OW) cut into tiles of
    ``tile`` ``(PH, PW)``, the offsets within a tile moved in front of axis ``axis - 1`` (N):
    ``(..., N, OH, OW, ...)`` -> ``(..., PH, PW, N, OH/PH, OW/PW, ...)``, no copy."""
    ph, pw = tile
    oh, ow = a.shape[axis], a.shape[axis + 1]
    split = a.reshape(a.shape[:axis] + (oh // ph, ph, ow // pw, pw) + a.shape[axis + 2 :])
    order = list(range(split.ndim))
    order.insert(axis - 1, order.pop(axis + 1))  # PH before N
    order.insert(axis, order.pop(axis + 3))  # PW after it
    return split.transpose(order)


def _im2col(xp: np.ndarray, win: Window, cols: np.ndarray, tile=None) -> None:
    """Write the receptive fields of ``xp`` into ``cols`` ``(N*OH*OW, KH*KW*C)``, HWC order.

    NumPy copies one innermost run at a time. With channels, a window's row (KW*C values)
    is that run. With one channel, ``cols`` is the transpose of a C-contiguous
    ``(KH*KW, N*OH*OW)`` array (see :func:`_columns`): one copy whose runs are output rows.
    A ``tile`` orders the rows as in :func:`_columns`.
    """
    if xp.shape[3] == 1:
        fields = _windows(xp, win, offsets_first=True)[..., 0]  # (KH, KW, N, OH, OW)
        if tile is not None:
            fields = _split_tiles(fields, 3, tile)
        np.copyto(cols.T.reshape(fields.shape, copy=False), fields)
    else:
        fields = _windows(xp, win)  # (N, OH, OW, KH, KW, C)
        if tile is not None:
            fields = _split_tiles(fields, 1, tile)
        np.copyto(cols.reshape(fields.shape, copy=False), fields)


def _columns(x: np.ndarray, win: Window, ws: Workspace, dtype, ones: bool, tile=None) -> np.ndarray:
    """The im2col columns of ``x`` in ``dtype``, ending in a column of ones when ``ones``.

    With one channel, the columns are kept offset by offset (an F-ordered matrix, the
    transpose of ``(KH*KW, N*OH*OW)``): one copy of rows of pixels fills them, and BLAS
    takes either order. A workspace array: the backward must run before the next forward
    with the same workspace.

    A ``tile`` ``(PH, PW)`` (see :func:`_tiles`) puts the rows in the order of the tiling
    max pool's windows, ``(PH, PW, N, OH/PH, OW/PW)``: the offset within the pool window
    first. The product by the kernel is then the conv's output in the pool's window-major
    order, which the pool reduces with a few maxima over contiguous blocks and no copy.
    """
    n, _, _, c = x.shape
    k = win.kh * win.kw * c
    m = n * win.oh * win.ow
    if c == 1:
        cols = ws.scratch("cols", (k + ones, m), dtype, fill=1).T
    else:
        cols = ws.scratch("cols", (m, k + ones), dtype, fill=1)
    _im2col(_padded(x, win.pads, 0, ws, "padded"), win, cols[:, :k], tile)
    return cols


def _conv_forward(x: np.ndarray, w: np.ndarray, b, win: Window, ws: Workspace, tile=None):
    """``(z, cols)``: the convolution and the im2col columns it multiplied (no checks).

    With a bias the columns end in a column of ones and the weight matrix in the bias row,
    so the one matmul adds the bias too, and the backward's matmul over the same columns
    gives ``db`` as its last row. With a ``tile`` (see :func:`_columns`) ``z`` is in the
    tiling pool's window-major order, ``(PH*PW, N, OH/PH, OW/PW, F)``.
    """
    kh, kw, c, f = w.shape
    k = kh * kw * c
    dtype = np.result_type(x, w) if b is None else np.result_type(x, w, b)
    cols = _columns(x, win, ws, dtype, b is not None, tile)
    weights = w.reshape(k, f)
    if b is not None:
        weights = ws.scratch("weights", (k + 1, f), dtype)
        weights[:k] = w.reshape(k, f)
        weights[k] = b
    z = ws.result("z", (len(cols), f), dtype)
    _gemm(cols, weights, z)
    n = x.shape[0]
    if tile is None:
        return z.reshape(n, win.oh, win.ow, f), cols
    ph, pw = tile
    return z.reshape(ph * pw, n, win.oh // ph, win.ow // pw, f), cols


def _tiled(a: np.ndarray, tile: tuple[int, int], out: np.ndarray) -> np.ndarray:
    """NHWC ``a`` copied into ``out`` in window-major order ``(PH*PW, N, H/PH, W/PW, C)``."""
    np.copyto(out.reshape(tile + out.shape[1:]), _split_tiles(a, 1, tile))
    return out


def _untiled(a: np.ndarray, tile: tuple[int, int], out: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_tiled`: window-major ``a`` copied into NHWC ``out``."""
    np.copyto(_split_tiles(out, 1, tile), a.reshape(tile + a.shape[1:]))
    return out


def _conv_backward(
    dz, x_shape, w: np.ndarray, win: Window, cols, ws: Workspace, need_dx: bool, tile=None
):
    """``(dx, dw, db)`` of :func:`_conv_forward` from dL/dz and its columns (no checks).

    ``dz`` is in the order of the columns' rows (window-major with a ``tile``). ``dw`` (and
    ``db``, when the columns carry the ones column; else None) is one matmul over the
    forward's columns. ``dx`` is one batched matmul back to column space, one contiguous
    ``(N*OH*OW, C)`` block per kernel offset, each added into its shifted window of the padded
    input, so overlapping windows accumulate (None unless ``need_dx``).
    """
    n, h, wd, c = x_shape
    kh, kw, _, f = w.shape
    k = kh * kw * c
    m = n * win.oh * win.ow
    dtype = np.result_type(dz, cols)
    dz2 = np.ascontiguousarray(np.reshape(dz, (m, f)), dtype=dtype)
    grads = ws.result("grads", (cols.shape[1], f), dtype)
    _gemm(cols.T, dz2, grads)
    dw = grads[:k].reshape(kh, kw, c, f)
    db = grads[k] if cols.shape[1] > k else None
    if not need_dx:
        return None, dw, db
    if tile is not None:  # the shifted adds below run over NHWC rows
        out = ws.scratch("dz_nhwc", (n, win.oh, win.ow, f), dtype)
        dz2 = _untiled(dz2.reshape(-1, n, win.oh // tile[0], win.ow // tile[1], f), tile, out)
        dz2 = dz2.reshape(m, f)
    w_t = ws.scratch("kernel_t", (kh, kw, f, c), dtype)
    np.copyto(w_t, w.transpose(0, 1, 3, 2))
    dcols = ws.scratch("dcols", (kh * kw, m, c), dtype)
    np.matmul(dz2, w_t.reshape(kh * kw, f, c), out=dcols)
    dxp = _gradient_canvas(x_shape, win.pads, dtype, ws, zero=True)
    for i in range(kh):
        for j in range(kw):
            dx_ij = _window(dxp, i, j, win.sh, win.sw, win.oh, win.ow)
            dx_ij += dcols[i * kw + j].reshape(n, win.oh, win.ow, c)
    return _cropped(dxp, win.pads, h, wd, ws), dw, db


def conv2d(x, w, b=None, stride=1, padding="valid") -> np.ndarray:
    """2-D cross-correlation of ``x`` with ``w`` (what Keras's Conv2D computes), bias ``b`` (F,).

    im2col and one matmul. Returns (N, OH, OW, F) in the result dtype of x, w (and b):
    integers give exact integer sums.
    """
    x, w, b, win = _conv_setup("conv2d", x, w, b, stride, padding)
    return _conv_forward(x, w, b, win, Workspace())[0]


def conv2d_backward(dy, x, w, stride=1, padding="valid", *, compute_dx=True, compute_db=True):
    """Gradients ``(dx, dw, db)`` of :func:`conv2d` given the upstream gradient ``dy``.

    ``compute_dx=False`` / ``compute_db=False`` return None for dx / db: a network's first
    layer never needs dx, a conv without bias no db.
    """
    x, w, _, win = _conv_setup("conv2d_backward", x, w, None, stride, padding)
    dy = _as_array(dy, "dy", 4, None)
    expected = (x.shape[0], win.oh, win.ow, w.shape[3])
    _check_shape(dy, "dy", expected, "have the forward output's shape {}", None)
    ws = Workspace()
    # the forward's columns; db is the gradient of the ones column's weights (the bias)
    cols = _columns(x, win, ws, np.result_type(dy, x, w), compute_db)
    return _conv_backward(dy, x.shape, w, win, cols, ws, compute_dx)


# -- max pooling -----------------------------------------------------------------------------


def _pool_setup(op: str, x, pool_size, stride, padding):
    """Checked input and geometry of a pool: ``x, window, where``."""

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
    return x, Window(*pool, *stride, pads, *out_hw), where


def _window_max(windows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The max over the first axis of window-major ``windows`` ``(KH*KW, ...)``, into ``out``."""
    if len(windows) == 1:
        np.copyto(out, windows[0])
    else:
        np.maximum(windows[0], windows[1], out=out)
    for k in range(2, len(windows)):
        np.maximum(out, windows[k], out=out)
    return out


def _pool_forward(x: np.ndarray, win: Window, ws: Workspace):
    """``(y, windows)``: each window's max, and the window-major copy of the input.

    ``windows`` ``(KH*KW, N, OH, OW, C)`` holds, for each window offset in row-major order,
    the pixel at that offset of every window, so that the max and the backward's tie rule are
    contiguous element-wise passes (a workspace array: the backward reads it).
    """
    n, _, _, c = x.shape
    xp = np.ascontiguousarray(_padded(x, win.pads, _lowest(x.dtype), ws, "padded"))
    shape = (win.kh, win.kw, n, win.oh, win.ow, c)
    windows = ws.scratch("windows", shape, x.dtype)
    np.copyto(_pixels(windows), _pixels(_windows(xp, win, offsets_first=True)))
    windows = windows.reshape(win.kh * win.kw, n, win.oh, win.ow, c)
    return _window_max(windows, ws.result("y", windows.shape[1:], x.dtype)), windows


def _max_grads(dy: np.ndarray, y: np.ndarray, windows: np.ndarray, ws: Workspace) -> np.ndarray:
    """dL/d``windows`` (window-major, as ``windows``) of ``y``, their max over the first axis.

    ``hits`` marks, offset by offset, the pixels that hold their window's max; visited in
    row-major order, each offset keeps only the windows no earlier offset holds, so ties
    go to the first maximum, and the window's ``dy`` goes where its mark is left. A
    workspace array.
    """
    dtype = dy.dtype if dy.dtype.kind == "f" else np.dtype(np.float64)
    hits = ws.scratch("hits", windows.shape, np.bool_)
    np.equal(windows, y, out=hits)
    last = len(windows) - 1
    taken = hits[0]  # the windows whose max an earlier offset holds
    for k in range(1, last + 1):
        np.greater(hits[k], taken, out=hits[k])  # a hit, and no earlier one
        if k < last:
            taken = np.logical_or(taken, hits[k], out=ws.scratch("taken", y.shape, np.bool_))
    return np.multiply(hits, dy, out=ws.scratch("grads", windows.shape, dtype))


def _pool_backward(dy, x_shape, y, windows, win: Window, ws: Workspace) -> np.ndarray:
    """dL/dx of :func:`_pool_forward` from ``dy`` and its ``y`` and ``windows`` (no checks):
    :func:`_max_grads`, each window's offsets then put back where they came from."""
    n, h, wd, c = x_shape
    grads = _max_grads(dy, y, windows, ws)
    (t, b), (l, r) = win.pads
    kh, kw, sh, sw, _, oh, ow = win
    covered = (kh, kw) == (sh, sw) and (oh * sh, ow * sw) == (h + t + b, wd + l + r)
    dxp = _gradient_canvas(x_shape, win.pads, grads.dtype, ws, zero=not covered)
    if win.disjoint:  # every pixel is in one window at most: one copy back
        target = _windows(dxp, win, offsets_first=True)
        np.copyto(_pixels(target), _pixels(grads.reshape(target.shape)))
    else:  # overlapping windows add up, in row-major order of the offsets
        for k in range(kh * kw):
            dx_k = _window(dxp, k // kw, k % kw, sh, sw, oh, ow)
            dx_k += grads[k]
    return _cropped(dxp, win.pads, h, wd, ws)


def max_pool2d(x, pool_size=2, stride=None, padding="valid") -> np.ndarray:
    """Max pooling over ``x``; ``stride`` defaults to ``pool_size``, pads hold -inf."""
    x, win, _ = _pool_setup("max_pool2d", x, pool_size, stride, padding)
    return _pool_forward(x, win, Workspace())[0]


def max_pool2d_backward(dy, x, pool_size=2, stride=None, padding="valid") -> np.ndarray:
    """Gradient of :func:`max_pool2d` w.r.t. ``x``: each window's ``dy`` goes to its max.

    On ties all of it goes to the FIRST maximum in row-major order, as in TensorFlow (ties
    are common after a ReLU, where whole windows are 0); overlapping windows accumulate.
    """
    x, win, where = _pool_setup("max_pool2d_backward", x, pool_size, stride, padding)
    dy = _as_array(dy, "dy", 4, where)
    expected = (x.shape[0], win.oh, win.ow, x.shape[3])
    _check_shape(dy, "dy", expected, "have the forward output's shape {}", where)
    ws = Workspace()
    y, windows = _pool_forward(x, win, ws)
    return _pool_backward(dy, x.shape, y, windows, win, ws)


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


#: zeros for :func:`relu`, one read-only array per dtype, grown as needed
_ZEROS: dict[np.dtype, np.ndarray] = {}


def _zeros_like(x: np.ndarray) -> np.ndarray:
    zeros = _ZEROS.get(x.dtype)
    if zeros is None or zeros.size < x.size:
        zeros = np.zeros(x.size, x.dtype)
        zeros.flags.writeable = False
        _ZEROS[x.dtype] = zeros
    return zeros[: x.size].reshape(x.shape)


def relu(x, out: np.ndarray | None = None) -> np.ndarray:
    """``max(x, 0)``, dtype kept; into ``out`` when given.

    The zeros are an array like ``x``, not the scalar 0: NumPy vectorises ``maximum`` only
    when both operands are contiguous arrays, which makes this several times faster.
    """
    x = np.asarray(x)
    return np.maximum(x, _zeros_like(x), out=out)


def relu_backward(dy, x, out: np.ndarray | None = None) -> np.ndarray:
    """``dy`` where ``x > 0`` else 0 (into ``out`` when given): the gradient at exactly 0 is 0,
    as in TensorFlow."""
    dy, x = _same_shape("relu_backward", dy, x, "x")
    if out is None:
        out = np.empty(dy.shape, np.result_type(dy, np.bool_))
    # the mask straight into out (1 or 0), then the product in place: no temporary
    np.greater(x, 0, out=out)
    return np.multiply(out, dy, out=out)


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

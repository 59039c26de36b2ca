"""The vectorised ops against their loop references, finite differences, and hand-worked cases.

Fast and TensorFlow-free; the TensorFlow parity checks live in test_ops_tf.py.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings

import numpy as np
import pytest

from convscope.scratch import ops
from convscope.scratch import reference as ref
from tests.support.gradcheck import numeric_grad, rel_error

N_RANDOM = 60
PADDING_KINDS = ["valid", "same", "int", "pair", "explicit", "SAME"]


def _stride(rng: np.random.Generator, seed: int):
    # Alternate int and (possibly non-square) pair strides so both forms are always covered.
    if seed % 2 == 0:
        return int(rng.integers(1, 4))
    return (int(rng.integers(1, 4)), int(rng.integers(1, 4)))


def _padding(rng: np.random.Generator, seed: int):
    kind = PADDING_KINDS[seed % len(PADDING_KINDS)]
    if kind == "int":
        return int(rng.integers(0, 3))
    if kind == "pair":
        return (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
    if kind == "explicit":
        return tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(2))
    return kind


def conv_case(seed: int):
    """A random conv problem (float64) that fits: shapes, stride, padding, x, w, b."""
    rng = np.random.default_rng(seed)
    while True:
        n, h, w, c, f = (int(v) for v in rng.integers(1, [4, 10, 10, 4, 4]))
        kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
        stride, padding = _stride(rng, seed), _padding(rng, seed)
        try:
            ops.conv_output_shape((n, h, w, c), (kh, kw), stride, padding)
        except ValueError:
            continue
        x = rng.standard_normal((n, h, w, c))
        k = rng.standard_normal((kh, kw, c, f))
        b = rng.standard_normal(f) if seed % 3 else None
        return x, k, b, stride, padding


def pool_case(seed: int):
    """A random max-pool problem with many ties (values are small integers, as floats)."""
    rng = np.random.default_rng(seed + 1000)
    while True:
        n, h, w, c = (int(v) for v in rng.integers(1, [4, 10, 10, 4]))
        pool = int(rng.integers(1, 4)) if seed % 2 else tuple(int(v) for v in rng.integers(1, 4, 2))
        stride = None if seed % 5 == 0 else _stride(rng, seed // 2)
        padding = ["valid", "same", "Same", 1, "valid"][seed % 5]
        try:
            ops.max_pool2d(np.zeros((n, h, w, c)), pool, stride, padding)
        except ValueError:
            continue
        x = rng.integers(-2, 3, size=(n, h, w, c)).astype(np.float64)
        return x, pool, stride, padding


# --------------------------------------------------------------------------------------------
# fast op == loop reference
# --------------------------------------------------------------------------------------------


def test_random_cases_cover_every_padding_stride_and_channel_form():
    cases = [conv_case(s) for s in range(N_RANDOM)]
    assert {type(c[4]).__name__ for c in cases} >= {"str", "int", "tuple"}
    assert any(isinstance(c[3], tuple) and c[3][0] != c[3][1] for c in cases)
    assert any(c[3] == 3 or (isinstance(c[3], tuple) and 3 in c[3]) for c in cases)
    # channel forms: several, one with one image, one with a batch
    forms = {(c[0].shape[3] > 1, c[0].shape[0] > 1) for c in cases}
    assert {(True, False), (False, False), (False, True)} <= forms
    # the pool's backward: disjoint windows tiling the input, disjoint leaving pixels out,
    # overlapping windows
    pools = [pool_case(s) for s in range(N_RANDOM)]
    kinds = set()
    for x, pool, stride, padding in pools:
        win = ops.window(x.shape, pool, pool if stride is None else stride, padding)
        tiled = (win.kh, win.kw) == (win.sh, win.sw) and win.oh * win.sh == x.shape[1] + sum(
            win.pads[0]
        )
        kinds.add("overlapping" if not win.disjoint else "tiled" if tiled else "gaps")
    assert kinds == {"overlapping", "tiled", "gaps"}


@pytest.mark.parametrize(
    "shape, kernel",
    [((4, 12, 12, 1), (3, 3)), ((1, 12, 12, 1), (3, 3)), ((4, 12, 12, 3), (3, 3)),
     ((3, 9, 11, 2), (2, 3)), ((5, 8, 8, 1), (1, 1))],
)  # fmt: skip
def test_conv2d_both_im2col_layouts_match_loop(shape, kernel):
    """One-channel inputs get offset-major columns (an F-ordered matrix), inputs with
    channels pixel-major ones; both give the loop's numbers, forward and backward."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((*kernel, shape[3], 4))
    b = rng.standard_normal(4)
    np.testing.assert_allclose(
        ops.conv2d(x, w, b), ref.conv2d_loop(x, w, b), rtol=1e-12, atol=1e-12
    )
    dy = rng.standard_normal(ops.conv2d(x, w, b).shape)
    for a, e in zip(ops.conv2d_backward(dy, x, w), ref.conv2d_backward_loop(dy, x, w), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(N_RANDOM))
def test_conv2d_matches_loop(seed):
    x, w, b, stride, padding = conv_case(seed)
    fast = ops.conv2d(x, w, b, stride=stride, padding=padding)
    slow = ref.conv2d_loop(x, w, b, stride=stride, padding=padding)
    assert fast.shape == slow.shape
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(N_RANDOM))
def test_conv2d_backward_matches_loop(seed):
    x, w, _, stride, padding = conv_case(seed)
    y = ops.conv2d(x, w, stride=stride, padding=padding)
    dy = np.random.default_rng(seed).standard_normal(y.shape)
    fast = ops.conv2d_backward(dy, x, w, stride=stride, padding=padding)
    slow = ref.conv2d_backward_loop(dy, x, w, stride=stride, padding=padding)
    for name, a, e, shape in zip(
        ("dx", "dw", "db"), fast, slow, (x.shape, w.shape, (w.shape[3],)), strict=True
    ):
        assert a.shape == shape, name
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("seed", range(N_RANDOM))
def test_max_pool2d_matches_loop(seed):
    x, pool, stride, padding = pool_case(seed)
    fast = ops.max_pool2d(x, pool, stride, padding)
    slow = ref.max_pool2d_loop(x, pool, stride, padding)
    assert fast.shape == slow.shape
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("seed", range(N_RANDOM))
def test_max_pool2d_backward_matches_loop(seed):
    x, pool, stride, padding = pool_case(seed)
    y = ops.max_pool2d(x, pool, stride, padding)
    dy = np.random.default_rng(seed).standard_normal(y.shape)
    fast = ops.max_pool2d_backward(dy, x, pool, stride, padding)
    slow = ref.max_pool2d_backward_loop(dy, x, pool, stride, padding)
    assert fast.shape == x.shape
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)
    # Gradient is conserved: every window hands its dy to exactly one pixel.
    np.testing.assert_allclose(fast.sum(), dy.sum(), rtol=1e-10, atol=1e-10)


def test_conv2d_integer_inputs_are_exact():
    rng = np.random.default_rng(7)
    x = rng.integers(-9, 10, size=(2, 6, 7, 3))
    w = rng.integers(-3, 4, size=(3, 2, 3, 4))
    out = ops.conv2d(x, w, stride=(2, 1), padding="same")
    assert out.dtype.kind == "i"
    np.testing.assert_array_equal(out, ref.conv2d_loop(x, w, stride=(2, 1), padding="same"))


# --------------------------------------------------------------------------------------------
# dtypes and no hidden copies of the input
# --------------------------------------------------------------------------------------------


def test_float32_stays_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 7, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    b = np.zeros(4, np.float32)
    y = ops.conv2d(x, w, b, stride=2, padding="same")
    assert y.dtype == np.float32
    grads = ops.conv2d_backward(np.ones_like(y), x, w, stride=2, padding="same")
    assert [g.dtype for g in grads] == [np.float32] * 3
    p = ops.max_pool2d(x, 3, 2, "same")
    assert p.dtype == np.float32
    assert ops.max_pool2d_backward(np.ones_like(p), x, 3, 2, "same").dtype == np.float32
    for fn in (ops.relu, ops.sigmoid, ops.tanh, ops.softmax):
        assert fn(x).dtype == np.float32, fn.__name__
    for fn, arg in (
        (ops.relu_backward, x),
        (ops.sigmoid_backward, ops.sigmoid(x)),
        (ops.tanh_backward, ops.tanh(x)),
        (ops.softmax_backward, ops.softmax(x)),
    ):
        assert fn(np.ones_like(x), arg).dtype == np.float32, fn.__name__


def test_ops_do_not_modify_their_inputs():
    x, w, b, stride, padding = conv_case(4)  # seed % 3 != 0: has a bias
    y = ops.conv2d(x, w, b, stride, padding)
    dy = np.ones_like(y)
    before = [a.copy() for a in (x, w, b, dy)]
    ops.conv2d(x, w, b, stride, padding)
    ops.conv2d_backward(dy, x, w, stride, padding)
    px = pool_case(4)[0]
    p = ops.max_pool2d(px, 2, 1, "same")
    pdy, px_before = np.ones_like(p), px.copy()
    ops.max_pool2d_backward(pdy, px, 2, 1, "same")
    for a, e in zip((x, w, b, dy, px), [*before, px_before], strict=True):
        np.testing.assert_array_equal(a, e)
    np.testing.assert_array_equal(pdy, 1.0)


def test_compute_dx_false_skips_dx_only():
    x, w, _, stride, padding = conv_case(5)
    dy = np.ones_like(ops.conv2d(x, w, stride=stride, padding=padding))
    dx, dw, db = ops.conv2d_backward(dy, x, w, stride, padding)
    none, dw2, db2 = ops.conv2d_backward(dy, x, w, stride, padding, compute_dx=False)
    assert none is None
    np.testing.assert_array_equal(dw, dw2)
    np.testing.assert_array_equal(db, db2)


def _other_thread_ran_inside(product) -> bool:
    """Whether a second Python thread ran while ``product()`` was inside its one C call: a
    thread runs Python only while it holds the GIL, so a time it reads between the call's
    start and end means the call had let the GIL go. The switch interval is made longer than
    the test, so that the interpreter never takes the GIL from the main thread between the
    reads of the clock and the call: only a call that lets it go lets the other thread in."""
    times: list[float] = []
    stop = threading.Event()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)

    def other() -> None:
        while not stop.is_set():
            times.append(time.perf_counter())
            time.sleep(1e-4)  # gives the GIL back at once: the main thread never waits long

    thread = threading.Thread(target=other)
    thread.start()
    calls = []
    try:
        for _ in range(200):
            start = time.perf_counter()
            product()
            calls.append((start, time.perf_counter()))
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    return any(start < t < end for start, end in calls for t in times)


def test_products_with_a_small_output_let_the_other_shards_thread_run():
    """A shard's (16, 10) dense forward or (10, 16) dW over a long axis is one BLAS call; the
    engine makes it with the GIL released, so the other shard's thread computes meanwhile,
    and the result is the product ``np.matmul`` gives, in ``out``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200_000, 10), dtype=np.float32)
    b = rng.standard_normal((200_000, 16), dtype=np.float32)
    out = np.empty((10, 16), np.float32)
    assert ops._gemm(a.T, b, out) is out
    np.testing.assert_array_equal(out, np.matmul(a.T, b))
    assert _other_thread_ran_inside(lambda: ops._gemm(a.T, b, out))


# --------------------------------------------------------------------------------------------
# finite differences (float64, relative error <= 1e-7)
# --------------------------------------------------------------------------------------------

TOL = 1e-7


def test_gradcheck_catches_a_wrong_gradient():
    x = np.random.default_rng(0).standard_normal((3, 4))
    num = numeric_grad(lambda a: float(np.sum(a**3)), x)
    assert rel_error(num, 3 * x**2) <= TOL
    assert rel_error(num, 3.01 * x**2) > 1e-3
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0


CONV_GRAD_CASES = [
    ((2, 5, 6, 3), (3, 2, 3, 4), (2, 1), "same"),
    ((1, 6, 5, 2), (2, 3, 2, 3), 1, "valid"),
    ((2, 4, 5, 1), (3, 3, 1, 2), (1, 2), ((0, 2), (1, 0))),
    ((1, 7, 7, 2), (4, 4, 2, 2), 3, "SAME"),
]


@pytest.mark.parametrize("xs, ws, stride, padding", CONV_GRAD_CASES)
def test_conv2d_gradients_finite_difference(xs, ws, stride, padding):
    rng = np.random.default_rng(sum(xs) + sum(ws))
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[3])
    r = rng.standard_normal(ops.conv2d(x, w, b, stride, padding).shape)

    def loss(*_):
        return float(np.sum(ops.conv2d(x, w, b, stride, padding) * r))

    dx, dw, db = ops.conv2d_backward(r, x, w, stride, padding)
    assert rel_error(dx, numeric_grad(loss, x)) <= TOL
    assert rel_error(dw, numeric_grad(loss, w)) <= TOL
    assert rel_error(db, numeric_grad(loss, b)) <= TOL


@pytest.mark.parametrize(
    "pool, stride, padding",
    [(2, None, "valid"), (3, 2, "same"), ((2, 3), (1, 2), "valid"), (2, 1, "same")],
)
def test_max_pool2d_gradient_finite_difference(pool, stride, padding):
    rng = np.random.default_rng(3)
    shape = (2, 5, 7, 2)
    # Distinct values 0.01 apart: no ties, and no eps-sized step can change a window's max.
    x = (rng.permutation(np.prod(shape)).reshape(shape) - 20.0) * 0.01
    r = rng.standard_normal(ops.max_pool2d(x, pool, stride, padding).shape)
    num = numeric_grad(lambda a: float(np.sum(ops.max_pool2d(a, pool, stride, padding) * r)), x)
    assert rel_error(ops.max_pool2d_backward(r, x, pool, stride, padding), num) <= TOL


def _away_from_zero(rng, shape):
    return rng.uniform(0.1, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


@pytest.mark.parametrize(
    "fwd, bwd, from_output",
    [
        (ops.relu, ops.relu_backward, False),
        (ops.sigmoid, ops.sigmoid_backward, True),
        (ops.tanh, ops.tanh_backward, True),
    ],
    ids=["relu", "sigmoid", "tanh"],
)
def test_activation_gradients_finite_difference(fwd, bwd, from_output):
    rng = np.random.default_rng(11)
    x = _away_from_zero(rng, (3, 4, 5))
    r = rng.standard_normal(x.shape)
    num = numeric_grad(lambda a: float(np.sum(fwd(a) * r)), x)
    ana = bwd(r, fwd(x) if from_output else x)
    assert rel_error(ana, num) <= TOL


@pytest.mark.parametrize("shape, axis", [((4, 6), -1), ((3, 5, 4), 1), ((2, 3, 4), 0)])
def test_softmax_gradient_finite_difference(shape, axis):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape) * 2
    r = rng.standard_normal(shape)
    num = numeric_grad(lambda a: float(np.sum(ops.softmax(a, axis) * r)), x)
    assert rel_error(ops.softmax_backward(r, ops.softmax(x, axis), axis), num) <= TOL


# --------------------------------------------------------------------------------------------
# hand-worked cases: ties, TensorFlow 'same', the seed's walkthrough
# --------------------------------------------------------------------------------------------


def test_max_pool_tie_gradient_goes_to_first_max_only():
    x = np.zeros((1, 2, 2, 1))
    dx = ops.max_pool2d_backward(np.ones((1, 1, 1, 1)), x)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 0], [0, 0]])

    # Windows (2x2, stride 2) whose maxima tie at different places: first in row-major wins.
    img = np.array([[0, 5, 3, 3], [5, 5, 3, 3], [1, 1, 7, 0], [1, 2, 0, 7]], dtype=float)
    dy = np.array([[10.0, 20.0], [30.0, 40.0]])
    dx = ops.max_pool2d_backward(dy[None, :, :, None], img[None, :, :, None])
    expected = [[0, 10, 20, 0], [0, 0, 0, 0], [0, 0, 40, 0], [0, 30, 0, 0]]
    np.testing.assert_array_equal(dx[0, :, :, 0], expected)


def test_max_pool_overlapping_windows_accumulate():
    # 3x3 input, 2x2 pool, stride 1: the centre 9 is the max of all four windows.
    img = np.array([[1, 2, 3], [4, 9, 5], [6, 7, 8]], dtype=float)
    dy = np.array([[1.0, 2.0], [3.0, 4.0]])
    dx = ops.max_pool2d_backward(dy[None, :, :, None], img[None, :, :, None], 2, 1)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 0, 0], [0, 10, 0], [0, 0, 0]])


def test_relu_gradient_at_zero_is_zero():
    x = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(ops.relu_backward(np.ones(3), x), [0, 0, 1])


@pytest.mark.parametrize(
    "in_hw, k, s, expected",
    [
        # worked by hand from out = ceil(in/s), total = max((out-1)*s + k - in, 0)
        ((5, 5), (2, 2), (1, 1), ((0, 1), (0, 1))),  # even kernel: extra pad bottom/right
        ((5, 6), (3, 3), (2, 2), ((1, 1), (0, 1))),  # stride 2, even width
        ((5, 7), (2, 1), (2, 3), ((0, 1), (0, 0))),  # odd input, stride 2 with kernel 2
        ((4, 4), (1, 1), (3, 3), ((0, 0), (0, 0))),  # total clamps at 0
        ((7, 7), (4, 4), (3, 3), ((1, 2), (1, 2))),  # odd total 3: 1 top, 2 bottom
    ],
)
def test_same_padding_formula(in_hw, k, s, expected):
    assert ops.same_padding(*in_hw, *k, *s) == expected
    pads = ops.resolve_padding("same", (1, *in_hw, 1), k, s)
    assert pads == expected
    oh, ow = ops.conv_output_shape(in_hw, k, s, "same")
    assert (oh, ow) == (-(-in_hw[0] // s[0]), -(-in_hw[1] // s[1]))


def test_same_conv_pads_bottom_right_like_tensorflow():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None]
    w = np.ones((2, 2, 1, 1))
    # Pads ((0, 1), (0, 1)): each output sums its pixel and those below/right of it.
    out = ops.conv2d(x, w, padding="same")[0, :, :, 0]
    np.testing.assert_array_equal(out, [[10, 6], [7, 4]])


def test_same_max_pool_pads_with_minus_infinity():
    x = -np.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    out = ops.max_pool2d(x, 2, 2, "same")[0, :, :, 0]
    # Zero padding would wrongly give 0 in the three windows that touch the pad.
    np.testing.assert_array_equal(out, [[-1, -3], [-7, -9]])


SEED_IMAGE = np.array(
    [
        [10, 10, 10, 0, 0],
        [10, 10, 10, 0, 0],
        [10, 10, 10, 0, 0],
        [0, 0, 0, 10, 10],
        [0, 0, 0, 10, 10],
    ]
)
SEED_KERNEL = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]])
SEED_FEATURE_MAP = [
    [-20, 0, 20, 20, 0],
    [-30, 0, 30, 30, 0],
    [-20, 0, 10, 10, 10],
    [-10, 0, -10, -10, 20],
    [0, 0, -20, -20, 20],
]


@pytest.mark.parametrize("dtype", [np.int64, np.float32, np.float64])
def test_seed_walkthrough_numbers(dtype):
    x = SEED_IMAGE.astype(dtype)[None, :, :, None]
    w = SEED_KERNEL.astype(dtype)[:, :, None, None]
    fmap = ops.conv2d(x, w, padding=1)
    np.testing.assert_array_equal(fmap[0, :, :, 0], SEED_FEATURE_MAP)
    np.testing.assert_array_equal(ref.conv2d_loop(x, w, padding=1)[0, :, :, 0], SEED_FEATURE_MAP)
    pooled = ops.max_pool2d(ops.relu(fmap), pool_size=2, stride=2)
    np.testing.assert_array_equal(pooled[0, :, :, 0], [[0, 30], [0, 10]])


# --------------------------------------------------------------------------------------------
# padding helpers
# --------------------------------------------------------------------------------------------


def test_pad2d_forms_match_numpy_pad():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 2))
    for padding, pads in [
        (1, ((1, 1), (1, 1))),
        ((2, 0), ((2, 2), (0, 0))),
        (((0, 1), (2, 3)), ((0, 1), (2, 3))),
    ]:
        expected = np.pad(x, ((0, 0), *pads, (0, 0)))
        np.testing.assert_array_equal(ops.pad2d(x, padding), expected)
    assert ops.pad2d(x, 0) is x
    np.testing.assert_array_equal(ops.pad2d(x, 1, value=-np.inf)[:, 0], -np.inf)


def test_resolve_padding_strings_are_case_insensitive():
    assert ops.resolve_padding("VALID", (1, 5, 5, 1), 3, 1) == ((0, 0), (0, 0))
    assert ops.resolve_padding("Same", (5, 5), 3, 1) == ((1, 1), (1, 1))
    assert ops.resolve_padding(2, (5, 5), 3, 1) == ((2, 2), (2, 2))
    assert ops.resolve_padding((1, 0), (5, 5), 3, 1) == ((1, 1), (0, 0))


# --------------------------------------------------------------------------------------------
# bad input: ValueError naming the argument, the value and the shapes
# --------------------------------------------------------------------------------------------

X = np.zeros((1, 5, 5, 2))
W = np.zeros((3, 3, 2, 4))


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda: ops.conv2d(np.zeros((5, 5, 2)), W), r"x must be 4-D.*x\.shape=\(5, 5, 2\)"),
        (lambda: ops.conv2d(X, np.zeros((3, 3, 2))), r"w must be 4-D.*w\.shape=\(3, 3, 2\)"),
        (lambda: ops.conv2d(X, np.zeros((3, 3, 3, 4))), r"w\.shape\[2\]=3.*x\.shape\[3\]=2"),
        (lambda: ops.conv2d(X, W, b=np.zeros(3)), r"b must have shape \(4,\).*b\.shape=\(3,\)"),
        (
            lambda: ops.conv2d(X, np.zeros((6, 3, 2, 4))),
            r"kernel w\.shape\[:2\]=\(6, 3\).*\(5, 5\)",
        ),
        (lambda: ops.conv2d(X, W, stride=0), r"stride=0 is not allowed: expected ints.*x\.shape="),
        (lambda: ops.conv2d(X, W, stride=(1, -2)), r"stride.*\(1, -2\)"),
        (lambda: ops.conv2d(X, W, stride=True), r"stride.*True"),
        (lambda: ops.conv2d(X, W, padding="full"), r"padding.*'full'.*x\.shape="),
        (lambda: ops.conv2d(X, W, padding=-1), r"padding.*-1"),
        (lambda: ops.conv2d(X, W, padding=1.5), r"padding.*1\.5"),
        (lambda: ops.conv2d(X.astype(bool), W), r"x must hold real numbers.*bool"),
        (
            lambda: ops.conv2d_backward(np.zeros((1, 2, 2, 4)), X, W),
            r"dy must have the forward output's shape \(1, 3, 3, 4\).*dy\.shape=\(1, 2, 2, 4\)",
        ),
        (lambda: ops.max_pool2d(np.zeros((5, 5))), r"x must be 4-D.*x\.shape=\(5, 5\)"),
        (lambda: ops.max_pool2d(X, pool_size=0), r"pool_size=0 is not allowed: expected ints >= 1"),
        (lambda: ops.max_pool2d(X, pool_size=6), r"pool_size=\(6, 6\) is larger.*\(5, 5\)"),
        (lambda: ops.max_pool2d(X, 2, stride=0), r"stride=0 is not allowed: expected ints >= 1"),
        (lambda: ops.max_pool2d(X, 2, padding="full"), r"padding.*'full'"),
        (lambda: ops.max_pool2d(X, 2, padding=(1, 2)), r"padding=\(1, 2\).*pool_size=\(2, 2\)"),
        (
            lambda: ops.max_pool2d_backward(np.zeros((1, 3, 3, 2)), X, 2),
            r"dy must have the forward output's shape \(1, 2, 2, 2\)",
        ),
        (lambda: ops.pad2d(X, "same"), r"padding='same'.*resolve_padding"),
        (lambda: ops.pad2d(X[0], 1), r"x must be 4-D"),
        (lambda: ops.resolve_padding("full", X.shape, 3, 1), r"padding='full'"),
        (lambda: ops.resolve_padding((1, 2, 3), X.shape, 3, 1), r"padding=\(1, 2, 3\)"),
        (lambda: ops.resolve_padding("same", (5, 5, 2), 3, 1), r"x_shape.*\(5, 5, 2\)"),
        (lambda: ops.conv_output_shape((5, 5), 3, 0), r"stride=0 is not allowed"),
        (lambda: ops.relu_backward(np.zeros(3), np.zeros(4)), r"dy.*shape.*\(3,\).*\(4,\)"),
        (lambda: ops.softmax_backward(np.zeros((2, 3)), np.zeros((3, 2))), r"dy\.shape=\(2, 3\)"),
    ],
)
def test_bad_input_raises_value_error_naming_it(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_nan_propagates_through_the_ops_like_tensorflow():
    """The ops check arguments, not values (the model checks its data once, where it enters):
    a NaN reaches exactly the outputs whose window holds it, as in TensorFlow."""
    x = np.zeros((1, 5, 5, 2))
    x[0, 0, 0, 0] = np.nan
    y = ops.conv2d(x, np.ones((3, 3, 2, 4)))
    assert np.isnan(y[0, 0, 0]).all() and np.isfinite(y[0, 1:, 1:]).all()
    p = ops.max_pool2d(x, 2)
    assert np.isnan(p[0, 0, 0, 0]) and np.isfinite(p[0, 1:]).all()


# --------------------------------------------------------------------------------------------
# activations: stability
# --------------------------------------------------------------------------------------------


def test_sigmoid_tanh_softmax_are_stable_for_large_inputs():
    x = np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]])
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        s = ops.sigmoid(x)
        t = ops.tanh(x)
        p = ops.softmax(x)
        s32 = ops.sigmoid(x.astype(np.float32))
    np.testing.assert_allclose(s[0], [0, 1 / (1 + np.exp(50)), 0.5, 1 / (1 + np.exp(-50)), 1])
    np.testing.assert_array_equal(t[0, [0, 4]], [-1, 1])
    np.testing.assert_allclose(p.sum(), 1.0)
    assert p[0, 4] == 1.0 and s32.dtype == np.float32 and np.all(np.isfinite(s32))
    # softmax is shift-invariant: exactly what the max subtraction relies on.
    z = np.random.default_rng(0).standard_normal((3, 4))
    np.testing.assert_allclose(ops.softmax(z + 500.0), ops.softmax(z), rtol=1e-12)
    np.testing.assert_allclose(ops.softmax(z), np.exp(z) / np.exp(z).sum(-1, keepdims=True))

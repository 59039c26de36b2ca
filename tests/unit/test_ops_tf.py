"""TensorFlow is the reference: every engine op against tf.nn, forward and through GradientTape.

Compared in float64 (tight tolerance, so any convention slip shows), plus a float32 pass at the
precision training runs in.  Max-pool inputs are small integers so that windows tie often and
the first-max gradient rule is checked against TensorFlow's own.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from convscope.scratch import ops

pytestmark = pytest.mark.tf

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

N_CONFIGS = 20


def _tf_padding(padding, pads):
    """The engine's padding spelled for tf.nn.conv2d (explicit pads as a 4x2 list)."""
    if isinstance(padding, str):
        return padding.upper()
    return [[0, 0], list(pads[0]), list(pads[1]), [0, 0]]


def conv_config(seed: int):
    rng = np.random.default_rng(seed)
    while True:
        n, h, w, c, f = (int(v) for v in rng.integers(1, [3, 12, 12, 4, 5]))
        kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
        # every other config is 'same' with stride 2 (TF's asymmetric padding)
        if seed % 2 == 0:
            stride, padding = (2, 2), "same"
        else:
            stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
            padding = ["valid", "same", ((0, 1), (2, 1))][seed % 3]
        try:
            ops.conv_output_shape((h, w), (kh, kw), stride, padding)
        except ValueError:
            continue
        x = rng.standard_normal((n, h, w, c))
        k = rng.standard_normal((kh, kw, c, f))
        b = rng.standard_normal(f)
        return x, k, b, stride, padding


def _conv_tf(x, w, b, stride, padding):
    pads = ops.resolve_padding(padding, tuple(x.shape), tuple(w.shape[:2]), stride)
    y = tf.nn.conv2d(x, w, strides=[1, *stride, 1], padding=_tf_padding(padding, pads))
    return tf.nn.bias_add(y, b)


@pytest.mark.parametrize("seed", range(N_CONFIGS))
def test_conv2d_forward_and_backward_match_tensorflow(seed):
    x, w, b, stride, padding = conv_config(seed)
    y = ops.conv2d(x, w, b, stride, padding)
    r = np.random.default_rng(seed + 99).standard_normal(y.shape)
    tx, tw, tb = (tf.Variable(a) for a in (x, w, b))
    with tf.GradientTape() as tape:
        ty = _conv_tf(tx, tw, tb, stride, padding)
        loss = tf.reduce_sum(ty * r)
    gx, gw, gb = tape.gradient(loss, [tx, tw, tb])
    np.testing.assert_allclose(y, ty.numpy(), rtol=1e-10, atol=1e-10)
    dx, dw, db = ops.conv2d_backward(r, x, w, stride, padding)
    np.testing.assert_allclose(dx, gx.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dw, gw.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, gb.numpy(), rtol=1e-10, atol=1e-10)


def test_conv2d_float32_mnist_shapes_match_tensorflow():
    rng = np.random.default_rng(0)
    x = rng.random((8, 28, 28, 1), dtype=np.float32)
    w = (rng.standard_normal((3, 3, 1, 16)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(16) * 0.1).astype(np.float32)
    r = rng.standard_normal((8, 26, 26, 16)).astype(np.float32)
    y = ops.conv2d(x, w, b)
    tx, tw, tb = (tf.Variable(a) for a in (x, w, b))
    with tf.GradientTape() as tape:
        ty = _conv_tf(tx, tw, tb, (1, 1), "valid")
        loss = tf.reduce_sum(ty * r)
    gx, gw, gb = tape.gradient(loss, [tx, tw, tb])
    dx, dw, db = ops.conv2d_backward(r, x, w)
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == np.float32
    np.testing.assert_allclose(y, ty.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, gx.numpy(), rtol=1e-5, atol=1e-5)
    # dw and db sum 8*26*26 products: compare relative to their scale.
    for a, e in ((dw, gw.numpy()), (db, gb.numpy())):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * np.abs(e).max())


def pool_config(seed: int):
    rng = np.random.default_rng(seed + 500)
    while True:
        n, h, w, c = (int(v) for v in rng.integers(1, [3, 12, 12, 4]))
        pool = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        if seed % 2 == 0:
            stride, padding = (2, 2), "same"
        else:
            stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
            padding = ["valid", "same"][seed % 4 // 2]
        try:
            ops.conv_output_shape((h, w), pool, stride, padding)
        except ValueError:
            continue
        x = rng.integers(-2, 3, size=(n, h, w, c)).astype(np.float64)  # many ties
        return x, pool, stride, padding


@pytest.mark.parametrize("seed", range(N_CONFIGS))
def test_max_pool2d_forward_and_backward_match_tensorflow(seed):
    x, pool, stride, padding = pool_config(seed)
    y = ops.max_pool2d(x, pool, stride, padding)
    r = np.random.default_rng(seed).standard_normal(y.shape)
    tx = tf.Variable(x)
    with tf.GradientTape() as tape:
        ty = tf.nn.max_pool2d(tx, pool, stride, padding.upper())
        loss = tf.reduce_sum(ty * r)
    np.testing.assert_array_equal(y, ty.numpy())
    dx = ops.max_pool2d_backward(r, x, pool, stride, padding)
    np.testing.assert_allclose(dx, tape.gradient(loss, tx).numpy(), rtol=1e-12, atol=1e-12)


def test_max_pool2d_float32_ties_match_tensorflow():
    x = np.zeros((2, 6, 6, 3), np.float32)
    x[:, ::3, 1::2] = 1.0  # ties at zero and at one in various window positions
    r = np.random.default_rng(1).standard_normal((2, 3, 3, 3)).astype(np.float32)
    tx = tf.Variable(x)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.nn.max_pool2d(tx, 2, 2, "VALID") * r)
    dx = ops.max_pool2d_backward(r, x)
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx, tape.gradient(loss, tx).numpy())


ACTIVATIONS = [
    ("relu", ops.relu, ops.relu_backward, tf.nn.relu, False),
    ("sigmoid", ops.sigmoid, ops.sigmoid_backward, tf.nn.sigmoid, True),
    ("tanh", ops.tanh, ops.tanh_backward, tf.nn.tanh, True),
]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("name, fwd, bwd, tf_fn, from_output", ACTIVATIONS, ids=lambda v: v)
def test_activations_match_tensorflow(name, fwd, bwd, tf_fn, from_output, dtype, tol):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4, 5, 6)) * 4).astype(dtype)
    x[0, 0, :3] = [0.0, 40.0, -40.0]  # relu's kink, saturated sigmoid/tanh
    r = rng.standard_normal(x.shape).astype(dtype)
    tx = tf.Variable(x)
    with tf.GradientTape() as tape:
        ty = tf_fn(tx)
        loss = tf.reduce_sum(ty * r)
    y = fwd(x)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ty.numpy(), rtol=tol, atol=tol)
    g = bwd(r, y if from_output else x)
    np.testing.assert_allclose(g, tape.gradient(loss, tx).numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_softmax_matches_tensorflow(axis, dtype, tol):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 7, 5)) * 5).astype(dtype)
    x[0, 0, 0] = 80.0  # exp would overflow float32 without the max shift
    r = rng.standard_normal(x.shape).astype(dtype)
    tx = tf.Variable(x)
    with tf.GradientTape() as tape:
        ty = tf.nn.softmax(tx, axis=axis)
        loss = tf.reduce_sum(ty * r)
    y = ops.softmax(x, axis)
    np.testing.assert_allclose(y, ty.numpy(), rtol=tol, atol=tol)
    g = ops.softmax_backward(r, y, axis)
    np.testing.assert_allclose(g, tape.gradient(loss, tx).numpy(), rtol=tol, atol=tol)

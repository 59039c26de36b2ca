"""Engine layers: float64 finite-difference gradients, initialisation, shapes, configs, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from convscope.scratch import ops
from convscope.scratch.layers import (
    Activation,
    Conv2D,
    Dense,
    Flatten,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    layer_from_config,
    serialize_layer,
)
from tests.support.gradcheck import numeric_grad, rel_error

TOL = 1e-7


def check_layer_gradients(layer, x: np.ndarray, seed: int = 0) -> None:
    """Input and parameter gradients of sum(layer(x) * r) against central differences."""
    rng = np.random.default_rng(seed)
    layer.build(x.shape[1:], rng=rng, dtype=np.float64)
    for p in layer.params():  # non-zero biases so that their gradients are exercised fully
        p += rng.normal(scale=0.1, size=p.shape)
    y = layer.forward(x, training=True)
    r = rng.normal(size=y.shape)
    dx = layer.backward(r)
    grads = layer.grads()
    assert dx.shape == x.shape and dx.dtype == np.float64

    def f(_):
        return float(np.sum(layer.forward(x, training=False) * r))

    assert rel_error(dx, numeric_grad(f, x)) <= TOL
    assert len(grads) == len(layer.params()) == len(layer.param_names)
    for name, p, g in zip(layer.param_names, layer.params(), grads, strict=True):
        assert g.shape == p.shape
        err = rel_error(g, numeric_grad(f, p))
        assert err <= TOL, f"{layer.name}.{name}: relative error {err:.2e}"


def _x(shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"filters": 4, "kernel_size": 3}, (2, 5, 6, 3)),
        ({"filters": 3, "kernel_size": 3, "activation": "relu"}, (2, 6, 5, 2)),
        ({"filters": 2, "kernel_size": 2, "stride": 2, "padding": "same"}, (2, 5, 5, 3)),
        (
            {"filters": 3, "kernel_size": (3, 2), "padding": "same", "activation": "tanh"},
            (1, 4, 5, 2),
        ),
        ({"filters": 2, "kernel_size": 3, "padding": 1, "activation": "sigmoid"}, (2, 4, 4, 1)),
        ({"filters": 3, "kernel_size": 1, "activation": "softmax"}, (2, 3, 3, 2)),
        ({"filters": 2, "kernel_size": 3, "stride": (2, 1), "use_bias": False}, (2, 6, 5, 2)),
    ],
)
def test_conv2d_gradients(kwargs, shape):
    layer = Conv2D(**kwargs)
    check_layer_gradients(layer, _x(shape))
    assert len(layer.params()) == (2 if layer.use_bias else 1)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh", "softmax"])
def test_dense_gradients(activation):
    check_layer_gradients(Dense(4, activation=activation), _x((3, 5)))


def test_dense_on_a_feature_axis_like_keras():
    # Keras's Dense acts on the last axis of any input; so does the engine's.
    layer = Dense(2, activation="tanh")
    check_layer_gradients(layer, _x((2, 3, 4)))
    assert layer.output.shape == (2, 3, 2)


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({}, (2, 4, 6, 3)),
        ({"pool_size": 2, "stride": 1}, (2, 5, 5, 2)),
        ({"pool_size": 3, "stride": 2, "padding": "same"}, (1, 5, 6, 2)),
        ({"pool_size": (2, 3)}, (2, 4, 6, 1)),
    ],
)
def test_maxpool_gradients(kwargs, shape):
    check_layer_gradients(MaxPool2D(**kwargs), _x(shape))


@pytest.mark.parametrize("layer_cls", [ReLU, Sigmoid, Tanh, Softmax, Flatten])
def test_parameter_free_layer_gradients(layer_cls):
    check_layer_gradients(layer_cls(), _x((2, 3, 3, 4)))


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "softmax", "linear"])
def test_activation_layer_matches_ops(activation):
    x = _x((2, 3, 4))
    layer = Activation(activation)
    expected = {
        "relu": np.maximum(x, 0),
        "sigmoid": 1 / (1 + np.exp(-x)),
        "tanh": np.tanh(x),
        "softmax": np.exp(x) / np.exp(x).sum(-1, keepdims=True),
        "linear": x,
    }[activation]
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12)
    check_layer_gradients(Activation(activation), x)


def test_conv2d_forward_is_ops_conv_plus_activation():
    x = _x((2, 6, 6, 3)).astype(np.float32)
    layer = Conv2D(5, 3, stride=2, padding="same", activation="relu")
    y = layer.forward(x)
    z = ops.conv2d(x, layer.kernel, layer.bias, stride=2, padding="same")
    np.testing.assert_array_equal(layer.preactivation, z)
    np.testing.assert_array_equal(y, np.maximum(z, 0))
    assert y.dtype == np.float32 and layer.kernel.dtype == np.float32
    assert layer.output is y
    assert layer.output_shape == y.shape[1:] == (3, 3, 5)


def test_flatten_is_channels_last():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    y = Flatten().forward(x)
    assert y.shape == (2, 60)
    # element (h, w, c) of sample 1 lands at (h * W + w) * C + c, Keras's channels-last order
    assert y[1, (2 * 4 + 3) * 5 + 4] == x[1, 2, 3, 4]


def test_glorot_uniform_range_and_bias():
    layer = Conv2D(32, 3)
    layer.build((10, 10, 16), rng=np.random.default_rng(5))
    fan_in, fan_out = 3 * 3 * 16, 3 * 3 * 32
    limit = math.sqrt(6 / (fan_in + fan_out))
    w = layer.kernel
    assert w.shape == (3, 3, 16, 32)
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.99 * limit  # 4608 draws fill the range
    assert abs(float(w.mean())) < 0.02 * limit
    assert float(w.std()) == pytest.approx(limit / math.sqrt(3), rel=0.05)  # U(-a, a) std
    np.testing.assert_array_equal(layer.bias, np.zeros(32))

    dense = Dense(10)
    dense.build((800,), rng=np.random.default_rng(5))
    dlimit = math.sqrt(6 / (800 + 10))
    assert dlimit * 0.99 < np.abs(dense.kernel).max() <= dlimit


def test_initialisation_is_seeded():
    def kernel(seed):
        layer = Conv2D(4, 3)
        layer.build((5, 5, 2), rng=np.random.default_rng(seed))
        return layer.kernel

    np.testing.assert_array_equal(kernel(3), kernel(3))
    assert not np.array_equal(kernel(3), kernel(4))


def test_need_dx_false_skips_input_gradient_but_keeps_weight_gradients():
    x = _x((2, 5, 5, 2))
    a, b = Conv2D(3, 3), Conv2D(3, 3)
    for layer in (a, b):
        layer.build(x.shape[1:], rng=np.random.default_rng(0), dtype=np.float64)
        layer.forward(x)
    dy = _x(a.output.shape, seed=2)
    assert a.backward(dy, need_dx=False) is None
    assert b.backward(dy).shape == x.shape
    for ga, gb in zip(a.grads(), b.grads(), strict=True):
        np.testing.assert_array_equal(ga, gb)


@pytest.mark.parametrize(
    "layer",
    [
        Conv2D(8, (3, 5), stride=2, padding="same", activation="tanh", use_bias=False, name="c"),
        Conv2D(4, 3, padding=2, input_channels=3),
        MaxPool2D(3, stride=1, padding="same"),
        MaxPool2D((2, 3), stride=(1, 2)),
        Dense(7, activation="softmax", input_dim=12),
        Flatten(name="flat"),
        ReLU(),
        Softmax(),
        Activation("sigmoid"),
    ],
    ids=repr,
)
def test_config_round_trip(layer):
    import json

    spec = json.loads(json.dumps(serialize_layer(layer)))  # survives JSON
    clone = layer_from_config(spec)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()


def test_unknown_layer_spec_is_rejected():
    with pytest.raises(ValueError, match="BatchNorm"):
        layer_from_config({"class_name": "BatchNorm", "config": {}})
    with pytest.raises(ValueError, match="bad config"):
        layer_from_config({"class_name": "Dense", "config": {"units": 3, "bogus": 1}})


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Conv2D(0, 3), "filters"),
        (lambda: Conv2D(4, 0), "kernel_size"),
        (lambda: Conv2D(4, 3, stride=0), "stride"),
        (lambda: Conv2D(4, 3, padding="full"), "padding"),
        (lambda: Conv2D(4, 3, activation="gelu"), "activation"),
        (lambda: Dense(-1), "units"),
        (lambda: MaxPool2D(0), "pool_size"),
        (lambda: MaxPool2D(2, padding=1), "padding"),
        (lambda: Activation("swish"), "activation"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_channel_mismatch_names_the_shapes():
    layer = Conv2D(4, 3)
    layer.build((6, 6, 3))
    with pytest.raises(ValueError, match=r"2 channels.*\(1, 6, 6, 2\).*\(3, 3, 3, 4\)"):
        layer.forward(np.zeros((1, 6, 6, 2)))
    with pytest.raises(ValueError, match="input_channels=3"):
        Conv2D(4, 3, input_channels=3).build((6, 6, 1))


def test_kernel_larger_than_input_fails_at_build():
    with pytest.raises(ValueError, match="larger than the padded input"):
        Conv2D(2, 5).build((3, 3, 1))
    with pytest.raises(ValueError, match="larger than the padded input"):
        MaxPool2D(4).build((3, 3, 1))


def test_wrong_rank_and_missing_flatten():
    with pytest.raises(ValueError, match="rank 4"):
        Conv2D(2, 3).forward(np.zeros((5, 5, 1)))
    dense = Dense(3)
    dense.build((4,))
    with pytest.raises(ValueError, match="Flatten"):
        dense.forward(np.zeros((2, 2, 2, 1)))


def test_backward_needs_a_training_forward():
    layer = Dense(2)
    with pytest.raises(RuntimeError, match="not built"):
        layer.params()
    layer.build((3,))
    with pytest.raises(RuntimeError, match="no gradients"):
        layer.grads()
    layer.forward(np.ones((1, 3)), training=False)
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.ones((1, 2)))
    layer.forward(np.ones((1, 3)))
    with pytest.raises(ValueError, match="shape"):
        layer.backward(np.ones((2, 2)))


def test_set_weights_checks_shapes_and_copies():
    layer = Dense(2)
    layer.build((3,))
    kernel = np.arange(6.0).reshape(3, 2)
    layer.set_weights([kernel, np.ones(2)])
    kernel[0, 0] = 100.0  # the layer holds a copy
    np.testing.assert_array_equal(layer.kernel, np.arange(6.0).reshape(3, 2))
    with pytest.raises(ValueError, match=r"kernel must have shape \(3, 2\)"):
        layer.set_weights([np.zeros((2, 3)), np.zeros(2)])
    with pytest.raises(ValueError, match="2 weight arrays"):
        layer.set_weights([np.zeros((3, 2))])


# --------------------------------------------------------------------------- arrays, replicas
@pytest.mark.parametrize(
    "make",
    [
        lambda: Conv2D(3, 3, padding="same", activation="relu"),
        lambda: MaxPool2D(2, padding="same"),
        lambda: Dense(4, activation="relu"),
    ],
)
def test_training_steps_reuse_their_arrays_and_inference_returns_new_ones(make):
    rng = np.random.default_rng(0)
    shape = (2, 5, 5, 3) if not isinstance(make(), Dense) else (2, 6)
    x1, x2 = rng.normal(size=shape), rng.normal(size=shape)
    layer = make()
    layer.build(shape[1:], rng=rng, dtype=np.float64)
    a = layer.forward(x1, training=False)
    kept = a.copy()
    b = layer.forward(x2, training=False)
    np.testing.assert_array_equal(a, kept)  # a caller may keep inference outputs
    assert not np.shares_memory(a, b)
    t1 = layer.forward(x1, training=True)
    dx1_view = layer.backward(np.ones_like(t1))
    dx1 = dx1_view.copy()
    grads1 = [g.copy() for g in layer.grads()]
    t2 = layer.forward(x2, training=True)
    assert np.shares_memory(t1, t2)  # the next training step overwrites the last one's
    np.testing.assert_array_equal(t2, b)
    dx2 = layer.backward(np.ones_like(t2))
    assert np.shares_memory(dx1_view, dx2)
    # the same step again gives the same numbers: nothing stale is read from reused arrays
    layer.forward(x1, training=True)
    np.testing.assert_array_equal(layer.backward(np.ones_like(t1)), dx1)
    for g, h in zip(layer.grads(), grads1, strict=True):
        np.testing.assert_array_equal(g, h)


def test_a_replica_shares_the_weights_and_nothing_else():
    rng = np.random.default_rng(1)
    layer = Conv2D(2, 3, activation="relu")
    layer.build((6, 6, 1), rng=rng, dtype=np.float64)
    twin = layer.replica()
    assert twin.kernel is layer.kernel and twin.bias is layer.bias
    x1, x2 = rng.normal(size=(2, 6, 6, 1)), rng.normal(size=(3, 6, 6, 1))
    y1 = layer.forward(x1).copy()
    layer.backward(np.ones_like(y1))
    g1 = [g.copy() for g in layer.grads()]
    twin.forward(x2)
    twin.backward(np.ones((3, 4, 4, 2)))
    np.testing.assert_array_equal(layer.output, y1)
    for g, h in zip(layer.grads(), g1, strict=True):
        np.testing.assert_array_equal(g, h)
    layer.kernel += 1.0  # updated in place, as optimizers do: the twin computes with it
    np.testing.assert_array_equal(twin.forward(x1, training=False), layer.forward(x1, False))


def test_relu_into_out_and_its_gradient():
    x = np.array([[-1.5, 0.0, 2.0], [3.0, -0.0, -2.0]], dtype=np.float32)
    out = np.empty_like(x)
    assert ops.relu(x, out=out) is out
    np.testing.assert_array_equal(out, [[0, 0, 2], [3, 0, 0]])
    assert ops.relu(x[:, ::2]).tolist() == [[0, 2], [3, 0]]  # strided input
    dy = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    np.testing.assert_array_equal(ops.relu_backward(dy, x), [[0, 0, 3], [4, 0, 0]])
    assert ops.relu_backward(dy, x, out=out) is out
    np.testing.assert_array_equal(out, [[0, 0, 3], [4, 0, 0]])
    assert ops.relu(np.array([-2, 5])).tolist() == [0, 5]  # integers stay integers

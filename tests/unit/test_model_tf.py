"""TensorFlow/Keras as the reference for the engine's losses, optimizers and weight order."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from convscope.scratch import (  # noqa: E402
    SGD,
    Adam,
    Conv2D,
    Dense,
    Flatten,
    MaxPool2D,
    Sequential,
)
from convscope.scratch import losses as L  # noqa: E402
from tests.support.models import pooled_cnn  # noqa: E402

pytestmark = pytest.mark.tf


def _tf_loss_and_grad(loss_obj, y_true, y_pred):
    """Keras loss value and its gradient w.r.t. y_pred, on a plain tensor (no hidden logits)."""
    pred = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        value = loss_obj(tf.constant(y_true), pred)
    return float(value), tape.gradient(value, pred).numpy()


# --------------------------------------------------------------------------- losses
@pytest.mark.parametrize("from_logits", [False, True])
def test_binary_crossentropy_matches_keras(from_logits):
    rng = np.random.default_rng(0)
    if from_logits:
        y_pred = np.concatenate([rng.normal(scale=3, size=(6, 2)), [[80.0, -80.0], [0.0, 1e3]]])
    else:  # includes saturated probabilities that the clip must handle
        y_pred = np.concatenate([rng.uniform(size=(6, 2)), [[0.0, 1.0], [1e-9, 1 - 1e-9]]])
    y_pred = y_pred.astype(np.float32)
    t = rng.integers(0, 2, size=y_pred.shape).astype(np.float32)
    ref_value, ref_grad = _tf_loss_and_grad(
        keras.losses.BinaryCrossentropy(from_logits=from_logits), t, y_pred
    )
    value, grad = L.binary_crossentropy(t, y_pred, from_logits=from_logits)
    assert value == pytest.approx(ref_value, rel=1e-6)
    assert grad.dtype == np.float32
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("from_logits", [False, True])
def test_sparse_categorical_crossentropy_matches_keras(from_logits):
    rng = np.random.default_rng(1)
    if from_logits:
        y_pred = rng.normal(scale=3, size=(8, 5))
        y_pred[0] = [1e3, -1e3, 0, 5, 2]  # extreme but finite logits
    else:
        y_pred = rng.dirichlet(np.ones(5), size=8)
        y_pred[0] = [1.0, 0.0, 0.0, 0.0, 0.0]  # saturated
    y_pred = y_pred.astype(np.float32)
    y = rng.integers(0, 5, size=8)
    y[0] = 1
    ref_value, ref_grad = _tf_loss_and_grad(
        keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits), y, y_pred
    )
    value, grad = L.sparse_categorical_crossentropy(y, y_pred, from_logits=from_logits)
    assert np.isfinite(value)
    assert value == pytest.approx(ref_value, rel=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)


def test_accuracies_match_keras_metrics():
    rng = np.random.default_rng(2)
    p = rng.uniform(size=(20, 1)).astype(np.float32)
    t = rng.integers(0, 2, size=(20, 1)).astype(np.float32)
    ref = float(np.mean(keras.metrics.binary_accuracy(t, p)))
    assert L.binary_accuracy(t, p) == pytest.approx(ref)
    probs = rng.dirichlet(np.ones(4), size=20).astype(np.float32)
    y = rng.integers(0, 4, size=20)
    ref = float(np.mean(keras.metrics.sparse_categorical_accuracy(y, probs)))
    assert L.sparse_categorical_accuracy(y, probs) == pytest.approx(ref)


# --------------------------------------------------------------------------- optimizers
def _variables_and_grads(seed=0, steps=5):
    rng = np.random.default_rng(seed)
    shapes = [(3, 3, 2, 4), (4,), (7, 3)]
    params = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(steps)]
    if steps > 1:
        grads[1][1][:] = 0.0  # a zero-gradient step: m and v only decay
    return params, grads


def _compare_with_keras(ours, theirs, steps):
    params, grads = _variables_and_grads(steps=steps)
    tf_vars = [tf.Variable(p) for p in params]
    mine = [p.copy() for p in params]
    for gs in grads:
        theirs.apply_gradients(zip([tf.constant(g) for g in gs], tf_vars, strict=True))
        ours.step(mine, gs)
        for a, v in zip(mine, tf_vars, strict=True):
            np.testing.assert_allclose(a, v.numpy(), rtol=1e-6, atol=1e-6)
    assert ours.iterations == int(theirs.iterations.numpy()) == steps


@pytest.mark.parametrize("steps", [1, 6])
@pytest.mark.parametrize(
    "kwargs", [{}, {"learning_rate": 0.05, "beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-4}]
)
def test_adam_matches_keras(steps, kwargs):
    _compare_with_keras(Adam(**kwargs), keras.optimizers.Adam(**kwargs), steps)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": 0.1},
        {"learning_rate": 0.05, "momentum": 0.9},
        {"learning_rate": 0.05, "momentum": 0.8, "nesterov": True},
    ],
)
def test_sgd_matches_keras(kwargs):
    _compare_with_keras(SGD(**kwargs), keras.optimizers.SGD(**kwargs), steps=4)


def test_default_hyperparameters_are_keras_defaults():
    for ours, theirs in ((Adam(), keras.optimizers.Adam()), (SGD(), keras.optimizers.SGD())):
        config = theirs.get_config()
        for key, value in ours.get_config().items():
            if key != "name":
                assert value == pytest.approx(config[key]), key


# --------------------------------------------------------------------------- whole model
def test_weight_order_forward_and_gradients_match_keras():
    """Engine params() map 1:1 onto a hand-built Keras model's weights; outputs and loss
    gradients (through the logits route the engine trains with) then agree."""
    engine = Sequential(
        [
            Conv2D(3, 3, activation="relu"),
            MaxPool2D(2),
            Conv2D(2, 2, stride=2, padding="same", activation="tanh"),
            Flatten(),
            Dense(4, activation="softmax"),
        ],
        input_shape=(9, 8, 2),
        seed=4,
    )
    ref = keras.Sequential(
        [
            keras.Input((9, 8, 2)),
            keras.layers.Conv2D(3, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(2, 2, strides=2, padding="same", activation="tanh"),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    assert [tuple(w.shape) for w in ref.weights] == [p.shape for p in engine.params()]
    rng = np.random.default_rng(0)
    for p in engine.params():
        p += rng.normal(scale=0.1, size=p.shape).astype(np.float32)
    ref.set_weights(engine.get_weights())

    x = rng.normal(size=(3, 9, 8, 2)).astype(np.float32)
    y = np.array([1, 0, 3])
    out = engine.forward(x)
    np.testing.assert_allclose(out, ref(x).numpy(), rtol=1e-5, atol=1e-6)

    _, dz = L.sparse_categorical_crossentropy(y, engine.logits, from_logits=True)
    engine.backward_from_logits(dz)
    xt = tf.Variable(x)
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy()(y, ref(xt))
    ref_grads = tape.gradient(loss, [*ref.trainable_weights, xt])
    dx = engine.backward_from_logits(dz)
    for g, r in zip([*engine.grads(), dx], ref_grads, strict=True):
        r = r.numpy()
        assert np.linalg.norm(g - r) <= 1e-4 * np.linalg.norm(r)


@pytest.mark.parametrize("second", ["linear", "relu"])
def test_convs_pooled_in_one_pass_match_keras_layer_by_layer(second):
    """Max pools that tile their conv's output: the engine's training forward computes each
    pair as one, in the pool's window-major order. Every layer's output (the convs' made in
    NHWC only when read) and every gradient agree with Keras's."""
    engine = pooled_cnn(second, np.float32, seed=6)
    ref = keras.Sequential(
        [
            keras.Input((10, 10, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(3, 3, padding="same", activation=second),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    rng = np.random.default_rng(1)
    for p in engine.params():
        p += rng.normal(scale=0.1, size=p.shape).astype(np.float32)
    ref.set_weights(engine.get_weights())
    x = rng.normal(size=(5, 10, 10, 1)).astype(np.float32)
    y = np.array([1, 0, 3, 2, 2])

    engine.forward(x)
    assert engine.layers[1].tiled_by is engine.layers[0]
    assert engine.layers[3].tiled_by is engine.layers[2]
    xt = tf.Variable(x)
    with tf.GradientTape() as tape:
        h, outputs = xt, []
        for layer in ref.layers:
            h = layer(h)
            outputs.append(h.numpy())
        loss = keras.losses.SparseCategoricalCrossentropy()(y, h)
    ref_grads = tape.gradient(loss, [*ref.trainable_weights, xt])
    for layer, expected in zip(engine.layers, outputs, strict=True):
        np.testing.assert_allclose(layer.output, expected, rtol=1e-5, atol=1e-6, err_msg=layer.name)

    _, dz = L.sparse_categorical_crossentropy(y, engine.logits, from_logits=True)
    dx = engine.backward_from_logits(dz)
    for g, r in zip([*engine.grads(), dx], ref_grads, strict=True):
        r = r.numpy()
        assert np.linalg.norm(g - r) <= 1e-5 * np.linalg.norm(r)

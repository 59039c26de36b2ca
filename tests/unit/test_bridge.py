"""The Keras <-> engine bridge: what converts, how (names, configs, weights), and what refuses.

Numerical parity on random architectures is tests/test_parity.py; this file checks the
mechanics on hand-written models, and that the engine package still imports without TensorFlow.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import convscope.scratch as scratch  # noqa: E402
from convscope.scratch import (  # noqa: E402
    Activation,
    Conv2D,
    Dense,
    Flatten,
    MaxPool2D,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
    from_keras,
    to_keras,
)

pytestmark = pytest.mark.tf


def seed_like_model() -> keras.Sequential:
    model = keras.Sequential(
        [
            keras.Input((12, 11, 2)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(name="pool1"),
            keras.layers.Conv2D(3, (2, 3), strides=(1, 2), padding="same", name="conv2"),
            keras.layers.Activation("tanh", name="act"),
            keras.layers.Conv2D(2, 1, use_bias=False, activation="sigmoid", name="conv3"),
            keras.layers.MaxPooling2D(3, strides=1, padding="same", name="pool3"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(5, name="dense"),
            keras.layers.Softmax(name="softmax"),
        ],
        name="bridge_demo",
    )
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(scale=0.5, size=w.shape) for w in model.get_weights()])
    return model


def test_from_keras_maps_every_layer_with_its_settings_and_weights():
    model = seed_like_model()
    engine = from_keras(model)
    assert isinstance(engine, Sequential)
    assert engine.name == "bridge_demo"
    assert engine.input_shape == (12, 11, 2)
    assert engine.dtype == np.float32
    assert [la.name for la in engine.layers] == [la.name for la in model.layers]
    kinds = [type(la) for la in engine.layers]
    assert kinds == [
        Conv2D,
        MaxPool2D,
        Conv2D,
        Activation,
        Conv2D,
        MaxPool2D,
        ReLU,
        Flatten,
        Dense,
        Softmax,
    ]
    conv1, pool1, conv2, act, conv3, pool3 = engine.layers[:6]
    assert (conv1.filters, conv1.kernel_size, conv1.activation) == (4, (3, 3), "relu")
    assert (pool1.pool_size, pool1.stride, pool1.padding) == ((2, 2), (2, 2), "valid")
    assert (conv2.kernel_size, conv2.stride, conv2.padding) == ((2, 3), (1, 2), "same")
    assert conv2.activation == "linear" and act.activation == "tanh"
    assert conv3.use_bias is False and conv3.param_names == ("kernel",)
    assert (pool3.pool_size, pool3.stride, pool3.padding) == ((3, 3), (1, 1), "same")
    assert engine.output_shape == tuple(model.output_shape[1:])
    assert engine.param_names() == ["/".join(w.path.split("/")[-2:]) for w in model.weights]
    for ours, theirs in zip(engine.params(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    x = np.random.default_rng(1).uniform(size=(4, 12, 11, 2)).astype(np.float32)
    np.testing.assert_allclose(engine.predict(x), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_from_keras_copies_the_weights():
    model = seed_like_model()
    engine = from_keras(model)
    engine.layers[0].kernel[...] = 0.0
    assert np.any(model.layers[0].kernel.numpy() != 0)


def test_functional_chain_converts_and_its_input_layer_is_skipped():
    inputs = keras.Input((6, 6, 1), name="image")
    h = keras.layers.Conv2D(2, 3, activation="relu", name="c")(inputs)
    h = keras.layers.Flatten(name="f")(h)
    outputs = keras.layers.Dense(3, activation="softmax", name="d")(h)
    model = keras.Model(inputs, outputs, name="functional")
    engine = from_keras(model)
    assert [la.name for la in engine.layers] == ["c", "f", "d"]
    x = np.random.default_rng(2).uniform(size=(2, 6, 6, 1)).astype(np.float32)
    np.testing.assert_allclose(engine.predict(x), model(x).numpy(), rtol=1e-5, atol=1e-7)


def test_float64_models_stay_float64_both_ways():
    model = keras.Sequential(
        [
            keras.Input((5, 5, 1), dtype="float64"),
            keras.layers.Conv2D(2, 2, name="c", dtype="float64"),
            keras.layers.Flatten(name="f", dtype="float64"),
            keras.layers.Dense(2, name="d", dtype="float64"),
        ]
    )
    engine = from_keras(model)
    assert engine.dtype == np.float64
    assert all(p.dtype == np.float64 for p in engine.params())
    back = to_keras(engine)
    assert {w.dtype for w in back.weights} == {"float64"}


def test_to_keras_builds_an_input_first_sequential_with_the_same_names_and_weights():
    engine = Sequential(
        [
            Conv2D(3, 3, padding="same", activation="tanh", name="conv1"),
            MaxPool2D(2, stride=1, name="pool1"),
            Conv2D(2, (3, 2), stride=2, use_bias=False, name="conv2"),
            Sigmoid(name="sig"),
            Tanh(name="tanh"),
            ReLU(name="relu"),
            Flatten(name="flatten"),
            Dense(4, activation="relu", name="hidden"),
            Dense(3, name="out"),
            Softmax(name="probs"),
        ],
        input_shape=(9, 8, 2),
        seed=3,
        name="from_engine",
    )
    model = to_keras(engine)
    assert isinstance(model, keras.Sequential)
    assert model.name == "from_engine"
    assert tuple(model.inputs[0].shape) == (None, 9, 8, 2)
    assert [la.name for la in model.layers] == [la.name for la in engine.layers]
    conv2 = model.get_layer("conv2")
    assert conv2.strides == (2, 2) and conv2.kernel_size == (3, 2) and not conv2.use_bias
    assert model.get_layer("pool1").strides == (1, 1)
    for ours, theirs in zip(engine.params(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    x = np.random.default_rng(4).normal(size=(3, 9, 8, 2)).astype(np.float32)
    np.testing.assert_allclose(model(x).numpy(), engine.predict(x), rtol=1e-5, atol=1e-6)
    # and back: the same engine layers, the same weights, the same outputs bit for bit
    again = from_keras(model)
    assert [la.get_config() for la in again.layers if not isinstance(la, Activation)] == [
        la.get_config() for la in engine.layers if not isinstance(la, Activation)
    ]
    np.testing.assert_array_equal(again.predict(x), engine.predict(x))


def test_to_keras_refuses_what_keras_conv2d_cannot_express():
    engine = Sequential([Conv2D(2, 3, padding=1, name="padded"), Flatten()], input_shape=(5, 5, 1))
    with pytest.raises(ValueError, match="'padded'.*padding=1"):
        to_keras(engine)
    with pytest.raises(ValueError, match="not built"):
        to_keras(Sequential([Flatten()]))
    with pytest.raises(ValueError, match="engine_model must be"):
        to_keras(seed_like_model())


def _with(layer, shape=(8, 8, 4)) -> keras.Sequential:
    return keras.Sequential([keras.Input(shape), layer, keras.layers.Flatten(name="flat")])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: _with(keras.layers.Dropout(0.5, name="drop")), "'drop' \\(Dropout\\)"),
        (lambda: _with(keras.layers.BatchNormalization(name="bn")), "'bn' \\(BatchNorm"),
        (lambda: _with(keras.layers.AveragePooling2D(2, name="avg")), "'avg' \\(AveragePooling2D"),
        (
            lambda: _with(keras.layers.Conv2D(2, 3, dilation_rate=2, name="dil")),
            "'dil'.*dilation_rate",
        ),
        (lambda: _with(keras.layers.Conv2D(2, 3, groups=2, name="grp")), "'grp'.*groups=2"),
        (
            lambda: _with(keras.layers.Conv2D(2, 3, data_format="channels_first", name="cf")),
            "'cf'.*channels_first",
        ),
        (
            lambda: _with(keras.layers.MaxPooling2D(data_format="channels_first", name="pcf")),
            "'pcf'.*channels_first",
        ),
        (lambda: _with(keras.layers.Conv2D(2, 3, activation="elu", name="e")), "'e'.*'elu'"),
        (lambda: _with(keras.layers.Activation("gelu", name="g")), "'g'.*'gelu'"),
        (lambda: _with(keras.layers.ReLU(max_value=6.0, name="r6")), "'r6'.*max_value"),
        (lambda: _with(keras.layers.Softmax(axis=1, name="sm")), "'sm'.*axis=1"),
        (
            lambda: _with(keras.layers.Conv2D(2, 3, kernel_regularizer="l2", name="reg")),
            "'reg'.*kernel_regularizer",
        ),
        (
            lambda: _with(keras.layers.Dense(3, kernel_constraint="non_neg", name="nn")),
            "'nn'.*kernel_constraint",
        ),
    ],
)
def test_unsupported_layers_raise_naming_the_layer(make, message):
    with pytest.raises(ValueError, match=message):
        from_keras(make())


def test_branching_models_and_non_models_are_refused():
    inputs = keras.Input((4, 4, 1))
    a = keras.layers.Conv2D(1, 1, name="a")(inputs)
    b = keras.layers.Conv2D(1, 1, name="b")(inputs)
    model = keras.Model(inputs, keras.layers.Add(name="add")([a, b]))
    with pytest.raises(ValueError, match="not a plain chain|not supported"):
        from_keras(model)
    two = keras.Model(inputs, [a, b])
    with pytest.raises(ValueError, match="2 outputs"):
        from_keras(two)
    with pytest.raises(ValueError, match="keras.Model"):
        from_keras(Sequential([Flatten()]))


def test_package_resolves_the_bridge_lazily():
    assert scratch.from_keras is from_keras and scratch.to_keras is to_keras

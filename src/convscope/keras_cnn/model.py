"""The seed's Keras CNN, built from a :class:`~convscope.config.schema.CNNConfig`.

With the default config this is exactly the model of seed ``004``::

    Conv2D(16, 3, relu) -> MaxPooling2D() -> Conv2D(32, 3, relu) -> Flatten -> Dense(10, softmax)

compiled with Adam, sparse categorical cross-entropy and accuracy. Every knob the seed's
exercises turn (more conv layers, more filters, 5x5 kernels, sigmoid/tanh, another optimizer)
is a config field, so an exercise is a one-line override rather than an edited model.

Layers get predictable names (``conv1``, ``pool1``, ``conv2``, ..., ``flatten``, ``dense``;
``pool<i>`` always follows ``conv<i>``) so that kernels, feature maps, MLflow keys and the NumPy
bridge can refer to a layer by name rather than by a position that shifts when pooling moves.
The model starts from an explicit ``keras.Input`` so every intermediate output is a symbolic
tensor that :func:`activation_model` can expose.
"""

from __future__ import annotations

import keras
import numpy as np

from convscope.config.schema import CNNConfig
from convscope.validation import check_array

__all__ = ["build_model", "make_optimizer", "activation_model", "feature_maps", "conv_kernels"]


def make_optimizer(cfg: CNNConfig) -> keras.optimizers.Optimizer:
    """A fresh optimizer for ``cfg``: Adam(learning_rate) or SGD(learning_rate, momentum).

    Fresh each time because a Keras optimizer holds per-variable state and binds to the first
    model it trains.
    """
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=cfg.learning_rate, momentum=cfg.momentum)
    return keras.optimizers.Adam(learning_rate=cfg.learning_rate)


def build_model(cfg: CNNConfig) -> keras.Sequential:
    """Build and compile the conv stack that ``cfg`` describes.

    Layer ``i`` (1-based) is ``Conv2D(cfg.layer_filters[i-1], kernel_size, strides=stride,
    padding, activation)`` named ``conv<i>``, followed by ``MaxPooling2D(pool_size)`` named
    ``pool<i>`` where ``cfg.pools[i-1]`` is true; then ``flatten`` and ``dense``
    (``num_classes`` units, softmax). Weights are initialised from Keras's global seed, so call
    ``keras.utils.set_random_seed`` first for reproducible weights (:func:`~.train.train` does).
    """
    layers: list[keras.layers.Layer] = [keras.Input(shape=tuple(int(d) for d in cfg.input_shape))]
    for i, (filters, pool) in enumerate(zip(cfg.layer_filters, cfg.pools, strict=True), start=1):
        layers.append(
            keras.layers.Conv2D(
                filters,
                cfg.kernel_size,
                strides=cfg.stride,
                padding=cfg.padding,
                activation=cfg.activation,
                name=f"conv{i}",
            )
        )
        if pool:
            # strides=None means stride = pool size, as the seed's MaxPooling2D() does.
            layers.append(keras.layers.MaxPooling2D(pool_size=cfg.pool_size, name=f"pool{i}"))
    layers.append(keras.layers.Flatten(name="flatten"))
    layers.append(keras.layers.Dense(cfg.num_classes, activation="softmax", name="dense"))

    model = keras.Sequential(layers, name="convscope_cnn")
    model.compile(
        optimizer=make_optimizer(cfg),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _feature_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.MaxPooling2D)
    ]


def activation_model(model: keras.Model) -> keras.Model:
    """A model from ``model``'s input to the output of every conv and pool layer, in order.

    This generalises the seed's ``activation_model`` (which took the first two layers) to any
    depth: ``activation_model(m).predict(x)`` returns one NHWC array per conv/pool layer, in the
    order of ``[l.name for l in m.layers if conv or pool]``. It shares ``model``'s weights, so it
    reflects later training too.
    """
    feature = _feature_layers(model)
    if not feature:
        raise ValueError(f"model {model.name!r} has no Conv2D or MaxPooling2D layer to expose")
    if not model.inputs:
        raise ValueError(
            f"model {model.name!r} has no symbolic input; build it with an explicit keras.Input"
        )
    # A single-input model gets a bare tensor, not a one-element list, so calling it with an
    # array matches its input structure.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    outputs = [layer.output for layer in feature]
    return keras.Model(inputs=inputs, outputs=outputs, name=f"{model.name}_activations")


def feature_maps(model: keras.Model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every conv and pool layer's output for the batch ``x`` (NHWC), keyed by layer name."""
    x = check_array(x, "x", dtype=np.float32, shape=(None, *model.inputs[0].shape[1:]))
    outputs = activation_model(model)(x, training=False)
    if not isinstance(outputs, list | tuple):
        outputs = [outputs]
    names = [layer.name for layer in _feature_layers(model)]
    return {name: np.asarray(out) for name, out in zip(names, outputs, strict=True)}


def conv_kernels(model: keras.Model) -> dict[str, np.ndarray]:
    """Copies of every Conv2D kernel, HWIO (height, width, in channels, out channels), by name.

    Copies, not views of the variables, so a caller can keep them while training goes on.
    """
    return {
        layer.name: np.array(layer.kernel.numpy(), copy=True)
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D)
    }

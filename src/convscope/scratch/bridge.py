"""Move a network between Keras and the NumPy engine, weights included.

``from_keras(model)`` builds an engine :class:`~convscope.scratch.model.Sequential` that holds
a Keras model's weights; ``to_keras(engine_model)`` builds the Keras ``Sequential`` (with an
explicit ``keras.Input``) that holds an engine model's weights. Layer names survive both ways,
so a feature map or a kernel is found under the same name in either engine.

The engine follows Keras's conventions (NHWC, HWIO, TensorFlow's 'same', channels-last
Flatten, kernel-then-bias), so each supported layer (:data:`SUPPORTED_LAYERS`, plain ReLU,
Softmax over the last axis; ``InputLayer`` is skipped) maps to one engine layer with the same
arrays, nothing transposed. Anything else (Dropout, BatchNormalization, dilation, groups,
channels_first, other activations, regularisers or constraints) raises a ValueError naming
the layer and what the engine lacks, rather than converting into a model that silently
computes something else.

This is the only engine module that imports TensorFlow/Keras; ``convscope.scratch`` resolves
``from_keras``/``to_keras`` lazily so that importing the engine stays TensorFlow-free.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from convscope.scratch.layers import (
    Activation,
    Conv2D,
    Dense,
    Flatten,
    Layer,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from convscope.scratch.model import Sequential
from convscope.validation import standardize_tuple

__all__ = ["SUPPORTED_ACTIVATIONS", "SUPPORTED_LAYERS", "from_keras", "to_keras"]

#: activations both engines compute identically (Keras names)
SUPPORTED_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax")
#: Keras layer classes that ``from_keras`` converts (InputLayer is skipped)
SUPPORTED_LAYERS = ("Conv2D", "MaxPooling2D", "Flatten", "Dense", "Activation", "ReLU", "Softmax")


def _unsupported(layer: Any, what: str) -> ValueError:
    return ValueError(
        f"layer {layer.name!r} ({type(layer).__name__}): {what}; the NumPy engine supports "
        f"{', '.join(SUPPORTED_LAYERS)} with activations {', '.join(SUPPORTED_ACTIVATIONS)}"
    )


def _activation_name(layer: Any, config: dict[str, Any]) -> str:
    """The activation's Keras name, if it is one the engine has; else a ValueError."""
    act = config.get("activation", "linear")
    if act is None:
        return "linear"
    if not isinstance(act, str) or act not in SUPPORTED_ACTIVATIONS:
        raise _unsupported(layer, f"activation {act!r} is not supported")
    return act


def _check_plain(layer: Any, config: dict[str, Any]) -> None:
    """Reject the options that change what a layer computes or how it trains."""
    fmt = config.get("data_format", "channels_last")
    if fmt not in (None, "channels_last"):
        raise _unsupported(layer, f"data_format={fmt!r} (the engine is channels_last/NHWC only)")
    keys = "kernel_regularizer bias_regularizer activity_regularizer kernel_constraint"
    for key in (*keys.split(), "bias_constraint"):
        if config.get(key) is not None:
            raise _unsupported(layer, f"{key} is set (the engine has no {key.split('_')[1]}s)")
    if getattr(layer, "lora_enabled", False):
        raise _unsupported(layer, "LoRA is enabled")
    if getattr(layer, "quantization_mode", None) is not None:
        raise _unsupported(layer, f"quantization mode {layer.quantization_mode!r}")
    policy = getattr(layer, "dtype_policy", None)
    if policy is not None and policy.compute_dtype != policy.variable_dtype:
        raise _unsupported(
            layer,
            f"mixed precision (compute {policy.compute_dtype}, variables {policy.variable_dtype})",
        )


def _engine_layer(layer: Any) -> Layer | None:
    """One engine layer for one Keras layer (None for layers that compute nothing)."""
    kind = type(layer).__name__
    if isinstance(layer, keras.layers.InputLayer):
        return None
    if kind not in SUPPORTED_LAYERS or type(layer) is not getattr(keras.layers, kind):
        raise _unsupported(layer, f"{kind} layers are not supported")
    config = layer.get_config()
    _check_plain(layer, config)
    name = layer.name
    if type(layer) is keras.layers.Conv2D:
        if standardize_tuple(config["dilation_rate"], 2, "dilation_rate") != (1, 1):
            raise _unsupported(layer, f"dilation_rate={config['dilation_rate']} (only 1)")
        if config.get("groups", 1) != 1:
            raise _unsupported(layer, f"groups={config['groups']} (only 1)")
        if config["padding"] not in ("valid", "same"):
            raise _unsupported(layer, f"padding={config['padding']!r}")
        fused = {"activation": _activation_name(layer, config), "use_bias": config["use_bias"]}
        stride, padding = standardize_tuple(config["strides"], 2, "strides"), config["padding"]
        size = standardize_tuple(config["kernel_size"], 2, "kernel_size")
        return Conv2D(config["filters"], size, stride, padding, **fused, name=name)
    if type(layer) is keras.layers.MaxPooling2D:
        if config["padding"] not in ("valid", "same"):
            raise _unsupported(layer, f"padding={config['padding']!r}")
        pool = standardize_tuple(config["pool_size"], 2, "pool_size")
        strides = (
            pool
            if config["strides"] is None
            else standardize_tuple(config["strides"], 2, "strides")
        )
        return MaxPool2D(pool, stride=strides, padding=config["padding"], name=name)
    if type(layer) is keras.layers.Flatten:
        return Flatten(name=name)
    if type(layer) is keras.layers.Dense:
        fused = {"activation": _activation_name(layer, config), "use_bias": config["use_bias"]}
        return Dense(config["units"], **fused, name=name)
    if type(layer) is keras.layers.Activation:
        return Activation(_activation_name(layer, config), name=name)
    if type(layer) is keras.layers.ReLU:
        plain = {"max_value": None, "negative_slope": 0.0, "threshold": 0.0}
        changed = {k: config.get(k) for k, v in plain.items() if config.get(k) != v}
        if changed:
            raise _unsupported(layer, f"ReLU with {changed} (only the plain max(x, 0))")
        return ReLU(name=name)
    if type(layer) is keras.layers.Softmax:
        if config.get("axis", -1) != -1:
            raise _unsupported(layer, f"softmax over axis={config['axis']} (only the last, -1)")
        return Softmax(name=name)
    raise _unsupported(layer, f"{kind} layers are not supported")  # pragma: no cover


def _chain(model: Any) -> list[Any]:
    """The model's layers in order, after checking they form one chain input -> output."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a keras.Model, got {type(model).__name__}")
    layers = list(model.layers)
    if isinstance(model, keras.Sequential):
        return layers
    # A functional model converts when it is a plain chain: one input, one output, and each
    # layer consuming exactly the previous layer's output (no branches, no shared layers).
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} "
            "outputs; the engine converts single-input, single-output chains only"
        )
    compute = [la for la in layers if not isinstance(la, keras.layers.InputLayer)]
    previous = model.inputs[0]
    for layer in compute:
        if len(layer._inbound_nodes) != 1 or layer.input is not previous:
            raise ValueError(
                f"layer {layer.name!r} ({type(layer).__name__}) does not take the previous "
                f"layer's output alone; model {model.name!r} is not a plain chain of layers"
            )
        previous = layer.output
    if compute and previous is not model.outputs[0]:
        raise ValueError(f"model {model.name!r}: the last layer's output is not the model output")
    return layers


def _input_shape(model: Any) -> tuple[int, ...]:
    try:
        shape = model.inputs[0].shape if model.inputs else model.input_shape
    except (AttributeError, ValueError) as e:
        raise ValueError(
            f"model {model.name!r} has no known input shape; build it with keras.Input(...) "
            "or call it on data first"
        ) from e
    dims = tuple(shape)[1:]
    if not dims or any(d is None for d in dims):
        raise ValueError(
            f"model {model.name!r} has input shape {tuple(shape)}; the engine needs every "
            "dimension but the batch known"
        )
    return tuple(int(d) for d in dims)


def from_keras(model: keras.Model) -> Sequential:
    """An engine ``Sequential`` computing what ``model`` computes, holding copies of its weights.

    ``model`` is a ``keras.Sequential`` or a functional chain with a known input shape. Layer
    names, the model's name and the weight dtype carry over; the engine's ``params()`` then
    line up one for one with ``model.weights``.
    """
    layers = _chain(model)
    input_shape = _input_shape(model)
    engine_layers: list[Layer] = []
    keras_layers: list[Any] = []
    for layer in layers:
        converted = _engine_layer(layer)
        if converted is not None:
            engine_layers.append(converted)
            keras_layers.append(layer)
    if not engine_layers:
        raise ValueError(f"model {model.name!r} has no layers to convert")
    dtypes = {np.dtype(w.dtype) for w in model.weights}
    if len(dtypes) > 1:
        raise ValueError(f"model {model.name!r} mixes weight dtypes {sorted(map(str, dtypes))}")
    dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
    engine = Sequential(engine_layers, input_shape=input_shape, dtype=dtype, name=model.name)
    for ours, theirs in zip(engine_layers, keras_layers, strict=True):
        weights = theirs.get_weights()
        if ours.param_names:
            try:
                ours.set_weights(weights)
            except ValueError as e:
                raise ValueError(f"layer {theirs.name!r}: cannot copy its weights: {e}") from e
        elif weights:
            raise _unsupported(theirs, f"it holds {len(weights)} weight arrays the engine lacks")
    return engine


def _keras_layer(layer: Layer, dtype: str) -> Any:
    same = {"name": layer.name, "dtype": dtype}
    if type(layer) is Conv2D:
        if not isinstance(layer.padding, str):
            raise ValueError(
                f"layer {layer.name!r} (Conv2D): padding={layer.padding!r} has no Keras Conv2D "
                "equivalent (Keras pads 'valid' or 'same' only)"
            )
        fused = {"activation": layer.activation, "use_bias": layer.use_bias, **same}
        strides = layer.stride
        return keras.layers.Conv2D(
            layer.filters, layer.kernel_size, strides=strides, padding=layer.padding, **fused
        )
    if type(layer) is MaxPool2D:
        strides, padding = layer.stride, layer.padding
        return keras.layers.MaxPooling2D(layer.pool_size, strides, padding, **same)
    if type(layer) is Flatten:
        return keras.layers.Flatten(**same)
    if type(layer) is Dense:
        fused = {"activation": layer.activation, "use_bias": layer.use_bias, **same}
        return keras.layers.Dense(layer.units, **fused)
    if type(layer) is ReLU:
        return keras.layers.ReLU(**same)
    if type(layer) is Softmax:
        return keras.layers.Softmax(axis=-1, **same)
    if type(layer) in (Activation, Sigmoid, Tanh):
        return keras.layers.Activation(layer.activation, **same)
    raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no Keras equivalent")


def to_keras(engine_model: Sequential) -> keras.Sequential:
    """A Keras ``Sequential`` (explicit ``keras.Input``) with the built engine model's weights.

    Same layer names, model name and dtype; not compiled (the loss and optimizer depend on
    what it will do).
    """
    if not isinstance(engine_model, Sequential):
        raise ValueError(
            "engine_model must be a convscope.scratch.Sequential, got "
            f"{type(engine_model).__name__}"
        )
    if not engine_model.built:
        raise ValueError(
            "engine_model is not built (no input shape yet); build it or run forward() first"
        )
    dtype = engine_model.dtype.name
    keras_layers = [_keras_layer(layer, dtype) for layer in engine_model.layers]
    model = keras.Sequential(
        [keras.Input(shape=engine_model.input_shape, dtype=dtype), *keras_layers],
        name=engine_model.name,
    )
    for ours, theirs in zip(engine_model.layers, keras_layers, strict=True):
        if ours.param_names:
            theirs.set_weights(ours.get_weights())
    return model

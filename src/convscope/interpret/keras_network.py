"""The Keras side of the explanations' interface: sub-models and ``tf.GradientTape``.

Imported only when an explanation is given a Keras model, so ``convscope.interpret`` itself
stays TensorFlow-free. The model needs an explicit ``keras.Input`` (a ``Sequential`` built
with one, or a functional model) so that every layer's output is a reachable tensor.

The logits are recovered without cloning the model: after a separate activation layer they
are that layer's input; after a Dense with a fused activation (the seed CNN's softmax output)
they are ``x @ kernel + bias`` of the Dense's own input, computed with the live weights.

A layer's tensors are read from the model's own graph, walking back from its output: a
loaded ``.keras`` Sequential has called each layer several times while it was rebuilt, and
``layer.output`` (the first call) then belongs to another graph than the model's output,
so a gradient between them would be None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from convscope.interpret.networks import unit_mask
from convscope.validation import ValidationError

__all__ = ["KerasNetwork"]

_ACTIVATION_LAYERS = (keras.layers.Activation, keras.layers.Softmax, keras.layers.ReLU)


def _graph_tensors(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(input tensor, output tensor) of each layer in ``model``'s graph, by layer name.

    Walks back from the model's output through each tensor's producing call (a chain of
    layers, the kind every explanation takes); layers off that path keep their first call's
    tensors.
    """
    inputs, outputs = {}, {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            inputs[layer.name], outputs[layer.name] = layer.input, layer.output
    seen, t = set(), model.outputs[0]
    while getattr(t, "_keras_history", None) is not None and id(t) not in seen:
        seen.add(id(t))
        layer, node_index, _ = t._keras_history
        node = layer._inbound_nodes[node_index]
        if isinstance(layer, keras.layers.InputLayer) or not node.input_tensors:
            break
        outputs[layer.name], inputs[layer.name] = t, node.input_tensors[0]
        t = node.input_tensors[0]
    return inputs, outputs


class KerasNetwork:
    """A ``keras.Model`` with an explicit input, seen through the explanations' interface."""

    def __init__(self, model: Any):
        try:
            inp = model.inputs[0]
        except (AttributeError, IndexError, TypeError, ValueError):
            raise ValidationError(
                f"model {model.name!r} has no explicit input; build it with keras.Input(...)"
            ) from None
        self.model = model
        self.dtype = np.dtype(keras.backend.standardize_dtype(inp.dtype))
        self.input_shape = tuple(inp.shape[1:])
        layers = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
        self.layers = {layer.name: layer for layer in layers}
        self.layer_names = list(self.layers)
        self._in, self._out = _graph_tensors(model)
        self.output_shapes = {la.name: tuple(self._out[la.name].shape[1:]) for la in layers}
        last = layers[-1]
        linear = getattr(last, "activation", None) in (None, keras.activations.linear)
        self._head: Callable[[Any], Any] = lambda t: t
        if isinstance(last, _ACTIVATION_LAYERS):
            self._logits_source = self._in[last.name]
        elif linear:
            self._logits_source = self._out[last.name]
        elif isinstance(last, keras.layers.Dense):
            self._logits_source = self._in[last.name]
            bias = last.bias if last.use_bias else 0.0
            self._head = lambda t: tf.matmul(t, last.kernel) + bias
        else:
            raise ValidationError(
                f"model {model.name!r}: the logits of its last layer {last.name!r} "
                f"({type(last).__name__} with a fused activation) are not reachable"
            )
        self.n_classes = int(self._out[last.name].shape[-1])
        self._submodels: dict[Any, keras.Model] = {}

    def _submodel(self, key: Any, outputs: Any) -> keras.Model:
        if key not in self._submodels:
            self._submodels[key] = keras.Model(self.model.inputs, outputs)
        return self._submodels[key]

    def activations(self, x: np.ndarray, layer: str) -> np.ndarray:
        sub = self._submodel(layer, self._out[layer])
        return np.asarray(sub(tf.constant(x), training=False))

    def logit_gradient(
        self, x: np.ndarray, weights: np.ndarray, layer: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(output of ``layer``, d sum(weights * logits) / d that output); None: the input."""
        xt = tf.constant(x)
        if layer is None:
            sub = self._submodel(("logits",), self._logits_source)
            with tf.GradientTape() as tape:
                tape.watch(xt)
                score = tf.reduce_sum(self._head(sub(xt, training=False)) * weights)
            return x, tape.gradient(score, xt).numpy()
        sub = self._submodel(("logits", layer), [self._out[layer], self._logits_source])
        with tf.GradientTape() as tape:
            acts, source = sub(xt, training=False)
            tape.watch(acts)
            score = tf.reduce_sum(self._head(source) * weights)
        return acts.numpy(), tape.gradient(score, acts).numpy()

    def unit_gradient(
        self, x: np.ndarray, layer: str, unit: int | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mean activation of channel ``unit`` of ``layer`` per image, its gradient wrt x);
        ``unit`` is one channel for every image or one per image."""
        sub = self._submodel(layer, self._out[layer])
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            maps = sub(xt, training=False)
            mask = tf.constant(unit_mask(tuple(maps.shape), unit), dtype=maps.dtype)
            size = int(np.prod(maps.shape[1:-1]))
            objective = tf.reduce_sum(tf.reshape(maps * mask, (len(x), -1)), axis=1) / size
            total = tf.reduce_sum(objective)
        return objective.numpy(), tape.gradient(total, xt).numpy()

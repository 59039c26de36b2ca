"""The Keras side of the explanations' interface: sub-models and ``tf.GradientTape``.

Imported only when an explanation is given a Keras model, so ``convscope.interpret`` itself
stays TensorFlow-free. The model needs an explicit ``keras.Input`` (a ``Sequential`` built
with one, or a functional model) so that every layer's output is a reachable tensor.

The logits are recovered without cloning the model: after a separate activation layer they
are that layer's input; after a Dense with a fused activation (the seed CNN's softmax output)
they are ``x @ kernel + bias`` of the Dense's own input, computed with the live weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from convscope.validation import ValidationError

__all__ = ["KerasNetwork"]

_ACTIVATION_LAYERS = (keras.layers.Activation, keras.layers.Softmax, keras.layers.ReLU)


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
        self.output_shapes = {la.name: tuple(la.output.shape[1:]) for la in layers}
        last = layers[-1]
        linear = getattr(last, "activation", None) in (None, keras.activations.linear)
        self._head: Callable[[Any], Any] = lambda t: t
        if isinstance(last, _ACTIVATION_LAYERS):
            self._logits_source = last.input
        elif linear:
            self._logits_source = last.output
        elif isinstance(last, keras.layers.Dense):
            self._logits_source = last.input
            bias = last.bias if last.use_bias else 0.0
            self._head = lambda t: tf.matmul(t, last.kernel) + bias
        else:
            raise ValidationError(
                f"model {model.name!r}: the logits of its last layer {last.name!r} "
                f"({type(last).__name__} with a fused activation) are not reachable"
            )
        self.n_classes = int(last.output.shape[-1])
        self._submodels: dict[Any, keras.Model] = {}

    def _submodel(self, key: Any, outputs: Any) -> keras.Model:
        if key not in self._submodels:
            self._submodels[key] = keras.Model(self.model.inputs, outputs)
        return self._submodels[key]

    def activations(self, x: np.ndarray, layer: str) -> np.ndarray:
        sub = self._submodel(layer, self.layers[layer].output)
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
        sub = self._submodel(("logits", layer), [self.layers[layer].output, self._logits_source])
        with tf.GradientTape() as tape:
            acts, source = sub(xt, training=False)
            tape.watch(acts)
            score = tf.reduce_sum(self._head(source) * weights)
        return acts.numpy(), tape.gradient(score, acts).numpy()

    def unit_gradient(self, x: np.ndarray, layer: str, unit: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean activation of channel ``unit`` of ``layer`` per image, its gradient wrt x)."""
        sub = self._submodel(layer, self.layers[layer].output)
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            maps = sub(xt, training=False)[..., unit]
            objective = tf.reduce_mean(tf.reshape(maps, (len(x), -1)), axis=1)
            total = tf.reduce_sum(objective)
        return objective.numpy(), tape.gradient(total, xt).numpy()

"""One small interface over the two networks, so every explanation is written once.

An explanation needs three things from a network: a layer's output, the gradient of a
weighted sum of the logits with respect to a layer's output (or the input), and the
gradient of one filter's mean activation with respect to the input. :class:`EngineNetwork`
gets them from the NumPy engine's own backward pass; ``keras_network.KerasNetwork`` from
``tf.GradientTape``; :func:`convscope.interpret.factory.as_network` picks one. The checks
below cover the arguments every explanation shares (images, targets, layer names, filter
indices), once, at the boundary.

The logits are the input of the output activation (a softmax classifier's pre-softmax
scores), the same tensor the engine's ``Sequential.logits`` and Keras's ``from_logits``
losses use: gradients of a post-softmax probability saturate and mix in every other class.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convscope.scratch import Activation, Sequential
from convscope.validation import ValidationError, check_array, check_choice, check_int, short_repr

__all__ = ["EngineNetwork", "unit_mask"]


class EngineNetwork:
    """A built engine ``Sequential`` seen through the interface explanations use.

    Only the model's public API is used: ``forward``, ``layers`` and each layer's
    ``output`` / ``backward``, plus ``backward_linear`` of a fused output layer to start the
    backward pass at its pre-activation.
    """

    def __init__(self, model: Sequential):
        if not model.built:
            raise ValidationError(
                f"model {model.name!r} is not built: build it or run forward() once first"
            )
        self.model = model
        self.dtype = model.dtype
        self.input_shape = tuple(model.input_shape)
        self.layer_names = [layer.name for layer in model.layers]
        self.output_shapes = {layer.name: tuple(layer.output_shape) for layer in model.layers}
        last = model.layers[-1]
        # The logits are the output of layer `_top`: a separate activation layer is skipped,
        # and a fused one is undone by starting the backward pass at its pre-activation.
        fused = getattr(last, "activation", "linear") != "linear"
        self._fused_head = fused and not isinstance(last, Activation)
        below = isinstance(last, Activation) or self._fused_head
        self._top = len(model.layers) - (2 if below else 1)
        self.n_classes = int(last.output_shape[-1])

    def activations(self, x: np.ndarray, layer: str) -> np.ndarray:
        self.model.forward(x, training=False)
        return self.model.layers[self.layer_names.index(layer)].output

    def logit_gradient(
        self, x: np.ndarray, weights: np.ndarray, layer: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(output of ``layer``, d sum(weights * logits) / d that output); None: the input."""
        k = -1 if layer is None else self.layer_names.index(layer)
        layers = self.model.layers
        self.model.forward(x, training=True)
        dy = weights.astype(self.dtype, copy=False)
        if self._fused_head:
            dy = layers[-1].backward_linear(dy)
        for i in range(self._top, k, -1):
            dy = layers[i].backward(dy)
        return (x if k < 0 else layers[k].output), dy

    def unit_gradient(
        self, x: np.ndarray, layer: str, unit: int | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mean activation of channel ``unit`` of ``layer`` per image, its gradient wrt x);
        ``unit`` is one channel for every image or one per image."""
        k = self.layer_names.index(layer)
        layers = self.model.layers
        self.model.forward(x, training=True)
        out = layers[k].output
        mask = unit_mask(out.shape, unit).astype(out.dtype)
        size = out[0, ..., 0].size
        objective = (out * mask).reshape(len(x), -1).sum(axis=1) / size
        dy = mask / out.dtype.type(size)
        for i in range(k, -1, -1):
            dy = layers[i].backward(dy)
        return objective, dy


def unit_mask(shape: tuple[int, ...], unit: int | np.ndarray) -> np.ndarray:
    """1 on channel ``unit`` (one, or one per image) of a (n, ..., channels) output, else 0."""
    n, channels = shape[0], shape[-1]
    onehot = np.zeros((n, channels))
    onehot[np.arange(n), np.broadcast_to(np.asarray(unit), (n,))] = 1.0
    return np.broadcast_to(onehot.reshape(n, *([1] * (len(shape) - 2)), channels), shape)


# --------------------------------------------------------------------------- shared checks
def check_images(net, images: Any, name: str = "images") -> np.ndarray:
    """A non-empty, finite batch shaped like the network's input, in its dtype."""
    return check_array(
        images, name, shape=(None, *net.input_shape), dtype=net.dtype, finite=True, nonempty=True
    )


def check_layer(net, layer: Any, name: str = "layer") -> str:
    return check_choice(layer, name, net.layer_names)


def check_unit(net, layer: str, unit: Any, name: str = "filter") -> int:
    """A channel index of ``layer``'s output (its last axis)."""
    return check_int(unit, name, min=0, max=net.output_shapes[layer][-1] - 1)


def target_weights(net, target: Any, n: int) -> np.ndarray:
    """One-hot rows (n, classes) selecting each image's target logit."""
    out_shape = net.output_shapes[net.layer_names[-1]]
    if len(out_shape) != 1:
        raise ValidationError(
            f"model: output shape {out_shape} is not one score per class, so there is no target "
            "class to explain"
        )
    t = np.asarray(target)
    if t.ndim == 0:
        t = np.full(n, t)
    if t.shape != (n,) or t.dtype.kind not in "iu" or t.min() < 0 or t.max() >= net.n_classes:
        raise ValidationError(
            f"target={short_repr(target)} is not allowed: expected an int in "
            f"[0, {net.n_classes - 1}] or one per image ({n})"
        )
    weights = np.zeros((n, net.n_classes), dtype=net.dtype)
    weights[np.arange(n), t] = 1.0
    return weights

"""``Sequential``: a stack of engine layers run on NHWC batches, and its file format.

Forward runs the layers in order, backward in reverse. The weights are listed in Keras's
order (each layer's kernel, then bias), so ``model.params()`` lines up one for one with
``keras_model.weights`` for the same architecture, which the bridge and the parity tests
rely on. The input is checked once, in :meth:`Sequential.forward` (shape, finite values) or
once per data set by the trainers; each layer's input is then the previous one's output.

Files are convscope's one ``.npz`` format (:func:`convscope.files.save_arrays`): weights as
arrays ``param_0000, ...``, the architecture (and an optimizer's configuration) as JSON
metadata. Nothing in them can run code on load.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from convscope.files import DataError, load_arrays, save_arrays
from convscope.scratch import ops
from convscope.scratch.layers import (
    Activation,
    Conv2D,
    Layer,
    MaxPool2D,
    layer_from_config,
    serialize_layer,
)
from convscope.scratch.optimizers import Optimizer, optimizer_from_config
from convscope.validation import check_array, check_int

__all__ = ["FORMAT", "Sequential", "load_checkpoint"]

#: identifies convscope model files and their layout version
FORMAT = "convscope.scratch.Sequential/2"
OPTIMIZER_PREFIX = "optimizer."


class Sequential:
    """A linear stack of layers.

    Unnamed layers get Keras-like unique names in model order (``conv2d``, ``conv2d_1``,
    ...). With ``input_shape`` (one sample, no batch axis) the weights are created at once,
    else on the first ``forward``; ``seed`` fixes them; ``dtype`` is the float type of weights
    and activations (float32 to train, float64 for gradient checks), inputs are cast to it.
    """

    def __init__(
        self,
        layers: Iterable[Layer] | None = None,
        input_shape: Sequence[int] | None = None,
        seed: int = 0,
        dtype=np.float32,
        name: str = "sequential",
    ):
        self.name = name
        self.seed = int(seed)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"Sequential: dtype must be a float type, got {self.dtype}")
        self.layers: list[Layer] = []
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self.built = False
        for layer in layers or []:
            self.add(layer)
        if input_shape is not None:
            self.build(input_shape)

    # -- construction -------------------------------------------------------------------
    def add(self, layer: Layer) -> None:
        """Append a layer (before the model is built)."""
        if not isinstance(layer, Layer):
            raise ValueError(f"Sequential.add: expected a Layer, got {type(layer).__name__}")
        if self.built:
            raise ValueError("Sequential.add: the model is already built; create a new model")
        if any(layer is other for other in self.layers):
            raise ValueError(f"Sequential.add: layer {layer.name!r} is already in the model")
        names = {other.name for other in self.layers}
        if layer.auto_named:
            candidate, i = layer.base_name, 0
            while candidate in names:
                i += 1
                candidate = f"{layer.base_name}_{i}"
            layer.name = candidate
        elif layer.name in names:
            raise ValueError(f"Sequential.add: duplicate layer name {layer.name!r}")
        self.layers.append(layer)

    def build(self, input_shape: Sequence[int]) -> None:
        """Create every layer's weights for samples shaped ``input_shape`` (no batch axis).

        One generator seeded from ``seed`` is consumed layer by layer in order, so the
        initial weights depend only on the seed and the architecture.
        """
        dims = check_array(input_shape, "input_shape", ndim=1).tolist()
        shape = tuple(check_int(d, "input_shape", min=1) for d in dims)
        if self.built:
            if shape != self.input_shape:
                raise ValueError(
                    f"Sequential.build: model is built for input shape {self.input_shape}, "
                    f"got {shape}"
                )
            return
        if not self.layers:
            raise ValueError("Sequential.build: the model has no layers")
        rng = np.random.default_rng(self.seed)
        out = shape
        for layer in self.layers:
            out = layer.build(out, rng=rng, dtype=self.dtype)
        self.input_shape, self.output_shape, self.built = shape, out, True

    # -- running ------------------------------------------------------------------------
    def check_input(self, x, name: str = "x") -> np.ndarray:
        """``x`` as a batch of this model's dtype and input shape, finite; builds on first use."""
        x = check_array(x, name, dtype=self.dtype, finite=True)
        if not self.built:
            if x.ndim < 2:
                raise ValueError(f"Sequential: {name} must be a batch, got shape {x.shape}")
            self.build(x.shape[1:])
        if x.shape[1:] != self.input_shape:
            raise ValueError(
                f"Sequential: {name} has shape {x.shape}, expected (batch, *{self.input_shape})"
            )
        return x

    def forward(self, x, training: bool = True) -> np.ndarray:
        """Output for a batch. ``training=True`` keeps what ``backward`` needs."""
        return self.run(self.check_input(x), training)

    __call__ = forward

    def run(self, x: np.ndarray, training: bool = True, hold=None) -> np.ndarray:
        """``forward`` for an ``x`` that :meth:`check_input` already returned.

        In training, a conv followed by a max pool runs as one
        (:meth:`~convscope.scratch.layers.Conv2D.forward_pooled`), which leaves both layers
        as their own forwards would. ``hold=(i, wait)`` calls ``wait()`` before layer ``i``
        runs (a layer with weights): a trainer whose weights another process is still
        updating waits there for them.
        """
        layers, i = self.layers, 0
        while i < len(layers):
            if hold is not None and i == hold[0]:
                hold[1]()
            layer = layers[i]
            pooled = i + 1 < len(layers) and isinstance(layers[i + 1], MaxPool2D)
            if training and pooled and isinstance(layer, Conv2D):
                x = layer.forward_pooled(x, layers[i + 1])
                i += 2
            else:
                x = layer.forward(x, training)
                i += 1
        return x

    def backward(self, dy, need_input_grad: bool = True) -> np.ndarray | None:
        """Backpropagate dL/d(output) of the last training forward pass; returns dL/dx.

        The parameter gradients are then in ``grads()``. ``need_input_grad=False`` skips
        dL/dx of the first layer (None may be returned), which training never uses.
        """
        self._require_built()
        return self._backward_through(self.layers, dy, need_input_grad)

    @staticmethod
    def _backward_through(layers: list[Layer], dy, need_input_grad: bool):
        i = len(layers) - 1
        while i >= 0:
            layer, below = layers[i], layers[i - 1] if i else None
            if isinstance(layer, MaxPool2D) and below is not None and layer.tiled_by is below:
                # both at once, from the pool's window-major order (Conv2D.backward_pooled)
                dy = below.backward_pooled(dy, layer, need_dx=need_input_grad or i > 1)
                i -= 2
                continue
            if isinstance(layer, MaxPool2D) and getattr(below, "activation", None) == "relu":
                # A max pool sends each window's gradient to a pixel that holds the window's
                # max, where the ReLU below is active exactly when the pooled value is > 0: its
                # mask is applied on the pooled grid (a quarter of the values for 2x2) and the
                # ReLU's own backward is skipped.
                dy = layer.backward(ops.relu_backward(dy, layer.output))
                if isinstance(below, Activation):  # a ReLU layer: nothing else to undo
                    i -= 2
                    continue
                i -= 1
                dy = below.backward_linear(dy, need_dx=need_input_grad or i > 0)
            else:
                dy = layer.backward(dy, need_dx=need_input_grad or i > 0)
            i -= 1
        return dy

    @property
    def output_activation(self) -> str:
        """Activation producing the model's output ('linear' when there is none)."""
        if not self.layers:
            raise RuntimeError("Sequential: the model has no layers")
        return getattr(self.layers[-1], "activation", "linear")

    @property
    def logits(self) -> np.ndarray:
        """Input of the output activation in the last forward pass.

        Losses on sigmoid/softmax outputs use it, like Keras, so that the loss never takes
        the log of a probability rounded to 0 or 1.
        """
        last = self.layers[-1]
        if isinstance(last, Activation):
            z = self.layers[-2].output if len(self.layers) > 1 else None
        else:
            z = getattr(last, "preactivation", None)
            z = last.output if z is None else z
        if z is None:
            raise RuntimeError("Sequential.logits: run forward() first")
        return z

    def backward_from_logits(self, dz, need_input_grad: bool = True) -> np.ndarray | None:
        """Like ``backward`` but starting from dL/d(logits) (see ``logits``).

        The output activation is skipped: this is how a loss computed from the logits (the
        stable route for sigmoid and softmax outputs) is backpropagated.
        """
        self._require_built()
        last, rest = self.layers[-1], self.layers[:-1]
        if isinstance(last, Activation):
            if last._cache is None:
                raise RuntimeError(f"{last.name}: backward needs a forward(x, training=True)")
        elif hasattr(last, "backward_linear"):
            dz = last.backward_linear(dz, need_dx=need_input_grad or bool(rest))
        else:
            rest = self.layers
        return self._backward_through(rest, dz, need_input_grad)

    def activations(self, x) -> list[tuple[str, np.ndarray]]:
        """(layer name, output) for every layer, for the batch ``x`` (inference mode)."""
        self.forward(x, training=False)
        return [(layer.name, layer.output) for layer in self.layers]

    def predict(self, x, batch_size: int = 256) -> np.ndarray:
        """Outputs for ``x`` computed in batches (inference mode, no caches kept)."""
        batch_size = check_int(batch_size, "batch_size", min=1)
        x = self.check_input(x)
        if len(x) == 0:
            return np.zeros((0, *self.output_shape), dtype=self.dtype)
        outs = [self.run(x[i : i + batch_size], False) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs, axis=0)

    def replica(self) -> Sequential:
        """A model on this one's weights (the same arrays) whose layers keep their own
        outputs, caches and gradients (:meth:`Layer.replica`): a second thread can run a
        forward and backward pass on it while this model runs another."""
        self._require_built()
        twin = copy.copy(self)
        twin.layers = [layer.replica() for layer in self.layers]
        return twin

    # -- weights ------------------------------------------------------------------------
    def params(self) -> list[np.ndarray]:
        """Trainable arrays in Keras's order (per layer: kernel, then bias); live references."""
        self._require_built()
        return [p for layer in self.layers for p in layer.params()]

    def grads(self) -> list[np.ndarray]:
        """Gradients of the last backward pass, aligned with ``params()``."""
        self._require_built()
        return [g for layer in self.layers for g in layer.grads()]

    def param_names(self) -> list[str]:
        """``"<layer>/<kernel|bias>"`` for each entry of ``params()``."""
        return [f"{layer.name}/{n}" for layer in self.layers for n in layer.param_names]

    def get_weights(self) -> list[np.ndarray]:
        return [p.copy() for p in self.params()]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Copy arrays into the weights, in ``params()`` order; shapes must match."""
        weights = list(weights)
        if len(weights) != len(self.params()):
            raise ValueError(
                f"set_weights: the model has {len(self.params())} weight arrays "
                f"({self.param_names()}), got {len(weights)}"
            )
        it = iter(weights)
        for layer in self.layers:
            layer.set_weights([next(it) for _ in layer.param_names])

    def share_weights(self, arrays: Sequence[np.ndarray]) -> None:
        """Make ``arrays`` the weights themselves, in ``params()`` order, copying nothing:
        each has the shape and dtype of the weight it replaces. A training worker's model
        computes this way on the weights its trainer writes into shared memory."""
        arrays, params = list(arrays), self.params()
        if [(a.shape, a.dtype) for a in arrays] != [(p.shape, p.dtype) for p in params]:
            raise ValueError(
                f"share_weights: expected arrays of {[(p.shape, str(p.dtype)) for p in params]}, "
                f"got {[(a.shape, str(a.dtype)) for a in arrays]}"
            )
        it = iter(arrays)
        for layer in self.layers:
            for name in layer.param_names:
                setattr(layer, name, next(it))

    def conv_kernels(self) -> dict[str, np.ndarray]:
        """Copies of every conv layer's HWIO kernel, by layer name (what the trainers record)."""
        return {
            layer.name: layer.kernel.copy()
            for layer in self.layers
            if getattr(layer, "kernel", None) is not None and layer.kernel.ndim == 4
        }

    def count_params(self) -> int:
        return sum(layer.count_params() for layer in self.layers)

    def get_layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r}; layers: {[la.name for la in self.layers]}")

    # -- description --------------------------------------------------------------------
    def summary(self) -> str:
        """A Keras-like table of layers, output shapes and parameter counts."""
        rows = [("Layer (type)", "Output Shape", "Param #")]
        for layer in self.layers:
            shape = "?" if layer.output_shape is None else str((None, *layer.output_shape))
            kind = type(layer).__name__
            act = getattr(layer, "activation", None)
            if act not in (None, "linear") and not isinstance(layer, Activation):
                kind += f", {act}"
            rows.append((f"{layer.name} ({kind})", shape, f"{layer.count_params():,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        rule = "-" * (sum(widths) + 6)
        lines = [f'Model: "{self.name}" (input {self.input_shape}, {self.dtype})', rule]
        for j, r in enumerate(rows):
            lines.append(f"{r[0]:<{widths[0]}}   {r[1]:<{widths[1]}}   {r[2]:>{widths[2]}}")
            if j == 0:
                lines.append(rule)
        lines += [rule, f"Total params: {self.count_params():,}"]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Sequential({[la.name for la in self.layers]}, input_shape={self.input_shape})"

    def get_config(self) -> dict[str, Any]:
        """The architecture as JSON-able data (no weights)."""
        return {
            "name": self.name,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "seed": self.seed,
            "dtype": self.dtype.name,
            "layers": [serialize_layer(layer) for layer in self.layers],
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Sequential:
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError(
                f"Sequential.from_config: expected a dict with 'layers', got {config!r}"
            )
        return cls(
            [layer_from_config(spec) for spec in config["layers"]],
            input_shape=config.get("input_shape"),
            seed=config.get("seed", 0),
            dtype=config.get("dtype", "float32"),
            name=config.get("name", "sequential"),
        )

    # -- files --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, optimizer: Optimizer | None = None) -> None:
        """Atomically write architecture, weights and an optimizer's state to ``path`` as given."""
        self._require_built()
        arrays = {f"param_{i:04d}": p for i, p in enumerate(self.params())}
        meta: dict[str, Any] = {
            "format": FORMAT,
            "model": self.get_config(),
            "param_names": self.param_names(),
        }
        if optimizer is not None:
            meta["optimizer"] = optimizer.get_config()
            for key, value in optimizer.get_state().items():
                arrays[OPTIMIZER_PREFIX + key] = value
        save_arrays(path, arrays, meta, compress=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Sequential:
        """Read a model written by ``save`` (see :func:`load_checkpoint`)."""
        return load_checkpoint(path)[0]

    def _require_built(self) -> None:
        if not self.built:
            raise RuntimeError(
                "Sequential: not built yet; pass input_shape, call build() or run forward() first"
            )


def load_checkpoint(path: str | os.PathLike) -> tuple[Sequential, Optimizer | None]:
    """Model and optimizer (None when the file holds none) from ``Sequential.save``'s file.

    A missing file raises FileNotFoundError, a corrupt or foreign one a ValueError
    (:class:`convscope.files.DataError`); both name the file.
    """
    arrays, meta = load_arrays(path)
    where = os.fspath(path)
    if meta.get("format") != FORMAT:
        raise DataError(f"{where}: not a convscope model file (format {meta.get('format')!r})")
    try:
        model = Sequential.from_config(meta["model"])
        names = meta["param_names"]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{where}: unreadable architecture ({e})") from None
    if not model.built or names != model.param_names():
        raise DataError(
            f"{where}: weight names {names} do not match the architecture "
            f"{model.param_names()} (input shape {model.input_shape})"
        )
    for i, (name, p) in enumerate(zip(names, model.params(), strict=True)):
        w = arrays.get(f"param_{i:04d}")
        if w is None or w.shape != p.shape or w.dtype != p.dtype:
            found = "missing" if w is None else f"{w.shape} {w.dtype}"
            raise DataError(f"{where}: weight {name} is {found}, expected {p.shape} {p.dtype}")
        if not np.all(np.isfinite(w)):
            raise DataError(f"{where}: weight {name} contains non-finite values")
        p[...] = w
    optimizer = None
    if "optimizer" in meta:
        prefix = OPTIMIZER_PREFIX
        state = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        try:
            optimizer = optimizer_from_config(meta["optimizer"])
            optimizer.set_state(state)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where}: unreadable optimizer state ({e})") from None
    return model, optimizer

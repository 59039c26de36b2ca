"""`Sequential`: a stack of engine layers trained on NHWC batches, and its .npz file format.

The model is deliberately a plain list of layers: forward runs them in order, backward in
reverse. Its weights are listed in Keras's order (each layer's kernel, then bias), so
``model.params()`` lines up element for element with ``keras_model.weights`` for the same
architecture; the Keras bridge and the parity tests rely on that.

Files are NumPy ``.npz`` archives that load with ``allow_pickle=False``: the architecture is a
JSON string (in a one-element unicode array), the weights are plain numeric arrays. Nothing in
them can execute code on load, and a truncated or foreign file gives a ValueError naming it.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from convscope.scratch import ops
from convscope.scratch.layers import Activation, Layer, layer_from_config, serialize_layer

__all__ = ["FORMAT", "Sequential", "load_checkpoint", "read_npz", "write_npz_atomic"]

#: identifies convscope model files and their layout version
FORMAT = "convscope.scratch.Sequential/1"


class Sequential:
    """A linear stack of layers.

    Args:
        layers: the layers, in order. Layers without an explicit name get Keras-like unique
            names in model order (``conv2d``, ``conv2d_1``, ...).
        input_shape: shape of one sample without the batch axis, e.g. ``(28, 28, 1)``. When
            given, the weights are created at once; otherwise on the first ``forward``.
        seed: seeds the weight initialiser (same seed and architecture, same weights).
        dtype: float type of weights and activations; float32 to train, float64 for gradient
            checks. Inputs are cast to it.
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
        if not np.issubdtype(self.dtype, np.floating):
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
            base, i = layer.base_name, 0
            candidate = base
            while candidate in names:
                i += 1
                candidate = f"{base}_{i}"
            layer.name = candidate
        elif layer.name in names:
            raise ValueError(f"Sequential.add: duplicate layer name {layer.name!r}")
        self.layers.append(layer)

    def build(self, input_shape: Sequence[int]) -> None:
        """Create every layer's weights for samples shaped ``input_shape`` (no batch axis).

        The generator is seeded from ``seed`` and consumed layer by layer in order, so the
        initial weights depend only on the seed and the architecture.
        """
        try:
            shape = tuple(int(d) for d in input_shape)
        except TypeError as e:
            raise ValueError(
                f"Sequential.build: input_shape must be a sequence of ints, got {input_shape!r}"
            ) from e
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
        self.input_shape = shape
        self.output_shape = out
        self.built = True

    # -- running ------------------------------------------------------------------------
    def _prepare(self, x: np.ndarray) -> np.ndarray:
        """The model's input checks, done once per call rather than in every layer."""
        x = np.asarray(x, dtype=self.dtype)
        if not self.built:
            if x.ndim < 2:
                raise ValueError(
                    f"Sequential: x must be a batch (batch axis first), got shape {x.shape}"
                )
            self.build(x.shape[1:])
        if x.shape[1:] != self.input_shape:
            raise ValueError(
                f"Sequential: x has shape {x.shape}, expected (batch, *{self.input_shape})"
            )
        ops._check_finite(x, "x", f"Sequential {self.name!r}")
        return x

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        """Output for a batch. ``training=True`` keeps the caches that ``backward`` needs.

        ``x`` is checked here, once (shape, finite values); the layers then run unchecked,
        since each one's input is the previous one's output, right by construction.
        """
        return self._run(self._prepare(x), training)

    def _run(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        """``forward`` for an ``x`` already checked (``training.fit`` checks its data once)."""
        for layer in self.layers:
            x = layer._run(x, training)
        return x

    __call__ = forward

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """Backpropagate dL/d(output) of the last training forward pass; returns dL/dx.

        The parameter gradients are then in ``grads()``. ``need_input_grad=False`` skips
        dL/dx of the first layer (the returned value may then be None), which training never
        uses and which costs a conv layer a large matmul.
        """
        self._require_built()
        return self._backward_through(self.layers, dy, need_input_grad)

    @staticmethod
    def _backward_through(layers: list[Layer], dy, need_input_grad: bool):
        # The top layer checks dy; every later dy comes from a layer's own backward.
        top = len(layers) - 1
        for i in range(top, -1, -1):
            need_dx = need_input_grad or i > 0
            if i == top:
                dy = layers[i].backward(dy, need_dx=need_dx)
            else:
                dy = layers[i]._backprop(dy, need_dx)
        return dy

    @property
    def output_activation(self) -> str:
        """Activation producing the model's output ('linear' when there is none)."""
        self._require_layers()
        return getattr(self.layers[-1], "activation", "linear")

    @property
    def logits(self) -> np.ndarray:
        """Input of the output activation in the last forward pass.

        Losses on sigmoid/softmax outputs use it (like Keras does) so that the loss never
        takes the log of a probability rounded to 0 or 1.
        """
        last = self.layers[-1]
        if isinstance(last, Activation):
            if len(self.layers) < 2 or self.layers[-2].output is None:
                raise RuntimeError("Sequential.logits: run forward() first")
            return self.layers[-2].output
        z = getattr(last, "preactivation", None)
        if z is None:
            if last.output is None:
                raise RuntimeError("Sequential.logits: run forward() first")
            return last.output  # no activation: the output is the logits
        return z

    def backward_from_logits(
        self, dz: np.ndarray, need_input_grad: bool = True
    ) -> np.ndarray | None:
        """Like ``backward`` but starting from dL/d(logits) (see ``logits``).

        The output activation is skipped: this is how a loss computed from the logits (the
        stable route for sigmoid and softmax outputs) is backpropagated.
        """
        self._require_built()
        last = self.layers[-1]
        dz = np.asarray(dz)
        if isinstance(last, Activation):
            if last._cache is None:
                raise RuntimeError(f"{last.name}: backward needs a forward(x, training=True)")
            rest = self.layers[:-1]
        elif hasattr(last, "backward_linear"):
            if dz.shape != last.preactivation.shape:
                raise ValueError(
                    f"backward_from_logits: dz has shape {dz.shape}, the logits have shape "
                    f"{last.preactivation.shape}"
                )
            rest = self.layers[:-1]
            dz = last.backward_linear(dz, need_dx=need_input_grad or bool(rest))
        else:
            rest = self.layers
        return self._backward_through(rest, dz, need_input_grad)

    def activations(self, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """(layer name, output) for every layer, for the batch ``x`` (inference mode)."""
        self.forward(x, training=False)
        return [(layer.name, layer.output) for layer in self.layers]

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Outputs for ``x`` computed in batches (inference mode, no caches kept)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"predict: batch_size must be a positive int, got {batch_size!r}")
        x = self._prepare(x)
        if len(x) == 0:
            return np.zeros((0, *self.output_shape), dtype=self.dtype)
        outs = [
            self._run(x[i : i + batch_size], training=False) for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(outs, axis=0)

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
        params = self.params()
        if len(weights) != len(params):
            raise ValueError(
                f"set_weights: the model has {len(params)} weight arrays "
                f"({self.param_names()}), got {len(weights)}"
            )
        i = 0
        for layer in self.layers:
            n = len(layer.param_names)
            layer.set_weights(weights[i : i + n])
            i += n

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
            extra = getattr(layer, "activation", None)
            kind = type(layer).__name__
            if extra not in (None, "linear") and not isinstance(layer, Activation):
                kind += f", {extra}"
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
        return (
            f"Sequential({[layer.name for layer in self.layers]}, input_shape={self.input_shape})"
        )

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
        layers = [layer_from_config(spec) for spec in config["layers"]]
        return cls(
            layers,
            input_shape=config.get("input_shape"),
            seed=config.get("seed", 0),
            dtype=config.get("dtype", "float32"),
            name=config.get("name", "sequential"),
        )

    # -- files --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, optimizer: Any = None) -> None:
        """Write architecture and weights (and optionally an optimizer's state) to ``path``.

        The file is an ``.npz`` written atomically (temporary file in the same folder, then
        ``os.replace``), so a crash never leaves a half-written model behind. ``path`` is used
        as given (no ``.npz`` is appended).
        """
        self._require_built()
        arrays: dict[str, np.ndarray] = {"format": np.array([FORMAT])}
        meta = {"model": self.get_config(), "param_names": self.param_names()}
        for i, p in enumerate(self.params()):
            arrays[f"param_{i:04d}"] = p
        if optimizer is not None:
            meta["optimizer"] = optimizer.get_config()
            for key, value in optimizer.get_state().items():
                arrays[f"optimizer/{key}"] = np.asarray(value)
        arrays["architecture"] = np.array([json.dumps(meta)])
        write_npz_atomic(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Sequential:
        """Read a model written by ``save``.

        A missing file raises FileNotFoundError, a corrupt or foreign one ValueError; both name
        the file.
        """
        return load_checkpoint(path)[0]

    def _require_built(self) -> None:
        if not self.built:
            raise RuntimeError(
                "Sequential: not built yet; pass input_shape, call build() or run forward() first"
            )

    def _require_layers(self) -> None:
        if not self.layers:
            raise RuntimeError("Sequential: the model has no layers")


def load_checkpoint(path: str | os.PathLike) -> tuple[Sequential, Any]:
    """Model and optimizer (None when the file holds no optimizer state) from ``save``'s file."""
    arrays = read_npz(path)
    fmt = arrays.get("format")
    if fmt is None or fmt.shape != (1,) or str(fmt[0]) != FORMAT:
        raise ValueError(f"{os.fspath(path)}: not a convscope model file (format {fmt!r})")
    try:
        meta = json.loads(str(arrays["architecture"][0]))
        model = Sequential.from_config(meta["model"])
        names = meta["param_names"]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ValueError(f"{os.fspath(path)}: unreadable architecture ({e})") from e
    if not model.built:
        raise ValueError(f"{os.fspath(path)}: the stored model has no input shape")
    if names != model.param_names():
        raise ValueError(
            f"{os.fspath(path)}: weight names {names} do not match the architecture "
            f"{model.param_names()}"
        )
    weights = []
    for i, (name, p) in enumerate(zip(names, model.params(), strict=True)):
        w = arrays.get(f"param_{i:04d}")
        if w is None:
            raise ValueError(f"{os.fspath(path)}: weight {name} (param_{i:04d}) is missing")
        if w.shape != p.shape or w.dtype != p.dtype:
            raise ValueError(
                f"{os.fspath(path)}: weight {name} has shape {w.shape} and dtype {w.dtype}, "
                f"expected {p.shape} {p.dtype}"
            )
        weights.append(w)
    try:
        model.set_weights(weights)
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: {e}") from e
    optimizer = None
    if "optimizer" in meta:
        from convscope.scratch.optimizers import optimizer_from_config

        prefix = "optimizer/"
        state = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
        try:
            optimizer = optimizer_from_config(meta["optimizer"])
            optimizer.set_state(state)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{os.fspath(path)}: unreadable optimizer state ({e})") from e
    return model, optimizer


def write_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files; a model file is not a secret
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read eagerly with ``allow_pickle=False``.

    Reading eagerly means a truncated member fails here, with the file's name, rather than later.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"a single .npy array (shape {np.shape(data)}), not an .npz archive")
        with data:
            return {key: data[key] for key in data.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or not an .npz file ({type(e).__name__}: {e})") from e

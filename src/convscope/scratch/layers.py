"""Layers of the NumPy engine: thin stateful wrappers around the pure functions in `ops`.

Every layer follows the same small protocol, so a `Sequential` model (and later the Keras
bridge and the visualisations) can treat them uniformly:

- ``build(input_shape, rng, dtype)`` creates the weights once the input shape (without the
  batch axis) is known. Weights are created lazily because a conv kernel's shape depends on
  the number of input channels, exactly as in Keras.
- ``forward(x, training=True)`` computes the output, remembers it in ``layer.output`` (so
  every feature map is reachable for visualisation) and, when training, caches what
  ``backward`` needs.
- ``backward(dy)`` returns dL/dx and stores the parameter gradients, readable with
  ``grads()`` in the same order as ``params()``: kernel then bias, which is the order Keras
  lists ``model.weights``.
- ``get_config()`` returns the constructor arguments as plain JSON-able values, so a model's
  architecture can be stored without pickle and mapped 1:1 to Keras.

Conv2D and Dense take an optional fused activation like Keras (``activation="relu"``). They keep
the pre-activation in ``layer.preactivation``; a model uses it to hand a sigmoid/softmax output
layer's logits to the loss directly, as Keras does, which is both more stable and what makes the
two engines agree number for number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from convscope.scratch import ops

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "Conv2D",
    "Dense",
    "Flatten",
    "LAYER_CLASSES",
    "Layer",
    "MaxPool2D",
    "MaxPooling2D",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "glorot_uniform",
    "layer_from_config",
    "serialize_layer",
]


# --------------------------------------------------------------------------- activations
# name -> (forward(z), backward(dy, z, y)). The backward gets both the input z and the output y
# because ReLU's derivative is defined on its input and the others' on their output.
ActivationFns = tuple[Callable[[np.ndarray], np.ndarray], Callable[..., np.ndarray]]

# The backward functions are the ops' unchecked kernels: Layer.backward has already checked
# that dy has the output's shape.
ACTIVATIONS: dict[str, ActivationFns | None] = {
    "linear": None,
    "relu": (ops.relu, lambda dy, z, y: ops._relu_backward(dy, z)),
    "sigmoid": (ops.sigmoid, lambda dy, z, y: ops._sigmoid_backward(dy, y)),
    "tanh": (ops.tanh, lambda dy, z, y: ops._tanh_backward(dy, y)),
    "softmax": (
        lambda z: ops.softmax(z, axis=-1),
        lambda dy, z, y: ops._softmax_backward(dy, y, axis=-1),
    ),
}


def _check_activation(activation: str | None, where: str) -> str:
    """Normalise an activation argument (None means linear, as in Keras)."""
    if activation is None:
        return "linear"
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(
            f"{where}: activation={activation!r} is not supported; "
            f"use one of {sorted(ACTIVATIONS)} or None"
        )
    return activation


def _apply_activation(activation: str, z: np.ndarray) -> np.ndarray:
    fns = ACTIVATIONS[activation]
    return z if fns is None else fns[0](z)


def _activation_backward(activation: str, dy: np.ndarray, z: np.ndarray, y: np.ndarray):
    fns = ACTIVATIONS[activation]
    return dy if fns is None else fns[1](dy, z, y)


# --------------------------------------------------------------------------- argument checks
def _positive_int(value: Any, arg: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{where}: {arg} must be a positive integer, got {value!r}")
    return int(value)


def _int_or_pair(value: Any, arg: str, where: str) -> int | tuple[int, int]:
    """n or (a, b) of positive ints; a square pair collapses to n so configs stay simple."""
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ValueError(f"{where}: {arg}={value!r} must be an int or a pair of ints")
        a = _positive_int(value[0], arg, where)
        b = _positive_int(value[1], arg, where)
        return a if a == b else (a, b)
    return _positive_int(value, arg, where)


def _jsonable(value: int | tuple[int, int]) -> int | list[int]:
    return list(value) if isinstance(value, tuple) else value


def _kernel_hw(value: Any, where: str) -> tuple[int, int]:
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ValueError(f"{where}: kernel_size={value!r} must be an int or (height, width)")
        return (
            _positive_int(value[0], "kernel_size", where),
            _positive_int(value[1], "kernel_size", where),
        )
    k = _positive_int(value, "kernel_size", where)
    return (k, k)


def _check_padding(padding: Any, where: str) -> str | int:
    if isinstance(padding, str):
        p = padding.lower()
        if p in ("valid", "same"):
            return p
    elif isinstance(padding, int | np.integer) and not isinstance(padding, bool) and padding >= 0:
        return int(padding)
    raise ValueError(f"{where}: padding={padding!r} must be 'valid', 'same' or a non-negative int")


def _plan(layer: Layer, input_shape, window, stride, padding) -> ops._Geometry:
    """Pads, strides and output size of ``window`` over ``input_shape`` (H, W, ...), validated
    by the ops' own rules, with the layer named in any error."""
    try:
        return ops._plan((input_shape[0], input_shape[1]), window, stride, padding)
    except ValueError as e:
        raise ValueError(f"{layer.name}: input shape {tuple(input_shape)}: {e}") from e


class _Windowed:
    """Mixin of Conv2D and MaxPool2D: the window geometry is resolved once, at build.

    Every batch then goes straight to the ops' unchecked kernels with it. A built layer fed
    images of another size (allowed, as with the ops) gets a geometry planned, and checked,
    for that size.
    """

    _window_hw: tuple[int, int] | tuple[int, ...]
    _geometry: tuple[tuple[int, int], ops._Geometry] | None = None

    def _plan_for(self, input_shape) -> ops._Geometry:
        g = _plan(self, input_shape, self._window_hw, self.stride, self.padding)
        self._geometry = ((int(input_shape[0]), int(input_shape[1])), g)
        return g

    def _geometry_of(self, x: np.ndarray) -> ops._Geometry:
        planned = self._geometry
        if planned is not None and planned[0] == x.shape[1:3]:
            return planned[1]
        return _plan(self, x.shape[1:], self._window_hw, self.stride, self.padding)


def _like(layer: Layer, a: np.ndarray, ref: np.ndarray | None, name: str, what: str):
    if ref is not None and a.shape != ref.shape:
        raise ValueError(
            f"{layer.name}: {name} has shape {a.shape} but the last {what} had shape {ref.shape}"
        )
    return a


def glorot_uniform(
    shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator, dtype
) -> np.ndarray:
    """Keras's default kernel initialiser: U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out)).

    Keeps the activation variance roughly constant from layer to layer at the start of training.
    """
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype, copy=False)


# --------------------------------------------------------------------------- base class
class Layer:
    """Base class: shape bookkeeping, caching, weights access and configuration."""

    #: default name; a Sequential model makes auto names unique (conv2d, conv2d_1, ...)
    base_name = "layer"
    #: names of the trainable arrays in Keras's order (attributes of the layer)
    param_names: tuple[str, ...] = ()

    def __init__(self, name: str | None = None):
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(
                f"{type(self).__name__}: name must be a non-empty string, got {name!r}"
            )
        self.name: str = name if name is not None else self.base_name
        self.auto_named = name is None
        self.built = False
        self.dtype: np.dtype | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        #: output of the last forward pass (for feature-map visualisation)
        self.output: np.ndarray | None = None
        self._cache: dict[str, Any] | None = None
        self._grads: dict[str, np.ndarray] | None = None

    # -- building -----------------------------------------------------------------------
    @property
    def expected_rank(self) -> int | None:
        """Rank of one sample (without the batch axis) this layer accepts; None: any >= 1."""
        return None

    def build(
        self,
        input_shape: tuple[int, ...],
        rng: np.random.Generator | None = None,
        dtype=np.float32,
    ) -> tuple[int, ...]:
        """Create the weights for inputs shaped ``(batch, *input_shape)``; returns the output shape.

        A layer that is already built keeps its weights (so weights set by hand or loaded from a
        file survive being put into a model) but must see the same input shape again.
        """
        input_shape = tuple(int(d) for d in input_shape)
        if self.built:
            if input_shape != self.input_shape:
                raise ValueError(
                    f"{self.name}: already built for input shape {self.input_shape}, "
                    f"cannot rebuild for {input_shape}"
                )
            return self.output_shape  # type: ignore[return-value]
        rank = self.expected_rank
        if (rank is not None and len(input_shape) != rank) or len(input_shape) < 1:
            raise ValueError(
                f"{self.name}: expects inputs of rank {(rank or 1) + 1} (batch first), "
                f"got per-sample shape {input_shape}"
            )
        if any(d < 1 for d in input_shape):
            raise ValueError(f"{self.name}: input shape {input_shape} has an empty axis")
        self.dtype = np.dtype(dtype)
        if not np.issubdtype(self.dtype, np.floating):
            raise ValueError(f"{self.name}: dtype must be a float type, got {self.dtype}")
        output_shape = self.compute_output_shape(input_shape)
        self._create_weights(input_shape, rng if rng is not None else np.random.default_rng(0))
        self.input_shape = input_shape
        self.output_shape = output_shape
        self.built = True
        return output_shape

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def _create_weights(self, input_shape: tuple[int, ...], rng: np.random.Generator) -> None:
        """Layers with weights override this."""

    # -- running ------------------------------------------------------------------------
    def __call__(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        return self.forward(x, training=training)

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        """Output for a batch; caches what backward needs when ``training``.

        A layer called on its own checks its input: rank, channels, finite values (a
        ValueError naming the layer and the shapes). Inside a ``Sequential`` those checks
        happen once, on the model's input, and the layers run through ``_run``: every op
        below is then an unchecked kernel, which on one small image is most of the saving.
        """
        x = np.asarray(x)
        if not self.built:
            dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
            self.build(x.shape[1:], dtype=dtype)
        self._check_input(x)
        ops._check_finite(x, "x", f"{self.name}: layer input")
        return self._run(x, training)

    def _run(self, x: np.ndarray, training: bool) -> np.ndarray:
        """``forward`` for an input already checked (by the model or by ``forward``)."""
        cache: dict[str, Any] | None = {} if training else None
        y = self._forward(x, cache)
        self._cache = cache
        self._grads = None
        self.output = y
        return y

    def backward(self, dy: np.ndarray, need_dx: bool = True) -> np.ndarray | None:
        """dL/dx from dL/dy of the last training forward pass; stores the parameter gradients.

        ``need_dx=False`` lets a layer skip computing dL/dx (returning None where that saves
        work): a model's first layer never needs it during training.
        """
        if self._cache is None:
            raise RuntimeError(f"{self.name}: backward() needs a forward(x, training=True) first")
        dy = np.asarray(dy)
        if self.output is not None and dy.shape != self.output.shape:
            raise ValueError(
                f"{self.name}: dy has shape {dy.shape} but the last output had shape "
                f"{self.output.shape}"
            )
        return self._backward(dy, self._cache, need_dx)

    def _backprop(self, dy: np.ndarray, need_dx: bool) -> np.ndarray | None:
        """``backward`` for a ``dy`` right by construction (inside a model's backward pass)."""
        return self._backward(dy, self._cache, need_dx)

    def _check_input(self, x: np.ndarray) -> None:
        rank = self.expected_rank
        if rank is not None and x.ndim != rank + 1:
            raise ValueError(
                f"{self.name}: expects inputs of rank {rank + 1} (batch first), "
                f"got x with shape {x.shape}"
            )

    def _forward(self, x: np.ndarray, cache: dict | None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _backward(self, dy: np.ndarray, cache: dict, need_dx: bool) -> np.ndarray | None:
        raise NotImplementedError

    # -- weights ------------------------------------------------------------------------
    def params(self) -> list[np.ndarray]:
        """The trainable arrays themselves (optimizers update them in place)."""
        self._require_built()
        return [getattr(self, n) for n in self.param_names]

    def grads(self) -> list[np.ndarray]:
        """Gradients from the last backward pass, aligned with ``params()``."""
        if not self.param_names:
            return []
        if self._grads is None:
            raise RuntimeError(f"{self.name}: no gradients yet; call backward() first")
        return [self._grads[n] for n in self.param_names]

    def get_weights(self) -> list[np.ndarray]:
        return [p.copy() for p in self.params()]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Copy arrays into the layer's weights (shapes must match exactly)."""
        params = self.params()
        weights = list(weights)
        if len(weights) != len(params):
            raise ValueError(
                f"{self.name}: expected {len(params)} weight arrays {self.param_names}, "
                f"got {len(weights)}"
            )
        for pname, p, w in zip(self.param_names, params, weights, strict=True):
            w = np.asarray(w)
            if w.shape != p.shape:
                raise ValueError(f"{self.name}: {pname} must have shape {p.shape}, got {w.shape}")
            if not np.all(np.isfinite(w)):
                raise ValueError(f"{self.name}: {pname} contains non-finite values")
            np.copyto(p, w, casting="unsafe")

    def count_params(self) -> int:
        return int(sum(p.size for p in self.params())) if self.built else 0

    def _require_built(self) -> None:
        if not self.built:
            raise RuntimeError(
                f"{self.name}: not built yet; call build(input_shape) or run forward() first"
            )

    # -- configuration ------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as JSON-able values (``type(layer)(**config)`` rebuilds it)."""
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------- weighted layers
class _FusedActivation:
    """Conv2D and Dense: a linear map then an optional activation fused in, like Keras.

    The subclass keeps ``preactivation`` in forward and implements ``_backward_linear``;
    ``backward_linear`` lets a loss that works on logits skip the activation's backward.
    """

    def _backward(self, dy, cache, need_dx):
        dz = _activation_backward(self.activation, dy, self.preactivation, self.output)
        return self._backward_linear(dz, cache, need_dx)

    def backward_linear(self, dz: np.ndarray, need_dx: bool = True) -> np.ndarray | None:
        """Backward from dL/d(pre-activation), skipping the fused activation."""
        if self._cache is None:
            raise RuntimeError(f"{self.name}: backward needs a forward(x, training=True) first")
        dz = _like(self, np.asarray(dz), self.preactivation, "dz", "pre-activation")
        return self._backward_linear(dz, self._cache, need_dx)


class Conv2D(_FusedActivation, _Windowed, Layer):
    """2-D cross-correlation over NHWC inputs with an HWIO kernel, plus an optional activation.

    ``Conv2D(16, 3, activation="relu")`` is Keras's ``Conv2D(16, 3, activation="relu")``:
    same kernel layout, same 'same' padding rule, same weight order (kernel, bias).
    ``padding`` may also be an int (zero rows/columns on every side, as in the seed notebook).
    """

    base_name = "conv2d"

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: str | int = "valid",
        activation: str | None = None,
        use_bias: bool = True,
        input_channels: int | None = None,
        name: str | None = None,
    ):
        super().__init__(name)
        where = f"Conv2D {self.name!r}"
        self.filters = _positive_int(filters, "filters", where)
        self.kernel_size = _kernel_hw(kernel_size, where)
        self.stride = _int_or_pair(stride, "stride", where)
        self.padding = _check_padding(padding, where)
        self.activation = _check_activation(activation, where)
        self.use_bias = bool(use_bias)
        self.input_channels = (
            None
            if input_channels is None
            else _positive_int(input_channels, "input_channels", where)
        )
        self.param_names = ("kernel", "bias") if self.use_bias else ("kernel",)
        self.kernel: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        #: pre-activation of the last forward pass (equals ``output`` when linear)
        self.preactivation: np.ndarray | None = None
        self._window_hw = self.kernel_size

    @property
    def expected_rank(self) -> int:
        return 3

    def compute_output_shape(self, input_shape):
        h, w, c = input_shape
        if self.input_channels is not None and c != self.input_channels:
            raise ValueError(
                f"{self.name}: input has {c} channels but input_channels={self.input_channels}"
            )
        g = self._plan_for(input_shape)
        return (g.oh, g.ow, self.filters)

    def _create_weights(self, input_shape, rng):
        kh, kw = self.kernel_size
        cin = input_shape[-1]
        self.kernel = glorot_uniform(
            (kh, kw, cin, self.filters), kh * kw * cin, kh * kw * self.filters, rng, self.dtype
        )
        if self.use_bias:
            self.bias = np.zeros(self.filters, dtype=self.dtype)

    def _check_input(self, x):
        super()._check_input(x)
        cin = self.kernel.shape[2]
        if x.shape[-1] != cin:
            raise ValueError(
                f"{self.name}: input has {x.shape[-1]} channels (x shape {x.shape}) but the "
                f"kernel expects {cin} (kernel shape {self.kernel.shape})"
            )

    def _forward(self, x, cache):
        g = self._geometry_of(x)
        k = self.kernel
        dtype = x.dtype if x.dtype == k.dtype else np.result_type(x, k)
        z, cols = ops._conv2d_forward(x, k, self.bias, g, dtype)
        y = _apply_activation(self.activation, z)
        self.preactivation = z
        if cache is not None:
            cache["x"] = x
            cache["cols"] = cols  # the backward's dw is one matmul over the same columns
            cache["geometry"] = g
        return y

    def _backward_linear(self, dz, cache, need_dx):
        dx, dw, db = ops._conv2d_backward(
            dz,
            cache["x"],
            self.kernel,
            cache["geometry"],
            cols=cache["cols"],
            compute_dx=need_dx,
            compute_db=self.use_bias,
        )
        self._grads = {"kernel": dw}
        if self.use_bias:
            self._grads["bias"] = db
        return dx

    def get_config(self):
        return {
            "name": self.name,
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "stride": _jsonable(self.stride),
            "padding": self.padding,
            "activation": self.activation,
            "use_bias": self.use_bias,
            "input_channels": self.input_channels,
        }


class Dense(_FusedActivation, Layer):
    """Fully connected layer ``y = act(x @ kernel + bias)`` over the last axis (Keras's Dense)."""

    base_name = "dense"

    def __init__(
        self,
        units: int,
        activation: str | None = None,
        use_bias: bool = True,
        input_dim: int | None = None,
        name: str | None = None,
    ):
        super().__init__(name)
        where = f"Dense {self.name!r}"
        self.units = _positive_int(units, "units", where)
        self.activation = _check_activation(activation, where)
        self.use_bias = bool(use_bias)
        self.input_dim = None if input_dim is None else _positive_int(input_dim, "input_dim", where)
        self.param_names = ("kernel", "bias") if self.use_bias else ("kernel",)
        self.kernel: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        self.preactivation: np.ndarray | None = None

    def compute_output_shape(self, input_shape):
        if self.input_dim is not None and input_shape[-1] != self.input_dim:
            raise ValueError(
                f"{self.name}: input has {input_shape[-1]} features but input_dim={self.input_dim}"
            )
        return (*input_shape[:-1], self.units)

    def _create_weights(self, input_shape, rng):
        fan_in = input_shape[-1]
        self.kernel = glorot_uniform((fan_in, self.units), fan_in, self.units, rng, self.dtype)
        if self.use_bias:
            self.bias = np.zeros(self.units, dtype=self.dtype)

    def _check_input(self, x):
        if x.ndim < 2 or x.shape[-1] != self.kernel.shape[0]:
            raise ValueError(
                f"{self.name}: expects inputs shaped (batch, ..., {self.kernel.shape[0]}), got x "
                f"with shape {x.shape} (kernel shape {self.kernel.shape}); add a Flatten first?"
            )

    def _forward(self, x, cache):
        z = x @ self.kernel
        if self.use_bias:
            z = z + self.bias
        y = _apply_activation(self.activation, z)
        self.preactivation = z
        if cache is not None:
            cache["x"] = x
        return y

    def _backward_linear(self, dz, cache, need_dx):
        x = cache["x"]
        x2 = x.reshape(-1, x.shape[-1])
        dz2 = dz.reshape(-1, self.units)
        self._grads = {"kernel": x2.T @ dz2}
        if self.use_bias:
            self._grads["bias"] = dz2.sum(axis=0)
        return dz @ self.kernel.T if need_dx else None

    def get_config(self):
        return {
            "name": self.name,
            "units": self.units,
            "activation": self.activation,
            "use_bias": self.use_bias,
            "input_dim": self.input_dim,
        }


# --------------------------------------------------------------------------- parameter-free
class MaxPool2D(_Windowed, Layer):
    """Max pooling over NHWC inputs; stride defaults to the pool size (as in Keras)."""

    base_name = "max_pooling2d"

    def __init__(
        self,
        pool_size: int | tuple[int, int] = 2,
        stride: int | tuple[int, int] | None = None,
        padding: str = "valid",
        name: str | None = None,
    ):
        super().__init__(name)
        where = f"MaxPool2D {self.name!r}"
        self.pool_size = _int_or_pair(pool_size, "pool_size", where)
        self.stride = self.pool_size if stride is None else _int_or_pair(stride, "stride", where)
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
            raise ValueError(f"{where}: padding={padding!r} must be 'valid' or 'same'")
        self.padding = padding.lower()
        self._window_hw = self.pool_size

    @property
    def expected_rank(self) -> int:
        return 3

    def compute_output_shape(self, input_shape):
        g = self._plan_for(input_shape)
        return (g.oh, g.ow, input_shape[-1])

    def _forward(self, x, cache):
        g = self._geometry_of(x)
        xp = ops._pad(x, g.pads, value=ops._lowest(x.dtype))
        # index: where each window's (first) max sits, when the op gathers it (small inputs);
        # the backward is then a single scatter
        y, index = ops._max_pool2d_forward(xp, g)
        if cache is not None:
            cache["xp"] = xp
            cache["hw"] = x.shape[1:3]
            cache["geometry"] = g
            cache["index"] = index
        return y

    def _backward(self, dy, cache, need_dx):
        if not need_dx:
            return None
        h, w = cache["hw"]
        return ops._max_pool2d_backward(
            dy, cache["xp"], cache["geometry"], h, w, y=self.output, index=cache["index"]
        )

    def get_config(self):
        return {
            "name": self.name,
            "pool_size": _jsonable(self.pool_size),
            "stride": _jsonable(self.stride),
            "padding": self.padding,
        }


#: Keras's spelling
MaxPooling2D = MaxPool2D


class Flatten(Layer):
    """(N, H, W, C) -> (N, H*W*C) in row-major (channels-last) order, exactly like Keras."""

    base_name = "flatten"

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def _check_input(self, x):
        if x.ndim < 2:
            raise ValueError(f"{self.name}: expects a batch axis, got x with shape {x.shape}")

    def _forward(self, x, cache):
        if cache is not None:
            cache["shape"] = x.shape
        return x.reshape(x.shape[0], -1)

    def _backward(self, dy, cache, need_dx):
        return dy.reshape(cache["shape"])


class Activation(Layer):
    """An element-wise activation as its own layer (Keras's ``Activation(name)``)."""

    base_name = "activation"

    def __init__(self, activation: str, name: str | None = None):
        super().__init__(name)
        self.activation = _check_activation(activation, f"Activation {self.name!r}")

    def _forward(self, x, cache):
        y = _apply_activation(self.activation, x)
        if cache is not None:
            cache["x"] = x
        return y

    def _backward(self, dy, cache, need_dx):
        return _activation_backward(self.activation, dy, cache["x"], self.output)

    def get_config(self):
        return {"name": self.name, "activation": self.activation}


class _FixedActivation(Activation):
    fixed = "linear"

    def __init__(self, name: str | None = None):
        super().__init__(self.fixed, name=name)

    def get_config(self):
        return {"name": self.name}


class ReLU(_FixedActivation):
    """max(x, 0); the gradient at exactly 0 is 0 (as in TensorFlow)."""

    base_name = "relu"
    fixed = "relu"


class Sigmoid(_FixedActivation):
    base_name = "sigmoid"
    fixed = "sigmoid"


class Tanh(_FixedActivation):
    base_name = "tanh"
    fixed = "tanh"


class Softmax(_FixedActivation):
    """Softmax over the last axis."""

    base_name = "softmax"
    fixed = "softmax"


# --------------------------------------------------------------------------- (de)serialisation
LAYER_CLASSES: dict[str, type[Layer]] = {
    cls.__name__: cls
    for cls in (Conv2D, Dense, MaxPool2D, Flatten, Activation, ReLU, Sigmoid, Tanh, Softmax)
}


def serialize_layer(layer: Layer) -> dict[str, Any]:
    """``{"class_name": ..., "config": {...}}``, the shape Keras uses too."""
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def layer_from_config(spec: dict[str, Any]) -> Layer:
    """Inverse of ``serialize_layer``; unknown classes or arguments give a ValueError."""
    if not isinstance(spec, dict) or "class_name" not in spec:
        raise ValueError(f"layer spec must be a dict with 'class_name' and 'config', got {spec!r}")
    name = spec["class_name"]
    cls = LAYER_CLASSES.get(name)
    if cls is None:
        raise ValueError(f"unknown layer class {name!r}; known: {sorted(LAYER_CLASSES)}")
    config = spec.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"config of layer {name!r} must be a dict, got {config!r}")
    try:
        return cls.from_config(config)
    except TypeError as e:
        raise ValueError(f"bad config for layer {name!r}: {config!r} ({e})") from e

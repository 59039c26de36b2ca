"""Layers of the NumPy engine: small stateful wrappers around the functions in :mod:`ops`.

One protocol, so the model, the Keras bridge and the figures treat every layer alike:
``build(input_shape, rng, dtype)`` creates the weights once the per-sample input shape is
known and checks the arguments against it; ``forward(x, training)`` keeps its output in
``layer.output`` (for figures) and, when training, what ``backward(dy)`` needs; ``backward``
returns dL/dx and stores the gradients, read with ``grads()`` in the order of ``params()``
(kernel then bias, Keras's); ``get_config()`` gives the constructor arguments as JSON.

Conv2D and Dense fuse an activation like Keras and keep ``layer.preactivation``: a model
hands a sigmoid/softmax output layer's logits to the loss, as Keras does (stable, and what
makes the engines agree).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from convscope.scratch import ops
from convscope.validation import check_choice, check_int, standardize_tuple

# name -> (forward(z, out), backward(dy, z, y, out)): ReLU's derivative is defined on its
# input, the others' on their output, so the backward gets both. ReLU, the one on every conv
# layer's hot path, writes into ``out`` (a workspace result); the others return new arrays.
ACTIVATIONS: dict[str, tuple[Callable, Callable] | None] = {
    "linear": None,
    "relu": (ops.relu, lambda dy, z, y, out: ops.relu_backward(dy, z, out)),
    "sigmoid": (lambda z, out: ops.sigmoid(z), lambda dy, z, y, out: ops.sigmoid_backward(dy, y)),
    "tanh": (lambda z, out: ops.tanh(z), lambda dy, z, y, out: ops.tanh_backward(dy, y)),
    "softmax": (lambda z, out: ops.softmax(z), lambda dy, z, y, out: ops.softmax_backward(dy, y)),
}


def _activation(activation: str | None, where: str) -> str:
    """None means linear, as in Keras."""
    return "linear" if activation is None else check_choice(activation, where, ACTIVATIONS)


def _activate(activation: str, z: np.ndarray, ws: ops.Workspace) -> np.ndarray:
    fns = ACTIVATIONS[activation]
    return z if fns is None else fns[0](z, ws.result("y", z.shape, z.dtype))


def _activation_backward(activation, dy: np.ndarray, z, y, ws: ops.Workspace) -> np.ndarray:
    fns = ACTIVATIONS[activation]
    if fns is None:
        return dy
    return fns[1](dy, z, y, ws.result("dz", dy.shape, np.result_type(dy, z)))


def _window(layer, shape: tuple[int, ...], size) -> ops.Window:
    """A conv or pool layer's window over inputs of ``shape`` (``(H, W)`` or NHWC), or a
    ValueError naming the layer and the shape."""
    try:
        return ops.window(shape, size, layer.stride, layer.padding)
    except ValueError as e:
        raise ValueError(f"{layer.name}: input shape {shape}: {e}") from None


class _Windowed:
    """Conv2D's and MaxPool2D's window, resolved when built and again for another image size.

    A built layer takes other image sizes, as Keras's and the ops do; the window of the last
    size seen is kept, so a run of same-sized batches resolves it once.
    """

    stride: int | tuple[int, int]
    padding: str | int
    _win: ops.Window
    _win_hw: tuple[int, int]

    def _set_window(self, input_shape: tuple[int, ...], size) -> ops.Window:
        self._win, self._win_hw = _window(self, input_shape[:2], size), tuple(input_shape[:2])
        return self._win

    def _window_of(self, shape: tuple[int, ...], size) -> ops.Window:
        if shape[1:3] != self._win_hw:
            self._win, self._win_hw = _window(self, shape, size), shape[1:3]
        return self._win


def glorot_uniform(
    shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator, dtype
) -> np.ndarray:
    """Keras's default initialiser: U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype, copy=False)


class Layer:
    """Base class: building, the forward/backward protocol, weights and configuration."""

    #: default name; a Sequential model makes auto names unique (conv2d, conv2d_1, ...)
    base_name = "layer"
    #: names of the trainable arrays in Keras's order (attributes of the layer)
    param_names: tuple[str, ...] = ()
    #: rank of one sample (without the batch axis) the layer accepts; None: any >= 1
    expected_rank: int | None = None
    #: the constructor arguments, kept as attributes of the same names (see get_config)
    config_keys: tuple[str, ...] = ("name",)

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
        #: output of the last forward pass (for feature-map figures)
        self.output: np.ndarray | None = None
        self._cache: dict[str, Any] | None = None
        self._grads: dict[str, np.ndarray] | None = None
        self._new_workspaces()

    def _new_workspaces(self) -> None:
        # A training step's arrays (outputs, gradients and scratch) are kept and overwritten
        # by the next step, which allocates nothing; inference keeps only its scratch and
        # returns new arrays, which a caller may keep (predict, feature maps).
        self._workspaces = {True: ops.Workspace(keep_results=True), False: ops.Workspace()}

    def replica(self) -> Layer:
        """A copy that computes with this layer's weights (the same arrays) and keeps its own
        outputs, caches, gradients and workspaces: one per thread of a data-parallel step."""
        twin = copy.copy(self)
        twin.output = twin._cache = twin._grads = None
        if hasattr(twin, "preactivation"):
            twin.preactivation = None
        twin._new_workspaces()
        return twin

    def build(self, input_shape, rng: np.random.Generator | None = None, dtype=np.float32):
        """Create the weights for inputs ``(batch, *input_shape)``; return the output shape.

        A built layer keeps its weights but must see the same input shape again.
        """
        input_shape = tuple(int(d) for d in input_shape)
        if self.built:
            if input_shape != self.input_shape:
                raise ValueError(
                    f"{self.name}: already built for input shape {self.input_shape}, "
                    f"cannot rebuild for {input_shape}"
                )
            return self.output_shape
        rank = self.expected_rank
        if len(input_shape) != (rank or max(len(input_shape), 1)):
            raise ValueError(
                f"{self.name}: expects inputs of rank {(rank or 1) + 1} (batch first), "
                f"got per-sample shape {input_shape}"
            )
        if any(d < 1 for d in input_shape):
            raise ValueError(f"{self.name}: input shape {input_shape} has an empty axis")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"{self.name}: dtype must be a float type, got {self.dtype}")
        self.output_shape = self.compute_output_shape(input_shape)
        self._create_weights(input_shape, rng if rng is not None else np.random.default_rng(0))
        self.input_shape = input_shape
        self.built = True
        return self.output_shape

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def _create_weights(self, input_shape: tuple[int, ...], rng: np.random.Generator) -> None:
        """Layers with weights override this."""

    def __call__(self, x, training: bool = True) -> np.ndarray:
        return self.forward(x, training=training)

    def forward(self, x, training: bool = True) -> np.ndarray:
        """Output for a batch (built on the first call); keeps what backward needs when training.

        Values are not scanned here: the model checks its input once.
        """
        x = np.asarray(x)
        if not self.built:
            self.build(x.shape[1:], dtype=x.dtype if x.dtype.kind == "f" else np.float32)
        if self.expected_rank is not None and x.ndim != self.expected_rank + 1:
            raise ValueError(
                f"{self.name}: expects inputs of rank {self.expected_rank + 1} (batch first), "
                f"got x with shape {x.shape}"
            )
        cache: dict[str, Any] | None = {} if training else None
        self.output = self._forward(x, cache)
        self._cache = cache
        self._grads = None
        return self.output

    def backward(self, dy, need_dx: bool = True) -> np.ndarray | None:
        """dL/dx from dL/dy of the last training forward; stores the parameter gradients.

        ``need_dx=False`` may skip dL/dx (None): a model's first layer never needs it.
        """
        return self._backward(self._upstream(dy, "dy", self.output, "output"), self._cache, need_dx)

    def _upstream(self, d, name: str, last: np.ndarray, what: str) -> np.ndarray:
        """A backward's incoming gradient ``d``, shaped like ``last``, after a training forward."""
        if self._cache is None:
            raise RuntimeError(f"{self.name}: backward() needs a forward(x, training=True) first")
        d = np.asarray(d)
        if d.shape != last.shape:
            raise ValueError(
                f"{self.name}: {name} has shape {d.shape} but the last {what} had shape "
                f"{last.shape}"
            )
        return d

    def _forward(self, x: np.ndarray, cache: dict | None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _backward(self, dy: np.ndarray, cache: dict, need_dx: bool) -> np.ndarray | None:
        raise NotImplementedError  # pragma: no cover

    # -- weights ------------------------------------------------------------------------
    def params(self) -> list[np.ndarray]:
        """The trainable arrays themselves (optimizers update them in place)."""
        if not self.built:
            raise RuntimeError(
                f"{self.name}: not built yet; call build(input_shape) or run forward() first"
            )
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

    def set_weights(self, weights) -> None:
        """Copy arrays into the layer's weights (shapes must match exactly, values finite)."""
        params, weights = self.params(), list(weights)
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

    # -- configuration ------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as JSON-able values (``type(layer)(**config)`` rebuilds it)."""
        config = {k: getattr(self, k) for k in self.config_keys}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class _FusedActivation(Layer):
    """Conv2D and Dense: a linear map, then an optional fused activation, like Keras."""

    def _init_fused(self, activation: str | None, use_bias: bool) -> None:
        self.activation = _activation(
            activation, f"{type(self).__name__} {self.name!r}: activation"
        )
        self.use_bias = bool(use_bias)
        self.param_names = ("kernel", "bias") if self.use_bias else ("kernel",)
        self.kernel: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        #: pre-activation of the last forward pass (equals ``output`` when linear)
        self.preactivation: np.ndarray | None = None

    def _backward(self, dy, cache, need_dx):
        ws = self._workspaces[True]
        dz = _activation_backward(self.activation, dy, self.preactivation, self.output, ws)
        return self._backward_linear(dz, cache, need_dx)

    def backward_linear(self, dz, need_dx: bool = True) -> np.ndarray | None:
        """Backward from dL/d(pre-activation), skipping the fused activation."""
        dz = self._upstream(dz, "dz", self.preactivation, "pre-activation")
        return self._backward_linear(dz, self._cache, need_dx)

    def _set_grads(self, dw: np.ndarray, db: np.ndarray | None) -> None:
        self._grads = {"kernel": dw, "bias": db} if self.use_bias else {"kernel": dw}


class Conv2D(_Windowed, _FusedActivation):
    """Keras's ``Conv2D``; ``padding`` may also be an int (zeros on every side, as in the seed)."""

    base_name = "conv2d"
    expected_rank = 3
    config_keys = ("name", "filters", "kernel_size", "stride", "padding", "activation")
    config_keys += ("use_bias", "input_channels")

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int = "valid",
        activation: str | None = None,
        use_bias: bool = True,
        input_channels: int | None = None,
        name: str | None = None,
    ):
        super().__init__(name)
        where = f"Conv2D {self.name!r}"
        self.filters = check_int(filters, f"{where}: filters", min=1)
        self.kernel_size = standardize_tuple(kernel_size, 2, f"{where}: kernel_size")
        self.stride = standardize_tuple(stride, 2, f"{where}: stride")
        if isinstance(padding, str):
            padding = check_choice(padding.lower(), f"{where}: padding", ("valid", "same"))
        else:
            padding = check_int(padding, f"{where}: padding", min=0)
        self.padding = padding
        self.input_channels = (
            None if input_channels is None else check_int(input_channels, "input_channels", min=1)
        )
        self._init_fused(activation, use_bias)

    def compute_output_shape(self, input_shape):
        if self.input_channels is not None and input_shape[2] != self.input_channels:
            raise ValueError(
                f"{self.name}: input has {input_shape[2]} channels but "
                f"input_channels={self.input_channels}"
            )
        win = self._set_window(input_shape, self.kernel_size)
        return win.oh, win.ow, self.filters

    def _create_weights(self, input_shape, rng):
        (kh, kw), cin = self.kernel_size, input_shape[-1]
        self.kernel = glorot_uniform(
            (kh, kw, cin, self.filters), kh * kw * cin, kh * kw * self.filters, rng, self.dtype
        )
        if self.use_bias:
            self.bias = np.zeros(self.filters, dtype=self.dtype)

    def _check_channels(self, x: np.ndarray) -> None:
        if x.shape[3] != self.kernel.shape[2]:
            raise ValueError(
                f"{self.name}: x has {x.shape[3]} channels but the kernel has "
                f"{self.kernel.shape[2]} (x.shape={x.shape}, kernel.shape={self.kernel.shape})"
            )

    def _forward(self, x, cache):
        self._check_channels(x)
        win = self._window_of(x.shape, self.kernel_size)
        ws = self._workspaces[cache is not None]
        z, cols = ops._conv_forward(x, self.kernel, self.bias, win, ws)
        self.preactivation = z
        if cache is not None:  # dw is one matmul over the same columns
            cache["shape"], cache["window"], cache["cols"] = x.shape, win, cols
        return _activate(self.activation, z, ws)

    def _backward_linear(self, dz, cache, need_dx):
        tile, ws = cache.get("tile"), self._workspaces[True]
        if tile is not None:  # the columns' rows are in the pool's window-major order
            dz = ops._tiled(dz, tile, ws.scratch("dz", cache["z"].shape, dz.dtype))
        dx, dw, db = ops._conv_backward(
            dz, cache["shape"], self.kernel, cache["window"], cache["cols"], ws, need_dx, tile
        )
        self._set_grads(dw, db)
        return dx

    # -- a conv and the max pool after it, in one pass -----------------------------------
    # When a max pool tiles this layer's output (ops._tiles), a training forward may compute
    # the output straight in the pool's window-major order: the pool is then a few maxima
    # over contiguous blocks, and its backward writes the gradient in the order the columns'
    # product wants, with no copy either way. The activation must commute with the max
    # (act(max z) = max act(z)) and have its mask decided by the pooled value: ReLU, linear.
    # ``output`` and ``preactivation`` are made in NHWC only when something reads them.

    #: activations a pooled forward accepts
    POOLED_ACTIVATIONS = ("relu", "linear")

    @property
    def preactivation(self) -> np.ndarray | None:
        cache = self._cache
        if self._preactivation is None and cache is not None and "tile" in cache:
            z, win = cache["z"], cache["window"]
            shape = (z.shape[1], win.oh, win.ow, z.shape[-1])
            out = self._workspaces[True].result("z", shape, z.dtype)
            self._preactivation = ops._untiled(z, cache["tile"], out)
        return self._preactivation

    @preactivation.setter
    def preactivation(self, value: np.ndarray | None) -> None:
        self._preactivation = value

    @property
    def output(self) -> np.ndarray | None:
        cache = self._cache
        if self._output is None and cache is not None and "tile" in cache:
            self._output = _activate(self.activation, self.preactivation, self._workspaces[True])
        return self._output

    @output.setter
    def output(self, value: np.ndarray | None) -> None:
        self._output = value

    def forward_pooled(self, x: np.ndarray, pool: MaxPool2D) -> np.ndarray:
        """A training forward of this layer and of ``pool``, the max pool that takes its
        output: the pool's output, as ``pool.forward(self.forward(x))`` gives it.

        Both layers are then left as after those two calls (what their ``backward``, their
        ``output`` and this layer's ``preactivation`` give), and :meth:`backward_pooled`
        runs both backwards at once. When the pool does not tile the output or the activation
        does not commute with the max, it is those two calls.
        """
        tile = None
        if self.built and pool.built and x.ndim == 4 and self.activation in self.POOLED_ACTIVATIONS:
            win = self._window_of(x.shape, self.kernel_size)
            pool_win = pool._window_of((x.shape[0], win.oh, win.ow, self.filters), pool.pool_size)
            tile = ops._tiles(win, pool_win)
        if tile is None:
            return pool.forward(self.forward(x, True), True)
        self._check_channels(x)
        ws = self._workspaces[True]
        z, cols = ops._conv_forward(x, self.kernel, self.bias, win, ws, tile)
        top = ops._window_max(z, ws.scratch("max", z.shape[1:], z.dtype))  # before activation
        self._cache = dict(shape=x.shape, window=win, cols=cols, tile=tile, z=z, max=top)
        self._output = self._preactivation = self._grads = None
        pool.output = _activate(self.activation, top, pool._workspaces[True])
        shape = (x.shape[0], win.oh, win.ow, self.filters)
        pool._cache = {"shape": shape, "window": pool_win, "tiled_by": self}
        pool._grads = None
        return pool.output

    def pooled_windows(self) -> np.ndarray:
        """The output of the last pooled forward in the pool's window-major order
        ``(PH*PW, N, OH/PH, OW/PW, F)``, what the pool's own forward would have copied."""
        return _activate(self.activation, self._cache["z"], self._workspaces[True])

    def backward_pooled(self, dy: np.ndarray, pool: MaxPool2D, need_dx: bool = True):
        """dL/dx of this layer from dL/d(the pool's output), after :meth:`forward_pooled`;
        stores this layer's gradients, as ``pool.backward`` then ``self.backward`` would.

        The pooled value decides the activation's mask (ReLU is active at a window's max
        exactly when the max is > 0), so the mask is applied on the pooled grid, and the
        gradient reaches each window's first maximum of the pre-activation in the window-major
        order the columns' product reads.
        """
        cache = self._cache
        dy = pool._upstream(dy, "dy", pool.output, "output")
        ws = self._workspaces[True]
        if self.activation == "relu":
            dy = ops.relu_backward(dy, pool.output, ws.scratch("dy", dy.shape, dy.dtype))
        dz = ops._max_grads(dy, cache["max"], cache["z"], ws)
        dx, dw, db = ops._conv_backward(
            dz, cache["shape"], self.kernel, cache["window"], cache["cols"], ws, need_dx,
            cache["tile"],
        )  # fmt: skip
        self._set_grads(dw, db)
        return dx


class Dense(_FusedActivation):
    """Fully connected layer ``y = act(x @ kernel + bias)`` over the last axis (Keras's Dense)."""

    base_name = "dense"
    config_keys = ("name", "units", "activation", "use_bias", "input_dim")

    def __init__(
        self,
        units: int,
        activation: str | None = None,
        use_bias: bool = True,
        input_dim: int | None = None,
        name: str | None = None,
    ):
        super().__init__(name)
        self.units = check_int(units, f"Dense {self.name!r}: units", min=1)
        self.input_dim = None if input_dim is None else check_int(input_dim, "input_dim", min=1)
        self._init_fused(activation, use_bias)

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

    def _forward(self, x, cache):
        if x.ndim < 2 or x.shape[-1] != self.kernel.shape[0]:
            raise ValueError(
                f"{self.name}: expects inputs shaped (batch, ..., {self.kernel.shape[0]}), got x "
                f"with shape {x.shape} (kernel shape {self.kernel.shape}); add a Flatten first?"
            )
        ws = self._workspaces[cache is not None]
        z = ws.result("z", (*x.shape[:-1], self.units), np.result_type(x, self.kernel))
        ops._gemm(x.reshape(-1, x.shape[-1]), self.kernel, z.reshape(-1, self.units))
        if self.use_bias:
            z += self.bias
        self.preactivation = z
        if cache is not None:
            cache["x"] = x
        return _activate(self.activation, z, ws)

    def _backward_linear(self, dz, cache, need_dx):
        x, ws = cache["x"], self._workspaces[True]
        x2, dz2 = x.reshape(-1, x.shape[-1]), dz.reshape(-1, self.units)
        dw = ws.result("dw", self.kernel.shape, np.result_type(x2, dz2))
        ops._gemm(x2.T, dz2, dw)
        self._set_grads(dw, np.add.reduce(dz2, axis=0) if self.use_bias else None)
        if not need_dx:
            return None
        dx = ws.result("dx", x.shape, np.result_type(dz, self.kernel))
        ops._gemm(dz2, self.kernel.T, dx.reshape(x2.shape))
        return dx


class MaxPool2D(_Windowed, Layer):
    """Keras's ``MaxPooling2D`` (stride defaults to the pool size)."""

    base_name = "max_pooling2d"
    expected_rank = 3
    config_keys = ("name", "pool_size", "stride", "padding")

    def __init__(
        self,
        pool_size: int | tuple[int, int] = 2,
        stride: int | tuple[int, int] | None = None,
        padding: str = "valid",
        name: str | None = None,
    ):
        super().__init__(name)
        where = f"MaxPool2D {self.name!r}"
        self.pool_size = standardize_tuple(pool_size, 2, f"{where}: pool_size")
        stride = self.pool_size if stride is None else stride
        self.stride = standardize_tuple(stride, 2, f"{where}: stride")
        padding = padding.lower() if isinstance(padding, str) else padding
        self.padding = check_choice(padding, f"{where}: padding", ("valid", "same"))

    def compute_output_shape(self, input_shape):
        win = self._set_window(input_shape, self.pool_size)
        return win.oh, win.ow, input_shape[-1]

    def _forward(self, x, cache):
        win = self._window_of(x.shape, self.pool_size)
        y, windows = ops._pool_forward(x, win, self._workspaces[cache is not None])
        if cache is not None:
            cache["shape"], cache["window"], cache["windows"] = x.shape, win, windows
        return y

    @property
    def tiled_by(self) -> Conv2D | None:
        """The conv whose :meth:`Conv2D.forward_pooled` made the last training forward."""
        return None if self._cache is None else self._cache.get("tiled_by")

    def _backward(self, dy, cache, need_dx):
        if not need_dx:
            return None
        shape, win = cache["shape"], cache["window"]
        conv = cache.get("tiled_by")
        windows = cache["windows"] if conv is None else conv.pooled_windows()
        return ops._pool_backward(dy, shape, self.output, windows, win, self._workspaces[True])


#: Keras's spelling
MaxPooling2D = MaxPool2D


class Flatten(Layer):
    """(N, H, W, C) -> (N, H*W*C) in row-major (channels-last) order, exactly like Keras."""

    base_name = "flatten"

    def compute_output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def _forward(self, x, cache):
        if cache is not None:
            cache["shape"] = x.shape
        return x.reshape(x.shape[0], -1)

    def _backward(self, dy, cache, need_dx):
        return dy.reshape(cache["shape"])


class Activation(Layer):
    """An element-wise activation as its own layer (Keras's ``Activation(name)``)."""

    base_name = "activation"
    config_keys = ("name", "activation")

    def __init__(self, activation: str, name: str | None = None):
        super().__init__(name)
        self.activation = _activation(activation, f"Activation {self.name!r}: activation")

    def _forward(self, x, cache):
        if cache is not None:
            cache["x"] = x
        return _activate(self.activation, x, self._workspaces[cache is not None])

    def _backward(self, dy, cache, need_dx):
        ws = self._workspaces[True]
        return _activation_backward(self.activation, dy, cache["x"], self.output, ws)


class _FixedActivation(Activation):
    fixed = "linear"
    config_keys = ("name",)

    def __init__(self, name: str | None = None):
        super().__init__(self.fixed, name=name)


class ReLU(_FixedActivation):
    base_name = fixed = "relu"


class Sigmoid(_FixedActivation):
    base_name = fixed = "sigmoid"


class Tanh(_FixedActivation):
    base_name = fixed = "tanh"


class Softmax(_FixedActivation):
    """Softmax over the last axis."""

    base_name = fixed = "softmax"


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
    cls = LAYER_CLASSES.get(spec["class_name"])
    if cls is None:
        raise ValueError(
            f"unknown layer class {spec['class_name']!r}; known: {sorted(LAYER_CLASSES)}"
        )
    config = spec.get("config", {})
    try:
        return cls.from_config(config)
    except TypeError as e:
        raise ValueError(f"bad config for layer {spec['class_name']!r}: {config!r} ({e})") from e


#: the public classes and functions above, and the two tables
__all__ = ["ACTIVATIONS", "LAYER_CLASSES"] + sorted(
    n for n, v in globals().items() if n[0] != "_" and getattr(v, "__module__", "") == __name__
)

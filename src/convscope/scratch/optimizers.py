"""SGD (with momentum) and Adam, in Keras 3's exact update form, updating arrays in place.

Keras's formulas are followed operation for operation (see ``keras/src/optimizers/sgd.py`` and
``adam.py``), including computing in the variable's dtype, so one step of either engine from
the same state gives the same weights to float32 rounding:

* SGD: ``m = momentum * m - lr * g``; ``p += m`` (Nesterov: ``p += momentum * m - lr * g``);
  without momentum ``p -= lr * g``.
* Adam: ``t = iterations + 1``; ``alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)``;
  ``m += (g - m) * (1 - beta_1)``; ``v += (g**2 - v) * (1 - beta_2)``;
  ``p -= alpha * m / (sqrt(v) + epsilon)``. The bias correction sits in ``alpha`` (not in m and
  v) and epsilon is added outside the square root, which is why Keras's default epsilon is 1e-7.

Slots (momenta, Adam's m and v) are created on the first ``step`` and tied to positions in the
params list, which is how Keras ties them to its variable list. ``get_state``/``set_state`` move
them (and the iteration count) in and out as plain arrays, for checkpoints.

Every update is elementwise, so the params laid end to end in one vector take one update of the
whole vector, with the same numbers: ``step_flat`` does that for a trainer whose weights and
gradients are such vectors (a handful of large array operations a step instead of a handful per
parameter); the slots then are views of vectors laid out alike, one per parameter as ever.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from convscope.validation import check_float

__all__ = ["Adam", "Optimizer", "SGD", "get", "optimizer_from_config"]


def vector_views(vector: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Consecutive views of the 1-D ``vector``, one shaped like each of ``shapes``: the
    per-parameter arrays of parameters laid end to end."""
    bounds = np.cumsum([math.prod(s) for s in shapes])[:-1]
    return [v.reshape(s) for v, s in zip(np.split(vector, bounds), shapes, strict=True)]


def _unit(value: Any, name: str) -> float:
    """A number in [0, 1): momentum and Adam's betas."""
    return check_float(value, name, min=0.0, max=1.0, max_open=True)


class Optimizer:
    """Base: argument checks, lazy slot creation and state (de)serialisation."""

    name = "optimizer"
    slot_names: tuple[str, ...] = ()

    def __init__(self, learning_rate: float):
        self.learning_rate = check_float(learning_rate, "learning_rate", min=0.0, min_open=True)
        self.iterations = 0
        self._slots: dict[str, list[np.ndarray]] | None = None
        # step_flat's slot vectors and the per-parameter views it made of them
        self._flat: tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]]] | None = None

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        """Apply one update to ``params`` in place from ``grads`` (same order and shapes)."""
        params, grads = list(params), list(grads)
        if len(params) != len(grads):
            raise ValueError(f"{self._where()}: got {len(params)} params but {len(grads)} grads")
        for i, p in enumerate(params):
            g = grads[i]
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                raise ValueError(f"{self._where()}: params[{i}] must be a float ndarray")
            if not isinstance(g, np.ndarray) or g.dtype != p.dtype:
                grads[i] = g = np.asarray(g).astype(p.dtype, copy=False)  # as Keras casts
            if g.shape != p.shape:
                raise ValueError(
                    f"{self._where()}: grads[{i}].shape={g.shape} differs from params[{i}].shape="
                    f"{p.shape}"
                )
        if self._slots is None:
            self._slots = {name: [np.zeros_like(p) for p in params] for name in self.slot_names}
        elif self.slot_names:
            slots = next(iter(self._slots.values()), [])
            if len(slots) != len(params) or any(
                s.shape != p.shape for s, p in zip(slots, params, strict=True)
            ):
                raise ValueError(
                    f"{self._where()}: the optimizer was set up for parameter shapes "
                    f"{[s.shape for s in slots]}, got {[p.shape for p in params]}; use a new "
                    f"optimizer for a new model"
                )
        for i, p in enumerate(params):
            self._update(p, grads[i], {name: self._slots[name][i] for name in self.slot_names}, i)
        self.iterations += 1

    def step_flat(self, flat: np.ndarray, grad: np.ndarray, params: Sequence[np.ndarray]) -> None:
        """``step(params, grads)`` for ``params`` that lie end to end in the 1-D ``flat``, in
        order, with their gradients laid out alike in ``grad``: one update of ``flat``.

        The slots are views of vectors laid out like ``flat`` (:meth:`flat_slots`), so
        ``get_state`` and ``step`` see them per parameter as before.
        """
        self.update_flat(flat, grad, self.flat_slots(flat, params))
        self.iterations += 1

    def update_flat(
        self, flat: np.ndarray, grad: np.ndarray, slots: dict[str, np.ndarray], part=slice(None)
    ) -> None:
        """The update of ``flat[part]`` from ``grad[part]`` and the slot vectors ``slots`` (by
        name, laid out like ``flat``) at this step's ``iterations``, which it leaves as they
        are: a step may update its vector part by part, in other processes too, and is counted
        once (:meth:`step_flat` is this on the whole vector, then the count)."""
        if flat.ndim != 1 or grad.shape != flat.shape or grad.dtype != flat.dtype:
            raise ValueError(
                f"{type(self).__name__}.update_flat: flat {flat.shape} {flat.dtype} and grad "
                f"{grad.shape} {grad.dtype} must be 1-D vectors of one shape and dtype"
            )
        key = ("flat", *part.indices(flat.size))
        self._update(flat[part], grad[part], {n: v[part] for n, v in slots.items()}, key)

    def flat_slots(
        self,
        flat: np.ndarray,
        params: Sequence[np.ndarray],
        out: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """The slot vectors (by name) of ``params`` lying end to end in ``flat``, in ``out``'s
        vectors when given (shared memory, say); the per-parameter slots become views of them.

        Made once, from the slots as they are (zeros before the first step), and again after
        ``set_state`` or for other vectors.
        """
        if sum(p.size for p in params) != flat.size:
            raise ValueError(
                f"{type(self).__name__}.step_flat: params of {sum(p.size for p in params)} "
                f"values do not cover the {flat.size} of flat"
            )
        if not self.slot_names:
            return {}
        slots = self._slots
        if self._flat is not None and slots is not None:
            vectors, views = self._flat
            mine = all(list(map(id, slots[n])) == list(map(id, views[n])) for n in self.slot_names)
            if out is not None:
                mine = mine and all(vectors[n] is out[n] for n in self.slot_names)
            if mine and [s.shape for s in slots[self.slot_names[0]]] == [p.shape for p in params]:
                return vectors
        vectors, views = {}, {}
        for name in self.slot_names:
            vector = np.zeros_like(flat) if out is None else out[name]
            if vector.shape != flat.shape or vector.dtype != flat.dtype:
                raise ValueError(
                    f"{type(self).__name__}.flat_slots: slot vector {name!r} is "
                    f"{vector.shape} {vector.dtype}, flat {flat.shape} {flat.dtype}"
                )
            views[name] = vector_views(vector, [p.shape for p in params])
            if slots is None:
                vector.fill(0)
            else:
                old = slots[name]
                if [s.shape for s in old] != [p.shape for p in params]:
                    raise ValueError(
                        f"{type(self).__name__}.step_flat: the optimizer was set up for "
                        f"parameter shapes {[s.shape for s in old]}, got "
                        f"{[p.shape for p in params]}; use a new optimizer for a new model"
                    )
                for view, s in zip(views[name], old, strict=True):
                    if view is not s:
                        view[...] = s
            vectors[name] = vector
        self._slots = views
        self._flat = (vectors, {name: list(v) for name, v in views.items()})
        return vectors

    def _where(self) -> str:
        return f"{type(self).__name__}.step"

    def _update(self, p: np.ndarray, g: np.ndarray, slots: dict[str, np.ndarray], key) -> None:
        """Update ``p`` in place from ``g`` and its ``slots`` (by slot name); ``key`` names
        ``p`` for reused temporaries."""
        raise NotImplementedError  # pragma: no cover

    # -- state --------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "learning_rate": self.learning_rate}

    def get_state(self) -> dict[str, np.ndarray]:
        """``iterations`` and every slot array (``<slot>.<index>``), as copies."""
        state = {"iterations": np.array(self.iterations, dtype=np.int64)}
        for name, arrays in (self._slots or {}).items():
            for i, a in enumerate(arrays):
                state[f"{name}.{i}"] = a.copy()
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``get_state`` returned (slots absent: not stepped yet)."""
        if "iterations" not in state:
            raise ValueError(f"{type(self).__name__}.set_state: 'iterations' is missing")
        iterations = int(np.asarray(state["iterations"]))
        if iterations < 0:
            raise ValueError(f"{type(self).__name__}.set_state: iterations={iterations} < 0")
        slots: dict[str, list[np.ndarray]] = {}
        for name in self.slot_names:
            keys = sorted(
                (k for k in state if k.startswith(f"{name}.")), key=lambda k: int(k.split(".")[1])
            )
            if [int(k.split(".")[1]) for k in keys] != list(range(len(keys))):
                raise ValueError(f"{type(self).__name__}.set_state: slot {name!r} has gaps")
            slots[name] = [np.array(state[k], copy=True) for k in keys]
        counts = {len(v) for v in slots.values()}
        if len(counts) > 1:
            raise ValueError(f"{type(self).__name__}.set_state: slot lists differ in length")
        self.iterations = iterations
        self._slots = slots if slots and counts != {0} else None
        self._flat = None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum; Keras's defaults."""

    name = "sgd"

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False):
        super().__init__(learning_rate)
        self.momentum = _unit(momentum, "momentum")
        self.nesterov = bool(nesterov)
        self.slot_names = ("momentum",) if self.momentum > 0 else ()

    def _update(self, p, g, slots, key):
        if not self.slot_names:
            p -= p.dtype.type(self.learning_rate) * g
            return
        lr = p.dtype.type(self.learning_rate)
        mom = p.dtype.type(self.momentum)
        m = slots["momentum"]
        m *= mom
        m -= lr * g
        if self.nesterov:
            p += m * mom - lr * g
        else:
            p += m

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam in Keras's form (bias correction folded into the step size, epsilon 1e-7)."""

    name = "adam"
    slot_names = ("m", "v")

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
    ):
        super().__init__(learning_rate)
        self.beta_1 = _unit(beta_1, "beta_1")
        self.beta_2 = _unit(beta_2, "beta_2")
        self.epsilon = check_float(epsilon, "epsilon", min=0.0, min_open=True)
        self._cached_constants: tuple = (None, None)
        self._scratch: dict[object, tuple[np.ndarray, np.ndarray]] = {}

    def _update(self, p, g, slots, key):
        b1, b2, alpha, eps = self._constants(p.dtype)
        m, v = slots["m"], slots["v"]
        t, u = self._temporaries(key, p)
        # Keras's expressions, each operation in the same order, into reused temporaries:
        # m += (g - m) * (1 - beta_1);  v += (g**2 - v) * (1 - beta_2)
        np.subtract(g, m, out=t)
        t *= b1
        m += t
        np.square(g, out=t)
        t -= v
        t *= b2
        v += t
        # p -= (m * alpha) / (sqrt(v) + epsilon)
        np.multiply(m, alpha, out=t)
        np.sqrt(v, out=u)
        u += eps
        t /= u
        p -= t

    def _constants(self, dtype: np.dtype) -> tuple:
        """``(1 - beta_1, 1 - beta_2, alpha, epsilon)`` in ``dtype`` for this step, computed
        once per step: ``1 - beta`` in Python floats, then cast, as Keras's
        ``(g - m) * (1 - self.beta_1)``; ``alpha`` from ``t = iterations + 1`` in ``dtype``."""
        key = (self.iterations, dtype)
        if self._cached_constants[0] != key:
            dt = dtype.type
            t = dt(self.iterations + 1)
            b1, b2 = dt(self.beta_1), dt(self.beta_2)
            alpha = dt(self.learning_rate) * np.sqrt(1 - np.power(b2, t)) / (1 - np.power(b1, t))
            values = (dt(1 - self.beta_1), dt(1 - self.beta_2), alpha, dt(self.epsilon))
            self._cached_constants = (key, values)
        return self._cached_constants[1]

    def _temporaries(self, key, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pair = self._scratch.get(key)
        if pair is None or pair[0].shape != p.shape or pair[0].dtype != p.dtype:
            pair = self._scratch[key] = (np.empty_like(p), np.empty_like(p))
        return pair

    def get_config(self):
        betas = {"beta_1": self.beta_1, "beta_2": self.beta_2}
        return {**super().get_config(), **betas, "epsilon": self.epsilon}


_OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam}


def optimizer_from_config(config: dict[str, Any]) -> Optimizer:
    """Inverse of ``get_config``."""
    config = dict(config)
    name = config.pop("name", None)
    cls = _OPTIMIZERS.get(str(name).lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; known: {sorted(_OPTIMIZERS)}")
    try:
        return cls(**config)
    except TypeError as e:
        raise ValueError(f"bad config for optimizer {name!r}: {config!r} ({e})") from e


def get(optimizer: str | Optimizer, **kwargs) -> Optimizer:
    """An optimizer from its name (``"adam"``, ``"sgd"``) and arguments, or as given."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str):
        return optimizer_from_config({"name": optimizer, **kwargs})
    raise ValueError(f"optimizer={optimizer!r} must be 'adam', 'sgd' or an Optimizer")

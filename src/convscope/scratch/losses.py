"""Losses and accuracy metrics of the NumPy engine, each returning the gradient with the value.

Every loss returns ``(mean_loss, d mean_loss / d y_pred)``: there is no autodiff, so the
derivative sits next to the formula. The formulas are Keras 3's (TensorFlow backend), so the
engines agree: probabilities are clipped to ``[1e-7, 1 - 1e-7]`` (``backend.epsilon()``)
before the log, with zero gradient where the clip is active (as ``tf.clip_by_value``'s);
from logits, binary cross-entropy is ``max(z, 0) - z * t + log1p(exp(-|z|))`` and the
categorical one a max-shifted log-softmax, so no logit overflows; the reduction is the mean
over samples (and outputs). Like Keras, ``training.fit`` takes a sigmoid/softmax output
layer's loss from its logits (``Loss.output_activation``, ``Sequential.logits``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from convscope.scratch.ops import _float

#: Keras's fuzz factor, ``keras.backend.epsilon()``
EPSILON = 1e-7


def _check_finite(a: np.ndarray, name: str, fn: str) -> None:
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{fn}: {name} contains non-finite values ({name}.shape={a.shape})")


def _binary_targets(y_true, y_pred: np.ndarray, fn: str, check: bool = True) -> np.ndarray:
    """Targets shaped like ``y_pred`` ((n,) for (n, 1) outputs too); ``check``: finite."""
    t = np.asarray(y_true)
    if t.shape != y_pred.shape:
        if t.size == y_pred.size and t.ndim == y_pred.ndim - 1 and y_pred.shape[-1] == 1:
            t = t.reshape(y_pred.shape)
        else:
            raise ValueError(f"{fn}: y_true.shape={t.shape} must equal y_pred.shape={y_pred.shape}")
    t = t.astype(y_pred.dtype, copy=False)
    if check:
        _check_finite(t, "y_true", fn)
    return t


def _mean(a: np.ndarray) -> float:
    # ndarray.mean's arithmetic (sum, then divide in a's dtype) without its Python wrapper
    return float(np.add.reduce(a, axis=None) / a.size) if a.size else 0.0


def _class_targets(y_true, y_pred: np.ndarray, fn: str) -> np.ndarray:
    """Integer class ids shaped ``y_pred.shape[:-1]``; (n, 1) ids are squeezed like Keras."""
    if y_pred.ndim < 1:
        raise ValueError(f"{fn}: y_pred must have a class axis, got y_pred.shape={y_pred.shape}")
    t = np.asarray(y_true)
    if t.ndim == y_pred.ndim and t.shape[-1:] == (1,):
        t = t.reshape(t.shape[:-1])
    if t.shape != y_pred.shape[:-1]:
        raise ValueError(
            f"{fn}: y_true.shape={np.asarray(y_true).shape} must be y_pred.shape[:-1]="
            f"{y_pred.shape[:-1]} (one class id per sample; y_pred.shape={y_pred.shape})"
        )
    if t.dtype.kind == "f":
        if not np.all(np.isfinite(t)) or np.any(t != np.round(t)):
            raise ValueError(f"{fn}: y_true must hold integer class ids, got non-integer values")
    elif t.dtype.kind not in "iub":
        raise ValueError(f"{fn}: y_true must hold integer class ids, got dtype {t.dtype}")
    t = t.astype(np.int64)
    n_classes = y_pred.shape[-1]
    if t.size and (t.min() < 0 or t.max() >= n_classes):
        raise ValueError(
            f"{fn}: class ids must be in [0, {n_classes}), got values in [{t.min()}, {t.max()}]"
        )
    return t


def _label_entries(a: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, labels)`` indexing ``a.reshape(-1, classes)`` at each sample's label."""
    return np.arange(t.size), t.reshape(-1)


def _pick(a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """a[..., t] per sample."""
    return a.reshape(-1, a.shape[-1])[_label_entries(a, t)].reshape(t.shape)


def binary_crossentropy(
    y_true, y_pred, from_logits: bool = False, epsilon: float = EPSILON
) -> tuple[float, np.ndarray]:
    """Mean binary cross-entropy of probabilities (or logits) and its gradient.

    The mean runs over every element: Keras's mean over the last axis, then over the batch.
    """
    fn = "binary_crossentropy"
    p = _float(y_pred)
    n = max(p.size, 1)
    if from_logits:
        t = _binary_targets(y_true, p, fn, check=False)
        # max(z, 0) - z t + log(1 + e^{-|z|}) equals -t log s(z) - (1-t) log(1-s(z)) and never
        # exponentiates a positive number; its derivative is sigmoid(z) - t.
        e = np.exp(-np.abs(p))
        value = _mean(np.maximum(p, 0) - p * t + np.log1p(e))
        if not math.isfinite(value):
            # NaN or inf anywhere makes the mean non-finite, so the inputs are scanned only
            # then, to name the culprit. A finite loss that overflows is fit's to report.
            _check_finite(p, "y_pred", fn)
            _check_finite(t, "y_true", fn)
        # sigmoid(z) as ops.sigmoid computes it, reusing e
        grad = (np.exp(np.minimum(p, 0)) / (e + 1) - t) / n
        return value, grad.astype(p.dtype, copy=False)
    _check_finite(p, "y_pred", fn)  # the clip below would hide an inf
    t = _binary_targets(y_true, p, fn)
    eps = p.dtype.type(epsilon)
    one = p.dtype.type(1)
    pc = np.clip(p, eps, one - eps)
    loss = -(t * np.log(pc) + (one - t) * np.log(one - pc))
    inside = (p >= eps) & (p <= one - eps)
    grad = np.where(inside, ((one - t) / (one - pc) - t / pc) / n, 0)
    return _mean(loss), grad.astype(p.dtype, copy=False)


def sparse_categorical_crossentropy(
    y_true, y_pred, from_logits: bool = False, epsilon: float = EPSILON
) -> tuple[float, np.ndarray]:
    """Mean categorical cross-entropy for integer labels and its gradient w.r.t. ``y_pred``.

    From logits the gradient is ``softmax(z) - one_hot(label)``. From probabilities, Keras's
    route: the log-softmax of the clipped probabilities' log, i.e.
    ``log(sum p_clipped) - log p_clipped[label]`` (rows that do not sum to one are renormalised).
    """
    fn = "sparse_categorical_crossentropy"
    p = _float(y_pred)
    _check_finite(p, "y_pred", fn)
    t = _class_targets(y_true, p, fn)
    n = max(t.size, 1)
    if from_logits:
        shifted = p - p.max(axis=-1, keepdims=True)
        lse = np.log(np.exp(shifted).sum(axis=-1))
        loss = lse - _pick(shifted, t)
        grad = np.exp(shifted - lse[..., None])
        grad.reshape(-1, p.shape[-1])[_label_entries(p, t)] -= 1  # minus the one-hot label
        grad /= n
    else:
        eps = p.dtype.type(epsilon)
        pc = np.clip(p, eps, p.dtype.type(1) - eps)
        total = pc.sum(axis=-1)
        picked = _pick(pc, t)
        loss = np.log(total) - np.log(picked)
        grad = np.broadcast_to((1 / total)[..., None], p.shape).copy()
        grad.reshape(-1, p.shape[-1])[_label_entries(p, t)] -= 1 / picked.reshape(-1)
        grad = np.where((p >= eps) & (p <= 1 - eps), grad / n, 0)
    return _mean(loss), grad.astype(p.dtype, copy=False)


def binary_accuracy(y_true, y_pred, threshold: float = 0.5) -> float:
    """Fraction of outputs on the right side of ``threshold`` (Keras's binary_accuracy)."""
    p = np.asarray(y_pred)
    t = _binary_targets(y_true, _float(p), "binary_accuracy")
    if p.size == 0:
        return 0.0
    return np.count_nonzero((p > threshold) == (t > 0.5)) / p.size


def sparse_categorical_accuracy(y_true, y_pred) -> float:
    """Fraction of samples whose arg-max class is the label (first max on ties, like Keras)."""
    p = _float(y_pred)
    t = _class_targets(y_true, p, "sparse_categorical_accuracy")
    if t.size == 0:
        return 0.0
    return np.count_nonzero(p.argmax(axis=-1) == t) / t.size


class Loss:
    """A loss as an object: ``loss(y_true, y_pred) -> (value, gradient)`` plus its metric.

    ``output_activation`` names the activation whose logits the loss can use instead of its
    output (sigmoid for binary, softmax for categorical), which ``training.fit`` exploits.
    """

    name = "loss"
    output_activation = "linear"

    def __init__(self, from_logits: bool = False):
        self.from_logits = bool(from_logits)

    def __call__(self, y_true, y_pred) -> tuple[float, np.ndarray]:
        return self.fn(y_true, y_pred, from_logits=self.from_logits)

    def from_logits_call(self, y_true, logits) -> tuple[float, np.ndarray]:
        """The same loss evaluated on the logits behind ``output_activation``."""
        return self.fn(y_true, logits, from_logits=True)

    def accuracy(self, y_true, y_pred) -> float:
        """The matching accuracy of predictions in this loss's input space."""
        raise NotImplementedError

    fn: Callable[..., tuple[float, np.ndarray]]

    def get_config(self) -> dict:
        return {"name": self.name, "from_logits": self.from_logits}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(from_logits={self.from_logits})"


class BinaryCrossentropy(Loss):
    name = "binary_crossentropy"
    output_activation = "sigmoid"
    fn = staticmethod(binary_crossentropy)

    def accuracy(self, y_true, y_pred) -> float:
        # sigmoid(z) > 0.5 exactly when z > 0
        return binary_accuracy(y_true, y_pred, threshold=0.0 if self.from_logits else 0.5)


class SparseCategoricalCrossentropy(Loss):
    name = "sparse_categorical_crossentropy"
    output_activation = "softmax"
    fn = staticmethod(sparse_categorical_crossentropy)

    def accuracy(self, y_true, y_pred) -> float:
        # softmax keeps the order of the logits, so arg-max works on either
        return sparse_categorical_accuracy(y_true, y_pred)


_LOSSES = {cls.name: cls for cls in (BinaryCrossentropy, SparseCategoricalCrossentropy)}


def get(loss: str | Loss, from_logits: bool = False) -> Loss:
    """A Loss object from its Keras name (``"binary_crossentropy"``, ...) or as given."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in _LOSSES:
        return _LOSSES[loss](from_logits=from_logits)
    raise ValueError(f"loss={loss!r} is not supported; use one of {sorted(_LOSSES)}")


#: the public classes and functions above, and Keras's epsilon
__all__ = ["EPSILON"] + sorted(
    n for n, v in globals().items() if n[0] != "_" and getattr(v, "__module__", "") == __name__
)

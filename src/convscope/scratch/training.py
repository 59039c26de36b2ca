"""A small, generic training loop for engine models (mini-batch, shuffled, seeded).

It does what ``keras.Model.fit`` does for the models this project trains, in the same order,
so that the two can be compared epoch by epoch:

* the data is reshuffled every epoch (from a generator seeded once, so a seed fixes every
  batch of every epoch);
* a sigmoid/softmax output trained with cross-entropy on probabilities gets its loss and
  gradient from the logits, which is what Keras does behind the scenes and what keeps the
  gradient exact when a probability saturates;
* the epoch's ``loss`` and ``accuracy`` are averages over the epoch's batches (weighted by
  batch size) measured as the weights change, like Keras's progress bar; ``val_*`` are
  measured after the epoch.

Per step the loop does only the step's work: the data is checked once before the first
epoch (so the model runs unchecked, ``Sequential._run``), every batch's outputs are kept and
scored once at the end of the epoch (one accuracy call per epoch, not per batch), and the
progress bar is advanced every few steps. With one sample per step (the seed's mini-CNN)
that overhead is what decides the speed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from convscope.scratch import losses as losses_mod
from convscope.scratch import optimizers as optimizers_mod
from convscope.scratch.model import Sequential

__all__ = ["History", "evaluate", "fit"]

EpochCallback = Callable[[int, dict[str, float]], object]


@dataclass
class History:
    """Per-epoch metrics: ``history["loss"][e]`` is epoch e's (0-based) training loss."""

    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return len(self.history.get("loss", []))

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    @property
    def loss(self) -> list[float]:
        return self.history.get("loss", [])

    @property
    def accuracy(self) -> list[float]:
        return self.history.get("accuracy", [])

    @property
    def val_loss(self) -> list[float]:
        return self.history.get("val_loss", [])

    @property
    def val_accuracy(self) -> list[float]:
        return self.history.get("val_accuracy", [])


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"fit: {name} must be a positive int, got {value!r}")
    return int(value)


def _check_xy(model: Sequential, x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=model.dtype)
    y = np.asarray(y)
    if x.ndim < 2 or len(x) != len(y):
        raise ValueError(
            f"{what}: x and y need the same number of samples along axis 0, got "
            f"x.shape={x.shape}, y.shape={y.shape}"
        )
    if len(x) == 0:
        raise ValueError(f"{what}: no samples (x.shape={x.shape})")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: x contains non-finite values (x.shape={x.shape})")
    if not model.built:
        model.build(x.shape[1:])
    return x, y


def _uses_logits(model: Sequential, loss: losses_mod.Loss) -> bool:
    return not loss.from_logits and model.output_activation == loss.output_activation


def _loss_and_backward(model, loss, out, yb, use_logits: bool) -> float:
    if use_logits:
        value, dz = loss.from_logits_call(yb, model.logits)
        model.backward_from_logits(dz, need_input_grad=False)
    else:
        value, dy = loss(yb, out)
        model.backward(dy, need_input_grad=False)
    return value


def evaluate(
    model: Sequential, x, y, loss: str | losses_mod.Loss, batch_size: int = 256
) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``(x, y)`` in inference mode, in batches."""
    loss = losses_mod.get(loss)
    batch_size = _positive_int(batch_size, "batch_size")
    x, y = _check_xy(model, x, y, "evaluate")
    use_logits = _uses_logits(model, loss)
    total_loss = total_acc = 0.0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        out = model._run(xb, training=False)
        value = (loss.from_logits_call(yb, model.logits) if use_logits else loss(yb, out))[0]
        total_loss += value * len(xb)
        total_acc += loss.accuracy(yb, out) * len(xb)
    return total_loss / len(x), total_acc / len(x)


def fit(
    model: Sequential,
    x,
    y,
    loss: str | losses_mod.Loss,
    optimizer: str | optimizers_mod.Optimizer,
    epochs: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    shuffle: bool = True,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    on_epoch_end: EpochCallback | Sequence[EpochCallback] | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` in place with mini-batch gradient descent; returns the History.

    Args:
        loss: a ``losses.Loss`` or its Keras name ("binary_crossentropy",
            "sparse_categorical_crossentropy").
        optimizer: an ``optimizers.Optimizer`` (its state carries over between calls) or a name
            ("adam", "sgd") for one with default settings.
        seed: seeds the shuffling; with the model's own seed it fixes the whole run.
        validation_data: ``(x_val, y_val)`` evaluated after every epoch.
        on_epoch_end: callable(s) ``f(epoch, logs)`` called after every epoch with the
            0-based epoch and that epoch's metrics (``loss``, ``accuracy``, ``val_*``); the
            model is the caller's, so e.g. a kernel snapshot is ``model.layers[0].kernel.copy()``.
        progress: show a tqdm bar; it also stays silent whenever stderr is not a terminal.
    """
    loss = losses_mod.get(loss)
    optimizer = optimizers_mod.get(optimizer)
    if isinstance(epochs, bool) or not isinstance(epochs, int | np.integer) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative int, got {epochs!r}")
    batch_size = _positive_int(batch_size, "batch_size")
    x, y = _check_xy(model, x, y, "fit")
    if validation_data is not None:
        if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
            raise ValueError("fit: validation_data must be a pair (x_val, y_val)")
        x_val, y_val = _check_xy(model, *validation_data, "fit (validation_data)")
    callbacks: list[EpochCallback]
    if on_epoch_end is None:
        callbacks = []
    elif callable(on_epoch_end):
        callbacks = [on_epoch_end]
    else:
        callbacks = list(on_epoch_end)

    rng = np.random.default_rng(seed)
    use_logits = _uses_logits(model, loss)
    params = model.params()
    n = len(x)
    steps = -(-n // batch_size)
    slices = [slice(s * batch_size, min(n, (s + 1) * batch_size)) for s in range(steps)]
    # every step's outputs, in step order, scored against the targets once per epoch
    outputs = np.empty((n, *model.output_shape), dtype=model.dtype)
    history = History({"loss": [], "accuracy": []})
    if validation_data is not None:
        history.history.update(val_loss=[], val_accuracy=[])

    bar = tqdm(
        total=epochs * steps,
        disable=None if progress else True,
        unit="batch",
        dynamic_ncols=True,
        leave=True,
    )
    # tqdm.update on every step of a one-sample batch would cost a noticeable share of it
    bar_every = max(1, steps // 20)
    try:
        for epoch in range(int(epochs)):
            bar.set_description(f"epoch {epoch + 1}/{epochs}")
            order = rng.permutation(n) if shuffle else None
            loss_sum = 0.0
            for step, sl in enumerate(slices):
                if order is None:
                    xb, yb = x[sl], y[sl]
                else:
                    idx = order[sl]
                    xb, yb = x[idx], y[idx]
                out = model._run(xb, training=True)
                value = _loss_and_backward(model, loss, out, yb, use_logits)
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"fit: loss became {value} at epoch {epoch + 1}, step {step + 1}; "
                        "lower the learning rate"
                    )
                optimizer.step(params, model.grads())
                loss_sum += value * len(xb)
                outputs[sl] = out
                if step % bar_every == bar_every - 1:
                    bar.update(bar_every)
            bar.update(steps - steps // bar_every * bar_every)
            accuracy = loss.accuracy(y if order is None else y[order], outputs)
            logs = {"loss": loss_sum / n, "accuracy": accuracy}
            if validation_data is not None:
                logs["val_loss"], logs["val_accuracy"] = evaluate(
                    model, x_val, y_val, loss, batch_size=max(batch_size, 256)
                )
            for key, value in logs.items():
                history.history[key].append(float(value))
            bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()})
            for callback in callbacks:
                callback(epoch, dict(logs))
    finally:
        bar.close()
    return history

"""The engine's training loop: mini-batch, shuffled, seeded, recorded one way.

``fit`` does what ``keras.Model.fit`` does for this project's models, in the same order, so
the engines compare epoch by epoch: a generator seeded once reshuffles every epoch; a
sigmoid/softmax output trained with cross-entropy gets its loss and gradient from the logits,
as Keras does behind the scenes (exact when a probability saturates); an epoch's ``loss`` and
``accuracy`` average its batches as the weights change, ``val_*`` come after the epoch.
:class:`convscope.recording.EpochRecord` records each epoch, as for the Keras trainer. The
data is checked once, before the first epoch; a progress bar lives with the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from convscope.recording import EpochHook, EpochRecord, TrainingDiverged
from convscope.scratch import losses as losses_mod
from convscope.scratch import optimizers as optimizers_mod
from convscope.scratch.model import Sequential
from convscope.validation import ValidationError, check_int

__all__ = ["evaluate", "fit"]


def _data(model: Sequential, x, y, x_name: str = "x", y_name: str = "y"):
    x = model.check_input(x, x_name)
    y = np.asarray(y)
    if y.ndim < 1 or len(x) != len(y) or len(x) == 0:
        raise ValidationError(
            f"{x_name} and {y_name} need the same number of samples along axis 0 (at least "
            f"one), got {x_name}.shape={x.shape}, {y_name}.shape={y.shape}"
        )
    return x, y


def _uses_logits(model: Sequential, loss: losses_mod.Loss) -> bool:
    return not loss.from_logits and model.output_activation == loss.output_activation


def evaluate(model: Sequential, x, y, loss, batch_size: int = 256) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``(x, y)`` in inference mode, in batches."""
    x, y = _data(model, x, y)
    return _evaluate(model, x, y, losses_mod.get(loss), check_int(batch_size, "batch_size", min=1))


def _evaluate(model: Sequential, x, y, loss: losses_mod.Loss, batch_size: int):
    use_logits = _uses_logits(model, loss)
    total_loss = total_acc = 0.0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        out = model.run(xb, training=False)
        value = (loss.from_logits_call(yb, model.logits) if use_logits else loss(yb, out))[0]
        total_loss += value * len(xb)
        total_acc += loss.accuracy(yb, out) * len(xb)
    return total_loss / len(x), total_acc / len(x)


def fit(
    model: Sequential,
    x,
    y,
    loss,
    optimizer,
    epochs: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    shuffle: bool = True,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    on_epoch: EpochHook | None = None,
    on_batch_end: Callable[[], object] | None = None,
) -> EpochRecord:
    """Train ``model`` in place with mini-batch gradient descent; return the EpochRecord.

    ``loss`` and ``optimizer`` are objects or Keras names (an optimizer object's state carries
    over between calls); ``seed`` seeds the shuffling; ``validation_data=(x_val, y_val)`` is
    evaluated after every epoch. ``on_epoch`` is :mod:`convscope.recording`'s hook (an
    exception from it stops training); ``on_batch_end()`` runs after every optimizer step
    (a progress bar's ``update``).
    """
    loss = losses_mod.get(loss)
    optimizer = optimizers_mod.get(optimizer)
    epochs = check_int(epochs, "epochs", min=0)
    batch_size = check_int(batch_size, "batch_size", min=1)
    x, y = _data(model, x, y)
    if validation_data is not None:
        if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
            raise ValidationError("validation_data must be a pair (x_val, y_val)")
        x_val, y_val = _data(model, *validation_data, "x_val", "y_val")

    rng = np.random.default_rng(seed)
    use_logits = _uses_logits(model, loss)
    params = model.params()
    n = len(x)
    slices = [slice(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    # every step's outputs, in step order, scored against the targets once per epoch
    outputs = np.empty((n, *model.output_shape), dtype=model.dtype)
    record = EpochRecord(model.conv_kernels, on_epoch)
    record.begin()
    for epoch in range(1, epochs + 1):
        record.epoch_start()
        order = rng.permutation(n) if shuffle else None
        loss_sum = 0.0
        for sl in slices:
            xb, yb = (x[sl], y[sl]) if order is None else (x[order[sl]], y[order[sl]])
            # overflow shows as a non-finite output or loss, checked here, not as warnings
            with np.errstate(over="ignore", invalid="ignore"):
                out = model.run(xb, training=True)
                if not np.isfinite(out).all():  # the loss functions refuse non-finite outputs
                    raise TrainingDiverged(math.nan, epoch)
                if use_logits:
                    value, dz = loss.from_logits_call(yb, model.logits)
                    model.backward_from_logits(dz, need_input_grad=False)
                else:
                    value, dy = loss(yb, out)
                    model.backward(dy, need_input_grad=False)
                if not math.isfinite(value):
                    raise TrainingDiverged(value, epoch)
                optimizer.step(params, model.grads())
            loss_sum += value * len(xb)
            outputs[sl] = out
            if on_batch_end is not None:
                on_batch_end()
        logs = {
            "loss": loss_sum / n,
            "accuracy": loss.accuracy(y if order is None else y[order], outputs),
        }
        if validation_data is not None:
            logs["val_loss"], logs["val_accuracy"] = _evaluate(
                model, x_val, y_val, loss, max(batch_size, 256)
            )
        record.epoch_end(logs)
    return record

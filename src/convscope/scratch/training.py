"""The engine's training loop: mini-batch, shuffled, seeded, recorded one way.

``fit`` does what ``keras.Model.fit`` does for this project's models, in the same order, so
the engines compare epoch by epoch: a generator seeded once reshuffles every epoch; a
sigmoid/softmax output trained with cross-entropy gets its loss and gradient from the logits,
as Keras does behind the scenes (exact when a probability saturates); an epoch's ``loss`` and
``accuracy`` average its batches as the weights change, ``val_*`` come after the epoch.
:class:`convscope.recording.EpochRecord` records each epoch, as for the Keras trainer. The
data is checked once, before the first epoch; a progress bar lives with the caller.

A batch is computed in shards of at most :data:`SHARD_SIZE` images (:func:`shards`): each
shard is a forward and backward pass of its own, its loss gradient scaled by its share of the
batch, and the shards' gradients are summed in shard order into the batch's one optimizer
step. Small shards keep each pass's arrays in the CPU's caches: of 8, 16 and 32 images, 16 is
the cheapest per image even on one thread (fewer pay more per call, more miss the cache). And
shards are independent, so ``workers`` threads compute them at once, each on its own
:meth:`~convscope.scratch.model.Sequential.replica` of the model. How a batch is cut depends
on its size only, and the sum's order is fixed, so the numbers do not depend on ``workers``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from convscope.recording import EpochHook, EpochRecord, TrainingDiverged
from convscope.scratch import losses as losses_mod
from convscope.scratch import optimizers as optimizers_mod
from convscope.scratch.model import Sequential
from convscope.validation import ValidationError, check_int

__all__ = ["SHARD_SIZE", "evaluate", "fit", "shards"]

#: most images in one forward and backward pass of a training batch
SHARD_SIZE = 16


def shards(n: int) -> list[slice]:
    """A batch of ``n`` images as ``ceil(n / SHARD_SIZE)`` consecutive shards, as even as
    possible (32 -> 16 + 16, 20 -> 10 + 10, 16 -> 16)."""
    k = -(-n // SHARD_SIZE)
    bounds = [i * n // k for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


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


def evaluate(
    model: Sequential, x, y, loss, batch_size: int = 256, workers: int = 1
) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``(x, y)`` in inference mode.

    ``batch_size`` images at a time, each batch in shards on ``workers`` threads.
    """
    x, y = _data(model, x, y)
    batch_size = check_int(batch_size, "batch_size", min=1)
    runner = _Shards(model, losses_mod.get(loss), check_int(workers, "workers", min=1))
    try:
        return runner.evaluate(x, y, batch_size)
    finally:
        runner.close()


def _pass(model: Sequential, xb, yb, loss, use_logits: bool, share: float, epoch: int):
    """Forward, loss and backward of one shard: ``(loss value, output)``; the gradients are
    then in ``model.grads()``, scaled by the shard's ``share`` of its batch."""
    # overflow shows as a non-finite output or loss, checked here, not as warnings
    with np.errstate(over="ignore", invalid="ignore"):
        out = model.run(xb, training=True)
        # the loss functions refuse non-finite outputs (an infinite logit has a finite sigmoid)
        if not np.isfinite(model.logits if use_logits else out).all():
            raise TrainingDiverged(math.nan, epoch)
        value, d = loss.from_logits_call(yb, model.logits) if use_logits else loss(yb, out)
        if not math.isfinite(value):
            raise TrainingDiverged(value, epoch)
        if share != 1:
            d *= d.dtype.type(share)
        if use_logits:
            model.backward_from_logits(d, need_input_grad=False)
        else:
            model.backward(d, need_input_grad=False)
    return value, out


class _Shards:
    """Training steps and evaluation shard by shard, the shards spread over ``workers``
    threads, each with its own replica of the model."""

    def __init__(self, model: Sequential, loss: losses_mod.Loss, workers: int):
        self.replicas = [model] + [model.replica() for _ in range(workers - 1)]
        self.loss, self.use_logits = loss, _uses_logits(model, loss)
        self.pool = ThreadPoolExecutor(workers - 1) if workers > 1 else None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def _map(self, fn: Callable, parts: list[slice]) -> list:
        """``[fn(replica, part) for part in parts]`` in part order; each thread takes the next
        part not yet taken, so a thread slowed by other work on the machine takes fewer. An
        exception is raised once every thread has stopped."""
        n = min(len(self.replicas), len(parts))
        results: list = [None] * len(parts)
        taken = itertools.count()  # next() is atomic: each part goes to one thread

        def work(r: int) -> None:
            while (k := next(taken)) < len(parts):
                results[k] = fn(self.replicas[r], parts[k])

        futures = [self.pool.submit(work, r) for r in range(1, n)]
        errors = []
        try:
            work(0)
        except Exception as exc:  # noqa: BLE001 - re-raised after the other threads
            errors.append(exc)
        errors += [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
        return results

    def train_step(self, xb, yb, out_rows: np.ndarray, epoch: int):
        """``(mean loss, gradients)`` of one batch; its outputs go into ``out_rows``."""
        parts = shards(len(xb))
        single = len(parts) == 1

        def shard(replica: Sequential, p: slice):
            share = (p.stop - p.start) / len(xb)
            value, out = _pass(replica, xb[p], yb[p], self.loss, self.use_logits, share, epoch)
            out_rows[p] = out
            # a replica's gradient arrays are its next shard's too
            grads = replica.grads() if single else [g.copy() for g in replica.grads()]
            return value * share, grads

        results = self._map(shard, parts)
        grads = results[0][1]
        for _, more in results[1:]:
            for g, h in zip(grads, more, strict=True):
                g += h
        return math.fsum(v for v, _ in results), grads

    def evaluate(self, x, y, batch_size: int) -> tuple[float, float]:
        """(mean loss, accuracy) over ``(x, y)`` in inference mode."""

        def shard(replica: Sequential, p: slice):
            xs, ys = x[p], y[p]
            out = replica.run(xs, training=False)
            if self.use_logits:
                value = self.loss.from_logits_call(ys, replica.logits)[0]
            else:
                value = self.loss(ys, out)[0]
            return value * len(xs), self.loss.accuracy(ys, out) * len(xs)

        parts = [
            slice(start + p.start, start + p.stop)
            for start in range(0, len(x), batch_size)
            for p in shards(min(batch_size, len(x) - start))
        ]
        results = self._map(shard, parts)
        n = len(x)
        return math.fsum(v for v, _ in results) / n, math.fsum(a for _, a in results) / n


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
    workers: int = 1,
) -> EpochRecord:
    """Train ``model`` in place with mini-batch gradient descent; return the EpochRecord.

    ``loss`` and ``optimizer`` are objects or Keras names (an optimizer object's state carries
    over between calls); ``seed`` seeds the shuffling; ``validation_data=(x_val, y_val)`` is
    evaluated after every epoch. ``on_epoch`` is :mod:`convscope.recording`'s hook (an
    exception from it stops training); ``on_batch_end()`` runs after every optimizer step
    (a progress bar's ``update``). ``workers`` threads compute a batch's shards at once (see
    the module docstring); the results are the same for any number.
    """
    loss = losses_mod.get(loss)
    optimizer = optimizers_mod.get(optimizer)
    epochs = check_int(epochs, "epochs", min=0)
    batch_size = check_int(batch_size, "batch_size", min=1)
    workers = check_int(workers, "workers", min=1)
    x, y = _data(model, x, y)
    if validation_data is not None:
        if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
            raise ValidationError("validation_data must be a pair (x_val, y_val)")
        x_val, y_val = _data(model, *validation_data, "x_val", "y_val")

    rng = np.random.default_rng(seed)
    params = model.params()
    n = len(x)
    slices = [slice(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    # every step's outputs, in step order, scored against the targets once per epoch
    outputs = np.empty((n, *model.output_shape), dtype=model.dtype)
    runner = _Shards(model, loss, workers)
    record = EpochRecord(model.conv_kernels, on_epoch)
    record.begin()
    try:
        for epoch in range(1, epochs + 1):
            record.epoch_start()
            order = rng.permutation(n) if shuffle else None
            loss_sum = 0.0
            for sl in slices:
                xb, yb = (x[sl], y[sl]) if order is None else (x[order[sl]], y[order[sl]])
                value, grads = runner.train_step(xb, yb, outputs[sl], epoch)
                optimizer.step(params, grads)
                loss_sum += value * len(xb)
                if on_batch_end is not None:
                    on_batch_end()
            logs = {
                "loss": loss_sum / n,
                "accuracy": loss.accuracy(y if order is None else y[order], outputs),
            }
            if validation_data is not None:
                val = runner.evaluate(x_val, y_val, max(batch_size, 256))
                logs["val_loss"], logs["val_accuracy"] = val
            record.epoch_end(logs)
    finally:
        runner.close()
    return record

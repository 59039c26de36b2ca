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
shards are independent, so ``fit``'s ``workers`` processes compute them at once: this one
and spawned workers, each with its own copy of the model, started once per call when a batch
has more than one shard (they validate too; ``evaluate`` alone runs in this process). This
process computes a worker's shards until the worker has started, so a short call does not
wait for start-up. Processes, not threads: a pass is some forty small NumPy calls, and
threads wait for each other's GIL between them (on 16-image passes two threads ran 1.2-1.3x
one, two processes 1.5-1.8x). What a step sends a worker is a few numbers: the weights (its
model's parameters are views of them), its shard's images and its gradients sit in one block
of shared memory, and each side polls for the other's message through a step's short waits
(:func:`_wait`). How a batch is cut depends on its size only, a shard's pass is the same on
any process, and the shards' gradients are summed in shard order, so the numbers do not
depend on ``workers``.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import pickle
import signal
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from typing import NoReturn

import numpy as np

from convscope.recording import EpochHook, EpochRecord, TrainingDiverged
from convscope.scratch import losses as losses_mod
from convscope.scratch import optimizers as optimizers_mod
from convscope.scratch.model import Sequential
from convscope.validation import ValidationError, check_int

__all__ = ["SHARD_SIZE", "evaluate", "fit", "shards"]

#: most images in one forward and backward pass of a training batch
SHARD_SIZE = 16
#: how long a process polls for a message before it blocks (see :func:`_wait`)
SPIN_SECONDS = 0.002


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


def evaluate(model: Sequential, x, y, loss, batch_size: int = 256) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``(x, y)`` in inference mode.

    ``batch_size`` images at a time, in shards, in this process: an inference pass costs a
    fraction of a training pass, less on a test set than starting workers would.
    """
    x, y = _data(model, x, y)
    batch_size = check_int(batch_size, "batch_size", min=1)
    with _Shards(model, losses_mod.get(loss), 1) as runner:
        return runner.evaluate(x, y, batch_size)


def _eval_parts(n: int, batch_size: int) -> list[slice]:
    """The shards of ``n`` images evaluated ``batch_size`` at a time, in order."""
    return [
        slice(start + p.start, start + p.stop)
        for start in range(0, n, batch_size)
        for p in shards(min(batch_size, n - start))
    ]


def _train_pass(model: Sequential, loss, use_logits: bool, xb, yb, share: float, epoch: int):
    """Forward, loss and backward of one shard: ``(loss value * share, output)``; the
    gradients are then in ``model.grads()``, scaled by the shard's ``share`` of its batch."""
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
    return value * share, out


def _eval_pass(model: Sequential, loss, use_logits: bool, xs, ys):
    """``(loss sum, correct count)`` of one shard in inference mode."""
    out = model.run(xs, training=False)
    value = loss.from_logits_call(ys, model.logits)[0] if use_logits else loss(ys, out)[0]
    return value * len(xs), loss.accuracy(ys, out) * len(xs)


def _shared_size(model: Sequential, rows: int) -> int:
    """Bytes of :func:`_table`'s block for ``model`` and ``rows``."""
    params = sum(p.nbytes for p in model.params())
    return (
        rows * params
        + (rows - 1) * SHARD_SIZE * math.prod(model.input_shape) * model.dtype.itemsize
    )


def _table(buf, model: Sequential, rows: int):
    """``(flat, views, images)`` on ``buf``: ``rows`` rows of all of ``model``'s parameters
    (the flat table, and per row one view shaped like each parameter: row 0 the weights, row
    ``1 + k`` shard ``k``'s gradients), then one slot of :data:`SHARD_SIZE` input images per
    shard (``images[k]``, shard ``k``'s images)."""
    shapes = [p.shape for p in model.params()]
    sizes = [math.prod(s) for s in shapes]
    flat = np.ndarray((rows, sum(sizes)), dtype=model.dtype, buffer=buf)
    offsets = list(itertools.accumulate(sizes, initial=0))
    views = [
        [row[a:b].reshape(s) for a, b, s in zip(offsets, offsets[1:], shapes, strict=False)]
        for row in flat
    ]
    shape = (rows - 1, SHARD_SIZE, *model.input_shape)
    images = np.ndarray(shape, dtype=model.dtype, buffer=buf, offset=flat.nbytes)
    return flat, views, images


def _wait(conn: Connection) -> None:
    """Return once ``conn`` has something to read: polled for up to :data:`SPIN_SECONDS`
    first, then a blocking wait.

    A process asleep in a read takes a while to wake when the message comes (30 to 70 us on
    a VM of this kind, more the longer it slept); two such wakes a step, the worker's for its
    task and the trainer's for the answer, cost a tenth of a 16-image step. Polling keeps
    both awake through the short waits of a step and gives the core back on a long one.
    """
    deadline = time.perf_counter() + SPIN_SECONDS
    while not conn.poll() and time.perf_counter() < deadline:
        pass


def _worker(conn: Connection, shm_name: str, rows: int, config: dict, loss) -> None:
    """A worker process: take ``("train", epoch, [(k, n, y, share), ...])`` (shard ``k``'s
    ``n`` images in its slot of shared memory) or ``("eval", 0, [(x, y), ...])``, compute each
    shard on the weights in shared memory (its model's parameters are views of them; training
    shard ``k``'s gradients go into its row), answer ``(True, results)`` or
    ``(False, exception)``; stop on ``None`` or when the parent's end of the pipe closes."""
    # Ctrl-C reaches the whole process group: the parent stops its workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # one BLAS thread per process, as the trainer has (the import is here: the engine core
    # itself imports NumPy only)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    model = Sequential.from_config(config)
    use_logits = _uses_logits(model, loss)
    shm = shared_memory.SharedMemory(shm_name)
    try:
        flat, views, images = _table(shm.buf, model, rows)
        model.share_weights(views[0])  # the trainer writes them before each task
        conn.send((True, None))  # ready
        while (task := _receive(conn)) is not None:
            kind, epoch, parts = task
            try:
                if kind == "train":
                    results = []
                    for k, n, yb, share in parts:
                        xb = images[k, :n]
                        results.append(_train_pass(model, loss, use_logits, xb, yb, share, epoch))
                        for g, row in zip(model.grads(), views[1 + k], strict=True):
                            np.copyto(row, g)
                else:
                    results = [_eval_pass(model, loss, use_logits, *part) for part in parts]
                conn.send((True, results))
            except Exception as exc:  # noqa: BLE001 - the parent raises it
                conn.send((False, _picklable(exc)))
        del flat, views, images, model
    finally:
        shm.close()


def _receive(conn: Connection):
    try:
        _wait(conn)
        return conn.recv()
    except (EOFError, OSError):  # the parent is gone
        return None


def _picklable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling, otherwise a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any failure to round-trip
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class _Shards:
    """Training steps and evaluation shard by shard, the shards spread over ``workers``
    processes: this one and ``workers - 1`` spawned workers, shard ``k`` of a batch on process
    ``k % (1 + workers started)``. Each worker has a copy of the model; the weights, each
    training shard's images and gradients pass through one block of shared memory (see
    :func:`_table`), a shard's labels, its outputs and evaluation's images through pipes. A
    context manager: leaving it stops the workers and frees the memory."""

    def __init__(self, model: Sequential, loss: losses_mod.Loss, workers: int, slots: int = 0):
        self.model, self.loss, self.use_logits = model, loss, _uses_logits(model, loss)
        self.conns: list[Connection] = []
        self.procs: list = []
        self.ready = 0
        self.shm = None
        # the weights, then a training step's gradients: one row per shard, summed in order
        self.rows = 1 + slots
        if workers > 1:
            self._start(workers - 1)
        else:
            buf = bytearray(_shared_size(model, self.rows))
            self.flat, self.views, self.images = _table(buf, model, self.rows)

    def _start(self, n: int) -> None:
        size = _shared_size(self.model, self.rows)
        self.shm = shared_memory.SharedMemory(create=True, size=size)
        try:
            self.flat, self.views, self.images = _table(self.shm.buf, self.model, self.rows)
            # spawn, not fork: the parent has threads (a tracking client's reader)
            context = multiprocessing.get_context("spawn")
            # the architecture only: spawn writes the arguments into a pipe, and more than it
            # holds would keep this process waiting for the worker's start-up
            config = self.model.get_config()
            for _ in range(n):
                ours, theirs = context.Pipe()
                proc = context.Process(
                    target=_worker,
                    args=(theirs, self.shm.name, self.rows, config, self.loss),
                    daemon=True,
                )
                proc.start()
                theirs.close()
                self.conns.append(ours)
                self.procs.append(proc)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> _Shards:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (each ends on its pipe's end) and free the shared memory."""
        for proc in self.procs[self.ready :]:
            proc.kill()  # still starting: not worth the wait
        for conn in self.conns:
            conn.close()
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.conns, self.procs, self.ready = [], [], 0
        if self.shm is not None:
            self.flat = self.views = self.images = None
            try:
                self.shm.close()
            except BufferError:  # a view still held (by a traceback): unmapped when it goes
                pass
            finally:
                self.shm.unlink()
                self.shm = None

    def _map(self, tasks: list, own: Callable[[], list]) -> list[list]:
        """Send ``tasks[w]`` to worker ``w`` (after the weights), run ``own()`` here, and
        return ``[own results, worker 1's, ...]``; an exception is raised once every worker
        has answered, this process's first."""
        conns = self.conns[: len(tasks)]
        if conns:
            for p, w in zip(self.model.params(), self.views[0], strict=True):
                np.copyto(w, p)
        try:
            for conn, task in zip(conns, tasks, strict=True):
                conn.send(task)
        except OSError:
            self._lost()
        errors, results = [], []
        try:
            results.append(own())
        except Exception as exc:  # noqa: BLE001 - raised after the workers answer
            errors.append(exc)
        for conn in conns:
            try:
                _wait(conn)
                ok, answer = conn.recv()
            except (EOFError, OSError):
                self._lost()
            if ok:
                results.append(answer)
            else:
                errors.append(answer)
        if errors:
            raise errors[0]
        return results

    def started(self) -> int:
        """How many workers have said they are ready (without waiting for more); until a
        worker is, this process computes its shards."""
        while self.ready < len(self.conns) and self.conns[self.ready].poll():
            try:
                self.conns[self.ready].recv()
            except (EOFError, OSError):
                self._lost()
            self.ready += 1
        return self.ready

    def _lost(self) -> NoReturn:
        codes = [proc.exitcode for proc in self.procs]
        raise RuntimeError(f"an engine worker process ended unexpectedly (exit codes {codes})")

    def _run(self, kind: str, epoch: int, parts: list, task: Callable, do: Callable) -> list:
        """``[do(k) for k in range(len(parts))]``, part ``k`` on process ``k % (1 + started)``: a
        worker gets ``(kind, epoch, [task(k), ...])``, this process runs ``do`` on its parts."""
        n = 1 + self.started()
        mine = [list(range(w, len(parts), n)) for w in range(n)]
        tasks = [(kind, epoch, [task(k) for k in ks]) for ks in mine[1:]]
        answers = self._map(tasks, lambda: [do(k) for k in mine[0]])
        results: list = [None] * len(parts)
        for ks, answer in zip(mine, answers, strict=True):
            for k, result in zip(ks, answer, strict=True):
                results[k] = result
        return results

    def train_step(self, xb, yb, out_rows: np.ndarray, epoch: int):
        """``(mean loss, gradients)`` of one batch; its outputs go into ``out_rows``."""
        parts = shards(len(xb))
        if len(parts) == 1:
            value, out_rows[...] = _train_pass(
                self.model, self.loss, self.use_logits, xb, yb, 1, epoch
            )
            return value, self.model.grads()

        def share(k: int) -> float:
            return (parts[k].stop - parts[k].start) / len(xb)

        def task(k: int) -> tuple:  # a worker's shard: its images through shared memory
            p = parts[k]
            np.copyto(self.images[k, : p.stop - p.start], xb[p])
            return k, p.stop - p.start, yb[p], share(k)

        def do(k: int) -> tuple:
            p = parts[k]
            result = _train_pass(
                self.model, self.loss, self.use_logits, xb[p], yb[p], share(k), epoch
            )
            # a copy: the model's gradient arrays are its next shard's too
            for g, row in zip(self.model.grads(), self.views[1 + k], strict=True):
                np.copyto(row, g)
            return result

        results = self._run("train", epoch, parts, task, do)
        for p, (_, out) in zip(parts, results, strict=True):
            out_rows[p] = out
        grads = [g.copy() for g in self.views[1]]
        for k in range(1, len(parts)):
            for g, h in zip(grads, self.views[1 + k], strict=True):
                g += h
        return math.fsum(v for v, _ in results), grads

    def evaluate(self, x, y, batch_size: int) -> tuple[float, float]:
        """(mean loss, accuracy) over ``(x, y)`` in inference mode."""
        parts = _eval_parts(len(x), batch_size)
        results = self._run(
            "eval",
            0,
            parts,
            lambda k: (x[parts[k]], y[parts[k]]),
            lambda k: _eval_pass(self.model, self.loss, self.use_logits, x[parts[k]], y[parts[k]]),
        )
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
    (a progress bar's ``update``). ``workers`` processes compute a batch's shards at once (see
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
    # as many processes as a batch has shards, started once: none for one
    slots = len(shards(min(batch_size, n)))
    record = EpochRecord(model.conv_kernels, on_epoch)
    record.begin()
    with _Shards(model, loss, min(workers, slots) if epochs else 1, slots) as runner:
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
    return record

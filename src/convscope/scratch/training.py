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
one, two processes 1.5-1.8x). A training step passes nothing through a pipe: the weights
(every process's model's parameters are views of them, and the optimizer updates them in
place, a vector at a time), the optimizer's slots, each shard's images, labels, gradients,
outputs and loss, and each worker's task sit in one block of shared memory, and a semaphore
per direction says "a task" and "done", each side polling for it through a step's short
waits (:func:`_acquire`). The update of the last layer with weights, most of them, is the
first worker's, made while this process computes the next step's first layers (see
:class:`_Shards`). How a batch is cut depends on its size only, a shard's pass is the same on
any process (BLAS runs on one thread in each, this one included, while there are workers),
and the shards' gradients are summed in shard order, so the numbers do not depend on
``workers`` where BLAS runs on one thread (as ``convscope.engine_train`` runs it).
"""

from __future__ import annotations

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
#: how long a process polls for a task or an answer before it blocks (see :func:`_acquire`)
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
    if y.dtype.kind not in "biuf":
        raise ValidationError(f"{y_name} must hold numbers, got dtype {y.dtype}")
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


def _train_pass(
    model: Sequential, loss, use_logits: bool, xb, yb, share: float, epoch: int, hold=None
):
    """Forward, loss and backward of one shard: ``(loss value * share, output)``; the
    gradients are then in ``model.grads()``, scaled by the shard's ``share`` of its batch.
    ``hold`` is ``Sequential.run``'s."""
    # overflow shows as a non-finite output or loss, checked here, not as warnings
    with np.errstate(over="ignore", invalid="ignore"):
        out = model.run(xb, training=True, hold=hold)
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


#: a worker's task kinds (its row of the shared block's ``tasks``): a training step whose
#: shards are in shared memory, or a message waiting on its pipe
TRAIN, PIPE = 1, 2


def _layout(fields: list[tuple[str, tuple[int, ...], np.dtype]]) -> tuple[dict, int]:
    """``({name: (offset, shape, dtype)}, size)`` of ``fields`` laid end to end in one block,
    each on a 64-byte boundary (a cache line: the two processes write different fields)."""
    places, size = {}, 0
    for name, shape, dtype in fields:
        size = -(-size // 64) * 64
        places[name] = (size, shape, np.dtype(dtype))
        size += math.prod(shape) * np.dtype(dtype).itemsize
    return places, max(size, 1)


def _arrays(buf, places: dict) -> dict[str, np.ndarray]:
    """The arrays of :func:`_layout`'s ``places`` on ``buf``."""
    return {
        name: np.ndarray(shape, dtype, buffer=buf, offset=offset)
        for name, (offset, shape, dtype) in places.items()
    }


def _fields(model: Sequential, slots: int, workers: int, labels: tuple, slot_names=()) -> list:
    """What a training step shares (see :class:`_Shards`): ``flat``, the weights (row 0) and
    each of ``slots`` shards' gradients (row ``1 + k``), all parameters end to end, their sum
    ``grad`` and the optimizer's slot vectors ``opt`` (a row per name in ``slot_names``),
    laid out alike; per shard its ``images``, ``labels`` (``labels`` is their ``(shape,
    dtype)`` per image), ``sizes``, ``shares`` of the batch, ``outputs`` and ``losses``; per
    process its task's ``tasks`` row (see :func:`_worker`) and its answer's ``status`` (0
    done, 1 failed)."""
    params = sum(p.size for p in model.params())
    k = max(slots, 1)
    return [
        ("flat", (1 + slots, params), model.dtype),
        ("grad", (params,), model.dtype),
        ("opt", (len(slot_names), params), model.dtype),
        ("images", (k, SHARD_SIZE, *model.input_shape), model.dtype),
        ("labels", (k, SHARD_SIZE, *labels[0]), labels[1]),
        ("sizes", (k,), np.int64),
        ("shares", (k,), np.float64),
        ("outputs", (k, SHARD_SIZE, *model.output_shape), model.dtype),
        ("losses", (k,), np.float64),
        ("tasks", (workers, 6), np.int64),
        ("status", (workers,), np.int64),
    ]


def _last_weighted(model: Sequential) -> tuple[int, int]:
    """``(layer index, flat offset)`` of the last layer with weights: the part of a step's
    update that :class:`_Shards` leaves to its first worker."""
    offset, found = 0, (0, 0)
    for i, layer in enumerate(model.layers):
        size = sum(p.size for p in layer.params())
        if size:
            found = (i, offset)
        offset += size
    return found


def _update_part(a: dict, optimizer, parts: int, part: slice, iterations: int) -> None:
    """Sum ``parts`` shards' gradients over ``part`` of the weights in shard order, then
    ``optimizer``'s update of that part as at step ``iterations`` (the same numbers as the
    update of the whole vector); the optimizer's count is left as it was."""
    flat, grad = a["flat"], a["grad"]
    if parts == 1:
        np.copyto(grad[part], flat[1, part])
    else:
        np.add(flat[1, part], flat[2, part], out=grad[part])
        for k in range(3, parts + 1):
            grad[part] += flat[k, part]
    count, optimizer.iterations = optimizer.iterations, iterations
    try:
        slots = dict(zip(optimizer.slot_names, a["opt"], strict=True))  # views, no copy
        optimizer.update_flat(flat[0], grad, slots, part)
    finally:
        optimizer.iterations = count


def _acquire(sem, alive: Callable[[], bool]) -> bool:
    """Take one count of ``sem``, False instead once ``alive()`` says the other side is gone.

    Polled for up to :data:`SPIN_SECONDS` first, then a blocking wait. A process asleep takes
    a while to wake when the count comes (30 to 70 us on a VM of this kind, more the longer it
    slept); two such wakes a step, the worker's for its task and the trainer's for the answer,
    cost a tenth of a 16-image step. A semaphore's count is shared memory (taken and given
    without a system call when nobody sleeps on it): polling keeps both sides awake through
    the short waits of a step and gives the core back on a long one.
    """
    deadline = time.perf_counter() + SPIN_SECONDS
    while not sem.acquire(False):
        if time.perf_counter() > deadline:
            while not sem.acquire(timeout=0.1):
                if not alive():
                    return False
            return True
    return True


def _worker(
    conn: Connection,
    shm_name: str,
    places: dict,
    index: int,
    sems: tuple,
    ready: list,
    config: dict,
    loss,
    optimizer_config: dict | None,
) -> None:
    """Worker process ``index``: on each count of its task semaphore (``sems``: task, done)
    read its row of ``tasks``.

    ``TRAIN`` ``(epoch, processes, shards, pending, pending shards)``: its shards of a step
    (``k = index, index + processes, ...``: images and labels in their slots, the weights in
    row 0 of ``flat``, which its model's parameters are views of), their gradients, outputs
    and losses written back, ``status``, a count of the done semaphore (a failure's
    exception follows through the pipe). ``pending`` is the optimizer step whose update of
    the last weighted layer is still to be made, when ``pending shards`` is not 0: worker 1
    makes it first (the sum of that step's shards' gradients over the layer's part, the
    optimizer's update of it) and gives each of the step's other processes a count of its ``ready``
    semaphore; they wait for it before that layer's forward. ``PIPE``: read the pipe,
    ``("eval", [(x, y), ...])`` answered ``(True, results)`` or ``(False, exception)``; stop
    on ``None``, when the pipe closes or when the parent is gone.
    """
    # Ctrl-C reaches the whole process group: the parent stops its workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # one BLAS thread per process, as the trainer has (the import is here: the engine core
    # itself imports NumPy only)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    parent = multiprocessing.parent_process()
    tasks_sem, done_sem = sems
    model = Sequential.from_config(config)
    use_logits = _uses_logits(model, loss)
    optimizer = None
    if optimizer_config is not None:
        optimizer = optimizers_mod.optimizer_from_config(optimizer_config)
    layer, offset = _last_weighted(model)
    shm = shared_memory.SharedMemory(shm_name)
    try:
        a = _arrays(shm.buf, places)
        shapes = [p.shape for p in model.params()]
        rows = [optimizers_mod.vector_views(row, shapes) for row in a["flat"]]
        model.share_weights(rows[0])  # updated in place between tasks
        conn.send((True, None))  # ready
        while _acquire(tasks_sem, parent.is_alive):
            kind, *numbers = (int(v) for v in a["tasks"][index])
            if kind == PIPE:
                task = _receive(conn)
                if task is None:
                    break
                try:
                    conn.send((True, [_eval_pass(model, loss, use_logits, *t) for t in task[1]]))
                except Exception as exc:  # noqa: BLE001 - the parent raises it
                    conn.send((False, _picklable(exc)))
                continue
            epoch, processes, parts, pending, pending_parts = numbers
            hold = None
            if pending_parts and index == 1:
                _update_part(a, optimizer, pending_parts, slice(offset, None), pending)
                for w in [0, *range(2, processes)]:
                    ready[w].release()
            elif pending_parts:
                hold = (layer, lambda: _acquire(ready[index], parent.is_alive))
            try:
                for k in range(index, parts, processes):
                    n = int(a["sizes"][k])
                    xb, yb = a["images"][k, :n], a["labels"][k, :n]
                    share = float(a["shares"][k])
                    out = _train_pass(model, loss, use_logits, xb, yb, share, epoch, hold)
                    a["losses"][k], a["outputs"][k, :n] = out
                    hold = None
                    for g, row in zip(model.grads(), rows[1 + k], strict=True):
                        np.copyto(row, g)
                a["status"][index] = 0
            except Exception as exc:  # noqa: BLE001 - the parent raises it
                if hold is not None:  # its count is this step's
                    hold[1]()
                a["status"][index] = 1
                conn.send(_picklable(exc))
            done_sem.release()
        del a, rows, model
    finally:
        shm.close()


def _receive(conn: Connection):
    try:
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
    ``k % (1 + workers started)``. Each worker has a copy of the model.

    A training step passes through one block of shared memory (see :func:`_fields`): the
    weights, which the model's parameters are views of while the runner lives (in every
    process: nothing is copied to the workers), each shard's images, labels, gradients,
    outputs and loss, ``optimizer``'s slots, and each worker's task; a pair of semaphores per
    worker says "a task" and "done" (:func:`_acquire`). :meth:`update` makes a step's
    optimizer update here, except, when a worker computed shards of the step, the update of
    the last layer with weights (the seed's dense layer, nine tenths of its weights): the
    first worker makes that one at the start of the next step, while this process computes
    the layers before it, which wait for it only at that layer (:meth:`flush` makes it here
    when no worker will). Evaluation's images and results go through pipes. ``labels`` is
    ``(shape, dtype)`` of one image's label. A context manager: leaving it stops the
    workers, gives the model its own arrays back, holding the weights trained, and the
    optimizer its slots, and frees the memory.
    """

    def __init__(
        self,
        model: Sequential,
        loss: losses_mod.Loss,
        workers: int,
        slots: int = 0,
        labels=None,
        optimizer: optimizers_mod.Optimizer | None = None,
    ):
        self.model, self.loss, self.use_logits = model, loss, _uses_logits(model, loss)
        self.optimizer = optimizer
        self.conns: list[Connection] = []
        self.procs: list = []
        self.sems: list[tuple] = []
        self.ready: list = []
        self.started_count = 0
        self.shm = None
        self.parts = self.processes = 0  # the last training step's
        self.pending: tuple[int, int] | None = None  # (optimizer step, shards) to finish
        self.layer, self.offset = _last_weighted(model)
        label_spec = labels if labels is not None else ((), np.dtype(np.int64))
        names = optimizer.slot_names if optimizer is not None else ()
        self.places, size = _layout(_fields(model, slots, max(workers, 1), label_spec, names))
        self.own = model.params()
        if workers > 1:
            self.shm = shared_memory.SharedMemory(create=True, size=size)
            buf = self.shm.buf
        else:
            buf = bytearray(size)
        self.a = _arrays(buf, self.places)
        self.weights = self.a["flat"][0]
        # the optimizer's slots (its own views of them from the first update on)
        self.slot_vectors = dict(zip(names, self.a["opt"], strict=True))
        shapes = [p.shape for p in self.own]
        self.rows = [optimizers_mod.vector_views(row, shapes) for row in self.a["flat"]]
        for w, p in zip(self.rows[0], self.own, strict=True):
            np.copyto(w, p)
        model.share_weights(self.rows[0])
        self.blas = None
        if workers > 1:
            # one BLAS thread here too, as in the workers: a shard's pass is then the same
            # product on any process, and no BLAS thread spins beside them (the import is
            # here: the engine core itself imports NumPy only)
            from threadpoolctl import threadpool_limits

            self.blas = threadpool_limits(1, user_api="blas")
            try:
                self._start(workers - 1)
            except BaseException:
                self.close()
                raise

    def _start(self, n: int) -> None:
        # spawn, not fork: the parent has threads (a tracking client's reader)
        context = multiprocessing.get_context("spawn")
        # the architecture only: spawn writes the arguments into a pipe, and more than it
        # holds would keep this process waiting for the worker's start-up
        config = self.model.get_config()
        optimizer = None if self.optimizer is None else self.optimizer.get_config()
        # a count for each process but the first worker: "the last layer's weights are in"
        self.ready = [context.Semaphore(0) for _ in range(n + 1)]
        for index in range(1, n + 1):
            ours, theirs = context.Pipe()
            sems = (context.Semaphore(0), context.Semaphore(0))
            proc = context.Process(
                target=_worker,
                args=(theirs, self.shm.name, self.places, index, sems, self.ready, config,
                      self.loss, optimizer),
                daemon=True,
            )  # fmt: skip
            proc.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(proc)
            self.sems.append(sems)

    def __enter__(self) -> _Shards:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (each ends on its pipe's end), give the model its own arrays back
        with the weights as they are now and the optimizer its slots in memory of its own,
        and free the shared memory."""
        if self.own is not None:
            self.flush()
            for p, w in zip(self.own, self.rows[0], strict=True):
                np.copyto(p, w)
            self.model.share_weights(self.own)
            self.own = None
            if self.optimizer is not None:
                self.optimizer.set_state(self.optimizer.get_state())  # copies
        for proc in self.procs[self.started_count :]:
            proc.kill()  # still starting: not worth the wait
        for index in range(1, self.started_count + 1):
            self._post(index, PIPE)  # it reads the pipe, finds it closed and ends
        for conn in self.conns:
            conn.close()
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.conns, self.procs, self.sems, self.ready, self.started_count = [], [], [], [], 0
        self.a = self.rows = self.weights = self.slot_vectors = None
        if self.blas is not None:
            self.blas.restore_original_limits()
            self.blas = None
        if self.shm is not None:
            try:
                self.shm.close()
            except BufferError:  # a view still held (by a traceback): unmapped when it goes
                pass
            finally:
                self.shm.unlink()
                self.shm = None

    def _post(self, index: int, kind: int, *numbers: int) -> None:
        """Give worker ``index`` a task of ``kind`` with its ``numbers``."""
        self.a["tasks"][index] = (kind, *numbers, *[0] * (5 - len(numbers)))
        self.sems[index - 1][0].release()

    def _done(self, index: int) -> None:
        """Wait for worker ``index``'s answer to a ``TRAIN`` task; raise what it raised."""
        proc = self.procs[index - 1]
        if not _acquire(self.sems[index - 1][1], proc.is_alive):
            self._lost()
        if self.a["status"][index]:
            try:
                raise self.conns[index - 1].recv()
            except (EOFError, OSError):
                self._lost()

    def _wait_ready(self) -> None:
        """Wait for the first worker's update of the last weighted layer (see :meth:`update`)."""
        if not _acquire(self.ready[0], self.procs[0].is_alive):
            self._lost()

    def started(self) -> int:
        """How many workers have said they are ready (without waiting for more); until a
        worker is, this process computes its shards."""
        n = self.started_count
        while n < len(self.conns) and self.conns[n].poll():
            try:
                self.conns[n].recv()
            except (EOFError, OSError):
                self._lost()
            n = self.started_count = n + 1
        return n

    def _lost(self) -> NoReturn:
        codes = [proc.exitcode for proc in self.procs]
        raise RuntimeError(f"an engine worker process ended unexpectedly (exit codes {codes})")

    def train_step(self, xb, yb, out_rows: np.ndarray, epoch: int) -> float:
        """The mean loss of one batch; its outputs go into ``out_rows`` and each shard's
        gradients into its row of ``flat``, for :meth:`update`, which must come next."""
        parts = shards(len(xb))
        a = self.a
        processes = min(1 + self.started(), len(parts))
        if self.pending is not None and processes < 2:
            self.flush()  # no worker in this step to make it
        todo, self.pending = self.pending, None
        self.parts, self.processes = len(parts), processes
        pending = todo if todo is not None else (0, 0)  # (step, shards); 0 shards: none
        for k, p in enumerate(parts):
            a["sizes"][k], a["shares"][k] = p.stop - p.start, (p.stop - p.start) / len(xb)
        for index in range(1, processes):  # the workers' shards, then their tasks
            for k in range(index, len(parts), processes):
                p, n = parts[k], parts[k].stop - parts[k].start
                a["images"][k, :n], a["labels"][k, :n] = xb[p], yb[p]
            self._post(index, TRAIN, epoch, processes, len(parts), *pending)
        hold = (self.layer, self._wait_ready) if todo is not None else None
        errors = []
        try:
            for k in range(0, len(parts), processes):
                p = parts[k]
                share = float(a["shares"][k])
                value, out_rows[p] = _train_pass(
                    self.model, self.loss, self.use_logits, xb[p], yb[p], share, epoch, hold
                )
                hold = None
                a["losses"][k] = value
                # a copy: the model's gradient arrays are its next shard's too
                for g, row in zip(self.model.grads(), self.rows[1 + k], strict=True):
                    np.copyto(row, g)
        except Exception as exc:  # noqa: BLE001 - raised after the workers answer
            errors.append(exc)
        for index in range(1, processes):
            try:
                self._done(index)
            except Exception as exc:  # noqa: BLE001 - the first error is raised
                errors.append(exc)
        if hold is not None:  # its count is this step's
            self._wait_ready()
        if errors:
            raise errors[0]
        for index in range(1, processes):
            for k in range(index, len(parts), processes):
                p = parts[k]
                out_rows[p] = a["outputs"][k, : p.stop - p.start]
        return math.fsum(a["losses"][: len(parts)].tolist())

    def update(self, optimizer: optimizers_mod.Optimizer) -> None:
        """The optimizer's step from the last :meth:`train_step`'s gradients, summed in shard
        order: made here, but for the last weighted layer's part when a worker computed
        shards of that step, which the first worker makes at the start of the next (the
        same numbers as one update of the whole vector)."""
        if optimizer is not self.optimizer:
            raise ValueError("_Shards.update: not the optimizer the runner was made for")
        optimizer.flat_slots(self.weights, self.model.params(), self.slot_vectors)
        step, split = optimizer.iterations, self.offset if self.processes > 1 else None
        _update_part(self.a, optimizer, self.parts, slice(0, split), step)
        if split is not None:
            self.pending = (step, self.parts)
        optimizer.iterations = step + 1

    def flush(self) -> None:
        """Make the update a worker was left to make (see :meth:`update`) here, now."""
        if self.pending is not None:
            step, parts = self.pending
            _update_part(self.a, self.optimizer, parts, slice(self.offset, None), step)
            self.pending = None

    def evaluate(self, x, y, batch_size: int) -> tuple[float, float]:
        """(mean loss, accuracy) over ``(x, y)`` in inference mode."""
        parts = _eval_parts(len(x), batch_size)
        processes = 1 + self.started()
        mine = [list(range(w, len(parts), processes)) for w in range(processes)]
        for index in range(1, processes):
            # the task first: a worker reads the pipe once told to, and a pipe holds less than
            # a worker's share of a validation set
            self._post(index, PIPE)
            task = ("eval", [(x[parts[k]], y[parts[k]]) for k in mine[index]])
            try:
                self.conns[index - 1].send(task)
            except OSError:
                self._lost()
        errors, results = [], [None] * len(parts)
        try:
            for k in mine[0]:
                results[k] = _eval_pass(
                    self.model, self.loss, self.use_logits, x[parts[k]], y[parts[k]]
                )
        except Exception as exc:  # noqa: BLE001 - raised after the workers answer
            errors.append(exc)
        for index in range(1, processes):
            conn, proc = self.conns[index - 1], self.procs[index - 1]
            while not conn.poll(0.1):
                if not proc.is_alive():
                    self._lost()
            try:
                ok, answer = conn.recv()
            except (EOFError, OSError):
                self._lost()
            if not ok:
                errors.append(answer)
                continue
            for k, result in zip(mine[index], answer, strict=True):
                results[k] = result
        if errors:
            raise errors[0]
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
    exception from it stops training); ``on_batch_end()`` runs after every step, to count
    it (a progress bar's ``update``): a worker may still be updating weights then.
    ``workers`` processes compute a batch's shards at once (see the module docstring); the
    results are the same for any number.
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
    n = len(x)
    slices = [slice(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    # every step's outputs, in step order, scored against the targets once per epoch
    outputs = np.empty((n, *model.output_shape), dtype=model.dtype)
    # as many processes as a batch has shards, started once: none for one
    slots = len(shards(min(batch_size, n)))
    record = EpochRecord(model.conv_kernels, on_epoch)
    record.begin()
    processes = min(workers, slots) if epochs else 1
    with _Shards(model, loss, processes, slots, (y.shape[1:], y.dtype), optimizer) as runner:
        for epoch in range(1, epochs + 1):
            record.epoch_start()
            order = rng.permutation(n) if shuffle else None
            loss_sum = 0.0
            for sl in slices:
                xb, yb = (x[sl], y[sl]) if order is None else (x[order[sl]], y[order[sl]])
                value = runner.train_step(xb, yb, outputs[sl], epoch)
                runner.update(optimizer)
                loss_sum += value * len(xb)
                if on_batch_end is not None:
                    on_batch_end()
            runner.flush()
            logs = {
                "loss": loss_sum / n,
                "accuracy": loss.accuracy(y if order is None else y[order], outputs),
            }
            if validation_data is not None:
                val = runner.evaluate(x_val, y_val, max(batch_size, 256))
                logs["val_loss"], logs["val_accuracy"] = val
            record.epoch_end(logs)
    return record

"""The NumPy engine's trainers as the pipeline runs them: configs in, progress bar, BLAS threads.

The engine core (:mod:`convscope.scratch`) imports NumPy only; what a run needs around it
lives here. ``build_mnist(cfg)`` is :func:`convscope.keras_cnn.build_model`'s architecture
layer for layer and name for name (``conv1``, ``pool1``, ..., ``flatten``, ``dense``), so
kernels, feature maps and tracking keys line up and the bridge moves weights across.
``train_mnist(cfg, ...)`` follows ``keras_cnn.train`` step for step, so that a difference
between the runs is a difference between the engines: Keras's ``validation_split`` (the
unshuffled last ``floor``-rounded fraction), reshuffling every epoch from ``cfg.seed``,
Adam (Keras's form) or SGD with momentum, the loss from the softmax's logits, float32, and
per-epoch records through :class:`convscope.recording.EpochRecord`.

Both cores work on one model by data parallelism, not by BLAS's threads: ``fit`` computes a
batch in shards of 16 images, ``workers`` of them at once, each in a process of its own
with its own copy of the model and BLAS single-threaded (:mod:`convscope.scratch.training`).
A multi-threaded OpenBLAS instead hands every product to its threads and spins until they
answer; on 16-image shards that costs more than it gains, and on a machine whose cores are
also busy with other work it slows training several-fold (``bench/engine_vs_keras.py``
measures both). The ``workers`` default to the cores BLAS would use in this process: all of
them in a run of its own, one per job in a parallel sweep (joblib's loky workers and Ray's
tasks set each job's share in the BLAS/OpenMP thread variables: there the job's one process
computes every shard); a run too short to repay a worker's start-up keeps to its own process.
The results do not depend on the number.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
from tqdm import tqdm

from convscope.config.schema import CNNConfig, MiniCNNConfig
from convscope.recording import EpochHook, TrainingDiverged
from convscope.scratch import mini_cnn
from convscope.scratch.layers import Conv2D, Dense, Flatten, MaxPool2D
from convscope.scratch.model import Sequential
from convscope.scratch.optimizers import SGD, Adam, Optimizer
from convscope.scratch.training import evaluate, fit, shards
from convscope.validation import ValidationError, check_float, check_images, check_int

__all__ = [
    "ScratchTrainResult",
    "blas_threads_limited",
    "build_mnist",
    "default_threads",
    "default_workers",
    "make_optimizer",
    "progress_bar",
    "split_validation",
    "train_lines",
    "train_mnist",
]


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[Callable[[], object]]:
    """A tqdm bar over ``total`` steps; yields the ``on_batch_end`` that advances it.

    Silent when ``enabled`` is False or stderr is not a terminal; tqdm's own ``mininterval``
    keeps redrawing off the per-step path.
    """
    with tqdm(
        total=total, desc=desc, unit="batch", disable=None if enabled else True, mininterval=0.2
    ) as bar:
        yield lambda: bar.update(1)


@contextlib.contextmanager
def blas_threads_limited(threads: int | None) -> Iterator[None]:
    """Limit BLAS to ``threads`` threads inside the block (``None`` changes nothing)."""
    if threads is None:
        yield
        return
    with threadpool_limits(limits=check_int(threads, "blas_threads", min=1), user_api="blas"):
        yield


def default_threads() -> int:
    """The threads BLAS would use in this process: the cores a run of its own has, a parallel
    launcher's share in a sweep job (joblib's loky workers and Ray's tasks set it)."""
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return max(counts) if counts else os.cpu_count() or 1


#: shard passes (of steps of more than one shard) below which a run trains in its own
#: process only: a worker is ready about 0.2 s after it is spawned (a fresh interpreter
#: importing NumPy and the engine), some 200 passes of 16 images, and until then the trainer
#: computes its shards
MIN_WORKER_PASSES = 200


def default_workers(passes: int) -> int:
    """The processes for a run of ``passes`` shard passes in steps of more than one shard:
    one per thread BLAS would use here (:func:`default_threads`) when the run repays a
    worker's start-up (:data:`MIN_WORKER_PASSES`), else this one alone."""
    return default_threads() if passes >= MIN_WORKER_PASSES else 1


# ------------------------------------------------------------------------------ lines


def train_lines(
    x, y, cfg: MiniCNNConfig, on_epoch: EpochHook | None = None, progress: bool = True, **kwargs
):
    """:func:`convscope.scratch.mini_cnn.train` with ``cfg``'s settings and a progress bar.

    Returns ``(model, record)``; ``kwargs`` go to ``mini_cnn.train`` (``init``, ``model``).
    """
    steps = cfg.epochs * -(-len(x) // cfg.batch_size)
    with blas_threads_limited(1), progress_bar(steps, "mini-CNN", progress) as step:
        try:
            return mini_cnn.train(
                x,
                y,
                epochs=cfg.epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                on_epoch=on_epoch,
                on_batch_end=step,
                **kwargs,
            )
        except TrainingDiverged as exc:
            raise exc.with_setting("scratch.mini_cnn.lr", cfg.lr) from None


# ------------------------------------------------------------------------------ MNIST


@dataclass
class ScratchTrainResult:
    """What one :func:`train_mnist` call produced (the fields of ``keras_cnn.TrainResult``).

    ``history`` maps ``loss``, ``accuracy`` (and ``val_*`` with a validation split) to one
    float per epoch; ``kernels`` maps each conv layer to ``epochs + 1`` HWIO arrays (index 0
    before training); ``epoch_seconds`` is each epoch's wall time. ``optimizer`` keeps its
    state, so training can continue or be checkpointed (``model.save(path, optimizer=...)``).
    """

    model: Sequential
    history: dict[str, list[float]]
    test_loss: float | None
    test_accuracy: float | None
    kernels: dict[str, list[np.ndarray]] = field(repr=False)
    epoch_seconds: list[float]
    optimizer: Optimizer = field(repr=False)


def build_mnist(cfg: CNNConfig) -> Sequential:
    """The engine twin of ``keras_cnn.build_model(cfg)``: same layers, names and shapes.

    Conv layer ``i`` (1-based) is ``Conv2D(cfg.layer_filters[i-1], kernel_size, stride,
    padding, activation)`` named ``conv<i>``, followed by ``MaxPool2D(pool_size)`` named
    ``pool<i>`` where ``cfg.pools[i-1]``; then ``flatten`` and ``dense`` (``num_classes``,
    softmax). Float32, weights drawn from ``cfg.seed``.
    """
    layers = []
    for i, (filters, pool) in enumerate(zip(cfg.layer_filters, cfg.pools, strict=True), start=1):
        layers.append(
            Conv2D(
                filters,
                cfg.kernel_size,
                stride=cfg.stride,
                padding=cfg.padding,
                activation=cfg.activation,
                name=f"conv{i}",
            )
        )
        if pool:
            layers.append(MaxPool2D(cfg.pool_size, name=f"pool{i}"))
    layers += [Flatten(name="flatten"), Dense(cfg.num_classes, activation="softmax", name="dense")]
    return Sequential(
        layers, input_shape=tuple(cfg.input_shape), seed=cfg.seed, name="convscope_cnn"
    )


def make_optimizer(cfg: CNNConfig) -> Optimizer:
    """Adam(learning_rate) or SGD(learning_rate, momentum), Keras's defaults otherwise."""
    if cfg.optimizer == "sgd":
        return SGD(learning_rate=cfg.learning_rate, momentum=cfg.momentum)
    return Adam(learning_rate=cfg.learning_rate)


def split_validation(x: np.ndarray, y: np.ndarray, validation_split: float):
    """Keras's ``validation_split``: ``(x_fit, y_fit), (x_val, y_val)`` (None when split is 0).

    The split point is ``floor(n * (1 - validation_split))``, Keras's formula, and the
    validation part is the unshuffled tail, so both engines validate on the same images.
    """
    validation_split = check_float(
        validation_split, "validation_split", min=0, max=1, max_open=True
    )
    if validation_split == 0:
        return (x, y), None
    n = len(x)
    split_at = int(math.floor(n * (1.0 - validation_split)))
    if split_at in (0, n):
        raise ValidationError(
            f"validation_split={validation_split} of {n} samples leaves "
            f"{'nothing to train on' if split_at == 0 else 'no validation samples'}"
        )
    return (x[:split_at], y[:split_at]), (x[split_at:], y[split_at:])


def train_mnist(
    cfg: CNNConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    on_epoch: EpochHook | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> ScratchTrainResult:
    """Build ``cfg``'s network, train it like ``keras_cnn.train``, evaluate on the test set.

    ``x_*`` are float NHWC images in [0, 1] shaped ``(n, *cfg.input_shape)``, ``y_*``
    integer labels in ``[0, num_classes)``. ``on_epoch(epoch, logs, kernels)`` is the one
    epoch hook (:mod:`convscope.recording`). ``workers`` processes compute each batch's shards
    at once, BLAS single-threaded in each (None: :func:`default_workers` for this run); the
    results are the same for any number.
    """
    if workers is not None:
        workers = check_int(workers, "workers", min=1)
    shape = {"input_shape": cfg.input_shape, "num_classes": cfg.num_classes}
    x_train, y_train = check_images(x_train, y_train, x_name="x_train", y_name="y_train", **shape)
    if (x_test is None) != (y_test is None):
        raise ValidationError("x_test and y_test must be given together (or both left None)")
    if x_test is not None:
        x_test, y_test = check_images(x_test, y_test, x_name="x_test", y_name="y_test", **shape)
    (x_fit, y_fit), validation = split_validation(x_train, y_train, cfg.validation_split)
    model, optimizer = build_mnist(cfg), make_optimizer(cfg)
    loss = "sparse_categorical_crossentropy"
    steps = cfg.epochs * -(-len(x_fit) // cfg.batch_size)
    if workers is None:
        per_step = len(shards(cfg.batch_size))  # passes of a full batch
        passes = cfg.epochs * (len(x_fit) // cfg.batch_size) * per_step
        workers = default_workers(passes if per_step > 1 else 0)
    with blas_threads_limited(1), progress_bar(steps, "engine CNN", progress) as step:
        try:
            record = fit(
                model,
                x_fit,
                y_fit,
                loss,
                optimizer,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                validation_data=validation,
                on_epoch=on_epoch,
                on_batch_end=step,
                workers=workers,
            )
        except TrainingDiverged as exc:
            raise exc.with_setting(f"{cfg._prefix}.learning_rate", cfg.learning_rate) from None
        test = (None, None)
        if x_test is not None:
            batch = max(cfg.batch_size, 256)
            test = evaluate(model, x_test, y_test, loss, batch_size=batch)
    return ScratchTrainResult(
        model=model,
        history=record.history,
        test_loss=None if test[0] is None else float(test[0]),
        test_accuracy=None if test[1] is None else float(test[1]),
        kernels=record.kernels,
        epoch_seconds=record.epoch_seconds,
        optimizer=optimizer,
    )

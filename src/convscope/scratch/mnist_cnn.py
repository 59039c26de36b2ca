"""The seed's MNIST CNN trained by the NumPy engine, the same way Keras trains it.

``build(cfg)`` gives the architecture of :func:`convscope.keras_cnn.build_model` for the same
config, layer for layer and name for name::

    conv1 (Conv2D) -> pool1 (MaxPool2D) -> conv2 (Conv2D) -> ... -> flatten -> dense (softmax)

so kernels, feature maps and tracking keys line up between the two engines, and the bridge
(``convscope.scratch.bridge``) can move weights across. Weights start glorot-uniform (Keras's
default) with zero biases, drawn from ``cfg.seed``.

``train(cfg, ...)`` follows ``keras_cnn.train`` step for step, so that a difference between the
two runs is a difference between the engines, not between two training recipes:

* validation is Keras's ``validation_split``: the LAST ``floor``-rounded fraction of the
  training arrays, cut off before any shuffling, never trained on;
* the rest is reshuffled every epoch (from ``cfg.seed``) and cut into ``cfg.batch_size``
  batches, the last one smaller;
* Adam (Keras 3's update form) or SGD with momentum, sparse categorical cross-entropy taken
  from the softmax's logits (as Keras does), float32 throughout;
* an epoch's ``loss``/``accuracy`` are averages over its batches as the weights change, and
  ``val_loss``/``val_accuracy`` are measured after it, like Keras's logs;
* the conv kernels are copied before training and after every epoch, and ``on_epoch`` is
  called exactly like :class:`convscope.keras_cnn.EpochRecorder`'s hook.

Speed: BLAS runs single-threaded while training (``blas_threads=1``). The matrices of a
32-image batch are small (the largest product is 3872 x 144 by 144 x 32), and a multi-threaded
OpenBLAS busy-waits and synchronises its threads around every one of them. On this project's
2-core machine two threads gained ~5-10% when nothing else ran (0.69 vs 0.76 s/epoch for the
seed network) but, whenever other processes shared the cores, an epoch took 4-22 s instead of
0.8-1.3 s single-threaded (``bench/engine_vs_keras.py`` measures both). One thread is the
setting that is never badly wrong. The limit is set through ``threadpoolctl`` (installed with
scikit-learn, which mlxtend brings) and lifted afterwards; without it, the process's own
setting (e.g. ``OPENBLAS_NUM_THREADS``) applies.

This module imports NumPy only (through the engine), never TensorFlow.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convscope.config.schema import CNNConfig, require_cnn_config
from convscope.scratch import losses as losses_mod
from convscope.scratch.layers import Conv2D, Dense, Flatten, MaxPool2D
from convscope.scratch.model import Sequential
from convscope.scratch.optimizers import SGD, Adam, Optimizer
from convscope.scratch.training import evaluate, fit

__all__ = [
    "EpochHook",
    "ScratchTrainResult",
    "blas_threads_limited",
    "build",
    "conv_kernels",
    "make_optimizer",
    "split_validation",
    "train",
]

#: ``on_epoch(epoch, logs, kernels)``, the same contract as ``keras_cnn.EpochHook``: ``epoch``
#: counts completed epochs (0 = before training, with ``logs == {}``), ``logs`` maps metric
#: name -> float (plus ``epoch_seconds``), ``kernels`` maps conv layer name -> HWIO copy.
EpochHook = Callable[[int, Mapping[str, float], Mapping[str, np.ndarray]], Any]

LOSS = "sparse_categorical_crossentropy"


@dataclass
class ScratchTrainResult:
    """What one :func:`train` call produced (the fields of ``keras_cnn.TrainResult``).

    ``history`` maps ``loss``, ``accuracy`` (and ``val_loss``, ``val_accuracy`` when
    ``validation_split > 0``) to one float per epoch. ``kernels`` maps each conv layer name to
    ``epochs + 1`` HWIO arrays: index 0 before training, index ``e`` after epoch ``e``.
    ``epoch_seconds`` is each epoch's wall time, training plus validation, without the kernel
    copies and the hook. ``test_loss``/``test_accuracy`` are None without a test set.
    ``optimizer`` holds the optimizer's state, so training can continue or be checkpointed
    (``model.save(path, optimizer=result.optimizer)``).
    """

    model: Sequential
    history: dict[str, list[float]]
    test_loss: float | None
    test_accuracy: float | None
    kernels: dict[str, list[np.ndarray]] = field(repr=False)
    epoch_seconds: list[float]
    optimizer: Optimizer = field(repr=False)


def _require_config(cfg: object) -> CNNConfig:
    return require_cnn_config(cfg, "ScratchCNNConfig", "cfg.scratch.mnist_cnn")


def build(cfg: CNNConfig) -> Sequential:
    """The engine twin of ``keras_cnn.build_model(cfg)``: same layers, names and shapes.

    Conv layer ``i`` (1-based) is ``Conv2D(cfg.layer_filters[i-1], kernel_size, stride,
    padding, activation)`` named ``conv<i>``, followed by ``MaxPool2D(pool_size)`` named
    ``pool<i>`` where ``cfg.pools[i-1]``; then ``flatten`` and ``dense`` (``num_classes``,
    softmax). Built for ``cfg.input_shape`` in float32 with weights drawn from ``cfg.seed``.
    """
    cfg = _require_config(cfg)
    cfg.layer_shapes()  # re-check that every kernel and pool fits (configs are mutable)
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
    layers.append(Flatten(name="flatten"))
    layers.append(Dense(cfg.num_classes, activation="softmax", name="dense"))
    return Sequential(
        layers,
        input_shape=tuple(int(d) for d in cfg.input_shape),
        seed=cfg.seed,
        dtype=np.float32,
        name="convscope_cnn",
    )


def make_optimizer(cfg: CNNConfig) -> Optimizer:
    """A fresh engine optimizer for ``cfg``: Adam(learning_rate) or SGD(learning_rate, momentum).

    Keras's defaults for everything the config does not set (Adam's betas and epsilon 1e-7), so
    it matches ``keras_cnn.make_optimizer(cfg)``.
    """
    cfg = _require_config(cfg)
    if cfg.optimizer == "adam":
        return Adam(learning_rate=cfg.learning_rate)
    if cfg.optimizer == "sgd":
        return SGD(learning_rate=cfg.learning_rate, momentum=cfg.momentum)
    raise ValueError(f"optimizer={cfg.optimizer!r} is not allowed: expected adam or sgd")


def conv_kernels(model: Sequential) -> dict[str, np.ndarray]:
    """Copies of every Conv2D kernel (HWIO), by layer name, like ``keras_cnn.conv_kernels``."""
    return {layer.name: layer.kernel.copy() for layer in model.layers if isinstance(layer, Conv2D)}


def split_validation(
    x: np.ndarray, y: np.ndarray, validation_split: float
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Keras's ``validation_split``: ``(x_fit, y_fit), (x_val, y_val)`` (None when split is 0).

    The split point is ``floor(n * (1 - validation_split))``, Keras's own formula, and the
    validation part is the tail of the arrays as given (unshuffled), so both engines validate on
    exactly the same images.
    """
    if not 0 <= validation_split < 1:
        raise ValueError(f"validation_split={validation_split!r} must be in [0, 1)")
    n = len(x)
    if validation_split == 0:
        return (x, y), None
    split_at = int(math.floor(n * (1.0 - validation_split)))
    if split_at in (0, n):
        raise ValueError(
            f"validation_split={validation_split} of {n} samples leaves "
            f"{'nothing to train on' if split_at == 0 else 'no validation samples'}"
        )
    return (x[:split_at], y[:split_at]), (x[split_at:], y[split_at:])


def check_xy(name_x: str, x: Any, name_y: str, y: Any, cfg: CNNConfig):
    """Images and labels for a CNN of ``cfg``: float NHWC of its input shape, labels in range.

    Shared by the engine and the Keras trainer so both reject the same bad input the same way.
    """
    x_arr, y_arr = np.asarray(x), np.asarray(y)
    expected = tuple(int(d) for d in cfg.input_shape)
    if x_arr.ndim != 4 or x_arr.shape[1:] != expected:
        raise ValueError(
            f"{name_x} has shape {x_arr.shape}; expected (n, *{expected}) NHWC as set by "
            f"input_shape={list(expected)} (add the channel axis with x[..., None])"
        )
    if not np.issubdtype(x_arr.dtype, np.floating):
        raise ValueError(
            f"{name_x} has dtype {x_arr.dtype} and shape {x_arr.shape}; expected floats in "
            "[0, 1] (use convscope.data.mnist.prepare, or x.astype('float32') / 255)"
        )
    if y_arr.ndim != 1 or len(y_arr) != len(x_arr):
        raise ValueError(
            f"{name_y} has shape {y_arr.shape}; expected ({len(x_arr)},) integer labels, "
            f"one per image of {name_x} {x_arr.shape}"
        )
    if len(y_arr) and not np.issubdtype(y_arr.dtype, np.integer):
        if not np.all(np.mod(y_arr, 1) == 0):
            raise ValueError(f"{name_y} has non-integer labels (dtype {y_arr.dtype})")
    if len(y_arr) and (y_arr.min() < 0 or y_arr.max() >= cfg.num_classes):
        raise ValueError(
            f"{name_y} has labels in [{y_arr.min()}, {y_arr.max()}]; expected "
            f"0..{cfg.num_classes - 1} for num_classes={cfg.num_classes}"
        )
    # One contiguous float32 copy up front: batches are then gathered from it without casts.
    return np.ascontiguousarray(x_arr, dtype=np.float32), y_arr.astype(np.int64, copy=False)


@contextlib.contextmanager
def blas_threads_limited(threads: int | None) -> Iterator[bool]:
    """Limit BLAS to ``threads`` threads inside the block; yields whether a limit is active.

    ``None`` changes nothing. Without ``threadpoolctl`` nothing can be changed from inside the
    process either, so the block runs as it is (and yields False).
    """
    if threads is None:
        yield False
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"blas_threads must be a positive int or None, got {threads!r}")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield False
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield True


def train(
    cfg: CNNConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    on_epoch: EpochHook | None = None,
    progress: bool = True,
    blas_threads: int | None = 1,
) -> ScratchTrainResult:
    """Build ``cfg``'s network, train it like ``keras_cnn.train`` does, evaluate on the test set.

    ``x_*`` are float NHWC images in [0, 1] shaped ``(n, *cfg.input_shape)``, ``y_*`` integer
    labels in ``[0, num_classes)``. ``on_epoch(epoch, logs, kernels)`` is called with
    ``(0, {}, initial kernels)`` before the first epoch, then after each epoch with the number
    of completed epochs, that epoch's metrics plus ``epoch_seconds``, and the kernel copies; an
    exception it raises stops training. ``progress`` shows a tqdm bar (silent off a terminal).
    ``blas_threads`` caps BLAS's threads during training (see the module docstring; ``None``
    leaves the process's setting).
    """
    cfg = _require_config(cfg)
    if on_epoch is not None and not callable(on_epoch):
        raise TypeError(f"on_epoch must be callable or None, got {type(on_epoch).__name__}")
    x_train, y_train = check_xy("x_train", x_train, "y_train", y_train, cfg)
    if (x_test is None) != (y_test is None):
        raise ValueError("x_test and y_test must be given together (or both left None)")
    if x_test is not None:
        x_test, y_test = check_xy("x_test", x_test, "y_test", y_test, cfg)
    (x_fit, y_fit), validation = split_validation(x_train, y_train, cfg.validation_split)
    with blas_threads_limited(blas_threads):
        return _train(cfg, x_fit, y_fit, validation, x_test, y_test, on_epoch, progress)


def _train(cfg, x_fit, y_fit, validation, x_test, y_test, on_epoch, progress):
    model = build(cfg)
    optimizer = make_optimizer(cfg)
    loss = losses_mod.get(LOSS)
    kernels: dict[str, list[np.ndarray]] = {}
    epoch_seconds: list[float] = []

    def snapshot() -> dict[str, np.ndarray]:
        snap = conv_kernels(model)
        for name, kernel in snap.items():
            kernels.setdefault(name, []).append(kernel)
        return snap

    initial = snapshot()
    if on_epoch is not None:
        on_epoch(0, {}, initial)

    clock = {"start": time.perf_counter()}

    def record(epoch: int, logs: dict[str, float]) -> None:
        # fit calls this after the epoch's validation: the time so far is the epoch's; the
        # kernel copies and the hook run off the clock, which restarts after them.
        seconds = time.perf_counter() - clock["start"]
        epoch_seconds.append(seconds)
        snap = snapshot()
        if on_epoch is not None:
            on_epoch(epoch + 1, {**logs, "epoch_seconds": seconds}, snap)
        clock["start"] = time.perf_counter()

    history = fit(
        model,
        x_fit,
        y_fit,
        loss,
        optimizer,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        shuffle=True,
        validation_data=validation,
        on_epoch_end=record,
        progress=progress,
    )

    test_loss = test_accuracy = None
    if x_test is not None:
        test_loss, test_accuracy = evaluate(
            model, x_test, y_test, loss, batch_size=max(cfg.batch_size, 256)
        )
    return ScratchTrainResult(
        model=model,
        history={k: list(v) for k, v in history.history.items()},
        test_loss=None if test_loss is None else float(test_loss),
        test_accuracy=None if test_accuracy is None else float(test_accuracy),
        kernels=kernels,
        epoch_seconds=epoch_seconds,
        optimizer=optimizer,
    )

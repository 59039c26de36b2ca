"""The seed's mini-CNN (part 2) as an engine ``Sequential``, and its training loop.

Architecture, exactly the seed's ``MiniCNNManual``::

    Conv2D(1 filter, 3x3, no bias) -> ReLU -> MaxPool2D(2, stride 1) -> Flatten
        -> Dense(1) -> Sigmoid,  trained with binary cross-entropy and plain SGD

On 5x5 images: conv 3x3x1, pool 2x2x1, 4 features into the dense layer; 9 + 4 + 1 = 14
weights. The conv has no bias because the seed's has none (the Keras twin is
``Conv2D(1, 3, use_bias=False)``).

Initialisation (why ``init="glorot_centred"`` is the default)
    The seed draws every weight from ``N(0, 1) * 0.1``. With one filter and a ReLU that is
    fragile: the images are non-negative, so a kernel whose weights happen to sum to a
    clearly negative number gives negative responses almost everywhere, the ReLU passes
    no gradient and the network never learns (loss stuck at ln 2 = 0.693); and small
    weights make learning slow enough that many runs end with the clean lines only just
    on the right side of 0.95/0.05 after the seed's 50 epochs. Measured with the seed's
    data and settings over model seeds 0..49 (``bench/scratch_lines.py --init-sweep 50``
    reruns it), reaching > 0.95 / < 0.05 on the clean lines:

    ==================  ===========  ============================
    init                trained      of which with > 0.99 / < 0.01
    ==================  ===========  ============================
    ``seed``            28/50        12/50
    ``glorot``          43/50        25/50
    ``glorot_centred``  49/50        25/50  (seeds 0..9: 10/10)
    ==================  ===========  ============================

    A failure is either a dead ReLU (loss stays at 0.694; ``seed`` 6, ``glorot`` 6,
    ``glorot_centred`` 1 of 50) or a narrow miss (0.94-0.95 or 0.05-0.053: the kernel only
    fires for one orientation and the dense bias alone must push the other class away,
    which is slow at lr 0.01; ``seed`` 16, ``glorot`` 1, ``glorot_centred`` 0). Removing
    the mean makes the kernel sum to zero, so its response to the (roughly uniform)
    background is ~0 and, for any line, some kernel column (row) sums are positive: both
    vertical and horizontal lines reach live ReLUs at the start. The other inits remain
    available (``init="seed"``, ``"glorot"``) to reproduce the seed or compare.

Speed
    The seed trains one image per SGD step: 5000 steps of a network with 14 weights, where
    each step is almost pure call overhead. :func:`train` nevertheless goes through the
    engine's generic machinery, ``training.fit`` over this ``Sequential`` with the binary
    cross-entropy loss and ``SGD``, the same loop that trains the MNIST network. What makes
    a one-image step cheap lives in that machinery, for every model: inputs are checked once
    (by ``fit`` for the whole data set, by ``Sequential.forward`` per call) and the layers
    then run the ops' unchecked kernels with window geometry resolved at build time; the
    conv keeps its im2col columns for its backward, the pool its arg-max positions (one
    scatter back); element-wise kernels avoid Python-scalar operands and, on the loss's
    few elements, in-place ops; and ``fit`` scores accuracy once per epoch.
    ``bench/scratch_lines.py`` measures the result against the seed-style loops: about
    100 us per step against about 200 us (2x; the loops were 2.6x faster than this path
    before), and 150x the loops' throughput on batches of 100 (32x before); one machine,
    shared, so the numbers move by 10-20% from run to run.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from convscope.scratch.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sigmoid
from convscope.scratch.losses import BinaryCrossentropy, binary_crossentropy
from convscope.scratch.model import Sequential
from convscope.scratch.optimizers import SGD
from convscope.scratch.training import fit

__all__ = ["INITS", "MiniCNNResult", "build", "gradients", "train"]

#: accepted values of ``init`` (see the module docstring)
INITS = ("glorot_centred", "glorot", "seed")

KERNEL = 3
POOL = 2
POOL_STRIDE = 1

EpochCallback = Callable[[int, dict[str, float], np.ndarray], object]


# ------------------------------------------------------------------------------ building
def build(size: int = 5, seed: int = 0, *, init: str = "glorot_centred", dtype=np.float32):
    """The mini-CNN for ``size x size`` one-channel images, weights drawn from ``seed``.

    Layers: ``conv`` (Conv2D 1x3x3, no bias), ``relu``, ``pool`` (MaxPool2D 2, stride 1),
    ``flatten``, ``dense`` (Dense 1), ``sigmoid``. ``model.params()`` is
    ``[conv kernel (3,3,1,1), dense kernel (P*P,1), dense bias (1,)]`` with ``P = size - 3``.

    ``init``: ``"glorot_centred"`` (default: glorot-uniform, then the conv kernel's mean is
    subtracted), ``"glorot"`` (the engine's and Keras's default, zero biases) or ``"seed"``
    (every weight, dense bias included, ``N(0, 1) * 0.1`` like the seed notebook).
    ``dtype``: float32 to train, float64 for gradient checks.
    """
    size = _int_at_least(size, "size", KERNEL + POOL - 1)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got init={init!r}")
    model = Sequential(
        [
            Conv2D(1, KERNEL, use_bias=False, name="conv"),
            ReLU(name="relu"),
            MaxPool2D(POOL, stride=POOL_STRIDE, name="pool"),
            Flatten(name="flatten"),
            Dense(1, name="dense"),
            Sigmoid(name="sigmoid"),
        ],
        input_shape=(size, size, 1),
        seed=seed,
        dtype=dtype,
        name="mini_cnn",
    )
    conv, dense = model.layers[0], model.layers[4]
    if init == "glorot_centred":
        conv.kernel -= conv.kernel.mean()
    elif init == "seed":
        rng = np.random.default_rng(seed)
        for p in (conv.kernel, dense.kernel, dense.bias):
            p[...] = rng.standard_normal(p.shape) * 0.1
    return model


def _int_at_least(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
    return int(value)


def _check_model(model: Sequential) -> None:
    kinds = [type(layer) for layer in model.layers]
    expected = [Conv2D, ReLU, MaxPool2D, Flatten, Dense, Sigmoid]
    conv = model.layers[0] if model.layers else None
    if (
        kinds != expected
        or conv.kernel is None
        or conv.kernel.shape[:3] != (KERNEL, KERNEL, 1)
        or conv.kernel.shape[3] != 1
        or conv.use_bias
        or conv.stride != 1
        or conv.padding != "valid"
        or conv.activation != "linear"
        or model.layers[2].pool_size != POOL
        or model.layers[2].stride != POOL_STRIDE
        or model.layers[2].padding != "valid"
        or model.layers[4].activation != "linear"
        or not model.layers[4].use_bias
    ):
        raise ValueError(
            f"model must be the mini-CNN made by mini_cnn.build(), got layers "
            f"{[layer.name + ':' + type(layer).__name__ for layer in model.layers]}"
        )


# ------------------------------------------------------------------------------ data checks
def _check_xy(x, y, model: Sequential | None = None) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 4 or x.shape[3] != 1 or x.shape[1] != x.shape[2]:
        raise ValueError(
            f"x must be square one-channel images shaped (n, size, size, 1), got x.shape={x.shape}"
        )
    if x.shape[0] < 1:
        raise ValueError(f"x holds no samples, x.shape={x.shape}")
    if x.shape[1] < KERNEL + POOL - 1:
        raise ValueError(f"images must be at least 4x4 for this network, got x.shape={x.shape}")
    if model is not None and x.shape[1:] != model.input_shape:
        raise ValueError(
            f"x.shape={x.shape} does not match the model's input shape {model.input_shape}"
        )
    if y.shape not in ((x.shape[0],), (x.shape[0], 1)):
        raise ValueError(
            f"y must hold one 0/1 label per image, shaped (n,) or (n, 1) with n={x.shape[0]}, "
            f"got y.shape={y.shape} (x.shape={x.shape})"
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"x must hold real numbers, got x.dtype={x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x contains non-finite values (NaN or inf), x.shape={x.shape}")
    y = y.reshape(-1, 1)
    if not np.all(np.isin(y, (0, 1))):
        bad = y[~np.isin(y, (0, 1))][:3].tolist()
        raise ValueError(f"y must hold labels 0 or 1, got values such as {bad}, y.shape={y.shape}")
    return x, y


def gradients(model: Sequential, x, y):
    """Mean binary cross-entropy of ``model`` on ``(x, y)`` and its gradients.

    Returns ``(loss, [d kernel, d dense kernel, d dense bias])`` aligned with
    ``model.params()`` (same shapes), through the generic layers exactly as one training
    step computes them: forward, loss from the logits (as Keras does), backward. The tests
    hold it to finite differences.
    """
    _check_model(model)
    x, y = _check_xy(x, y, model)
    model.forward(np.asarray(x, dtype=model.dtype), training=True)
    loss, dlogits = binary_crossentropy(y.astype(model.dtype), model.logits, from_logits=True)
    model.backward_from_logits(dlogits, need_input_grad=False)
    return loss, model.grads()


# ------------------------------------------------------------------------------ training
@dataclass
class MiniCNNResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained ``Sequential``; ``model.forward(x)`` gives probabilities (n, 1).
        losses: mean binary cross-entropy of every epoch, averaged over the epoch's steps as
            the weights change (what the seed prints, and what Keras reports).
        accuracies: fraction classified right (probability > 0.5) in every epoch, likewise.
        kernels: the 3x3 conv kernel (2-D copy) after every epoch; ``kernels[e]`` goes with
            ``losses[e]``. The kernel before training is ``kernel_initial``.
        kernel_initial: the 3x3 kernel before the first step.
        seconds: wall time of the training loop.
    """

    model: Sequential
    losses: list[float]
    accuracies: list[float]
    kernels: list[np.ndarray]
    kernel_initial: np.ndarray
    seconds: float

    @property
    def kernel_history(self) -> np.ndarray:
        """``(epochs + 1, 3, 3)``: the initial kernel, then the kernel after every epoch."""
        return np.stack([self.kernel_initial, *self.kernels])

    def predict(self, x) -> np.ndarray:
        """Probabilities shaped (n, 1) (inference mode)."""
        return self.model.forward(np.asarray(x, dtype=self.model.dtype), training=False)

    def clean_predictions(self) -> tuple[float, float]:
        """``(p_vertical, p_horizontal)`` on the seed's clean test lines (1 and 0 wanted)."""
        from convscope.data.lines import clean_pair

        x, _ = clean_pair(self.model.input_shape[0])
        p = self.predict(x)[:, 0]
        return float(p[0]), float(p[1])


def _kernel2d(model: Sequential) -> np.ndarray:
    return model.layers[0].kernel[:, :, 0, 0].copy()


def train(
    x,
    y,
    epochs: int = 50,
    lr: float = 0.01,
    batch_size: int = 1,
    seed: int = 0,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    *,
    shuffle: bool = False,
    init: str = "glorot_centred",
    model: Sequential | None = None,
) -> MiniCNNResult:
    """Train the mini-CNN on line images with SGD, one update per batch, like the seed.

    The training is ``training.fit`` with binary cross-entropy and ``SGD(lr)``: the engine's
    generic loop, nothing specific to this network (see the module docstring on speed).

    Args:
        x: images shaped (n, size, size, 1) (e.g. from ``convscope.data.lines``).
        y: labels 1 (vertical) / 0 (horizontal), shaped (n, 1) or (n,).
        epochs: passes over the data (0 returns the untrained model).
        lr: SGD learning rate (``p -= lr * grad``).
        batch_size: samples per update; 1 is the seed's one image per step.
        seed: seeds the weights (through :func:`build`) and, with ``shuffle``, the order.
        on_epoch: ``f(epoch, logs, kernel)`` after every epoch, with the 0-based epoch,
            ``logs = {"loss": ..., "accuracy": ...}`` and a 2-D copy of the kernel.
        progress: ``fit``'s tqdm bar; it is silent anyway when stderr is not a terminal.
        shuffle: reshuffle every epoch (``fit``'s order for the same seed). The seed
            visits the samples in order, hence False.
        init: weight initialisation, see :func:`build`.
        model: continue training this mini-CNN instead of building a new one.

    Raises:
        ValueError: bad shapes or labels, non-finite inputs, ``epochs < 0``,
            ``batch_size < 1`` or a learning rate that is not a positive finite number.
    """
    epochs = _int_at_least(epochs, "epochs", 0)
    batch_size = _int_at_least(batch_size, "batch_size", 1)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number, got lr={lr!r}")
    x, y = _check_xy(x, y)
    if model is None:
        model = build(x.shape[1], seed, init=init)
    else:
        _check_model(model)
    x, y = _check_xy(x, y, model)
    x = np.asarray(x, dtype=model.dtype)
    y = y.astype(model.dtype)

    kernel_initial = _kernel2d(model)
    losses: list[float] = []
    accuracies: list[float] = []
    kernels: list[np.ndarray] = []

    def record(epoch: int, logs: dict[str, float]) -> None:
        losses.append(float(logs["loss"]))
        accuracies.append(float(logs["accuracy"]))
        kernels.append(_kernel2d(model))
        if on_epoch is not None:
            on_epoch(epoch, {"loss": losses[-1], "accuracy": accuracies[-1]}, kernels[-1].copy())

    start = time.perf_counter()
    fit(
        model,
        x,
        y,
        BinaryCrossentropy(),
        SGD(lr),
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        on_epoch_end=record,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    return MiniCNNResult(
        model=model,
        losses=losses,
        accuracies=accuracies,
        kernels=kernels,
        kernel_initial=kernel_initial,
        seconds=seconds,
    )

"""The seed's mini-CNN (part 2) as an engine ``Sequential``, and its training.

Exactly the seed's ``MiniCNNManual``: Conv2D(1 filter, 3x3, no bias, as the seed's) -> ReLU
-> MaxPool2D(2, stride 1) -> Flatten -> Dense(1) -> Sigmoid, binary cross-entropy, plain SGD;
on 5x5 images 9 + 4 + 1 = 14 weights. Training is the generic
:func:`~convscope.scratch.training.fit`, the loop that trains the MNIST network too.

Why ``init="glorot_centred"`` is the default: the seed's ``N(0, 0.1)`` weights
(``init="notebook"``) are fragile with one filter and a ReLU. The images are non-negative,
so a kernel whose weights sum clearly below zero responds negatively almost everywhere, the
ReLU passes no gradient and the loss stays at ln 2; and small weights often end the seed's
50 epochs only just past 0.95/0.05. A kernel with its mean removed sums to zero, so the
background gives ~0 and every line reaches a live ReLU from the start.
``bench/scratch_lines.py --init-sweep N`` counts how often each init reaches the thresholds.
"""

from __future__ import annotations

import numpy as np

from convscope.recording import EpochHook, EpochRecord
from convscope.scratch.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sigmoid
from convscope.scratch.losses import BinaryCrossentropy, binary_crossentropy
from convscope.scratch.model import Sequential
from convscope.scratch.optimizers import SGD
from convscope.scratch.training import fit
from convscope.validation import ValidationError, check_array, check_choice, check_float, check_int

__all__ = ["INITS", "build", "gradients", "train"]

#: accepted values of ``init`` (see the module docstring)
INITS = ("glorot_centred", "glorot", "notebook")

KERNEL = 3
POOL = 2
POOL_STRIDE = 1


def build(size: int = 5, seed: int = 0, *, init: str = "glorot_centred", dtype=np.float32):
    """The mini-CNN for ``size x size`` one-channel images, weights drawn from ``seed``.

    ``init``: ``"glorot_centred"`` (glorot-uniform, then the conv kernel's mean subtracted),
    ``"glorot"`` (Keras's default, zero biases) or ``"notebook"`` (every weight, dense bias
    included, ``N(0, 0.1)`` like the seed notebook).
    """
    size = check_int(size, "size", min=KERNEL + POOL - 1)
    check_choice(init, "init", INITS)
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
    elif init == "notebook":
        rng = np.random.default_rng(seed)
        for p in (conv.kernel, dense.kernel, dense.bias):
            p[...] = rng.standard_normal(p.shape) * 0.1
    return model


def _check_model(model: Sequential) -> None:
    size = model.input_shape[0] if model.built else KERNEL + POOL - 1
    if not model.built or model.get_config()["layers"] != build(size).get_config()["layers"]:
        raise ValidationError(
            "model must be the mini-CNN made by mini_cnn.build(), got layers "
            f"{[f'{la.name}:{type(la).__name__}' for la in model.layers]}"
        )


def _labels(y, n: int, dtype) -> np.ndarray:
    """0/1 labels, one per image, shaped (n, 1)."""
    y = check_array(y, "y")
    if y.shape not in ((n,), (n, 1)):
        raise ValidationError(
            f"y must hold one 0/1 label per image, shaped (n,) or (n, 1) with n={n}, "
            f"got y.shape={y.shape}"
        )
    if not np.all(np.isin(y, (0, 1))):
        raise ValidationError(f"y must hold labels 0 or 1, got values such as {y[:3].tolist()}")
    return y.reshape(-1, 1).astype(dtype)


def gradients(model: Sequential, x, y):
    """``(loss, grads)``: mean binary cross-entropy of ``model`` on ``(x, y)`` and its
    gradients (aligned with ``model.params()``), as one training step computes them."""
    _check_model(model)
    x = model.check_input(x)
    model.run(x, training=True)
    y = _labels(y, len(x), model.dtype)
    loss, dlogits = binary_crossentropy(y, model.logits, from_logits=True)
    model.backward_from_logits(dlogits, need_input_grad=False)
    return loss, model.grads()


def train(
    x,
    y,
    epochs: int = 50,
    lr: float = 0.01,
    batch_size: int = 1,
    seed: int = 0,
    on_epoch: EpochHook | None = None,
    *,
    shuffle: bool = False,
    init: str = "glorot_centred",
    model: Sequential | None = None,
    on_batch_end=None,
) -> tuple[Sequential, EpochRecord]:
    """Train the mini-CNN on line images with SGD, one update per batch, like the seed.

    ``y``: labels 1 (vertical) / 0 (horizontal); ``batch_size=1`` and ``shuffle=False`` are
    the seed's one image per step in a fixed order; ``seed`` seeds the weights
    (:func:`build`, with ``init``) and the order; ``model`` continues training a mini-CNN;
    the rest is :func:`~convscope.scratch.training.fit`'s. Returns ``(model, record)``.
    """
    lr = check_float(lr, "lr", min=0.0, min_open=True)
    x = np.asarray(x)
    if model is None:
        x = check_array(x, "x", ndim=4)
        model = build(x.shape[1], seed, init=init)
    _check_model(model)
    y = _labels(y, len(x), model.dtype)
    record = fit(
        model,
        x,
        y,
        BinaryCrossentropy(),
        SGD(lr),
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        on_epoch=on_epoch,
        on_batch_end=on_batch_end,
    )
    return model, record

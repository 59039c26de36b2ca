"""Engine networks more than one test module builds."""

from __future__ import annotations

import numpy as np

from convscope.scratch import Conv2D, Dense, Flatten, MaxPool2D, Sequential


def pooled_cnn(
    second: str = "linear", dtype=np.float64, seed: int = 5, use_bias: bool = True
) -> Sequential:
    """Two convs whose max pools tile their outputs (8x8 -> 4x4, then 4x4 -> 2x2), so that a
    training forward runs each pair as one (``Conv2D.forward_pooled``): the first on one
    input channel, the second, activated by ``second``, on four, with the gradient of its
    input needed; ``use_bias=False`` leaves the first conv without a bias (its columns without
    the column of ones)."""
    return Sequential(
        [
            Conv2D(4, 3, activation="relu", use_bias=use_bias),
            MaxPool2D(2),
            Conv2D(3, 3, padding="same", activation=second),
            MaxPool2D(2),
            Flatten(),
            Dense(4, activation="softmax"),
        ],
        input_shape=(10, 10, 1),
        seed=seed,
        dtype=dtype,
    )


def digits_cnn(dtype=np.float32, seed=0):
    """A small copy of the MNIST network: conv+relu, pool, conv+relu, dense softmax."""
    return Sequential(
        [
            Conv2D(4, 3, activation="relu"),
            MaxPool2D(2),
            Conv2D(6, 3, activation="relu"),
            Flatten(),
            Dense(3, activation="softmax"),
        ],
        input_shape=(10, 10, 1),
        seed=seed,
        dtype=dtype,
    )


def digits(n, seed=0):
    """``n`` random 10x10 one-channel images and labels in [0, 3) for :func:`digits_cnn`."""
    rng = np.random.default_rng(seed)
    return rng.random((n, 10, 10, 1)).astype(np.float32), rng.integers(0, 3, n)

"""Synthetic vertical-vs-horizontal line images (the seed notebook's part 2 dataset).

The seed builds 5x5 images with a one-pixel line through the middle column (vertical,
label 1) or the middle row (horizontal, label 0), alternating vertical/horizontal by
sample index, and adds uniform noise in ``[0, 0.2)`` to every pixel. This module
reproduces that exactly, in the engine's layout (NHWC, ``float32``), with two
generalisations the later experiments need: any image size, and the line at a random
row/column (``position="random"``) so a network cannot solve the task by looking at one
fixed pixel.

Randomness comes only from ``numpy.random.default_rng(seed)``: the same arguments give
the same arrays on every machine. The noise is drawn before the positions, so for one
seed the ``"centre"`` and ``"random"`` datasets share the same noise and differ only in
where the line is.
"""

from __future__ import annotations

import numpy as np

from convscope.validation import check_choice, check_float, check_int

__all__ = ["POSITIONS", "clean_pair", "make_dataset"]

#: Accepted values of ``position`` (``"center"`` is read as ``"centre"``).
POSITIONS = ("centre", "random")


def make_dataset(
    n_samples: int,
    size: int = 5,
    noise: float = 0.2,
    position: str = "centre",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Make ``n_samples`` noisy line images and their labels.

    Args:
        n_samples: number of images (>= 1). Even indices hold a vertical line (label 1),
            odd indices a horizontal one (label 0), as in the seed, so any prefix of the
            dataset is balanced to within one sample.
        size: image height and width in pixels (>= 3, the smallest image a 3x3 kernel fits).
        noise: every pixel gets ``uniform[0, noise)`` added, like the seed's
            ``np.random.rand(5, 5) * 0.2``. ``0`` gives clean images.
        position: ``"centre"`` puts the line in row/column ``size // 2`` (the seed);
            ``"random"`` draws the row/column uniformly for each image.
        seed: seed of the ``numpy.random.Generator`` that draws noise and positions.
            Samples are drawn in turn, so the first ``n`` samples of a dataset are the
            dataset made with ``n_samples=n`` (a training run reads a prefix of a larger
            file, see :func:`convscope.stages._common.lines_prefix`).

    Returns:
        ``(x, y)``: ``x`` float32 shaped ``(n_samples, size, size, 1)`` (NHWC, one
        channel), ``y`` float32 shaped ``(n_samples, 1)`` holding 1.0 (vertical) or
        0.0 (horizontal).

    Raises:
        ValidationError: (a ``ValueError``) naming the argument and its value when
            ``n_samples < 1``, ``size < 3``, ``noise`` is negative or not finite, or
            ``position`` is unknown.
    """
    n_samples = check_int(n_samples, "n_samples", min=1)
    size = check_int(size, "size", min=3)
    noise = check_float(noise, "noise", min=0)
    position = check_choice("centre" if position == "center" else position, "position", POSITIONS)

    rng = np.random.default_rng(seed)
    # Noise is drawn in float64 (like the seed) and the sum rounded once to float32.
    x = rng.random((n_samples, size, size)) * noise
    if position == "centre":
        where = np.full(n_samples, size // 2)
    else:  # a stream of its own, so that the first n samples are those made for n
        where = np.random.default_rng([seed, 1]).integers(0, size, size=n_samples)

    index = np.arange(n_samples)
    vertical = index % 2 == 0
    # A vertical line is a whole column, a horizontal one a whole row: set them with
    # fancy indexing over (sample, row, column) without a loop over samples.
    v, h = index[vertical], index[~vertical]
    x[v, :, where[v]] += 1.0
    x[h, where[h], :] += 1.0

    y = vertical.astype(np.float32).reshape(-1, 1)  # 1.0 vertical, 0.0 horizontal
    return x.astype(np.float32)[..., np.newaxis], y


def clean_pair(size: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The seed's two noise-free test images: a centred vertical and a horizontal line.

    Returns ``(x, y)`` in the same layout as :func:`make_dataset`: ``x`` float32 shaped
    ``(2, size, size, 1)`` with ``x[0]`` the vertical line and ``x[1]`` the horizontal
    one, ``y = [[1.0], [0.0]]``. A trained model should give ``> 0.95`` for the first and
    ``< 0.05`` for the second.
    """
    return make_dataset(2, size=size, noise=0.0, position="centre", seed=0)

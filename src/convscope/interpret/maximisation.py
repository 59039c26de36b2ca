"""What a filter responds to: the input that maximises its mean activation.

Plain gradient ascent on the pixels finds high-frequency patterns that excite a filter but
look like noise. Two small regularisers (Olah et al., "Feature Visualization", 2017) make
the result readable without changing what it shows:

- L2 decay: every step multiplies the image by ``1 - l2``, so pixels the filter does not care
  about fade back to 0 instead of keeping their starting noise;
- jitter: each step's gradient is taken on the image rolled by a random shift of up to
  ``jitter`` pixels (and rolled back), so a pattern must work at neighbouring positions,
  which suppresses pixel-exact adversarial texture.

Each step moves by ``lr`` times the gradient divided by its root mean square, so ``lr`` is a
step in input units whatever the scale of the filter's activations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convscope.interpret.factory import as_network
from convscope.interpret.networks import check_layer, check_unit
from convscope.validation import ValidationError, check_float, check_int

__all__ = ["activation_maximisation"]


def activation_maximisation(
    model: Any,
    layer: str,
    filter: int | Sequence[int],
    steps: int = 256,
    lr: float = 0.05,
    seed: int = 0,
    l2: float = 1e-3,
    jitter: int = 1,
) -> np.ndarray:
    """An input (H, W, C) that maximises the mean activation of ``filter`` in ``layer``.

    The objective is the mean over positions of channel ``filter`` of the layer's output
    (after its activation); for a Dense layer, unit ``filter``'s value. Gradient ascent
    starts from Gaussian noise (standard deviation 0.1) drawn from ``seed``, which also draws
    the jitter shifts: same seed and model, same image, on either network. A ReLU filter that
    is off over the whole starting image has no gradient there; its result is the decayed
    starting noise, and another ``seed`` may wake it.

    ``filter`` may be a sequence of filters: they are optimised together as one batch
    (one forward and backward pass per step for all of them) and the result is
    (len(filter), H, W, C), image ``i`` the same as ``filter[i]`` alone would give.
    """
    net = as_network(model)
    layer = check_layer(net, layer)
    batched = isinstance(filter, Sequence | np.ndarray)
    units = (
        [check_unit(net, layer, f, f"filter[{i}]") for i, f in enumerate(filter)]
        if batched
        else [check_unit(net, layer, filter)]
    )
    if not units:
        raise ValidationError("filter=[] is not allowed: expected at least one filter")
    steps = check_int(steps, "steps", min=0)
    lr = check_float(lr, "lr", min=0.0, min_open=True)
    l2 = check_float(l2, "l2", min=0.0, max=1.0, max_open=True)
    jitter = check_int(jitter, "jitter", min=0)
    rng = np.random.default_rng(check_int(seed, "seed", min=0))
    if any(d is None for d in net.input_shape):
        raise ValidationError(f"model: input shape {net.input_shape} must be fully known")
    # one starting image and one shift per step for the whole batch: every filter sees what
    # it would see alone
    start = (0.1 * rng.standard_normal((1, *net.input_shape))).astype(net.dtype)
    x = np.repeat(start, len(units), axis=0)
    unit = np.asarray(units)
    for done in range(1, steps + 1):
        shift = tuple(int(s) for s in rng.integers(-jitter, jitter + 1, size=2))
        _, grad = net.unit_gradient(np.roll(x, shift, axis=(1, 2)), layer, unit)
        grad = np.roll(grad, (-shift[0], -shift[1]), axis=(1, 2))
        with np.errstate(over="ignore", invalid="ignore"):
            rms = np.sqrt(np.mean(grad * grad, axis=(1, 2, 3), keepdims=True))
            step = np.divide(lr, rms, out=np.zeros_like(rms), where=rms > 0)
            x = (1.0 - l2) * x + step * grad
        if not np.isfinite(x).all():
            # either network: the image itself overflowed its dtype, so name what the caller
            # can change rather than let the next forward pass fail on its input
            raise ValidationError(
                f"lr={lr!r} is too large: the image stopped being finite at step {done} of "
                f"{steps} ({np.dtype(net.dtype).name}); expected a smaller lr"
            )
    return x if batched else x[0]

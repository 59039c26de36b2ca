"""The seed's part 1: one convolutional layer's forward pass, step by step, as data.

The seed notebook's ``CapaConvolucionalManual`` pads a 2-D image, slides a 2-D kernel over
it with Python loops, applies ReLU and max-pools the result, printing every intermediate.
Here the same four steps run through the engine's ops on the image as a ``1 x H x W x 1``
NHWC tensor and the kernel as ``KH x KW x 1 x 1`` HWIO, so the walkthrough shows exactly
what the engine computes inside a network (on the seed's example, the seed's numbers).
Every intermediate is returned as an array (for plots, MLflow artifacts and tests), and
:meth:`Walkthrough.render` gives the seed's printout in English.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from convscope.scratch import ops
from convscope.validation import ValidationError, check_array

__all__ = ["Walkthrough", "seed_example", "walkthrough"]


def seed_example() -> tuple[np.ndarray, np.ndarray]:
    """``(image, kernel)``, as the seed writes them: a 5x5 integer image with two bright blocks
    and a 3x3 vertical-edge kernel, positive where brightness falls from left to right."""
    image = np.array([[10, 10, 10, 0, 0]] * 3 + [[0, 0, 0, 10, 10]] * 2)
    kernel = np.array([[1, 0, -1]] * 3)
    return image, kernel


def _fmt(a: np.ndarray) -> str:
    """Integer-valued arrays print without decimals (the seed's numbers are whole)."""
    if a.size and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        a = a.astype(np.int64)
    return np.array2string(a, max_line_width=120)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


# eq=False: field-wise == on arrays is ambiguous; compare the arrays themselves instead.
@dataclass(frozen=True, eq=False)
class Walkthrough:
    """Every intermediate of one conv layer's forward pass, as read-only 2-D float arrays.

    ``image`` and ``kernel`` are the inputs as floats, the hyper-parameters are as given,
    then ``padded`` (zeros added), ``feature_map`` (the cross-correlation of ``padded``),
    ``activated`` (ReLU) and ``pooled``; ``pads`` is the padding applied,
    ``((top, bottom), (left, right))``.
    """

    image: np.ndarray
    kernel: np.ndarray
    stride: int | tuple[int, int]
    padding: int | str | tuple
    pool_size: int | tuple[int, int]
    pool_stride: int | tuple[int, int] | None
    padded: np.ndarray
    feature_map: np.ndarray
    activated: np.ndarray
    pooled: np.ndarray
    pads: tuple[tuple[int, int], tuple[int, int]] = field(default=((0, 0), (0, 0)))

    def render(self) -> str:
        """The step-by-step printout of the seed's ``forward_pass``, in English."""
        (t, b), (l, r) = self.pads
        pad_text = f"{t}" if t == b == l == r else f"top {t}, bottom {b}, left {l}, right {r}"
        h, w = self.padded.shape
        lines = [
            "Convolutional layer",
            f"Kernel (filter) {self.kernel.shape[0]}x{self.kernel.shape[1]}:",
            _fmt(self.kernel),
            f"Stride: {self.stride}, Padding: {self.padding}",
            f"Pool size: {self.pool_size}, Pool stride: {self.pool_stride}",
            "",
            "--- FORWARD PASS ---",
            "1. Padding",
            f"Original image {self.image.shape[0]}x{self.image.shape[1]}:",
            _fmt(self.image),
            f"Padded image {h}x{w} (padding {pad_text}):",
            _fmt(self.padded),
            "",
            "2. Convolution",
            f"Feature map {self.feature_map.shape[0]}x{self.feature_map.shape[1]}:",
            _fmt(self.feature_map),
            "",
            "3. ReLU activation",
            "Activated feature map (negative values set to 0):",
            _fmt(self.activated),
            "",
            "4. Max pooling",
            f"Pooled feature map {self.pooled.shape[0]}x{self.pooled.shape[1]}:",
            _fmt(self.pooled),
            "--- FORWARD PASS DONE ---",
        ]
        return "\n".join(lines)

    __str__ = render

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for ``np.savez`` (no pickle): every intermediate plus the settings.

        ``stride``, ``pool_size`` and ``pool_stride`` are saved as ``(h, w)`` int pairs and
        the padding as the explicit ``pads`` ``[[top, bottom], [left, right]]``, so the file
        is self-describing even when ``padding`` was the string ``"same"``.
        """
        pool_stride = self.pool_size if self.pool_stride is None else self.pool_stride
        names = ("image", "kernel", "padded", "feature_map", "activated", "pooled")
        arrays = {name: np.asarray(getattr(self, name)) for name in names}
        pairs = {"stride": self.stride, "pads": self.pads, "pool_size": self.pool_size}
        for key, value in {**pairs, "pool_stride": pool_stride}.items():
            arrays[key] = np.array(value if key == "pads" else np.broadcast_to(value, 2), np.int64)
        return arrays


def walkthrough(image, kernel, stride=1, padding=0, pool_size=2, pool_stride=2) -> Walkthrough:
    """Run one conv layer (pad, convolve, ReLU, max-pool) on a 2-D image, keeping every step.

    ``image`` ``(H, W)`` and ``kernel`` ``(KH, KW)``; the other arguments as in
    :mod:`~convscope.scratch.ops` (``pool_stride=None`` means ``pool_size``). float32 stays
    float32, integers become float64 (exact sums). Bad arguments raise one ValueError naming
    them and the shapes.
    """
    image = check_array(image, "image", ndim=2, finite=True)
    kernel = check_array(kernel, "kernel", ndim=2, finite=True)
    if image.dtype.kind not in "iuf" or kernel.dtype.kind not in "iuf":
        raise ValidationError(
            f"image and kernel must hold real numbers, got {image.dtype} and {kernel.dtype}"
        )
    dtype = np.result_type(image.dtype, kernel.dtype, np.float32)
    image = image.astype(dtype)
    kernel = kernel.astype(dtype)
    x = image[np.newaxis, :, :, np.newaxis]
    w = kernel[:, :, np.newaxis, np.newaxis]
    try:
        pads = ops.resolve_padding(padding, image.shape, kernel.shape, stride)
        padded = ops.pad2d(x, pads)
        # The ops pad themselves; handing them the padded tensor with 'valid' makes the
        # walkthrough's feature map come from exactly the `padded` it shows.
        feature_map = ops.conv2d(padded, w, stride=stride, padding="valid")
        activated = ops.relu(feature_map)
        pooled = ops.max_pool2d(activated, pool_size=pool_size, stride=pool_stride)
    except ValueError as err:
        raise ValueError(
            f"{err} [walkthrough: image.shape={image.shape}, kernel.shape={kernel.shape}, "
            f"stride={stride!r}, padding={padding!r}, pool_size={pool_size!r}, "
            f"pool_stride={pool_stride!r}]"
        ) from err

    return Walkthrough(
        image=_frozen(image),
        kernel=_frozen(kernel),
        stride=stride,
        padding=padding,
        pool_size=pool_size,
        pool_stride=pool_stride,
        padded=_frozen(padded[0, :, :, 0]),
        feature_map=_frozen(feature_map[0, :, :, 0]),
        activated=_frozen(activated[0, :, :, 0]),
        pooled=_frozen(pooled[0, :, :, 0]),
        pads=tuple(tuple(int(v) for v in p) for p in pads),
    )

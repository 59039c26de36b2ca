"""Argument and array checks, in one place, each input checked once at the boundary.

Every public function that takes user input (an engine op or layer, a trainer, a data loader,
a figure) checks it with these helpers where it enters, then works unchecked. A failed check
raises :class:`ValidationError` (a ``ValueError``) whose one-line message names the argument,
the value (cut to :data:`MAX_VALUE_CHARS`) and what is allowed.

NumPy and the standard library only: the engine core uses it.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_VALUE_CHARS",
    "ValidationError",
    "check_array",
    "check_choice",
    "check_float",
    "check_images",
    "check_int",
    "check_kernel",
    "check_xy",
    "error_line",
    "redact_credentials",
    "require",
    "short_repr",
    "shorten_words",
    "standardize_tuple",
]

MAX_VALUE_CHARS = 80


class ValidationError(ValueError):
    """An argument a caller passed is not allowed; the message is one line."""


def short_repr(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, so an error line stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text)} chars)"


# A run of non-blank characters this long is a pasted value, not a key=value already cut.
_LONG_WORD = re.compile(rf"\S{{{3 * MAX_VALUE_CHARS},}}")


def shorten_words(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` with every run of non-blank characters too long for an error line cut to
    ``limit`` characters the way :func:`short_repr` cuts a value, so a line that quotes a
    huge value (an override, a path made from one) stays short whatever produced it."""
    return _LONG_WORD.sub(lambda m: f"{m.group()[: limit - 15]}... ({len(m.group())} chars)", text)


# ``scheme://user:password@host``: the authority ends at the first '/', '?' or '#', and URL
# parsers (urllib, SQLAlchemy) end the userinfo at its last '@', so a password with a bare '@'
# is hidden whole while an '@' in a path or query is left alone.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@:]*):[^\s/?#]*@")


def redact_credentials(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``
    (``postgresql://mlflow:***@db:5432/mlflow``): what any line a user or a log sees gets."""
    return _URL_PASSWORD.sub(r"\g<head>:***@", text)


def error_line(message: str) -> str:
    """``message`` as the one line an error prints: credentials redacted, whitespace joined,
    pasted values cut (:func:`shorten_words`)."""
    return shorten_words(" ".join(redact_credentials(str(message)).split()))


def _fail(name: str, value: Any, allowed: str) -> ValidationError:
    return ValidationError(f"{name}={short_repr(value)} is not allowed: expected {allowed}")


def check_int(value: Any, name: str, *, min: int | None = None, max: int | None = None) -> int:
    """An integer (not a bool) in ``[min, max]``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)
    if ok and (min is None or value >= min) and (max is None or value <= max):
        return int(value)
    if min is not None and max is not None:
        raise _fail(name, value, f"an int in [{min}, {max}]")
    bound = f" >= {min}" if min is not None else f" <= {max}" if max is not None else ""
    raise _fail(name, value, f"an int{bound}")


def check_float(
    value: Any,
    name: str,
    *,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
) -> float:
    """A finite real number in the interval given (``min_open``: ``> min`` instead of ``>=``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
    if ok and math.isfinite(float(value)):
        v = float(value)
        low_ok = min is None or (v > min if min_open else v >= min)
        high_ok = max is None or (v < max if max_open else v <= max)
        if low_ok and high_ok:
            return v
    if min is not None and max is not None:
        interval = f"{'(' if min_open else '['}{min}, {max}{')' if max_open else ']'}"
        raise _fail(name, value, f"a finite number in {interval}")
    bound = f" {'>' if min_open else '>='} {min}" if min is not None else ""
    bound = bound or (f" {'<' if max_open else '<='} {max}" if max is not None else "")
    raise _fail(name, value, f"a finite number{bound}")


def check_choice(value: Any, name: str, choices: Collection[Any]) -> Any:
    """One of ``choices`` (listed in their order, a set's sorted)."""
    if value in choices:
        return value
    listed = sorted(map(str, choices)) if isinstance(choices, set | frozenset) else choices
    raise _fail(name, value, "one of " + ", ".join(map(str, listed)))


def standardize_tuple(value: Any, n: int, name: str, *, min: int = 1) -> tuple[int, ...]:
    """An int, or ``n`` ints, as a tuple of ``n`` ints each ``>= min`` (Keras's
    ``standardize_tuple``): the one form a size or stride takes once it is checked."""

    def is_int(v: Any) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool | np.bool_)

    if is_int(value):
        values: tuple[Any, ...] = (value,) * n
    elif isinstance(value, tuple | list) and len(value) == n and all(map(is_int, value)):
        values = tuple(value)
    else:
        raise _fail(name, value, f"an int or {n} ints")
    if any(v < min for v in values):
        raise _fail(name, value, f"ints >= {min}")
    return tuple(int(v) for v in values)


def require(ok: bool, name: str, value: Any, allowed: str) -> None:
    """A check of its own: ``name=value is not allowed: expected <allowed>`` unless ``ok``."""
    if not ok:
        raise _fail(name, value, allowed)


def check_array(
    value: Any,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    shape: Sequence[int | None] | None = None,
    dtype: Any = None,
    finite: bool = False,
    nonempty: bool = False,
) -> np.ndarray:
    """``value`` as an array (cast to ``dtype`` when given) with the rank/shape asked for.

    ``shape`` may hold ``None`` for any size along an axis; ``finite`` refuses NaN and inf.
    """
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{name}: cannot be read as an array ({exc})") from None
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValidationError(f"{name} has shape {arr.shape}: expected {want} dimensions")
    if shape is not None:
        if arr.ndim != len(shape) or any(
            s is not None and s != a for s, a in zip(shape, arr.shape, strict=False)
        ):
            want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
            raise ValidationError(f"{name} has shape {arr.shape}: expected {want}")
    if nonempty and arr.size == 0:
        raise ValidationError(f"{name} is empty (shape {arr.shape})")
    if finite and arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        raise ValidationError(f"{name} contains NaN or inf (shape {arr.shape})")
    return arr


def check_xy(
    x: Any, y: Any, *, x_name: str = "x", y_name: str = "y", dtype: Any = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Samples and targets: same length along axis 0, at least one sample, finite ``x``."""
    xa = check_array(x, x_name, dtype=dtype, finite=True, nonempty=True)
    ya = np.asarray(y)
    if xa.ndim < 2 or ya.ndim < 1 or len(xa) != len(ya):
        raise ValidationError(
            f"{x_name} and {y_name} need the same number of samples along axis 0, got "
            f"{x_name}.shape={xa.shape}, {y_name}.shape={ya.shape}"
        )
    return xa, ya


def check_images(
    x: Any,
    y: Any,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    x_name: str = "x",
    y_name: str = "y",
) -> tuple[np.ndarray, np.ndarray]:
    """A CNN's inputs: float NHWC images of ``input_shape``, one label in range per image.

    Returns one contiguous float32 copy of the images and int64 labels, so a trainer gathers
    batches from them without casts.
    """
    xa, ya = np.asarray(x), np.asarray(y)
    want = tuple(int(d) for d in input_shape)
    if xa.ndim != 4 or xa.shape[1:] != want:
        raise ValidationError(
            f"{x_name} has shape {xa.shape}; expected (n, *{want}) NHWC as set by "
            f"input_shape={list(want)} (add the channel axis with x[..., None])"
        )
    if not np.issubdtype(xa.dtype, np.floating):
        raise ValidationError(
            f"{x_name} has dtype {xa.dtype} and shape {xa.shape}; expected floats in [0, 1] "
            "(convscope.data.mnist.prepare scales uint8 images)"
        )
    if ya.ndim != 1 or len(ya) != len(xa):
        raise ValidationError(
            f"{y_name} has shape {ya.shape}; expected ({len(xa)},) integer labels, "
            f"one per image of {x_name} {xa.shape}"
        )
    if len(ya) and not np.issubdtype(ya.dtype, np.integer) and np.any(np.mod(ya, 1)):
        raise ValidationError(f"{y_name} has non-integer labels (dtype {ya.dtype})")
    if len(ya) and (ya.min() < 0 or ya.max() >= num_classes):
        raise ValidationError(
            f"{y_name} has labels in [{ya.min()}, {ya.max()}]; expected "
            f"0..{num_classes - 1} for num_classes={num_classes}"
        )
    return np.ascontiguousarray(xa, dtype=np.float32), ya.astype(np.int64, copy=False)


def check_kernel(value: Any, name: str = "kernel") -> np.ndarray:
    """A conv kernel as float64 HWIO ``(kh, kw, in_channels, filters)``; ``(kh, kw)`` is one
    filter on one channel and ``(kh, kw, filters)`` several filters on one channel."""
    k = check_array(value, name, dtype=np.float64)
    if k.ndim not in (2, 3, 4):
        raise ValidationError(
            f"{name} has shape {k.shape}: expected (kh, kw), (kh, kw, filters) or HWIO "
            "(kh, kw, in_channels, filters)"
        )
    return k[:, :, None, None] if k.ndim == 2 else k[:, :, None, :] if k.ndim == 3 else k

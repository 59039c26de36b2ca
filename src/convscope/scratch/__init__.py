"""The NumPy CNN engine: ops, layers, model, losses, optimizers, ``fit``, the walkthrough.

The core imports NumPy, the standard library and NumPy-only convscope modules (files,
validation, recording); the trainers' glue (progress bar, BLAS threads, configs) is
:mod:`convscope.engine_train`. ``from_keras`` / ``to_keras`` live in
``convscope.scratch.bridge``, which needs TensorFlow; they are resolved on first access.
"""

from convscope.scratch import losses, ops, optimizers  # noqa: F401
from convscope.scratch.layer_walkthrough import Walkthrough, walkthrough  # noqa: F401
from convscope.scratch.layers import (  # noqa: F401
    Activation,
    Conv2D,
    Dense,
    Flatten,
    Layer,
    MaxPool2D,
    MaxPooling2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from convscope.scratch.losses import (  # noqa: F401
    BinaryCrossentropy,
    SparseCategoricalCrossentropy,
    binary_crossentropy,
    sparse_categorical_crossentropy,
)
from convscope.scratch.model import Sequential, load_checkpoint  # noqa: F401
from convscope.scratch.optimizers import SGD, Adam  # noqa: F401
from convscope.scratch.training import evaluate, fit  # noqa: F401

#: every public name above, submodules included
__all__ = sorted(name for name in dir() if not name.startswith("_"))


def __getattr__(name: str):
    """Resolve the TensorFlow-backed bridge functions only when they are asked for."""
    if name in ("from_keras", "to_keras"):
        from convscope.scratch import bridge

        return getattr(bridge, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

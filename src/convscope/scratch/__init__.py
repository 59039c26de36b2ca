"""The NumPy CNN engine (imports NumPy only, never TensorFlow)."""

from convscope.scratch.layer_walkthrough import Walkthrough, walkthrough  # noqa: F401

"""The network interface for a model: :class:`~convscope.interpret.networks.EngineNetwork`
for an engine ``Sequential``, ``KerasNetwork`` for a ``keras.Model`` (TensorFlow is imported
only then). A module of its own, so that both networks' modules sit below it."""

from __future__ import annotations

from typing import Any

from convscope.interpret.networks import EngineNetwork
from convscope.scratch import Sequential
from convscope.validation import ValidationError

__all__ = ["as_network"]


def as_network(model: Any):
    """The interface for an engine ``Sequential`` or a ``keras.Model``; TF only for the latter."""
    if isinstance(model, Sequential):
        return EngineNetwork(model)
    if type(model).__module__.split(".")[0] == "keras":
        from convscope.interpret.keras_network import KerasNetwork

        return KerasNetwork(model)
    raise ValidationError(
        f"model={type(model).__name__} is not allowed: expected a convscope.scratch.Sequential "
        "or a keras.Model"
    )

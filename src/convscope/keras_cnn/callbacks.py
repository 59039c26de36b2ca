"""The Keras side of :class:`convscope.recording.EpochRecord`: one callback, no bookkeeping.

Keras's own ``History`` keeps metrics but not the weights, and a callback that logged to
MLflow would tie training to tracking. :class:`EpochRecorder` feeds Keras's epoch events to
the record both trainers share, so metrics, kernel snapshots, wall times and the
``on_epoch(epoch, logs, kernels)`` hook work the same way for Keras and the engine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import keras

from convscope.keras_cnn.model import conv_kernels
from convscope.recording import EpochHook, EpochRecord, TrainingDiverged

__all__ = ["EpochHook", "EpochRecorder", "RaiseOnNonFiniteLoss"]


class EpochRecorder(keras.callbacks.Callback):
    """Record every epoch of ``fit`` in ``self.record`` (see :class:`EpochRecord`).

    ``history``, ``kernels`` and ``epoch_seconds`` are the record's. A recorder accumulates
    across ``fit`` calls on one model (continued training appends); use a fresh one per run.
    """

    def __init__(self, on_epoch: EpochHook | None = None) -> None:
        super().__init__()
        self.record = EpochRecord(lambda: conv_kernels(self.model), on_epoch)
        self.history = self.record.history
        self.kernels = self.record.kernels
        self.epoch_seconds = self.record.epoch_seconds

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self.record.begin()

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.record.epoch_start()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.record.epoch_end(logs or {})


class RaiseOnNonFiniteLoss(keras.callbacks.Callback):
    """Raise :class:`~convscope.recording.TrainingDiverged` at the first batch whose loss is
    NaN or inf.

    Keras's own ``TerminateOnNaN`` only stops training, and ``fit`` then returns normally with
    a broken model that a stage would save as a success; raising ends the run as a failure.
    """

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(float(loss), self.epoch)

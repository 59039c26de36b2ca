"""A Keras callback that records what the tracking layer and the evolution figures need.

Keras's own ``History`` keeps per-epoch metrics but not the weights, and a callback that only
logged to MLflow would tie training to tracking. :class:`EpochRecorder` keeps both in plain
NumPy/Python (metrics, kernel snapshots, wall times) and hands each epoch to an optional user
function, which is where ``convscope.tracking`` plugs in its MLflow logging.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np

from convscope.keras_cnn.model import conv_kernels

__all__ = ["EpochRecorder", "EpochHook"]

#: ``on_epoch(epoch, logs, kernels)``: ``epoch`` counts completed epochs (0 = before training),
#: ``logs`` maps metric name -> float, ``kernels`` maps conv layer name -> HWIO array.
EpochHook = Callable[[int, Mapping[str, float], Mapping[str, np.ndarray]], Any]


class EpochRecorder(keras.callbacks.Callback):
    """Record per-epoch metrics, conv kernels after every epoch, and epoch wall times.

    Attributes after ``fit``:

    - ``history``: metric name -> list of floats, one per epoch (``loss``, ``accuracy`` and, with
      validation data, ``val_loss``, ``val_accuracy``).
    - ``kernels``: conv layer name -> list of HWIO arrays; index 0 holds the kernels before the
      first epoch and index ``e`` those after epoch ``e``, so the list has ``epochs + 1`` entries.
    - ``epoch_seconds``: wall time of each epoch, training plus validation, measured before the
      kernels are copied and ``on_epoch`` runs, so recording and tracking are not counted.

    ``on_epoch(epoch, logs, kernels)`` is called once with ``epoch=0``, ``logs={}`` and the
    initial kernels when training begins (step 0 of a kernel-evolution slider), then after each
    epoch with ``epoch`` = number of completed epochs (1-based), ``logs`` = that epoch's metrics
    as floats plus ``epoch_seconds``, and ``kernels`` = the kernel copies just stored. An
    exception raised by ``on_epoch`` stops training, so a broken tracker is not silently ignored.

    A recorder accumulates across ``fit`` calls on the same model (continued training appends);
    use a fresh one per run.
    """

    def __init__(self, on_epoch: EpochHook | None = None) -> None:
        super().__init__()
        if on_epoch is not None and not callable(on_epoch):
            raise TypeError(f"on_epoch must be callable or None, got {type(on_epoch).__name__}")
        self.on_epoch = on_epoch
        self.history: dict[str, list[float]] = {}
        self.kernels: dict[str, list[np.ndarray]] = {}
        self.epoch_seconds: list[float] = []
        self._epoch_start: float | None = None

    @property
    def epochs_recorded(self) -> int:
        return len(self.epoch_seconds)

    def _snapshot(self) -> dict[str, np.ndarray]:
        snap = conv_kernels(self.model)
        for name, kernel in snap.items():
            self.kernels.setdefault(name, []).append(kernel)
        return snap

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        # Only the first fit records the starting point; a continued fit starts where the
        # previous one's last snapshot already is.
        if not self.kernels:
            snap = self._snapshot()
            if self.on_epoch is not None:
                self.on_epoch(0, {}, snap)

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - (self._epoch_start or time.perf_counter())
        self.epoch_seconds.append(seconds)
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        for key, value in metrics.items():
            self.history.setdefault(key, []).append(value)
        snap = self._snapshot()
        if self.on_epoch is not None:
            self.on_epoch(self.epochs_recorded, {**metrics, "epoch_seconds": seconds}, snap)

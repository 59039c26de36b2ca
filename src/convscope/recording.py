"""What both trainers record per epoch: metrics, kernel snapshots, wall times, and one hook.

The Keras trainer (through :class:`convscope.keras_cnn.callbacks.EpochRecorder`, a thin
Keras callback) and the engine trainers (through ``fit``'s ``on_epoch_end``) feed the same
:class:`EpochRecord`, so epochs are numbered one way and the hook has one signature:

``on_epoch(epoch, logs, kernels)``: ``epoch`` counts completed epochs, 0 is the state
before training (``logs`` empty), 1..N after each epoch; ``logs`` maps metric name to float
and includes ``epoch_seconds``; ``kernels`` maps conv layer name to its HWIO kernel.

NumPy and the standard library only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["EpochHook", "EpochRecord", "TrainingDiverged", "TrainingStopped"]

EpochHook = Callable[[int, Mapping[str, float], Mapping[str, np.ndarray]], Any]


class TrainingDiverged(FloatingPointError):
    """The training loss (or the network's output) became NaN or inf: training cannot recover.

    Both trainers raise it at the first such batch; the config glue (``keras_cnn.train``,
    :mod:`convscope.engine_train`) adds the setting to lower with :meth:`with_setting`, so a
    stage prints e.g. ``loss became nan at epoch 1; lower keras.learning_rate (1e+30)``.
    """

    def __init__(self, value: float, epoch: int, hint: str = "lower the learning rate") -> None:
        self.value, self.epoch, self.hint = float(value), int(epoch), hint
        super().__init__(f"loss became {self.value} at epoch {self.epoch}; {hint}")

    def __reduce__(self):
        # pickled as its arguments: the engine's worker processes send it to the trainer
        return type(self), (self.value, self.epoch, self.hint)

    def with_setting(self, key: str, value: Any) -> TrainingDiverged:
        """The same failure, naming the config setting ``key`` (now ``value``) to lower."""
        return TrainingDiverged(self.value, self.epoch, f"lower {key} ({value:g})")


class TrainingStopped(Exception):
    """The epoch hook ended training early on purpose (a study's pruner after ``epoch``).

    Not a failure: the runner discards the stage's outputs, keeps the run's epochs in MLflow
    and tags the run with the state and the epoch.
    """

    def __init__(self, epoch: int, reason: str) -> None:
        self.epoch = int(epoch)
        super().__init__(reason)


class EpochRecord:
    """Per-epoch metrics, kernels and times of one training run.

    ``kernels_of()`` returns the model's current conv kernels (name -> HWIO array).
    After training: ``history[key]`` has one float per epoch; ``kernels[name]`` has
    ``epochs + 1`` copies (index 0 before training, ``e`` after epoch ``e``);
    ``epoch_seconds`` one wall time per epoch, measured before the snapshot and the hook run,
    so recording and tracking are not counted. An exception from the hook stops training.
    """

    def __init__(
        self, kernels_of: Callable[[], Mapping[str, np.ndarray]], on_epoch: EpochHook | None = None
    ) -> None:
        if on_epoch is not None and not callable(on_epoch):
            raise TypeError(f"on_epoch must be callable or None, got {type(on_epoch).__name__}")
        self._kernels_of = kernels_of
        self.on_epoch = on_epoch
        self.history: dict[str, list[float]] = {}
        self.kernels: dict[str, list[np.ndarray]] = {}
        self.epoch_seconds: list[float] = []
        self._start: float | None = None

    @property
    def epochs(self) -> int:
        return len(self.epoch_seconds)

    def _snapshot(self) -> dict[str, np.ndarray]:
        snap = {name: np.array(k, dtype=np.float32) for name, k in self._kernels_of().items()}
        for name, kernel in snap.items():
            self.kernels.setdefault(name, []).append(kernel)
        return snap

    def begin(self) -> None:
        """Training starts: record epoch 0 (a continued run keeps its earlier epochs)."""
        if not self.kernels:
            snap = self._snapshot()
            if self.on_epoch is not None:
                self.on_epoch(0, {}, snap)
        self._start = time.perf_counter()

    def epoch_start(self) -> None:
        """An epoch starts (optional: without it the time counts from the previous end)."""
        self._start = time.perf_counter()

    def epoch_end(self, logs: Mapping[str, Any]) -> None:
        """An epoch ended with ``logs``: record it and call the hook with epoch = 1, 2, ..."""
        now = time.perf_counter()
        seconds = now - (self._start if self._start is not None else now)
        self.epoch_seconds.append(seconds)
        metrics = {key: float(value) for key, value in logs.items()}
        for key, value in metrics.items():
            self.history.setdefault(key, []).append(value)
        snap = self._snapshot()
        if self.on_epoch is not None:
            self.on_epoch(self.epochs, {**metrics, "epoch_seconds": seconds}, snap)
        self._start = time.perf_counter()

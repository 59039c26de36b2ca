"""Train the config's Keras CNN deterministically; save and load it as a native ``.keras`` file.

Determinism: :func:`train` seeds Python, NumPy and TensorFlow from ``cfg.seed`` and turns on
TensorFlow op determinism *before* the model is built, so initial weights, shuffling order and
every reduction are fixed: same config and data, same numbers, in one process or in two. Op
determinism is a process-wide switch and stays on afterwards.

Validation follows the seed: ``model.fit(..., validation_split=cfg.validation_split)``, which
holds out the *last* fraction of ``x_train`` (taken before shuffling).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from convscope.config.schema import CNNConfig
from convscope.files import DataError, atomic_path
from convscope.keras_cnn.callbacks import EpochRecorder, RaiseOnNonFiniteLoss
from convscope.keras_cnn.model import build_model
from convscope.recording import EpochHook, TrainingDiverged
from convscope.validation import ValidationError, check_images

__all__ = ["ModelFileError", "ModelFileNotFoundError", "TrainResult", "load_model", "save_model"]
__all__ += ["seed_everything", "train"]


class ModelFileError(DataError):
    """A model file is missing, corrupt or has the wrong suffix. The message is one line."""


class ModelFileNotFoundError(ModelFileError, FileNotFoundError):
    """The model file does not exist (also a FileNotFoundError for callers that expect one)."""


@dataclass
class TrainResult:
    """What one :func:`train` call produced.

    ``history`` maps ``loss``, ``accuracy`` (and ``val_loss``, ``val_accuracy`` when
    ``validation_split > 0``) to one float per epoch. ``kernels`` maps each conv layer name to
    ``epochs + 1`` HWIO arrays: index 0 before training, index ``e`` after epoch ``e``.
    ``test_loss``/``test_accuracy`` are None when no test set was given.
    """

    model: keras.Model
    history: dict[str, list[float]]
    test_loss: float | None
    test_accuracy: float | None
    kernels: dict[str, list[np.ndarray]] = field(repr=False)
    epoch_seconds: list[float]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow ops deterministic.

    ``set_random_seed`` also reseeds NumPy's *global* generator; convscope's own NumPy code uses
    explicit ``np.random.default_rng`` generators, so this does not couple the two.
    """
    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()


def train(
    cfg: CNNConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    *,
    on_epoch: EpochHook | None = None,
    callbacks: Iterable[keras.callbacks.Callback] = (),
    verbose: str | int = "auto",
) -> TrainResult:
    """Seed, build ``cfg``'s model, fit it like the seed, evaluate on the test set if given.

    ``x_*`` are float NHWC images in [0, 1] shaped ``(n, *cfg.input_shape)``; ``y_*`` integer
    labels. ``on_epoch(epoch, logs, kernels)`` is :mod:`convscope.recording`'s hook (epoch 0
    before training, then 1..N); ``callbacks`` are further Keras callbacks.
    """
    shape = {"input_shape": cfg.input_shape, "num_classes": cfg.num_classes}
    x_train, y_train = check_images(x_train, y_train, x_name="x_train", y_name="y_train", **shape)
    if (x_test is None) != (y_test is None):
        raise ValidationError("x_test and y_test must be given together (or both left None)")
    if x_test is not None:
        x_test, y_test = check_images(x_test, y_test, x_name="x_test", y_name="y_test", **shape)
    if len(x_train) - int(len(x_train) * cfg.validation_split) < 1:
        raise ValidationError(
            f"x_train has {len(x_train)} images; validation_split={cfg.validation_split} "
            "leaves none to train on"
        )

    seed_everything(cfg.seed)
    model = build_model(cfg)
    recorder = EpochRecorder(on_epoch)
    try:
        model.fit(
            x_train,
            y_train,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            validation_split=cfg.validation_split,
            callbacks=[RaiseOnNonFiniteLoss(), recorder, *callbacks],
            verbose=verbose,
        )
    except TrainingDiverged as exc:
        raise exc.with_setting(f"{cfg._prefix}.learning_rate", cfg.learning_rate) from None

    test_loss = test_accuracy = None
    if x_test is not None:
        scores = model.evaluate(
            x_test, y_test, batch_size=cfg.batch_size, return_dict=True, verbose=0
        )
        test_loss, test_accuracy = float(scores["loss"]), float(scores["accuracy"])

    history = {k: list(v) for k, v in recorder.history.items()}
    return TrainResult(
        model, history, test_loss, test_accuracy, recorder.kernels, list(recorder.epoch_seconds)
    )


def _keras_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.suffix != ".keras":
        raise ModelFileError(f"{p}: a Keras model file must end in .keras (native format)")
    return p


def save_model(model: keras.Model, path: str | os.PathLike[str]) -> Path:
    """Save ``model`` in the native ``.keras`` format through :func:`convscope.files.atomic_path`.

    A reader never sees a half-written model: a failed save leaves ``path`` as it was. The
    archive is byte-reproducible (a DVC out must depend on the weights only), which Keras's is
    not: ``metadata.json`` has ``date_saved``, the weights entry the current time, and
    ``config.json`` numbers shared objects (``shared_object_id``) by their memory address. So the
    archive is rewritten with ``date_saved`` dropped, the ids renumbered 1, 2, ... in order of
    appearance (what Keras needs them for is telling shared objects apart) and every entry dated
    1980-01-01, zip's epoch.
    """
    with atomic_path(_keras_path(path)) as tmp:
        model.save(tmp, overwrite=True)
        _reproducible_archive(tmp)
    return Path(path)


def _renumber_shared(node: Any, ids: dict[int, int]) -> Any:
    if isinstance(node, dict):
        return {
            k: ids.setdefault(v, len(ids) + 1)
            if k == "shared_object_id"
            else _renumber_shared(v, ids)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_renumber_shared(v, ids) for v in node]
    return node


def _reproducible_archive(path: Path) -> None:
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:
        for info, data in entries:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared(json.loads(data), {})).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            dst.writestr(fixed, data)


def load_model(path: str | os.PathLike[str], compile: bool = True) -> keras.Model:
    """Load a ``.keras`` model; a missing or unreadable file raises a one-line ModelFileError."""
    p = _keras_path(path)
    if not p.is_file():
        raise ModelFileNotFoundError(f"{p}: no such Keras model file")
    try:
        return keras.models.load_model(p, compile=compile)
    except Exception as exc:  # Keras raises zipfile, OSError, ValueError... depending on damage
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(
            f"{p}: not a valid .keras model file ({type(exc).__name__}: {reason})"
        ) from exc

"""Stage ``train_scratch_lines``: the seed's mini-CNN trained by the engine on data/lines.npz.

Writes models/scratch_lines.npz (architecture and weights) and
models/scratch_lines_kernels.npz (the HWIO conv kernel before training and after every epoch, for
the kernel-evolution figure). Metrics: the last epoch's loss and accuracy, and the trained
network's outputs on the seed's two clean lines (vertical should be > 0.95, horizontal
< 0.05).

The seed's question, when does the mini-CNN become a vertical-line detector, is answered per
epoch: each first-layer filter's orientation selectivity
(:func:`convscope.interpret.orientation.orientation_selectivity`, +1 vertical only, -1
horizontal only) goes to MLflow as ``orientation_f<i>`` at every step (0 = before training)
and into plots/train_scratch_lines_orientation.csv, epoch 0 included as in the figures (a
file of its own: the loss plot's file has no loss at epoch 0, and DVC would draw an empty
cell as 0); ``vertical_detector_epoch`` is the first
epoch from which the most vertical filter stays at or above :data:`VERTICAL_DETECTOR`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from convscope.config import Config
from convscope.files import atomic_write_text
from convscope.runner import StageContext, plot_text
from convscope.stages._common import (
    epoch_logger,
    final_metrics,
    lines_prefix,
    save_kernel_history,
    warn_if_stale,
)

DATA = "data/lines.npz"
MODEL = "models/scratch_lines.npz"
KERNELS = "models/scratch_lines_kernels.npz"
ORIENTATION_PLOT = "plots/train_scratch_lines_orientation.csv"
#: selectivity from which a filter counts as a vertical-line detector: its response to the
#: vertical line is at least three times its response to the horizontal one
VERTICAL_DETECTOR = 0.5

#: metrics this stage records that a study can optimise, its default first (the per-epoch
#: ones are reported each epoch, so a pruner can stop a trial early)
OBJECTIVES = ("loss", "accuracy")
#: the config key of the stage's epoch count (a study counts the epochs it saved)
EPOCHS_KEY = "scratch.mini_cnn.epochs"


def orientation_logger(ctx: StageContext, size: int, selectivity: list[np.ndarray]):
    """The epoch hook: :func:`epoch_logger`'s records plus the first conv layer's orientation
    selectivity per filter (MLflow at the epoch's step); appends each epoch's values to
    ``selectivity``."""
    from convscope.interpret.orientation import orientation_selectivity

    base = epoch_logger(ctx)

    def on_epoch(epoch: int, logs: Mapping[str, float], kernels: Mapping[str, np.ndarray]) -> None:
        si = orientation_selectivity(next(iter(kernels.values())), size)
        selectivity.append(si)
        columns = {f"orientation_f{i}": float(v) for i, v in enumerate(si)}
        if epoch == 0:  # before training: MLflow at step 0
            base(epoch, logs, kernels)
            ctx.run.log_metrics(columns, step=0)
            return
        base(epoch, {**logs, **columns}, kernels)

    return on_epoch


def detector_epoch(selectivity: list[np.ndarray], threshold: float = VERTICAL_DETECTOR):
    """The first epoch from which the most vertical filter stays >= ``threshold``, or None."""
    best = [float(np.max(si)) for si in selectivity]
    below = [e for e, v in enumerate(best) if v < threshold]
    first = below[-1] + 1 if below else 0
    return first if first < len(best) else None


def run(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    from convscope.data.lines import clean_pair
    from convscope.engine_train import train_lines
    from convscope.files import load_arrays

    arrays, meta = load_arrays(ctx.input(DATA, made_by="lines"), required=("x", "y"))
    wanted = dataclasses.asdict(cfg.data.lines)
    arrays, meta = lines_prefix(arrays, meta, wanted) or (arrays, meta)
    x, y = arrays["x"], arrays["y"]
    differ = warn_if_stale(DATA, meta, wanted, producer="lines")
    ctx.log_input(DATA, meta, differ)
    ctx.run.log_dataset("lines", str(meta.get("sha256", "")), str(ctx.path(DATA)), x, y)

    c = cfg.scratch.mini_cnn
    start = time.perf_counter()
    selectivity: list[np.ndarray] = []
    hook = orientation_logger(ctx, x.shape[1], selectivity)
    model, record = train_lines(x, y, c, on_epoch=hook)
    train_seconds = time.perf_counter() - start

    rows = [
        {"epoch": epoch, **{f"orientation_f{i}": float(v) for i, v in enumerate(si)}}
        for epoch, si in enumerate(selectivity)
    ]
    atomic_write_text(ctx.out(ORIENTATION_PLOT), plot_text(rows))
    model.save(ctx.out(MODEL))
    save_kernel_history(
        ctx, KERNELS, record.kernels, {"stage": "train_scratch_lines", "epochs": c.epochs}
    )
    if cfg.tracking.log_models:
        ctx.log_output(MODEL, "model", as_model=True)

    x_clean, _ = clean_pair(x.shape[1])
    clean = model.forward(x_clean, training=False)[:, 0]
    return {
        **final_metrics(record.history),
        "clean_vertical": float(clean[0]),
        "clean_horizontal": float(clean[1]),
        "orientation_final": float(np.max(selectivity[-1])),
        "vertical_detector_epoch": detector_epoch(selectivity),
        "train_seconds": train_seconds,
    }

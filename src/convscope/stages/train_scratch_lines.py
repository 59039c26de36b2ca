"""Stage ``train_scratch_lines``: the seed's mini-CNN trained by the engine on data/lines.npz.

Writes models/scratch_lines.npz (architecture and weights) and
models/scratch_lines_kernels.npz (the HWIO conv kernel before training and after every epoch, for
the kernel-evolution figure). Metrics: the last epoch's loss and accuracy, and the trained
network's outputs on the seed's two clean lines (vertical should be > 0.95, horizontal
< 0.05).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from convscope.config import Config
from convscope.runner import StageContext
from convscope.stages._common import (
    epoch_logger,
    final_metrics,
    save_kernel_history,
    warn_if_stale,
)

DATA = "data/lines.npz"
MODEL = "models/scratch_lines.npz"
KERNELS = "models/scratch_lines_kernels.npz"


def run(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    from convscope.data.lines import clean_pair
    from convscope.engine_train import train_lines
    from convscope.files import load_arrays

    arrays, meta = load_arrays(ctx.input(DATA, made_by="lines"), required=("x", "y"))
    x, y = arrays["x"], arrays["y"]
    differ = warn_if_stale(DATA, meta, dataclasses.asdict(cfg.data.lines), producer="lines")
    ctx.log_input(DATA, meta, differ)
    ctx.log_dataset("lines", str(meta.get("sha256", "")), str(ctx.path(DATA)), x, y)

    c = cfg.scratch.mini_cnn
    start = time.perf_counter()
    model, record = train_lines(x, y, c, on_epoch=epoch_logger(ctx))
    train_seconds = time.perf_counter() - start

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
        "train_seconds": train_seconds,
    }

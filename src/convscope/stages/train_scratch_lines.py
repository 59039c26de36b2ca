"""Stage ``train_scratch_lines``: the seed's mini-CNN trained by the engine on data/lines.npz.

Writes models/scratch_lines.npz (architecture and weights) and
models/scratch_lines_kernels.npz (the 3x3 kernel before training and after every epoch, for
the kernel-evolution figure). Metrics: the last epoch's loss and accuracy, and the trained
network's outputs on the seed's two clean lines (vertical should be > 0.95, horizontal
< 0.05).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from convscope.config import Config
from convscope.runner import StageContext
from convscope.stages._common import save_kernel_history, warn_if_stale

DATA = "data/lines.npz"
MODEL = "models/scratch_lines.npz"
KERNELS = "models/scratch_lines_kernels.npz"


def _hwio(kernel2d: np.ndarray) -> np.ndarray:
    return np.asarray(kernel2d, dtype=np.float32)[:, :, None, None]


def run(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    from convscope.data.lines import clean_pair
    from convscope.files import load_arrays
    from convscope.scratch import mini_cnn

    arrays, meta = load_arrays(ctx.input(DATA, made_by="lines"), required=("x", "y"))
    x, y = arrays["x"], arrays["y"]
    warn_if_stale(DATA, meta, dataclasses.asdict(cfg.data.lines), producer="lines")
    ctx.log_dataset("lines", str(meta.get("sha256", "")), str(ctx.path(DATA)), x, y)

    c = cfg.scratch.mini_cnn
    layer = "conv"

    def on_epoch(epoch: int, logs: dict[str, float], kernel: np.ndarray) -> None:
        ctx.log_epoch(epoch + 1, logs)
        ctx.log_kernels({layer: _hwio(kernel)}, step=epoch + 1)

    model = mini_cnn.build(x.shape[1], c.seed)
    layer = model.layers[0].name
    ctx.log_kernels({layer: model.layers[0].kernel.copy()}, step=0)
    result = mini_cnn.train(
        x,
        y,
        epochs=c.epochs,
        lr=c.lr,
        batch_size=c.batch_size,
        seed=c.seed,
        on_epoch=on_epoch,
        model=model,
    )

    result.model.save(ctx.out(MODEL))
    history = [_hwio(result.kernel_initial), *(_hwio(k) for k in result.kernels)]
    save_kernel_history(
        ctx, KERNELS, {layer: history}, {"stage": "train_scratch_lines", "epochs": c.epochs}
    )
    if cfg.tracking.log_models:
        ctx.log_output(MODEL, "model", as_model=True)

    x_clean, _ = clean_pair(x.shape[1])
    clean = result.model.forward(x_clean, training=False)[:, 0]
    p_vertical, p_horizontal = float(clean[0]), float(clean[1])
    return {
        "loss": result.losses[-1] if result.losses else None,
        "accuracy": result.accuracies[-1] if result.accuracies else None,
        "clean_vertical": p_vertical,
        "clean_horizontal": p_horizontal,
        "epochs": c.epochs,
        "train_seconds": float(result.seconds),
    }

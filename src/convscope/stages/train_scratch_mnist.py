"""Stage ``train_scratch_mnist``: the NumPy engine trains the Keras stage's network on MNIST.

Same data (data/mnist.npz), same architecture, optimizer, epochs, batch size and validation
split as ``train_keras`` (conf/scratch/mnist_cnn.yaml interpolates keras.*), trained the way
Keras trains (:mod:`convscope.scratch.mnist_cnn`), so the two runs' curves and kernels can be
compared side by side in MLflow. Writes models/scratch_mnist.npz (architecture and weights,
no pickle) and models/scratch_mnist_kernels.npz (the kernels before training and after every
epoch).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from convscope.config import Config
from convscope.runner import StageContext
from convscope.stages._common import final_metrics, load_mnist, log_mnist_input, save_kernel_history

MODEL = "models/scratch_mnist.npz"
KERNELS = "models/scratch_mnist_kernels.npz"


def run(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    from convscope.scratch import mnist_cnn

    c = cfg.scratch.mnist_cnn
    (x_train, y_train, x_test, y_test), meta = load_mnist(ctx)
    log_mnist_input(ctx, meta, x_train, y_train)

    def on_epoch(epoch: int, logs: Mapping[str, float], kernels: Mapping[str, np.ndarray]) -> None:
        if epoch > 0:
            ctx.log_epoch(epoch, logs)
        ctx.log_kernels(kernels, step=epoch)

    start = time.perf_counter()
    result = mnist_cnn.train(c, x_train, y_train, x_test, y_test, on_epoch=on_epoch)
    train_seconds = time.perf_counter() - start

    result.model.save(ctx.out(MODEL))
    save_kernel_history(
        ctx, KERNELS, result.kernels, {"stage": "train_scratch_mnist", "epochs": c.epochs}
    )
    if cfg.tracking.log_models:
        ctx.log_output(MODEL, "model", as_model=True)
    return {
        **final_metrics(result.history),
        "test_loss": result.test_loss,
        "test_accuracy": result.test_accuracy,
        "epochs": c.epochs,
        "n_train": int(len(x_train)),
        "n_test": int(len(x_test)),
        "train_seconds": train_seconds,
    }

"""Stage ``train_scratch_mnist``: the NumPy engine trains the Keras stage's network on MNIST.

Same data (data/mnist.npz), same architecture, optimizer, epochs, batch size and validation
split as ``train_keras`` (conf/scratch/mnist_cnn.yaml interpolates keras.*), trained the way
Keras trains (:mod:`convscope.engine_train`), so the two runs' curves and kernels can be
compared side by side in MLflow. Writes models/scratch_mnist.npz (architecture and weights,
no pickle) and models/scratch_mnist_kernels.npz (the kernels before training and after every
epoch).
"""

from __future__ import annotations

import time
from typing import Any

from convscope.config import Config
from convscope.runner import StageContext
from convscope.stages._common import (
    check_data_fits,
    epoch_logger,
    load_mnist,
    log_mnist_input,
    save_kernel_history,
    training_metrics,
)

MODEL = "models/scratch_mnist.npz"
KERNELS = "models/scratch_mnist_kernels.npz"

#: metrics this stage records that a study can optimise, its default first (the per-epoch
#: ones are reported each epoch, so a pruner can stop a trial early)
OBJECTIVES = ("val_loss", "val_accuracy", "loss", "accuracy", "test_loss", "test_accuracy")
#: the config key of the stage's epoch count (a study counts the epochs it saved)
EPOCHS_KEY = "scratch.mnist_cnn.epochs"


def run(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    from convscope.engine_train import train_mnist

    c = cfg.scratch.mnist_cnn
    (x_train, y_train, x_test, y_test), meta = load_mnist(ctx)
    check_data_fits(c, (x_train, y_train), (x_test, y_test))
    log_mnist_input(ctx, meta, x_train, y_train)

    on_epoch = epoch_logger(ctx)
    start = time.perf_counter()
    result = train_mnist(c, x_train, y_train, x_test, y_test, on_epoch=on_epoch)
    train_seconds = time.perf_counter() - start

    result.model.save(ctx.out(MODEL))
    save_kernel_history(
        ctx, KERNELS, result.kernels, {"stage": "train_scratch_mnist", "epochs": c.epochs}
    )
    if cfg.tracking.log_models:
        ctx.log_output(MODEL, "model", as_model=True)
    return training_metrics(result, train_seconds)

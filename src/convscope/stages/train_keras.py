"""Stage ``train_keras``: the seed's Keras CNN on data/mnist.npz -> models/keras_cnn.keras.

Records per-epoch metrics and the conv kernels after every epoch (MLflow, with step, and
models/keras_kernels.npz for the evolution figures), then the test metrics.
"""

from __future__ import annotations

import sys
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

MODEL = "models/keras_cnn.keras"
KERNELS = "models/keras_kernels.npz"

#: metrics this stage records that a study can optimise, its default first (the per-epoch
#: ones are reported each epoch, so a pruner can stop a trial early)
OBJECTIVES = ("val_loss", "val_accuracy", "loss", "accuracy", "test_loss", "test_accuracy")
#: the config key of the stage's epoch count (a study counts the epochs it saved)
EPOCHS_KEY = "keras.epochs"


def run(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    if cfg.tracking.log_models:
        ctx.run.warm_up("keras")  # the tracking process loads MLflow's Keras flavour meanwhile
    (x_train, y_train, x_test, y_test), meta = load_mnist(ctx)
    check_data_fits(cfg.keras, (x_train, y_train), (x_test, y_test))
    log_mnist_input(ctx, meta, x_train, y_train)

    import convscope.keras_cnn as kc  # TensorFlow: imported only once the inputs are there

    start = time.perf_counter()
    result = kc.train(
        cfg.keras,
        x_train,
        y_train,
        x_test,
        y_test,
        on_epoch=epoch_logger(ctx),
        verbose=1 if sys.stdout.isatty() else 2,
    )
    train_seconds = time.perf_counter() - start

    kc.save_model(result.model, ctx.out(MODEL))
    save_kernel_history(
        ctx, KERNELS, result.kernels, {"stage": "train_keras", "epochs": cfg.keras.epochs}
    )
    if cfg.tracking.log_models:
        ctx.run.log_keras_model(ctx.out(MODEL))  # the saved file: the tracking process loads it
    return training_metrics(result, train_seconds)

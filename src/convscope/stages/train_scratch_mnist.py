"""Stage ``train_scratch_mnist``: the NumPy engine trains the Keras stage's network on MNIST.

Same data (data/mnist.npz), same architecture, optimizer, epochs, batch size and validation
split as ``train_keras`` (conf/scratch/mnist_cnn.yaml interpolates keras.*), so the two runs'
curves and kernels can be compared in MLflow. Writes models/scratch_mnist.npz (architecture
and weights, no pickle) and models/scratch_mnist_kernels.npz (kernels after every epoch).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from convscope.config import Config
from convscope.config.schema import CNNConfig
from convscope.runner import StageContext
from convscope.stages._common import final_metrics, load_mnist, log_mnist_input, save_kernel_history

MODEL = "models/scratch_mnist.npz"
KERNELS = "models/scratch_mnist_kernels.npz"


def build_engine_cnn(cfg: CNNConfig):
    """The engine ``Sequential`` for ``cfg``, layer for layer what ``keras_cnn.build_model`` makes.

    Prefers the bridge's builder when it exists (one definition of the architecture); the
    fallback below follows the same layer names (conv<i>, pool<i>, flatten, dense).
    """
    try:
        from convscope.scratch import bridge

        builder = getattr(bridge, "build_cnn", None)
    except ImportError:
        builder = None
    if builder is not None:
        return builder(cfg)

    from convscope.scratch.layers import Conv2D, Dense, Flatten, MaxPool2D
    from convscope.scratch.model import Sequential

    layers = []
    for i, (filters, pool) in enumerate(zip(cfg.layer_filters, cfg.pools, strict=True), start=1):
        layers.append(
            Conv2D(
                filters,
                cfg.kernel_size,
                stride=cfg.stride,
                padding=cfg.padding,
                activation=cfg.activation,
                name=f"conv{i}",
            )
        )
        if pool:
            layers.append(MaxPool2D(cfg.pool_size, name=f"pool{i}"))
    layers += [Flatten(name="flatten"), Dense(cfg.num_classes, activation="softmax", name="dense")]
    return Sequential(layers, input_shape=tuple(cfg.input_shape), seed=cfg.seed)


def make_engine_optimizer(cfg: CNNConfig):
    from convscope.scratch import optimizers

    if cfg.optimizer == "sgd":
        return optimizers.SGD(learning_rate=cfg.learning_rate, momentum=cfg.momentum)
    return optimizers.Adam(learning_rate=cfg.learning_rate)


def conv_kernels(model) -> dict[str, np.ndarray]:
    """Copies of every conv layer's HWIO kernel, by layer name."""
    return {
        layer.name: np.array(layer.kernel, copy=True)
        for layer in model.layers
        if getattr(layer, "kernel", None) is not None and np.ndim(layer.kernel) == 4
    }


def run(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    from convscope.scratch.training import evaluate, fit

    c = cfg.scratch.mnist_cnn
    (x_train, y_train, x_test, y_test), meta = load_mnist(ctx)
    log_mnist_input(ctx, meta, x_train, y_train)

    # Keras's validation_split holds out the *last* fraction of the data, before shuffling.
    n_fit = len(x_train) - int(len(x_train) * c.validation_split)
    x_fit, y_fit = x_train[:n_fit], y_train[:n_fit]
    validation = (x_train[n_fit:], y_train[n_fit:]) if n_fit < len(x_train) else None

    model = build_engine_cnn(c)
    kernels: dict[str, list[np.ndarray]] = {}

    def snapshot(step: int) -> None:
        snap = conv_kernels(model)
        for name, k in snap.items():
            kernels.setdefault(name, []).append(k)
        ctx.log_kernels(snap, step=step)

    def on_epoch_end(epoch: int, logs: dict[str, float]) -> None:
        ctx.log_epoch(epoch + 1, logs)
        snapshot(epoch + 1)

    snapshot(0)
    start = time.perf_counter()
    history = fit(
        model,
        x_fit,
        y_fit,
        "sparse_categorical_crossentropy",
        make_engine_optimizer(c),
        epochs=c.epochs,
        batch_size=c.batch_size,
        seed=c.seed,
        validation_data=validation,
        on_epoch_end=on_epoch_end,
    )
    train_seconds = time.perf_counter() - start
    test_loss, test_accuracy = evaluate(
        model, x_test, y_test, "sparse_categorical_crossentropy", batch_size=256
    )

    model.save(ctx.out(MODEL))
    save_kernel_history(ctx, KERNELS, kernels, {"stage": "train_scratch_mnist", "epochs": c.epochs})
    if cfg.tracking.log_models:
        ctx.log_output(MODEL, "model", as_model=True)
    return {
        **final_metrics(history.history),
        "test_loss": float(test_loss),
        "test_accuracy": float(test_accuracy),
        "epochs": c.epochs,
        "n_train": int(len(x_train)),
        "n_test": int(len(x_test)),
        "train_seconds": train_seconds,
    }

"""What the training stages share: reading data/mnist.npz, per-epoch logging, kernels, metrics."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from convscope.runner import StageContext

MNIST = "data/mnist.npz"
log = logging.getLogger("convscope.stages")


def warn_if_stale(rel: str, meta: Mapping[str, Any], expected: Mapping[str, Any], producer: str):
    """Warn when an input was made with other settings than this run's config says.

    Under DVC this cannot happen (a changed param reruns the producer first); by hand it can:
    `python pipelines/lines.py experiment=smoke` then `python pipelines/train_scratch_lines.py`
    trains on the smoke data. Returns the differing keys.
    """
    differ = {k: (meta[k], v) for k, v in expected.items() if k in meta and meta[k] != v}
    if differ:
        what = ", ".join(f"{k}={old!r} (config: {new!r})" for k, (old, new) in differ.items())
        log.warning(
            "%s was made with %s; rerun `python pipelines/%s.py` with the same overrides, "
            "or `dvc repro`",
            rel,
            what,
            producer,
        )
    return differ


def load_mnist(ctx: StageContext) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
    """``((x_train, y_train, x_test, y_test), metadata)`` from data/mnist.npz, prepared.

    Images come back float32 NHWC in [0, 1], labels int64, exactly as the seed feeds Keras.
    """
    from convscope.data import mnist
    from convscope.files import load_arrays

    arrays, meta = load_arrays(ctx.input(MNIST, made_by="mnist"), required=mnist.SPLIT_KEYS)
    c = ctx.cfg.data.mnist
    expected = {"requested": c.source, "limit_train": c.limit_train, "limit_test": c.limit_test}
    warn_if_stale(MNIST, meta, expected, producer="mnist")
    x_train, y_train = mnist.prepare(arrays["x_train"], arrays["y_train"])
    x_test, y_test = mnist.prepare(arrays["x_test"], arrays["y_test"])
    return (x_train, y_train, x_test, y_test), meta


def log_mnist_input(ctx: StageContext, meta: Mapping[str, Any], x, y) -> None:
    """Record the training data (source and digest from data/mnist.npz) with the run."""
    ctx.log_dataset(
        f"mnist-{meta.get('source', 'unknown')}-train",
        str(meta.get("sha256", "")),
        str(ctx.path(MNIST)),
        x,
        y,
        context="training",
    )


def save_kernel_history(
    ctx: StageContext,
    rel: str,
    kernels: Mapping[str, Sequence[np.ndarray]],
    metadata: Mapping[str, Any],
) -> None:
    """models/<name>_kernels.npz: per layer, kernels stacked over steps (epoch 0 = initial).

    Each array is ``(steps, kh, kw, in, out)``; ``steps[i]`` says after how many epochs
    snapshot ``i`` was taken, so a figure can label its frames.
    """
    from convscope.files import save_arrays

    arrays: dict[str, np.ndarray] = {}
    steps = 0
    for name, history in kernels.items():
        stacked = np.stack([np.asarray(k, dtype=np.float32) for k in history])
        arrays[name] = stacked
        steps = len(history)
    arrays["steps"] = np.arange(steps, dtype=np.int64)
    save_arrays(
        ctx.out(rel),
        arrays,
        {
            **metadata,
            "layers": list(kernels),
            "layout": "steps, kh, kw, in, out (HWIO)",
            # the MLflow run that trained these kernels: the visuals manifest names it
            "run_id": getattr(ctx.tracker, "run_id", None),
        },
        compress=False,
    )


def final_metrics(history: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The last epoch's value of every per-epoch metric."""
    return {k: float(v[-1]) for k, v in history.items() if len(v) and k != "epoch_seconds"}


def epoch_logger(ctx: StageContext):
    """The trainers' ``on_epoch(epoch, logs, kernels)`` hook: per-epoch metrics and kernels.

    Epoch 0 is the state before training: it has kernels but no metrics.
    """

    def on_epoch(epoch: int, logs: Mapping[str, float], kernels: Mapping[str, np.ndarray]) -> None:
        if epoch > 0:
            ctx.log_epoch(epoch, logs)
        ctx.log_kernels(kernels, step=epoch)

    return on_epoch


def training_metrics(result: Any, epochs: int, n_train: int, n_test: int, seconds: float):
    """metrics/<stage>.json of an MNIST trainer (Keras or engine): same keys, so runs compare."""
    return {
        **final_metrics(result.history),
        "test_loss": result.test_loss,
        "test_accuracy": result.test_accuracy,
        "epochs": epochs,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "train_seconds": seconds,
    }

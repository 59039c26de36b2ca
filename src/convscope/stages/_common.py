"""What the training stages share: reading data/mnist.npz, the epoch hook, kernels, metrics."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from convscope.recording import EpochHook
from convscope.runner import StageContext

MNIST = "data/mnist.npz"
log = logging.getLogger("convscope.stages")


def lines_prefix(
    arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], cfg_lines: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """data/lines.npz cut to the config's ``n_samples`` when it was made with more and
    otherwise the same settings: :func:`convscope.data.lines.make_dataset` draws each sample
    in turn, so its first n samples are what it makes for n. The arrays and the settings of
    that data (its digest recomputed), or None when the file does not hold it."""
    from convscope.files import sha256_arrays

    wanted = dict(cfg_lines)
    others = {k: v for k, v in wanted.items() if k != "n_samples"}
    if any(meta.get(k) != v for k, v in others.items()):
        return None
    n = _prefix_length(meta.get("n_samples"), wanted.get("n_samples"))
    if n is False or n is None:
        return None
    cut = {k: v[:n] for k, v in arrays.items()}
    return cut, {**meta, "n_samples": n, "sha256": sha256_arrays(cut["x"], cut["y"])}


def warn_if_stale(rel: str, meta: Mapping[str, Any], expected: Mapping[str, Any], producer: str):
    """Warn when an input was made with other settings than this run's config; return them.

    Under DVC this cannot happen (a changed param reruns the producer first); by hand it can:
    ``pipelines/lines.py experiment=smoke`` then ``pipelines/train_scratch_lines.py`` trains on
    the smoke data.
    """
    differ = {k: (meta[k], v) for k, v in expected.items() if k in meta and meta[k] != v}
    if differ:
        what = ", ".join(f"{k}={old!r} (config: {new!r})" for k, (old, new) in differ.items())
        log.warning(
            "%s was made with %s; rerun `python pipelines/%s.py` with the same overrides, "
            "or `dvc repro`",
            *(rel, what, producer),
        )
    return differ


def _prefix_length(made: int | None, wanted: int | None) -> int | None | bool:
    """How much of a file made with limit ``made`` is the data of limit ``wanted`` (None:
    no limit): the whole file (None), its first ``wanted`` items (an int), or not a prefix
    of it (False)."""
    if made == wanted:
        return None
    if wanted is None or (made is not None and made < wanted):
        return False
    return wanted


def mnist_prefixes(meta: Mapping[str, Any], cfg_mnist: Any) -> dict[str, int | None] | None:
    """``{"train": n, "test": n}`` (None: the whole split) when data/mnist.npz holds the data
    the config asks for as its first images (the ``mnist`` stage cuts each split to its
    limit's first images, so a file made without a limit, or a larger one, from the same
    source holds every smaller one); None when it does not."""
    if cfg_mnist.source not in (meta.get("requested"), meta.get("source")):
        return None
    made = {"train": meta.get("limit_train"), "test": meta.get("limit_test")}
    wanted = {"train": cfg_mnist.limit_train, "test": cfg_mnist.limit_test}
    lengths = {k: _prefix_length(made[k], wanted[k]) for k in made}
    return None if any(v is False for v in lengths.values()) else lengths


def load_mnist(ctx: StageContext) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
    """``((x_train, y_train, x_test, y_test), metadata)`` of data/mnist.npz, as the seed feeds
    Keras: float32 NHWC images in [0, 1], int64 labels.

    A config asking for fewer images than the file holds (a preset such as ``smoke`` in a
    by-hand run or a sweep) trains on the first images of each split, exactly what the
    ``mnist`` stage would have written for it (:func:`mnist_prefixes`), and records that
    data's settings and digest; other differences are warned about."""
    from convscope.data import mnist
    from convscope.files import load_arrays, sha256_arrays

    arrays, meta = load_arrays(ctx.input(MNIST, made_by="mnist"), required=mnist.SPLIT_KEYS)
    c = ctx.cfg.data.mnist
    prefixes = mnist_prefixes(meta, c)
    if prefixes is not None and any(v is not None for v in prefixes.values()):
        for split, n in prefixes.items():
            if n is not None:
                arrays[f"x_{split}"], arrays[f"y_{split}"] = (
                    arrays[f"x_{split}"][:n],
                    arrays[f"y_{split}"][:n],
                )
        meta = {
            **meta,
            "limit_train": c.limit_train,
            "limit_test": c.limit_test,
            "n_train": int(len(arrays["x_train"])),
            "n_test": int(len(arrays["x_test"])),
            "sha256": sha256_arrays(*(arrays[k] for k in mnist.SPLIT_KEYS)),
        }
    expected = {"requested": c.source, "limit_train": c.limit_train, "limit_test": c.limit_test}
    if prefixes is not None:
        expected.pop("requested")  # the same data: auto fell back to the bundled digits
    ctx.log_input(MNIST, meta, warn_if_stale(MNIST, meta, expected, producer="mnist"))
    x_train, y_train = mnist.prepare(arrays["x_train"], arrays["y_train"])
    x_test, y_test = mnist.prepare(arrays["x_test"], arrays["y_test"])
    return (x_train, y_train, x_test, y_test), meta


def check_data_fits(cnn: Any, *splits: tuple[np.ndarray, np.ndarray]) -> None:
    """Refuse, before any training, a network whose input shape or class count does not fit
    the prepared data/mnist.npz: one line naming the setting and the data's shape or labels.

    ``cnn`` is the CNN config (keras or scratch.mnist_cnn), ``splits`` ``(x, y)`` pairs as
    :func:`load_mnist` returns them.
    """
    from convscope.config import ConfigError

    key = cnn._prefix
    want = [int(d) for d in cnn.input_shape]
    for x, _ in splits:
        if list(x.shape[1:]) != want:
            have = list(x.shape[1:])
            raise ConfigError(
                f"{key}.input_shape={want} does not fit {MNIST}, whose images are "
                f"{'x'.join(map(str, have))}: set {key}.input_shape={have}"
            )
    labels = [y for _, y in splits if len(y)]
    if labels:
        low, high = min(int(y.min()) for y in labels), max(int(y.max()) for y in labels)
        if high >= cnn.num_classes:
            raise ConfigError(
                f"{key}.num_classes={cnn.num_classes} does not fit {MNIST}, whose labels are "
                f"{low}..{high}: set {key}.num_classes={high + 1} or more"
            )


def log_mnist_input(ctx: StageContext, meta: Mapping[str, Any], x, y) -> None:
    """Record the training data (source and digest from data/mnist.npz) with the run."""
    name = f"mnist-{meta.get('source', 'unknown')}-train"
    ctx.run.log_dataset(name, str(meta.get("sha256", "")), str(ctx.path(MNIST)), x, y)


def save_kernel_history(
    ctx: StageContext,
    rel: str,
    kernels: Mapping[str, Sequence[np.ndarray]],
    metadata: Mapping[str, Any],
) -> None:
    """models/<name>_kernels.npz: per layer, ``(steps, kh, kw, in, out)`` kernels.

    ``steps[i]`` is the number of epochs before snapshot ``i`` (0 = initial), so a figure can
    label its frames. No run id: a DVC out depends on code, params and data only (the MLflow
    run that made a file is found by the file's md5, see :mod:`convscope.tracking.provenance`).
    """
    from convscope.files import save_arrays

    arrays = {name: np.stack(history).astype(np.float32) for name, history in kernels.items()}
    steps = len(next(iter(kernels.values()), []))
    arrays["steps"] = np.arange(steps, dtype=np.int64)
    layout = {"layers": list(kernels), "layout": "steps, kh, kw, in, out (HWIO)"}
    save_arrays(ctx.out(rel), arrays, {**metadata, **layout}, compress=False)


def epoch_logger(ctx: StageContext) -> EpochHook:
    """The one ``on_epoch(epoch, logs, kernels)`` hook of both trainers (see
    :mod:`convscope.recording`): epoch 0, before training, waits for the MLflow run to exist
    and logs kernels only; epochs 1..N log their metrics (plots row and MLflow, at that step)
    and kernels. In a trial of an Optuna sweep each epoch's objective then goes to the study,
    whose pruner may stop the training here (:mod:`convscope.search.trial`)."""

    def on_epoch(epoch: int, logs: Mapping[str, float], kernels: Mapping[str, np.ndarray]) -> None:
        if epoch == 0:  # a run the store refuses (a login, a permission) stops the stage here
            ctx.run.confirm()
        else:
            ctx.log_epoch(epoch, logs)
        ctx.log_kernels(kernels, step=epoch)
        if ctx.trial is not None:
            ctx.trial.report(epoch, logs)

    return on_epoch


def final_metrics(history: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The last epoch's value of every per-epoch metric (wall times stay in MLflow)."""
    return {k: float(v[-1]) for k, v in history.items() if len(v) and k != "epoch_seconds"}


def training_metrics(result: Any, seconds: float):
    """metrics/<stage>.json of an MNIST trainer (Keras or engine): same keys, so runs compare.

    Only what a run measures: the epochs and the data's size are params (the config's and
    the input's recorded settings, :meth:`StageContext.log_input`), and ``train_seconds``
    goes to MLflow only.
    """
    return {
        **final_metrics(result.history),
        "test_loss": result.test_loss,
        "test_accuracy": result.test_accuracy,
        "train_seconds": seconds,
    }

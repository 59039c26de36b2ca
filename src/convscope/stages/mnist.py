"""Stage ``mnist``: MNIST from the configured source -> data/mnist.npz.

The file keeps Keras's uint8 layout (``x_train, y_train, x_test, y_test``), a quarter of the
float32 the networks train on (:func:`convscope.data.mnist.prepare` scales it on load), with
metadata: the source actually used (``auto`` may fall back to the bundled digits), the digest
of the arrays as written and of the whole source, and the counts after the limits. The
source's absolute path goes to MLflow only: a DVC out holds nothing machine-specific.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convscope.config import Config, ConfigError
from convscope.runner import StageContext

OUT = "data/mnist.npz"
RAW = "data/raw"  # the stage's declared DVC dep: where a `file` source lies for `dvc repro`


def run(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    from convscope.data import mnist
    from convscope.files import sha256_arrays

    c = cfg.data.mnist
    if c.source == "file" and c.path is not None and ctx.out_root is None:
        raw = (ctx.root / RAW).resolve()
        if not (ctx.root / c.path).resolve().is_relative_to(raw):
            raise ConfigError(
                f"data.mnist.path={c.path!r} is not allowed in the pipeline: expected a file or "
                f"folder under {RAW}/ (the mnist stage's DVC dep, so a new file reruns it); "
                "by-hand runs may read any path"
            )
    splits, info = mnist.load_with_info(
        c.source, c.path, bundled_test_size=c.bundled_test_size, seed=c.seed
    )
    (x_train, y_train), (x_test, y_test) = splits
    x_train, y_train = x_train[: c.limit_train], y_train[: c.limit_train]
    x_test, y_test = x_test[: c.limit_test], y_test[: c.limit_test]
    digest = sha256_arrays(x_train, y_train, x_test, y_test)
    meta = {
        **{k: v for k, v in info.items() if k not in ("metadata", "path")},
        "sha256": digest,
        "source_sha256": info["sha256"],
        "source_n_train": info["n_train"],
        "source_n_test": info["n_test"],
        "n_train": int(len(x_train)),
        "n_test": int(len(x_test)),
        "limit_train": c.limit_train,
        "limit_test": c.limit_test,
    }
    mnist.save(ctx.out(OUT), ((x_train, y_train), (x_test, y_test)), meta)
    name = f"mnist-{info['source']}"
    ctx.run.log_dataset(f"{name}-train", digest, info["path"], x_train, y_train, context="training")
    ctx.run.log_dataset(f"{name}-test", digest, info["path"], x_test, y_test, context="testing")
    ctx.run.set_tags({"mnist.source": info["source"], "mnist.sha256": digest})
    train, test = np.bincount(y_train, minlength=10), np.bincount(y_test, minlength=10)
    # Class balance per digit (`dvc plots show plots/mnist.csv`).
    ctx.plot_rows = [
        {"digit": d, "train": int(train[d]), "test": int(test[d])} for d in range(len(train))
    ]
    # The source used is a tag (above): a string is no metric to compare.
    return {"n_train": int(len(x_train)), "n_test": int(len(x_test))}

"""Stage ``mnist``: load MNIST from the configured source -> data/mnist.npz.

The file keeps the uint8 images in Keras's layout (``x_train, y_train, x_test, y_test``), a
quarter the size of the float32 the networks train on (:func:`convscope.data.mnist.prepare`
scales them when a training stage loads them), with metadata: the source actually used
(``auto`` may fall back to the bundled digits), the SHA-256 digest of the arrays as written,
the digest of the full source, and the counts after ``limit_train``/``limit_test``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convscope.config import Config
from convscope.runner import StageContext

OUT = "data/mnist.npz"


def run(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    from convscope.data import mnist
    from convscope.files import sha256_arrays

    c = cfg.data.mnist
    splits, info = mnist.load_with_info(
        c.source, c.path, bundled_test_size=c.bundled_test_size, seed=c.seed
    )
    (x_train, y_train), (x_test, y_test) = splits
    x_train, y_train = x_train[: c.limit_train], y_train[: c.limit_train]
    x_test, y_test = x_test[: c.limit_test], y_test[: c.limit_test]
    digest = sha256_arrays(x_train, y_train, x_test, y_test)
    meta = {
        **{k: v for k, v in info.items() if k != "metadata"},
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
    source = info.get("path") or info["source"]
    name = f"mnist-{info['source']}"
    ctx.log_dataset(f"{name}-train", digest, source, x_train, y_train, context="training")
    ctx.log_dataset(f"{name}-test", digest, source, x_test, y_test, context="testing")
    ctx.track("set_tags", {"mnist.source": info["source"], "mnist.sha256": digest})
    train_counts = np.bincount(y_train, minlength=10)
    test_counts = np.bincount(y_test, minlength=10)
    # Class balance per digit (`dvc plots show plots/mnist.csv`).
    ctx.plot_rows = [
        {"digit": d, "train": int(train_counts[d]), "test": int(test_counts[d])}
        for d in range(len(train_counts))
    ]
    return {
        "n_train": int(len(x_train)),
        "n_test": int(len(x_test)),
        "source": info["source"],
    }

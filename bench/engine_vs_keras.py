"""Benchmark: the seed CNN trained by Keras and by the NumPy engine, same data, same recipe.

Both train the default config (exactly the seed's model: Conv2D(16,3,relu) -> MaxPool ->
Conv2D(32,3,relu) -> Flatten -> Dense(10,softmax); Adam 1e-3; batch 32; 3 epochs;
validation_split 0.1) on the bundled MNIST (4,000 train, of which 3,600 are fitted and the last
400 validate; 1,000 held-out test images), with ``keras_cnn.train`` and
``engine_train.train_mnist``.

    python bench/engine_vs_keras.py                  # 3 repeats of every thread setting
    python bench/engine_vs_keras.py --repeats 5
    python bench/engine_vs_keras.py --epochs 5 --source keras

Threads are part of the comparison, on both sides, because on a small shared machine they
decide the result: every (framework, threads) setting runs in a fresh process (TensorFlow's
thread pools can only be sized before it starts), and the settings take turns so that load
from other processes spreads over all of them.

* Keras: TensorFlow's default pools (shown "tf auto/auto": intra-op and inter-op sized to the
  cores) and 1 thread each (shown "tf 1/1",
  ``tf.config.threading.set_{intra,inter}_op_parallelism_threads(1)``).
* engine: OpenBLAS's default threads (one per core) and 1 (``OPENBLAS_NUM_THREADS=1``,
  ``train_mnist(blas_threads=None)`` so nothing overrides it).

"s/epoch" is the mean of epochs 2..n (the first Keras epoch includes tracing its tf.function),
reported as the median and the best over the repeats; "first" is epoch 1's median. The
headline ratio compares each framework's fastest setting by median s/epoch. Training is
deterministic for a seed in both engines, so accuracy is the same in every repeat (checked).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

KERAS, ENGINE = "keras", "engine"


# ------------------------------------------------------------------------------ worker
def _data(source: str):
    from convscope.data import mnist

    (x_train, y_train), (x_test, y_test) = mnist.load(source=source)
    x_train, y_train = mnist.prepare(x_train, y_train)
    x_test, y_test = mnist.prepare(x_test, y_test)
    return x_train, y_train, x_test, y_test


def worker(framework: str, threads: int, epochs: int, batch_size: int, source: str) -> dict:
    """One training run in this process; returns what the table needs."""
    data = _data(source)
    info: dict = {"framework": framework, "threads": threads}
    if framework == KERAS:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        from convscope.config.schema import KerasConfig
        from convscope.keras_cnn import train

        cfg = KerasConfig(epochs=epochs, batch_size=batch_size)
        result = train(cfg, *data, verbose=0)
        info["tf_threads"] = (
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        )
    else:
        from convscope.config.schema import ScratchCNNConfig
        from convscope.engine_train import train_mnist

        cfg = ScratchCNNConfig(epochs=epochs, batch_size=batch_size)
        result = train_mnist(cfg, *data, progress=False, blas_threads=None)
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [(p["internal_api"], p["num_threads"]) for p in threadpool_info()]
    except ImportError:
        info["blas"] = []
    info.update(
        test_accuracy=result.test_accuracy,
        test_loss=result.test_loss,
        val_accuracy=result.history["val_accuracy"][-1],
        epoch_seconds=result.epoch_seconds,
        n_fit=int(len(data[0]) * (1 - cfg.validation_split)),
        n_test=len(data[2]),
    )
    return info


# ------------------------------------------------------------------------------ driver
def run_one(framework: str, threads: int, args) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)
        if threads:
            env[var] = str(threads)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        framework,
        "--threads",
        str(threads),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--source",
        args.source,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"worker {framework} threads={threads} failed ({done.returncode})")
    return json.loads(lines[-1])


def steady(seconds: list[float]) -> float:
    later = seconds[1:] or seconds
    return statistics.fmean(later)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--source", default="bundled", choices=["bundled", "keras", "auto"])
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[0, 1],
        help="thread settings to try on both sides (0 = the library's default)",
    )
    parser.add_argument("--worker", choices=[KERAS, ENGINE], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = worker(args.worker, args.threads[0], args.epochs, args.batch_size, args.source)
        print(json.dumps(result))
        return 0

    settings = [(fw, t) for t in args.threads for fw in (KERAS, ENGINE)]
    runs: dict[tuple[str, int], list[dict]] = {s: [] for s in settings}
    started = time.perf_counter()
    for rep in range(args.repeats):
        for fw, t in settings:
            r = run_one(fw, t, args)
            runs[(fw, t)].append(r)
            print(
                f"  repeat {rep + 1}/{args.repeats}  {fw:<6} threads={t or 'default':<7} "
                f"acc {r['test_accuracy']:.4f}  epochs "
                + " ".join(f"{s:.2f}" for s in r["epoch_seconds"]),
                flush=True,
            )
    first = runs[settings[0]][0]
    print(
        f"\nsource={args.source}  fit={first['n_fit']}  test={first['n_test']}  "
        f"epochs={args.epochs}  batch={args.batch_size}  Adam 1e-3  repeats={args.repeats}  "
        f"cores={os.cpu_count()}  ({time.perf_counter() - started:.0f} s)"
    )
    header = (
        f"{'framework':<9} {'threads':<16} {'test acc':>8} {'test loss':>9} "
        f"{'s/epoch med':>11} {'best':>6} {'first':>6}"
    )
    print(header)
    print("-" * len(header))
    summary = {}
    for fw, t in settings:
        rs = runs[(fw, t)]
        accs = {round(r["test_accuracy"], 6) for r in rs}
        per_epoch = [steady(r["epoch_seconds"]) for r in rs]
        med, best = statistics.median(per_epoch), min(per_epoch)
        first_s = statistics.median(r["epoch_seconds"][0] for r in rs)
        summary[(fw, t)] = (med, rs[0]["test_accuracy"])
        if fw == KERAS:
            intra, inter = rs[0]["tf_threads"]  # 0: TensorFlow picks (one per core)
            label = f"tf {intra or 'auto'}/{inter or 'auto'}"
        else:
            label = "blas " + ",".join(str(n) for _, n in rs[0]["blas"])
        flag = "" if len(accs) == 1 else "  (accuracy varied!)"
        print(
            f"{fw:<9} {label:<16} {rs[0]['test_accuracy']:>8.4f} {rs[0]['test_loss']:>9.4f} "
            f"{med:>11.3f} {best:>6.3f} {first_s:>6.2f}{flag}"
        )
    fastest = {
        fw: min(((summary[(f, t)][0], t) for f, t in settings if f == fw)) for fw in (KERAS, ENGINE)
    }
    (k_s, k_t), (e_s, e_t) = fastest[KERAS], fastest[ENGINE]
    k_acc, e_acc = summary[(KERAS, k_t)][1], summary[(ENGINE, e_t)][1]
    print("-" * len(header))
    print(
        f"fastest: keras {k_s:.3f} s/epoch (threads={k_t or 'default'}), engine {e_s:.3f} "
        f"s/epoch (threads={e_t or 'default'});  engine/keras = {e_s / k_s:.2f}x  "
        f"(goal <= 1.5x)"
    )
    print(
        f"test accuracy: keras {k_acc:.4f}, engine {e_acc:.4f};  engine - keras = "
        f"{100 * (e_acc - k_acc):+.1f} points  (goal within 1 point)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

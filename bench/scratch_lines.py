"""Benchmark: the engine's lines mini-CNN against the seed's loop implementation.

Run ``.venv/bin/python bench/scratch_lines.py`` (``--help`` for options). It prints:

1. forward + backward throughput (images/s) on batches of 100: the engine's generic
   ``Sequential`` (every layer's forward and backward, loss from the logits) against the
   seed-style loops (one image at a time, Python loops over positions,
   ``bench/seed_style.py``). Goal: engine >= 100x the loops.
2. the seed's training run (100 samples, 50 epochs, lr 0.01, one sample per step, in
   order): ``mini_cnn.train``, which is the generic ``training.fit`` with ``SGD``, against
   the loops, from the same initial weights: wall time, final loss and the predictions on
   the clean vertical/horizontal lines. Goal: not slower than the loops, clearly faster.
3. where the time of one training step at batch 1 goes: the ops (which check their
   arguments on every call; the layers call the unchecked kernels behind them), the layers,
   loss, optimizer and one whole ``fit`` step.
4. the layers at realistic batch sizes, as training calls them: the lines network at batch
   100 and MNIST's layers on a 16-image shard (``fit``'s unit of work) and at batch 32.

BLAS is pinned to one thread (threadpoolctl) for every measurement: these matrices are far
too small for threads to help, and on a shared machine the handoffs only add noise. Timings
are the best of ``--repeat`` runs (the least disturbed by other processes), and the two
sides of each comparison take turns, so that load from elsewhere hits both.
``--init-sweep N`` also trains model seeds 0..N-1 with each initialisation and reports
how many reach the seed's thresholds (the reason for ``mini_cnn``'s default init).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from convscope.data.lines import clean_pair, make_dataset  # noqa: E402
from convscope.scratch import losses, mini_cnn, ops  # noqa: E402
from convscope.scratch.layers import Conv2D, MaxPool2D  # noqa: E402
from convscope.scratch.optimizers import SGD  # noqa: E402
from convscope.scratch.training import fit  # noqa: E402
from seed_style import SeedStyleMiniCNN  # noqa: E402


def best_of(fn, repeat: int, number: int = 1) -> float:
    """Fastest of ``repeat`` timings of ``number`` calls, in seconds per call."""
    return best_of_each([(fn, number)], repeat)[0]


def best_of_each(timed: list[tuple], repeat: int) -> list[float]:
    """:func:`best_of` for several ``(fn, number)`` that take turns, repeat after repeat.

    Taking turns matters for the ratios on a shared machine: a burst of load from another
    process then slows both sides of a comparison instead of only the one it happens to hit.
    """
    best = [float("inf")] * len(timed)
    for _ in range(repeat):
        for i, (fn, number) in enumerate(timed):
            start = time.perf_counter()
            for _ in range(number):
                fn()
            best[i] = min(best[i], (time.perf_counter() - start) / number)
    return best


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [title, line, fmt.format(*header), line]
    out += [fmt.format(*map(str, r)) for r in rows]
    out.append(line)
    return "\n".join(out)


def seed_style_from(model) -> SeedStyleMiniCNN:
    """The loop implementation starting from the engine model's weights (float64 copies)."""
    kernel, dense_w, dense_b = (np.asarray(p, dtype=np.float64) for p in model.params())
    return SeedStyleMiniCNN(
        learning_rate=0.01,
        size=model.input_shape[0],
        kernel=kernel[:, :, 0, 0],
        dense_weights=dense_w,
        dense_bias=dense_b,
    )


def clean_predictions(model) -> tuple[float, float]:
    """``(p_vertical, p_horizontal)`` on the seed's clean lines (1 and 0 wanted)."""
    p = model.forward(clean_pair(model.input_shape[0])[0], training=False)[:, 0]
    return float(p[0]), float(p[1])


# ------------------------------------------------------------------------------ 1. throughput
def throughput(x, y, repeat: int) -> dict:
    model = mini_cnn.build(seed=0)
    batch = np.asarray(x, dtype=np.float32)
    labels = y.astype(np.float32)

    def engine_step():
        model.forward(batch, training=True)
        _, dz = losses.binary_crossentropy(labels, model.logits, from_logits=True)
        model.backward_from_logits(dz, need_input_grad=False)

    loops = seed_style_from(model)
    images = batch[..., 0].astype(np.float64)
    targets = y.astype(np.float64)

    def loop_step():
        for image, label in zip(images, targets, strict=True):
            _, cache = loops.forward(image)
            loops.backward(label, cache)

    n = len(batch)
    t_engine, t_loops = best_of_each([(engine_step, 50), (loop_step, 1)], repeat)
    return {
        "batch": n,
        "engine_images_per_s": n / t_engine,
        "loops_images_per_s": n / t_loops,
        "engine_vs_loops": t_loops / t_engine,
    }


# ------------------------------------------------------------------------------ 2. training
def seed_training(x, y, repeat: int, epochs: int) -> dict:
    clean_x, _ = clean_pair()
    results = {}
    out = {}

    def engine_once():
        out["r"] = mini_cnn.train(x, y, epochs=epochs, seed=0)

    start_model = mini_cnn.build(seed=0)  # the same initial weights as the engine run
    images = np.asarray(x[..., 0], dtype=np.float64)

    def loops_once():
        net = seed_style_from(start_model)
        out["losses"] = net.train(images, y.astype(np.float64), epochs)
        out["net"] = net

    seconds, loops_seconds = best_of_each([(engine_once, 1), (loops_once, 1)], repeat)
    model, record = out["r"]
    pv, ph = clean_predictions(model)
    losses_ = record.history["loss"]
    results["engine"] = {
        "seconds": seconds,
        "final_loss": losses_[-1],
        "p_vertical": pv,
        "p_horizontal": ph,
        "losses": losses_,
    }

    pv, ph = out["net"].predict(clean_x[..., 0].astype(np.float64))[:, 0]
    results["loops"] = {
        "seconds": loops_seconds,
        "final_loss": out["losses"][-1],
        "p_vertical": float(pv),
        "p_horizontal": float(ph),
        "losses": out["losses"],
    }
    return results


# ------------------------------------------------------------------------------ 3. overhead
def overhead(x, y, repeat: int) -> list[tuple[str, float]]:
    """Microseconds per call of each piece of one training step at batch 1."""
    model = mini_cnn.build(seed=0)
    x1 = np.asarray(x[:1], dtype=np.float32)
    y1 = y[:1].astype(np.float32)
    conv, relu, pool, flatten, dense, sigmoid = model.layers
    w = conv.kernel
    z = ops.conv2d(x1, w)
    r = ops.relu(z)
    p = ops.max_pool2d(r, 2, 1)
    n = 2000
    rows = []

    def t(name, fn):
        rows.append((name, best_of(fn, repeat, number=n) * 1e6))

    t("ops.conv2d (3x3, 5x5 image)", lambda: ops.conv2d(x1, w))
    t(
        "ops.conv2d_backward (no dx, no db)",
        lambda: ops.conv2d_backward(z, x1, w, compute_dx=False, compute_db=False),
    )
    t("ops.relu", lambda: ops.relu(z))
    t("ops.relu_backward", lambda: ops.relu_backward(z, z))
    t("ops.max_pool2d (2, stride 1)", lambda: ops.max_pool2d(r, 2, 1))
    t("ops.max_pool2d_backward", lambda: ops.max_pool2d_backward(p, r, 2, 1))
    t("ops.sigmoid", lambda: ops.sigmoid(p))
    t(
        "losses.binary_crossentropy (logits)",
        lambda: losses.binary_crossentropy(y1, np.zeros((1, 1), np.float32), from_logits=True),
    )
    t("losses.binary_accuracy", lambda: losses.binary_accuracy(y1, np.zeros((1, 1), np.float32)))
    sgd = SGD(0.01)
    params = model.params()
    grads = [np.zeros_like(q) for q in params]
    t("SGD.step (3 arrays)", lambda: sgd.step(params, grads))

    model.forward(x1, training=True)
    ins = [x1] + [layer.output for layer in model.layers[:-1]]
    for layer, xi in zip(model.layers, ins, strict=True):
        t(
            f"layer {layer.name} forward (in a model)",
            lambda layer=layer, xi=xi: layer.forward(xi, True),
        )

    def forward():
        model.forward(x1, training=True)

    def backward():
        _, dz = losses.binary_crossentropy(y1, model.logits, from_logits=True)
        model.backward_from_logits(dz, need_input_grad=False)

    forward()
    t("Sequential.forward (6 layers, input checked)", forward)
    t("Sequential.backward_from_logits (+ loss)", backward)
    x100 = np.asarray(x, np.float32)
    y100 = y.astype(np.float32)
    fit_model = mini_cnn.build(seed=0)
    opt = SGD(1e-6)
    epochs = 20  # one call: fit's own set-up (data checks, bar) spread over 2000 steps

    def fit_steps():
        fit(fit_model, x100, y100, "binary_crossentropy", opt, epochs=epochs, batch_size=1,
            shuffle=False)  # fmt: skip

    per_step = best_of(fit_steps, repeat) / (epochs * len(x100))
    rows.append(("one training.fit step (batch 1, SGD, loss, accuracy)", per_step * 1e6))
    loops = seed_style_from(model)
    img = np.asarray(x[0, ..., 0], np.float64)

    def loop_step():
        pred, cache = loops.forward(img)
        loops.backward(y[0].astype(np.float64), cache)

    t("seed-style loops forward + backward", loop_step)
    return rows


# ------------------------------------------------------------------------------ 4. batches
def _layer_calls(x, layer):
    """``(forward, backward)`` of a built ``layer`` on ``x`` as a training step calls them."""
    layer.build(x.shape[1:], rng=np.random.default_rng(1), dtype=np.float32)
    dy = np.ones((len(x), *layer.output_shape), np.float32)
    layer.forward(x, True)
    return (lambda: layer.forward(x, True)), (lambda: layer.backward(dy))


def realistic(repeat: int) -> list[list[str]]:
    """Microseconds per forward and backward of each layer at the batch sizes training uses."""
    rng = np.random.default_rng(0)
    rows = []
    cases = [
        ("lines conv 3x3, 100x5x5x1", (100, 5, 5, 1), lambda: Conv2D(1, 3, use_bias=False)),
        ("lines pool 2/1, 100x3x3x1", (100, 3, 3, 1), lambda: MaxPool2D(2, stride=1)),
    ]
    relu = {"activation": "relu"}
    for n in (16, 32):
        cases += [
            (f"MNIST conv1 3x3 relu, {n}x28x28x1", (n, 28, 28, 1), lambda: Conv2D(16, 3, **relu)),
            (f"MNIST pool1 2, {n}x26x26x16", (n, 26, 26, 16), lambda: MaxPool2D(2)),
            (f"MNIST conv2 3x3 relu, {n}x13x13x16", (n, 13, 13, 16), lambda: Conv2D(32, 3, **relu)),
        ]
    for name, shape, make in cases:
        fwd, bwd = _layer_calls(rng.standard_normal(shape).astype(np.float32), make())
        t_f, t_b = best_of_each([(fwd, 20), (bwd, 20)], repeat)
        rows.append([name, f"{t_f * 1e6:,.0f}", f"{t_b * 1e6:,.0f}"])
    return rows


def init_sweep(x, y, n: int) -> list[list[str]]:
    rows = []
    for init in mini_cnn.INITS:
        ok = wide = 0
        failed = []
        for seed in range(n):
            pv, ph = clean_predictions(mini_cnn.train(x, y, seed=seed, init=init)[0])
            if pv > 0.95 and ph < 0.05:
                ok += 1
            else:
                failed.append(seed)
            wide += pv > 0.99 and ph < 0.01
        rows.append([init, f"{ok}/{n}", f"{wide}/{n}", str(failed)])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timing repeats (best is kept)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument(
        "--init-sweep",
        type=int,
        default=0,
        metavar="N",
        help="also train model seeds 0..N-1 with every init",
    )
    parser.add_argument("--json", type=Path, help="write the numbers to this file")
    args = parser.parse_args(argv)

    x, y = make_dataset(100)
    print(
        f"numpy {np.__version__}, python {platform.python_version()}, "
        f"{platform.machine()}, best of {args.repeat}\n"
    )

    with threadpool_limits(limits=1, user_api="blas"):
        tp = throughput(x, y, args.repeat)
        tr = seed_training(x, y, args.repeat, args.epochs)
        oh = overhead(x, y, args.repeat)
        batches = realistic(args.repeat)
    print(
        table(
            "1. forward + backward, batch of 100 images (5x5 lines, mini-CNN); goal >= 100x",
            ["implementation", "images/s", "vs loops"],
            [
                [
                    "engine Sequential (generic layers)",
                    f"{tp['engine_images_per_s']:,.0f}",
                    f"{tp['engine_vs_loops']:.0f}x",
                ],
                [
                    "seed-style loops (one image at a time)",
                    f"{tp['loops_images_per_s']:,.0f}",
                    "1x",
                ],
            ],
        )
    )
    print()

    loops_s = tr["loops"]["seconds"]
    names = {
        "engine": "engine: mini_cnn.train (training.fit, SGD)",
        "loops": "seed-style loops",
    }
    print(
        table(
            f"2. seed-settings training: 100 samples, {args.epochs} epochs, lr 0.01, one sample "
            "per step, same initial weights; goal > 1x, clearly",
            ["implementation", "wall s", "vs loops", "final loss", "p(vertical)", "p(horizontal)"],
            [
                [
                    names[k],
                    f"{v['seconds']:.3f}",
                    f"{loops_s / v['seconds']:.2f}x",
                    f"{v['final_loss']:.4f}",
                    f"{v['p_vertical']:.4f}",
                    f"{v['p_horizontal']:.4f}",
                ]
                for k, v in tr.items()
            ],
        )
    )
    steps = 100 * args.epochs
    print(
        f"   per step: engine {tr['engine']['seconds'] / steps * 1e6:.0f} us, "
        f"loops {loops_s / steps * 1e6:.0f} us\n"
    )

    print(
        table(
            "3. cost of one call at batch 1 (where a generic per-sample step goes)",
            ["call", "us/call"],
            [[name, f"{us:.1f}"] for name, us in oh],
        )
    )

    print()
    print(
        table(
            "4. the layers at training batch sizes (training forward, then backward)",
            ["op", "fwd us", "bwd us"],
            batches,
        )
    )

    sweep = None
    if args.init_sweep:
        sweep = init_sweep(x, y, args.init_sweep)
        print()
        print(
            table(
                f"5. initialisation: model seeds 0..{args.init_sweep - 1}, seed settings, "
                "clean lines > 0.95 / < 0.05 (wide: > 0.99 / < 0.01)",
                ["init", "trained", "wide margin", "failed seeds"],
                sweep,
            )
        )

    if args.json:
        for v in tr.values():
            v["losses"] = [float(l) for l in v["losses"]]
        args.json.write_text(
            json.dumps(
                {"throughput": tp, "training": tr, "overhead_us": dict(oh), "init_sweep": sweep},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: the seed's CNN trained by Keras and by the NumPy engine, same data, same recipe.

Both train the default config (the seed's model: Conv2D(16,3,relu) -> MaxPool ->
Conv2D(32,3,relu) -> Flatten -> Dense(10,softmax); Adam 1e-3; validation_split 0.1) with
``keras_cnn.train`` and ``engine_train.train_mnist``, each in a fresh process, at batch 32 and
256, on two data sets:

* ``bundled``: the bundled MNIST (4,000 train, of which 3,600 are fitted and 400 validate;
  1,000 test), 3 epochs;
* ``60k``: the full MNIST shape, 60,000 train (54,000 fitted) and 10,000 test, the bundled
  digits repeated (timing does not care which digits), 2 epochs.

    python bench/engine_vs_keras.py                        # everything, best of 3
    python bench/engine_vs_keras.py --before ../main-at-a7be83b   # + the engine of another tree
    python bench/engine_vs_keras.py --data bundled --batch-sizes 32 --repeats 5

It prints the machine (CPU, load, BLAS and its kernel), then:

1. the float32 GEMM rate NumPy reaches on this machine (a 2048^3 matmul, one thread and
   all), measured in this run: the yardstick for the GFLOP/s below;
2. seconds per epoch of each side (the mean of epochs 2.. : Keras's first epoch traces its
   function), median and best over the repeats, which take turns so that load from other
   processes spreads over all sides; test accuracy; the training GFLOP/s of the best epoch
   time (forward and backward of every fitted image, counted from the layer shapes) and its
   share of the GEMM rate; the process's peak memory (RSS); the engine/Keras ratio;
3. the per-op profile of one epoch on the bundled data: where an engine's time goes, per
   layer forward and backward, loss and optimizer; with ``--before``, the other tree's
   engine beside this one (the best of ``--repeats`` epochs per op, alternating);
4. the seed's lines mini-CNN: forward + backward throughput of the engine against the seed's
   loops (``bench/scratch_lines.py`` has the rest of that story);
5. how training passes of 16-image shards scale over the cores: one thread, a thread per
   core in one process (as ``fit`` runs them), a process per core at once (``--skip-passes``
   leaves it out).

Threads: each side runs as it trains by default. Keras with TensorFlow's thread pools sized
to the cores. The engine with ``train_mnist``'s workers (one per core, each on 16-image
shards, BLAS single-threaded in each: processes in this tree, threads before it);
``--blas-row`` adds, on the bundled data at batch 32, the engine on one thread with
OpenBLAS's own threads instead, the alternative it replaced.
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, when set, are passed on to the workers as they are:
the header shows them and the kernel OpenBLAS picked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERAS, ENGINE, BEFORE, BLAS = "keras", "engine", "before", "engine-blas"
DATA_SETS = {"bundled": 3, "60k": 2}  # data set -> epochs


# ------------------------------------------------------------------------------ data
def load_data(name: str):
    """``(x_train, y_train, x_test, y_test)`` float32 NHWC in [0, 1] and int labels."""
    import numpy as np

    from convscope.data import mnist

    (x_train, y_train), (x_test, y_test) = mnist.load(source="bundled")
    if name == "60k":
        x_train, y_train = (np.resize(a, (60000, *a.shape[1:])) for a in (x_train, y_train))
        x_test, y_test = (np.resize(a, (10000, *a.shape[1:])) for a in (x_test, y_test))
    x_train, y_train = mnist.prepare(x_train, y_train)
    x_test, y_test = mnist.prepare(x_test, y_test)
    return x_train, y_train, x_test, y_test


def training_flops_per_image(cfg) -> int:
    """FLOPs of one image's forward and backward pass: every conv and dense product (the
    forward, dW, and dx except for the first layer), two FLOPs per multiply-add."""
    from convscope.engine_train import build_mnist

    flops, first = 0, True
    for layer in build_mnist(cfg).layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        positions = 1
        for d in layer.output_shape[:-1]:
            positions *= d
        product = 2 * positions * kernel.size  # (positions x fan_in) @ (fan_in x units)
        flops += product * (2 if first else 3)
        first = False
    return flops


# ------------------------------------------------------------------------------ workers
def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _blas() -> list[dict]:
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "version", "architecture", "num_threads")
    return [{k: p.get(k) for k in keys} for p in threadpool_info() if p["user_api"] == "blas"]


def train_worker(side: str, data: str, batch_size: int, epochs: int) -> dict:
    """One training run in this process."""
    arrays = load_data(data)
    info: dict = {}
    if side == KERAS:
        import tensorflow as tf

        from convscope.config.schema import KerasConfig
        from convscope.keras_cnn import train

        cfg = KerasConfig(epochs=epochs, batch_size=batch_size)
        result = train(cfg, *arrays, verbose=0)
        info["threads"] = "tf intra/inter " + "/".join(
            str(n or "auto")
            for n in (
                tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads(),
            )
        )
    else:
        from convscope.config.schema import ScratchCNNConfig
        from convscope.engine_train import train_mnist

        cfg = ScratchCNNConfig(epochs=epochs, batch_size=batch_size)
        if side == BLAS:
            # one engine thread, and OpenBLAS's own threads on every product: the trainer's
            # pin of BLAS to one thread is taken out for this run only
            import contextlib

            import convscope.engine_train as et

            et.blas_threads_limited = lambda threads: contextlib.nullcontext()
            result = train_mnist(cfg, *arrays, progress=False, workers=1)
        else:  # as the tree trains by default
            result = train_mnist(cfg, *arrays, progress=False)
        info["threads"] = _engine_threads(side)
    info.update(
        epoch_seconds=result.epoch_seconds,
        test_accuracy=result.test_accuracy,
        n_fit=len(arrays[0]) - int(len(arrays[0]) * cfg.validation_split),
        peak_rss_mb=_peak_rss_mb(),
        blas=_blas(),
    )
    return info


def _engine_threads(side: str) -> str:
    import convscope.engine_train as et

    if side == BLAS:
        return f"1 thread, BLAS {os.cpu_count()}"
    if hasattr(et, "default_threads"):
        return f"{et.default_threads()} workers, BLAS 1"
    return "1 thread, BLAS 1"  # the engine before data parallelism pinned BLAS to one thread


def gemm_worker() -> dict:
    """NumPy's float32 matmul rate (GFLOP/s) on 2048x2048 matrices: one thread and all."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    n = 2048
    rng = np.random.default_rng(0)
    a, b = (rng.random((n, n), dtype=np.float32) for _ in range(2))
    out = np.empty((n, n), np.float32)
    rates = {}
    for threads in (1, os.cpu_count() or 1):
        with threadpool_limits(threads, user_api="blas"):
            np.matmul(a, b, out=out)
            best = min(_timed(lambda: np.matmul(a, b, out=out)) for _ in range(7))
        rates[threads] = 2 * n**3 / best / 1e9
    return {"rates": rates, "blas": _blas()}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def profile_worker(batch_size: int, epochs: int) -> dict:
    """Seconds per op over one epoch of the bundled data, the best of ``epochs`` epochs.

    Every batch as the tree's ``fit`` computes it (in shards where it has them), one thread,
    through the model's own forward and backward (a conv and its pool run as one where the
    tree does that), timed per layer call; the loss from the logits, the optimizer's step.
    """
    import numpy as np
    from threadpoolctl import threadpool_limits

    from convscope.config.schema import ScratchCNNConfig
    from convscope.engine_train import build_mnist, make_optimizer
    from convscope.scratch import losses

    try:
        from convscope.scratch.training import shards
    except ImportError:  # a tree whose fit runs a batch in one pass

        def shards(n):
            return [slice(0, n)]

    x, y, _, _ = load_data("bundled")
    x, y = x[:3600], y[:3600]
    cfg = ScratchCNNConfig(batch_size=batch_size)
    model, optimizer = build_mnist(cfg), make_optimizer(cfg)
    loss = losses.get("sparse_categorical_crossentropy")
    params = model.params()
    spent: dict[str, float] = {}
    _time_layer_calls(model, spent)
    best: dict[str, float] = {}
    with threadpool_limits(1, user_api="blas"):
        for _ in range(epochs + 1):  # the first warms up
            spent.clear()
            start = time.perf_counter()
            for s in range(0, len(x), batch_size):
                xb, yb = x[s : s + batch_size], y[s : s + batch_size]
                grads = None
                for p in shards(len(xb)):
                    t = time.perf_counter()
                    model.run(xb[p], True)
                    t = _tick(spent, "forward, whole", t)
                    _, dz = loss.from_logits_call(yb[p], model.logits)
                    dz *= dz.dtype.type((p.stop - p.start) / len(xb))
                    t = _tick(spent, "loss", t)
                    model.backward_from_logits(dz, need_input_grad=False)
                    t = _tick(spent, "backward, whole", t)
                    g = model.grads()
                    if p.stop - p.start == len(xb):
                        grads = g
                    elif grads is None:
                        grads = [a.copy() for a in g]
                    else:
                        for a, b in zip(grads, g, strict=True):
                            a += b
                    t = _tick(spent, "shard gradients", t)
                optimizer.step(params, grads)
                _tick(spent, "optimizer", t)
            spent["epoch"] = time.perf_counter() - start
            best = {k: min(v, best.get(k, v)) for k, v in spent.items()}
    return {"seconds": best, "dtype": str(np.result_type(*params))}


#: the layer methods the model's forward and backward call, and the profile's name for each
_LAYER_CALLS = {
    "forward": "forward",
    "forward_pooled": "forward with its pool",
    "backward": "backward",
    "backward_linear": "backward",
    "backward_pooled": "backward with its pool",
}


def _time_layer_calls(model, spent: dict) -> None:
    """Wrap every layer's forward and backward methods (of this instance) so that each call's
    time adds to ``spent["<layer> <call>"]``; a call inside another counts once, outside."""
    depth = [0]

    def timed(method, key: str):
        def call(*args, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    spent[key] = spent.get(key, 0.0) + time.perf_counter() - start

        return call

    for layer in model.layers:
        for name, label in _LAYER_CALLS.items():
            if hasattr(layer, name):
                setattr(layer, name, timed(getattr(layer, name), f"{layer.name} {label}"))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.1f}"


def _tick(spent: dict, key: str, since: float) -> float:
    now = time.perf_counter()
    spent[key] = spent.get(key, 0.0) + now - since
    return now


def passes_worker(threads: int, images: int) -> dict:
    """Training passes (forward, loss, backward) of 16-image shards on ``threads`` threads,
    each on its own replica, BLAS single-threaded: microseconds per image, best of 3."""
    import threading

    from threadpoolctl import threadpool_limits

    from convscope.config.schema import ScratchCNNConfig
    from convscope.engine_train import build_mnist
    from convscope.scratch import losses
    from convscope.scratch.training import SHARD_SIZE, _train_pass

    x, y, _, _ = load_data("bundled")
    x, y = x[:SHARD_SIZE], y[:SHARD_SIZE]
    loss = losses.get("sparse_categorical_crossentropy")
    model = build_mnist(ScratchCNNConfig())
    replicas = [model] + [model.replica() for _ in range(threads - 1)]
    reps = max(1, images // SHARD_SIZE // threads)

    def work(replica) -> None:
        for _ in range(reps):
            _train_pass(replica, loss, True, x, y, 1.0, 1)

    best = math.inf
    with threadpool_limits(1, user_api="blas"):
        for replica in replicas:
            work(replica)
        for _ in range(3):
            pool = [threading.Thread(target=work, args=(r,)) for r in replicas]
            start = time.perf_counter()
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            best = min(best, time.perf_counter() - start)
    return {"us_per_image": 1e6 * best / (reps * SHARD_SIZE * threads)}


def lines_worker(repeats: int) -> dict:
    sys.path.insert(0, str(HERE))
    from threadpoolctl import threadpool_limits

    import scratch_lines
    from convscope.data.lines import make_dataset

    with threadpool_limits(1, user_api="blas"):
        return scratch_lines.throughput(*make_dataset(100), repeats)


# ------------------------------------------------------------------------------ driver
def run_worker(args: list[str], src: Path | None = None) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if src is not None:  # another tree's convscope first on the path
        env["PYTHONPATH"] = os.pathsep.join([str(src / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--worker", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"worker {' '.join(args)} failed ({done.returncode})")
    return json.loads(lines[-1])


def passes_table(images: int = 4096) -> dict:
    """Section 5: how 16-image training passes scale over the cores, by threads in one
    process and by processes (one thread each) at once; what threads lose is the GIL's."""
    cores = os.cpu_count() or 1
    one = run_worker(["passes", "1", str(images)])["us_per_image"]
    threads = run_worker(["passes", str(cores), str(images)])["us_per_image"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, __file__, "--worker", "passes", "1", str(images)]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(cores)
    ]
    each = [json.loads(p.communicate()[0].splitlines()[-1])["us_per_image"] for p in procs]
    together = 1 / sum(1 / e for e in each)
    print(
        f"\n5. training passes of 16-image shards, microseconds per image ({load()}):\n"
        f"   one thread {one:.1f}; {cores} threads in one process {threads:.1f} "
        f"({one / threads:.2f}x); {cores} processes at once {together:.1f} ({one / together:.2f}x)"
    )
    return {"one_thread": one, "threads": threads, "processes": together, "cores": cores}


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (1 min), {five:.2f} (5 min)"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env_text = ", ".join(f"{k}={v}" for k, v in env.items() if v) or "neither set"
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"python {platform.python_version()}; OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE: {env_text}"
    )


def steady(seconds: list[float]) -> float:
    later = seconds[1:] or seconds
    return statistics.fmean(later)


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    rule = "  ".join("-" * w for w in widths)
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), rule, *(fmt.format(*map(str, r)) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (best kept)")
    parser.add_argument("--data", nargs="+", default=list(DATA_SETS), choices=list(DATA_SETS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--before", type=Path, help="another checkout whose engine runs too")
    parser.add_argument("--blas-row", action="store_true", help="the engine on BLAS threads")
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--skip-lines", action="store_true")
    parser.add_argument("--skip-passes", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, *rest = args.worker
        if kind == "train":
            result = train_worker(rest[0], rest[1], int(rest[2]), int(rest[3]))
        elif kind == "gemm":
            result = gemm_worker()
        elif kind == "passes":
            result = passes_worker(int(rest[0]), int(rest[1]))
        elif kind == "profile":
            result = profile_worker(int(rest[0]), int(rest[1]))
        else:
            result = lines_worker(int(rest[0]))
        print(json.dumps(result))
        return 0

    from convscope.config.schema import ScratchCNNConfig

    started = time.perf_counter()
    report: dict = {"machine": machine(), "load_start": load()}
    print(f"machine: {report['machine']}\nstart: {report['load_start']}\n")

    gemm = run_worker(["gemm"])
    rate = max(gemm["rates"].values())
    blas = gemm["blas"][0] if gemm["blas"] else {}
    report["gemm"] = gemm
    print(
        f"1. float32 GEMM (2048^3, NumPy {blas.get('internal_api')} {blas.get('version')}, "
        f"kernel {blas.get('architecture')}): "
        + ", ".join(f"{t} thread(s) {r:.0f} GFLOP/s" for t, r in gemm["rates"].items())
        + f"  -> rate {rate:.0f} GFLOP/s\n"
    )

    flops = training_flops_per_image(ScratchCNNConfig())
    sides = [KERAS, ENGINE] + ([BEFORE] if args.before else [])
    runs: dict[tuple, list[dict]] = {}
    for data in args.data:
        for batch in args.batch_sizes:
            here = sides + ([BLAS] if args.blas_row and data == "bundled" and batch == 32 else [])
            if data != "bundled":
                here = [s for s in here if s != BEFORE]  # the old engine on 60k takes long
            for rep in range(args.repeats):
                for side in here:
                    src = args.before if side == BEFORE else None
                    worker_side = ENGINE if side == BEFORE else side
                    work = ["train", worker_side, data, str(batch), str(DATA_SETS[data])]
                    r = run_worker(work, src)
                    runs.setdefault((data, batch, side), []).append(r)
                    print(
                        f"  {data:<7} batch {batch:<4} {side:<11} repeat {rep + 1}: epochs "
                        + " ".join(f"{s:.2f}" for s in r["epoch_seconds"])
                        + f"  ({load()})",
                        flush=True,
                    )
    rows, summary = [], {}
    for (data, batch, side), rs in runs.items():
        per_epoch = [steady(r["epoch_seconds"]) for r in rs]
        best, med = min(per_epoch), statistics.median(per_epoch)
        gflops = rs[0]["n_fit"] * flops / best / 1e9
        summary[(data, batch, side)] = {
            "median_s": med,
            "best_s": best,
            "first_s": statistics.median(r["epoch_seconds"][0] for r in rs),
            "gflops": gflops,
            "gemm_share": gflops / rate,
            "test_accuracy": rs[0]["test_accuracy"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "threads": rs[0]["threads"],
        }
        s = summary[(data, batch, side)]
        rows.append(
            [
                f"{data} b{batch}",
                f"{side} ({s['threads']})",
                f"{med:.3f}",
                f"{best:.3f}",
                f"{s['first_s']:.2f}",
                f"{s['test_accuracy']:.4f}",
                f"{gflops:.1f}",
                f"{100 * gflops / rate:.1f}%",
                f"{s['peak_rss_mb']:.0f}",
            ]
        )
    print(
        f"\n2. seconds per epoch, best of {args.repeats} ({flops / 1e6:.2f} MFLOP per image "
        f"forward + backward; GFLOP/s and GEMM share from the best)"
    )
    header = ["data", "side (threads)", "s/epoch med", "best", "first", "test acc", "GFLOP/s"]
    print(table([*header, "% GEMM", "peak RSS MB"], rows))
    print()
    for data in args.data:
        for batch in args.batch_sizes:
            keras = summary.get((data, batch, KERAS))
            for side in (ENGINE, BEFORE, BLAS):
                other = summary.get((data, batch, side))
                if keras and other:
                    print(
                        f"   {data} batch {batch}: {side}/keras = "
                        f"{other['median_s'] / keras['median_s']:.2f}x by median, "
                        f"{other['best_s'] / keras['best_s']:.2f}x by best"
                    )
    report["runs"] = {" ".join(map(str, k)): v for k, v in runs.items()}
    report["summary"] = {" ".join(map(str, k)): v for k, v in summary.items()}

    if not args.skip_profile:
        report["profile"] = {}
        for batch in args.batch_sizes:
            trees = {"this tree": None} | ({"before": args.before} if args.before else {})
            got = {name: {} for name in trees}
            for _ in range(args.repeats):
                for name, src in trees.items():
                    seconds = run_worker(["profile", str(batch), "2"], src)["seconds"]
                    got[name] = {k: min(v, got[name].get(k, v)) for k, v in seconds.items()}
            report["profile"][batch] = got
            keys = list(dict.fromkeys(k for g in got.values() for k in g if k != "epoch"))
            names = list(trees)
            prows = [[k, "", *(_ms(got[n].get(k)) for n in names)] for k in keys]
            prows.append(["epoch", "", *(f"{1e3 * got[n]['epoch']:.1f}" for n in names)])
            print(
                f"\n3. per-op profile, one thread, one epoch of 3,600 bundled images at batch "
                f"{batch} (ms, best of {args.repeats}x2 epochs)"
            )
            print(table(["op", "", *names], prows))

    if not args.skip_lines:
        lines = run_worker(["lines", str(args.repeats)])
        report["lines"] = lines
        print(
            f"\n4. lines mini-CNN, forward + backward on a batch of {lines['batch']}: engine "
            f"{lines['engine_images_per_s']:,.0f} images/s, seed's loops "
            f"{lines['loops_images_per_s']:,.0f} images/s: {lines['engine_vs_loops']:.0f}x"
        )
    if not args.skip_passes:
        report["passes"] = passes_table()

    report["load_end"] = load()
    print(f"\nend: {report['load_end']}  ({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time the visuals stage's figures and measure memory over 200 figures.

    .venv/bin/python bench/visuals.py [--from-repo | --synthetic] [--figures 200]

Part 1 runs the real stage function (``convscope.stages.visuals.run``) in a temporary root:
with ``--from-repo`` (the default when the pipeline's outputs exist) its inputs are copies of
this checkout's models/, data/ and walkthrough/ outputs, so the numbers are those of the
default pipeline; with ``--synthetic`` (or when outputs are missing) the inputs are built here
at the default config's sizes (16/32-filter Keras CNN and engine twin, untrained weights,
1000 random test digits, the lines mini-CNN with 51 kernel snapshots) - figure cost depends
on shapes, not on training. MLflow is left out (tracker=None): its cost is the tracking
module's. Reported: figure count, seconds spent rendering and writing figures (the < 15 s
goal), and the stage's total seconds (which includes loading TensorFlow and the models).

Part 2 renders ``--figures`` kernel grids of the default second conv layer (3x3, 16 -> 32,
512 tiles) and reports the resident memory after the first 20 and its peak afterwards: flat
memory means figures are freed as they are written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

INPUTS = (
    "models/keras_cnn.keras",
    "models/keras_kernels.npz",
    "models/scratch_mnist.npz",
    "models/scratch_mnist_kernels.npz",
    "models/scratch_lines.npz",
    "models/scratch_lines_kernels.npz",
    "data/mnist.npz",
    "data/lines.npz",
    "walkthrough/walkthrough.npz",
)


def rss_mb() -> float:
    """Current resident set size (Linux /proc; falls back to the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def copy_repo_inputs(dst: Path) -> None:
    for rel in INPUTS:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst / rel)


def synthetic_inputs(dst: Path, cfg) -> None:
    """Default-size inputs built here (see the module docstring)."""
    import keras

    import convscope.keras_cnn as kc
    from convscope.data import mnist
    from convscope.data.lines import make_dataset
    from convscope.engine_train import build_mnist
    from convscope.files import save_arrays
    from convscope.scratch import mini_cnn
    from convscope.scratch.layer_walkthrough import seed_example, walkthrough

    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = kc.build_model(cfg.keras)
    kc.save_model(model, dst / "models/keras_cnn.keras")
    snaps = cfg.keras.epochs + 1
    hist = {
        n: np.stack([k * (s + 1) / snaps for s in range(snaps)])
        for n, k in kc.conv_kernels(model).items()
    }
    save_arrays(
        dst / "models/keras_kernels.npz",
        {**hist, "steps": np.arange(snaps)},
        {"epochs": cfg.keras.epochs},
    )
    engine = build_mnist(cfg.scratch.mnist_cnn)
    engine.save(dst / "models/scratch_mnist.npz")
    hist = {
        l.name: np.stack([l.kernel] * snaps)
        for l in engine.layers
        if getattr(l, "kernel", None) is not None and l.kernel.ndim == 4
    }
    save_arrays(
        dst / "models/scratch_mnist_kernels.npz",
        {**hist, "steps": np.arange(snaps)},
        {"epochs": cfg.keras.epochs},
    )
    lines = mini_cnn.build(cfg.data.lines.size, seed=0)
    lines.save(dst / "models/scratch_lines.npz")
    k = lines.layers[0].kernel
    epochs = cfg.scratch.mini_cnn.epochs
    save_arrays(
        dst / "models/scratch_lines_kernels.npz",
        {"conv": np.stack([k * (1 + e / epochs) for e in range(epochs + 1)])},
        {"epochs": epochs},
    )
    x_tr = rng.integers(0, 256, (100, 28, 28), dtype=np.uint8)
    x_te = rng.integers(0, 256, (1000, 28, 28), dtype=np.uint8)
    y_tr = (np.arange(100) % 10).astype(np.uint8)
    y_te = (np.arange(1000) % 10).astype(np.uint8)
    mnist.save(dst / "data/mnist.npz", ((x_tr, y_tr), (x_te, y_te)), {"source": "bench"})
    x, y = make_dataset(cfg.data.lines.n_samples, size=cfg.data.lines.size, seed=0)
    save_arrays(dst / "data/lines.npz", {"x": x, "y": y}, {"dataset": "lines"})
    save_arrays(
        dst / "walkthrough/walkthrough.npz", walkthrough(*seed_example(), padding=1).to_arrays(), {}
    )


def bench_stage(source: str) -> dict:
    from convscope.config import Config
    from convscope.runner import StageContext
    from convscope.stages import visuals
    from convscope.viz.manifest import verify_manifest

    try:
        from convscope.config import compose, validate

        cfg = validate(compose([]))
    except Exception:  # the schema defaults are the same values as conf/
        cfg = Config()
    with tempfile.TemporaryDirectory(prefix="convscope-bench-visuals-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        if source == "repo":
            copy_repo_inputs(root)
        else:
            synthetic_inputs(root, cfg)
        prepare = time.perf_counter() - start
        ctx = StageContext(stage="visuals", cfg=cfg, raw={}, root=root)
        start = time.perf_counter()
        metrics = visuals.run(cfg, ctx)
        ctx.commit()
        wall = time.perf_counter() - start
        problems = verify_manifest(root / visuals.FIGURES_DIR / "manifest.json", root)
        size = sum(p.stat().st_size for p in (root / visuals.FIGURES_DIR).iterdir())
    return {**metrics, "wall": wall, "prepare": prepare, "problems": problems, "bytes": size}


def bench_memory(n: int) -> dict:
    from convscope.viz.core import write_png
    from convscope.viz.kernels import KernelGrid

    rng = np.random.default_rng(0)
    k = rng.normal(size=(3, 3, 16, 32))
    rss = []
    with tempfile.TemporaryDirectory(prefix="convscope-bench-mem-") as tmp:
        start = time.perf_counter()
        for i in range(n):
            write_png(KernelGrid(k * (1 + i / n), layer="conv2").plot(dpi=100), Path(tmp) / "k.png")
            rss.append(rss_mb())
        seconds = time.perf_counter() - start
    base = rss[min(19, n - 1)]
    return {
        "n": n,
        "seconds_per_figure": seconds / n,
        "rss_first": rss[0],
        "rss_after_20": base,
        "rss_peak_after_20": max(rss[20:]) if n > 20 else base,
        "rss_last": rss[-1],
        # trend of RSS over figures 20..n: a leak shows as a steady slope, GC cycles as noise
        "slope_kb": float(np.polyfit(np.arange(20, n), rss[20:], 1)[0] * 1024) if n > 21 else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--from-repo", action="store_true", help="copy this checkout's outputs")
    src.add_argument("--synthetic", action="store_true", help="build default-size inputs")
    ap.add_argument("--figures", type=int, default=200, help="figures for the memory test")
    args = ap.parse_args()
    have = all((ROOT / rel).exists() for rel in INPUTS)
    if args.from_repo and not have:
        missing = [rel for rel in INPUTS if not (ROOT / rel).exists()]
        sys.exit(f"bench/visuals.py: pipeline outputs missing: {missing} (run `dvc repro`)")
    source = "repo" if (args.from_repo or (have and not args.synthetic)) else "synthetic"

    print(f"visuals stage ({source} inputs, MLflow off)")
    s = bench_stage(source)
    print(
        f"  figures            {s['figures']:>8d}  ({s['png']} PNG, {s['gif']} GIF, "
        f"{s['bytes'] / 2**20:.1f} MiB)"
    )
    print(f"  rendering+writing  {s['figure_seconds']:>8.2f} s   (goal < 15 s)")
    print(f"  stage total        {s['seconds']:>8.2f} s   (loads TensorFlow, models, data)")
    print(
        f"  engine vs keras    {s['engine_vs_keras_max_diff']:>8.2g}     "
        "(max |diff| of feature maps, same weights via scratch.bridge)"
    )
    print(f"  manifest problems  {len(s['problems']):>8d}")
    print()
    m = bench_memory(args.figures)
    print(f"memory over {m['n']} kernel grids (3x3, 16 -> 32: 512 tiles, 100 dpi)")
    print(f"  per figure         {1000 * m['seconds_per_figure']:>8.1f} ms")
    print(f"  RSS first figure   {m['rss_first']:>8.1f} MiB")
    print(f"  RSS after 20       {m['rss_after_20']:>8.1f} MiB")
    print(
        f"  RSS peak after 20  {m['rss_peak_after_20']:>8.1f} MiB  "
        f"(growth {m['rss_peak_after_20'] - m['rss_after_20']:+.1f} MiB)"
    )
    print(f"  RSS last           {m['rss_last']:>8.1f} MiB")
    print(f"  RSS trend          {m['slope_kb']:>8.1f} KiB per figure (linear fit, 20..{m['n']})")


if __name__ == "__main__":
    main()

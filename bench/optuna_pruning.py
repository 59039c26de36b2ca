"""Benchmark: an Optuna study with per-epoch pruning against the same study unpruned.

Studies of ``--trials`` trials × ``--epochs`` epochs of ``--stage`` (train_keras by
default) on the bundled MNIST digits, searching the learning rate, the filters and the batch
size with the same TPE sampler seed: one with no pruner, one per ``--pruners`` (median by
default; hyperband). Prints
the epochs each ran (the pruned study's as a ratio of the unpruned one's), the best validation
loss of each (the pruned one's as a ratio of the unpruned best) and the wall time.

    python bench/optuna_pruning.py                          # 20 trials x 6 epochs, train_keras
    python bench/optuna_pruning.py --pruners median hyperband
    python bench/optuna_pruning.py --stage train_scratch_mnist --trials 10

Runs in a throw-away copy of the project (its data made there first), with tracking=none:
the studies are read back from the copy's optuna.db.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# harness/ (the project copy) sits beside bench/; this script runs from bench/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402

from harness.project import PYTHON, copy_repo, run  # noqa: E402

SPACES = {
    "train_keras": [
        "keras.learning_rate=tag(log, interval(1e-4, 1e-1))",
        "keras.filters=choice(8,16,32)",
        "keras.batch_size=range(16,128,step=16)",
    ],
    "train_scratch_mnist": [
        "keras.learning_rate=tag(log, interval(1e-4, 1e-1))",
        "keras.filters=choice(4,8,16)",
        "keras.batch_size=range(16,128,step=16)",
    ],
}


def make_data(repo: Path) -> None:
    """data/mnist.npz (the bundled digits) in the copy, as `dvc repro mnist` makes it."""
    env = {"CONVSCOPE_PROJECT": str(repo)}
    steps = [
        [PYTHON, "-m", "convscope.cli", "compose", "data.mnist.source=bundled"],
        [PYTHON, "pipelines/mnist.py", "--config-dir", ".", "--config-name", "params"],
    ]
    for args in steps:
        done = run(args, cwd=repo, timeout=600, **env)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")


def study(repo: Path, stage: str, name: str, pruner: str, args: argparse.Namespace) -> float:
    """Run one study; its wall time in seconds."""
    epochs_key = "keras.epochs"  # train_scratch_mnist interpolates keras.* (mnist_cnn.yaml)
    overrides = [
        "-m",
        "hydra/sweeper=optuna",
        "tracking=none",
        f"{epochs_key}={args.epochs}",
        *SPACES[stage],
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.sampler.seed={args.seed}",
        f"hydra.sweeper.pruner={pruner}",
        f"hydra.sweeper.study_name={name}",
    ]
    start = time.perf_counter()
    done = run([PYTHON, f"pipelines/{stage}.py", *overrides], cwd=repo, timeout=7200)
    if done.returncode != 0:
        raise SystemExit(f"study {name} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="train_keras", choices=sorted(SPACES))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pruners", nargs="+", default=["median"], choices=["median", "hyperband"])
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="convscope-optuna-bench-") as tmp:
        repo = copy_repo(Path(tmp) / "repo")
        make_data(repo)
        rows = {}
        for name, pruner in [("unpruned", "none"), *((p, p) for p in args.pruners)]:
            seconds = study(repo, args.stage, name, pruner, args)
            loaded = optuna.load_study(study_name=name, storage=f"sqlite:///{repo / 'optuna.db'}")
            trials = loaded.trials
            rows[name] = {
                "complete": sum(t.state.name == "COMPLETE" for t in trials),
                "pruned": sum(t.state.name == "PRUNED" for t in trials),
                "failed": sum(t.state.name == "FAIL" for t in trials),
                "epochs": sum(len(t.intermediate_values) for t in trials),
                "best": loaded.best_value,
                "params": loaded.best_params,
                "seconds": seconds,
            }

    base = rows["unpruned"]
    print(
        f"{args.stage}: {args.trials} trials x {args.epochs} epochs, bundled MNIST, "
        f"TPE seed {args.seed}; {', '.join(args.pruners)} pruner vs none"
    )
    header = (
        f"{'pruner':<9} {'complete':>8} {'pruned':>6} {'failed':>6} {'epochs':>6} "
        f"{'ratio':>6} {'best val_loss':>13} {'ratio':>6} {'wall s':>7} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        print(
            f"{name:<9} {row['complete']:>8} {row['pruned']:>6} {row['failed']:>6} "
            f"{row['epochs']:>6} {row['epochs'] / base['epochs']:>6.2f} {row['best']:>13.4f} "
            f"{row['best'] / base['best']:>6.3f} {row['seconds']:>7.1f} "
            f"{row['seconds'] / base['seconds']:>6.2f}"
        )
    for name, row in rows.items():
        print(f"best {name}: {row['params']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

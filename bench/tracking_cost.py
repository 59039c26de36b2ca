"""What tracking costs the pipeline: forced ``dvc repro`` on the defaults, this tree against a
baseline commit, side by side on this machine.

    .venv/bin/python bench/tracking_cost.py                      # against origin's a7be83b
    .venv/bin/python bench/tracking_cost.py --baseline HEAD~3 --repeat 2

Each tree (the baseline checked out with ``git worktree``, and the working tree as it is) is
copied to a throw-away repository with its own git history, where ``dvc repro`` runs once to
make the data, models and MLflow store, then ``dvc repro -f`` (every stage reruns) is timed;
the trees take turns, so load from other processes falls on both. Both use this checkout's
``.venv`` (``python`` and ``dvc`` first on PATH). Per stage, the runner's own log line
``stage X done in T s (MLflow M s)`` gives the stage's time and tracking's share of it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
DONE = re.compile(r"stage (\w+) done in ([\d.]+) s \(MLflow ([\d.]+) s\)")
BASELINE = "a7be83b"  # the last commit with the shared tracking agent


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env.pop("CONVSCOPE_ROOT", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true")
    return env


def copy_tree(src: Path, dst: Path) -> Path:
    """The project files git lists in ``src`` (tracked and untracked, not ignored), as a new
    repository with one commit."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=src, check=True, capture_output=True,
    ).stdout.split(b"\0")  # fmt: skip
    for raw in filter(None, listed):
        rel = raw.decode()
        if (src / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
    env = {**environment(), "GIT_AUTHOR_NAME": "bench", "GIT_COMMITTER_NAME": "bench",
           "GIT_AUTHOR_EMAIL": "bench@invalid", "GIT_COMMITTER_EMAIL": "bench@invalid"}  # fmt: skip
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "commit", "-q", "-m", "bench"]):  # fmt: skip
        subprocess.run(cmd, cwd=dst, env=env, check=True, capture_output=True)
    return dst


def repro(repo: Path, *args: str) -> tuple[float, dict[str, tuple[float, float]]]:
    """``dvc repro ARGS`` in ``repo``: wall seconds and, per stage, (stage s, MLflow s)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", *args],
        cwd=repo, env=environment(), capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"dvc repro {' '.join(args)} failed in {repo}:\n{done.stderr[-2000:]}")
    found = DONE.findall(done.stdout + done.stderr)
    return wall, {stage: (float(t), float(m)) for stage, t, m in found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="commit to compare against")
    parser.add_argument("--repeat", type=int, default=1, help="forced repros of each tree")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="convscope-bench-") as tmp:
        worktree = Path(tmp) / "baseline-src"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(worktree), args.baseline],
            cwd=HERE, check=True, capture_output=True,
        )  # fmt: skip
        try:
            trees = {
                args.baseline: copy_tree(worktree, Path(tmp) / "baseline"),
                "this tree": copy_tree(HERE, Path(tmp) / "current"),
            }
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=HERE)
        cold = {name: repro(repo)[0] for name, repo in trees.items()}
        forced: dict[str, list] = {name: [] for name in trees}
        for _ in range(args.repeat):
            for name, repo in trees.items():
                forced[name].append(repro(repo, "-f"))
    names = list(trees)
    load = os.getloadavg()[0]
    print(f"\nforced `dvc repro -f` on the defaults ({os.cpu_count()} cores, load {load:.1f})")
    print(f"{'stage':<22}" + "".join(f"{n + ' s':>16}{'MLflow s':>10}" for n in names))
    stages = list(forced[names[-1]][0][1])
    for stage in stages:
        cells = ""
        for name in names:
            times = [run[1].get(stage, (float("nan"), float("nan"))) for run in forced[name]]
            cells += f"{statistics.median(t for t, _ in times):>16.2f}"
            cells += f"{statistics.median(m for _, m in times):>10.2f}"
        print(f"{stage:<22}{cells}")
    walls = {name: statistics.median(w for w, _ in forced[name]) for name in names}
    mlflow = {name: sum(m for _, m in forced[name][0][1].values()) for name in names}
    print(f"{'MLflow, all stages':<22}" + "".join(f"{'':>16}{mlflow[n]:>10.2f}" for n in names))
    print(f"{'dvc repro -f wall':<22}" + "".join(f"{walls[n]:>16.2f}{'':>10}" for n in names))
    print(f"{'first dvc repro wall':<22}" + "".join(f"{cold[n]:>16.2f}{'':>10}" for n in names))
    base, mine = walls[names[0]], walls[names[1]]
    print(f"\nthis tree / {names[0]}: {mine / base:.2f}x ({mine:.1f} s / {base:.1f} s)")


if __name__ == "__main__":
    main()

"""A throwaway copy of the project and subprocess runs in it, with the environment a user's
shell would give them: the project's virtualenv first on PATH (DVC stages call `python`), no
inherited DVC/MLflow locations.

The copy holds what the working tree holds (tracked files and untracked, not ignored ones),
so the code runs as it is, and stages write into the copy, never into the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from convscope.paths import project_root

REPO_ROOT = project_root()

PYTHON = sys.executable

# Variables a surrounding DVC stage, experiment or MLflow session would leak into the copy.
_LEAKY = (
    "DVC_ROOT",
    "DVC_STAGE",
    "DVC_EXP_NAME",
    "DVC_EXP_BASELINE_REV",
    "CONVSCOPE_ROOT",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "HYDRA_FULL_ERROR",
)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY}
    env["PATH"] = os.pathsep.join([str(Path(PYTHON).parent), env.get("PATH", "")])
    # No TF_CPP_MIN_LOG_LEVEL: the package sets its own, as it does for a user's shell.
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env["DVC_NO_ANALYTICS"] = "1"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # Let Python cache bytecode for the copy's sources: every stage is a fresh process, and
    # recompiling the same modules in each would be most of a short stage's time.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        env.setdefault(key, "convscope tests")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        env.setdefault(key, "tests@convscope.invalid")
    env.update(extra)
    return env


# Pipeline outputs that git does not ignore (DVC keeps cache:false metrics and plots in git);
# a copy starts without them, like a fresh clone before its first `dvc repro`.
_GENERATED = {"metrics", "plots", "dvc.lock"}


def copy_repo(dst: Path) -> Path:
    """Copy the working tree's project files (not .venv, data or outputs) to ``dst``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    dst.mkdir(parents=True, exist_ok=True)
    for raw in listed:
        if not raw:
            continue
        rel = raw.decode()
        if rel.split("/", 1)[0] in _GENERATED:
            continue
        src = REPO_ROOT / rel
        if not src.is_file():
            continue  # deleted in the working tree but still in the index
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dst


def git_init(repo: Path) -> None:
    """Make ``repo`` its own git repository with one commit (DVC experiments need one)."""
    env = subprocess_env()
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "copy for tests"],
    ):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)


def run(args: list[str], cwd: Path, timeout: float = 300, **env: str):
    """Run a command in ``cwd``; returns the CompletedProcess (text, captured)."""
    return subprocess.run(
        args,
        cwd=cwd,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )

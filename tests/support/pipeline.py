"""Helpers for the end-to-end tests: a throwaway copy of the repository, subprocess runs, and
read-back of the MLflow store. Not a test module (pytest collects test_*.py only).

The copy holds what the working tree holds (tracked files and untracked, not ignored ones),
so the tests exercise the code as it is, and stages write into the copy, never into the
checkout. Processes run with the environment a user's shell would give them: the project's
virtualenv first on PATH (DVC stages call `python`), no inherited DVC/MLflow locations.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
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


def script(repo: Path, stage: str, *overrides: str, **env: str):
    """Run ``python pipelines/<stage>.py <overrides>`` in ``repo``."""
    return run([PYTHON, f"pipelines/{stage}.py", *overrides], cwd=repo, **env)


def pipeline_stage(repo: Path, stage: str, *overrides: str, **env: str):
    """Run ``stage`` as DVC does (``--config-dir . --config-name params``) on the smoke preset.

    That is the one way a run writes the pipeline's own files; params.yaml is composed with
    ``experiment=smoke`` first (and then used as is, like DVC would).
    """
    if "experiment: smoke" not in (repo / "params.yaml").read_text():
        composed = run([PYTHON, "-m", "convscope.cli", "compose", "experiment=smoke"], cwd=repo)
        assert composed.returncode == 0, composed.stderr
        (repo / "params.yaml").write_text(
            "# experiment: smoke\n" + (repo / "params.yaml").read_text()
        )
    args = ["--config-dir", ".", "--config-name", "params", *overrides]
    return run([PYTHON, f"pipelines/{stage}.py", *args], cwd=repo, **env)


def repo_with_lines(folder: Path) -> Path:
    """A project copy (:func:`copy_repo`) at ``folder``/repo whose data/lines.npz its own
    ``lines`` stage made (smoke preset): where train_scratch_lines runs and sweeps start."""
    repo = copy_repo(folder / "repo")
    made = pipeline_stage(repo, "lines")
    assert made.returncode == 0, made.stderr
    return repo


def files_under(root: Path) -> set[str]:
    """Every file below ``root`` (relative paths), ignoring Python bytecode caches."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".git" not in p.parts
    }


def runs(db: Path) -> list[dict[str, str]]:
    """Every run in an MLflow SQLite store: experiment, name, status, parent run id."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        rows = con.execute(
            """
            SELECT e.name, r.run_uuid, r.name, r.status,
                   (SELECT t.value FROM tags t
                    WHERE t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId')
            FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id
            """
        ).fetchall()
    keys = ("experiment", "run_id", "name", "status", "parent")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def tracking_processes(stage_pid: int) -> list:
    """The tracking processes a stage process started (its children running the service)."""
    import psutil

    try:
        children = psutil.Process(stage_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in children:
        try:
            if "convscope.tracking.service" in proc.cmdline():
                found.append(proc)
        except psutil.Error:
            continue
    return found


def endless_stage(repo: Path, stderr: int | None = subprocess.DEVNULL) -> subprocess.Popen:
    """``train_scratch_lines`` as DVC runs it, with epochs enough to outlast any test: a stage
    to stop midway. ``stderr=subprocess.PIPE`` keeps its error line (text)."""
    args = ["--config-dir", ".", "--config-name", "params", "scratch.mini_cnn.epochs=100000"]
    return subprocess.Popen(
        [PYTHON, "pipelines/train_scratch_lines.py", *args],
        cwd=repo,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def native_log_lines(stderr: str) -> list[str]:
    """TensorFlow's C++ log lines in a process's stderr (none should reach a user)."""
    from convscope.native_logs import is_native_log_line

    return [line for line in stderr.splitlines() if is_native_log_line(line, level=4)]


def subtree_keys(config: dict, prefixes: list[str]) -> set[str]:
    """The flattened keys of ``config`` under any of ``prefixes``."""
    from convscope.tracking.store import flatten_params

    flat = flatten_params(config)
    return {k for k in flat if any(k == p or k.startswith(p + ".") for p in prefixes)}

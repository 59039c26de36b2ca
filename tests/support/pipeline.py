"""Helpers for the integration and end-to-end tests: stages run in a project copy
(:mod:`harness.project`), read-back of the MLflow store, the processes a stage leaves. Not a
test module (pytest collects test_*.py only)."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from harness.project import PYTHON, copy_repo, run, subprocess_env

#: the override that makes a stage record nothing: for the stages that only make a test's inputs
UNTRACKED = "tracking.backend=none"


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
    ``lines`` stage made (smoke preset, recording nothing: the data is the point, not its
    run): where train_scratch_lines runs and sweeps start."""
    repo = copy_repo(folder / "repo")
    made = pipeline_stage(repo, "lines", UNTRACKED)
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

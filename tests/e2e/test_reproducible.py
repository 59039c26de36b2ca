"""Outputs any clone can reuse: push, pull, byte-identical re-runs, an S3 remote, by-hand runs.

Real DVC, git and an S3-compatible server (moto's server mode on 127.0.0.1), no mocks. Clone A
runs the pipeline (``experiment=smoke``) and pushes to a DVC remote; clone B is a ``git clone``
of A that pulls: it has nothing to run, and a forced re-run writes the same bytes (every md5 in
the two dvc.lock files agrees).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.project import PYTHON, copy_repo, git_init, run, subprocess_env
from tests.support.pipeline import script

pytestmark = pytest.mark.slow

DVC = [PYTHON, "-m", "dvc"]


def dvc(repo: Path, *args: str, **env: str):
    result = run([*DVC, *args], cwd=repo, timeout=900, **env)
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, env=subprocess_env(), check=True, capture_output=True, text=True
    ).stdout


def lock_md5s(repo: Path) -> dict[str, str]:
    """Every out's md5 in dvc.lock, by path."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
    }


def ran(result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("Running stage")]


@pytest.fixture(scope="module")
def clones(tmp_path_factory):
    base = tmp_path_factory.mktemp("clones")
    a = copy_repo(base / "a")
    # what is reproduced is the files; where runs are recorded is not the subject here
    compose = [PYTHON, "-m", "convscope.cli", "compose", "experiment=smoke", "tracking=none"]
    result = run(compose, cwd=a)
    assert result.returncode == 0, result.stderr
    git_init(a)
    remote = base / "remote"
    dvc(a, "remote", "modify", "--local", "local", "url", str(remote))
    dvc(a, "repro")
    git(a, "add", "-A")
    git(a, "commit", "-q", "-m", "pipeline results")
    dvc(a, "push")
    b = base / "b"
    git(base, "clone", "-q", str(a), str(b))
    dvc(b, "remote", "modify", "--local", "local", "url", str(remote))
    return a, b, remote


def test_the_default_remote_is_a_folder_outside_the_repository():
    from convscope.paths import project_root

    config = (project_root() / ".dvc" / "config").read_text()
    assert "remote = local" in config
    assert "url = ~/.cache/convscope/dvc-remote" in config


def test_pulled_clone_is_up_to_date_and_runs_nothing(clones):
    _, b, _ = clones
    dvc(b, "pull")
    status = dvc(b, "status")
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    assert ran(dvc(b, "repro")) == []


def test_forced_repro_in_another_clone_writes_the_same_bytes(clones):
    a, b, _ = clones
    dvc(b, "pull")
    dvc(b, "repro", "--force")
    assert lock_md5s(b) == lock_md5s(a)
    # dvc.lock (deps, params, outs), metrics/ and plots/ as committed in A
    assert git(b, "status", "--porcelain") == ""


def test_pipeline_outs_hold_no_absolute_path_run_id_or_timing(clones):
    a, _, _ = clones
    text = "\n".join(
        p.read_text()
        for p in [*(a / "metrics").glob("*.json"), a / "reports/figures/manifest.json"]
    )
    assert str(a) not in text and "/tmp" not in text
    for key in ("seconds", "run_id", "source_run", "time"):
        assert key not in text, key
    from convscope.files import load_arrays

    for npz in [*(a / "data").glob("*.npz"), *(a / "models").glob("*.npz")]:
        _, meta = load_arrays(npz)
        flat = json.dumps(meta)
        assert str(a) not in flat and "run_id" not in flat and "/tmp" not in flat, npz


def test_s3_remote_push_and_pull(clones, s3_endpoint, tmp_path):
    a, _, _ = clones
    url = s3_endpoint["MLFLOW_S3_ENDPOINT_URL"]  # moto, the session's S3 endpoint
    env = {k: v for k, v in s3_endpoint.items() if k.startswith("AWS_")}
    for repo in (a,):
        dvc(repo, "remote", "add", "--local", "s3", "s3://mlflow/dvc-remote")
        dvc(repo, "remote", "modify", "--local", "s3", "endpointurl", url)
    pushed = dvc(a, "push", "-r", "s3", **env)
    assert "pushed" in pushed.stdout
    c = tmp_path / "c"
    git(tmp_path, "clone", "-q", str(a), str(c))
    dvc(c, "remote", "add", "--local", "s3", "s3://mlflow/dvc-remote")
    dvc(c, "remote", "modify", "--local", "s3", "endpointurl", url)
    dvc(c, "pull", "-r", "s3", **env)
    assert "Data and pipelines are up to date" in dvc(c, "status").stdout
    for rel in ("data/mnist.npz", "models/keras_cnn.keras", "reports/figures/manifest.json"):
        assert (c / rel).read_bytes() == (a / rel).read_bytes(), rel


def test_by_hand_run_leaves_the_pipeline_files_alone(clones):
    a, _, _ = clones
    before = git(a, "status", "--porcelain")
    models = {p.name: p.read_bytes() for p in (a / "models").iterdir()}
    result = script(a, "train_scratch_lines", "scratch.mini_cnn.epochs=1")
    assert result.returncode == 0, result.stderr
    assert git(a, "status", "--porcelain") == before
    assert "Data and pipelines are up to date" in dvc(a, "status").stdout
    assert {p.name: p.read_bytes() for p in (a / "models").iterdir()} == models
    written = [p for p in (a / "outputs").rglob("scratch_lines.npz")]
    assert len(written) == 1, sorted(map(str, (a / "outputs").rglob("*")))
    run_folder = written[0].parent.parent.relative_to(a)
    assert f"outputs in {run_folder};" in result.stdout + result.stderr
    shutil.rmtree(a / "outputs")
    os.sync()

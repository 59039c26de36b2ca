"""Many stages recording at once to one store (an SQLite file or the team's server), shared by
the integration and e2e tiers: each run is its own checkout's, and no record is lost."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from harness.project import PYTHON, copy_repo, git_init, run, subprocess_env


def read_runs(uri: str, prefix: str) -> list:
    """Every run of the experiments named ``<prefix>/...`` in the store at ``uri``."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    return client.search_runs(exps, max_results=1000) if exps else []


def checkout(repo: Path, dst: Path, marker: str | None = None) -> Path:
    """A clone-like copy of the repository with its own commit; ``marker``: its tracking
    code also tags each run ``test.checkout=<marker>`` (code the other checkout lacks)."""
    work = copy_repo(dst)
    shutil.copytree(repo / "data", work / "data", dirs_exist_ok=True)
    shutil.copy(repo / "params.yaml", work / "params.yaml")
    if marker is not None:
        code = work / "src/convscope/tracking/lifecycle.py"
        text = code.read_text()
        anchor = '        TAG_ROLE: "stage",\n'
        assert anchor in text
        code.write_text(text.replace(anchor, anchor + f'        "test.checkout": "{marker}",\n'))
    git_init(work)
    return work


def two_checkouts_at_once(
    repo: Path, tmp_path: Path, overrides: list[str], uri: str, prefix: str
) -> None:
    """Two checkouts with different tracking code run train_scratch_lines at the same moment
    into one store: each run carries its own checkout's code (a tag only one checkout's code
    sets), commit, entry point and stage process."""
    works = {m: checkout(repo, tmp_path / m, m if m == "b" else None) for m in ("a", "b")}
    commits = {m: run(["git", "rev-parse", "HEAD"], cwd=w).stdout.strip() for m, w in works.items()}
    assert commits["a"] != commits["b"]
    args = ["--config-dir", ".", "--config-name", "params",
            f"tracking.experiment_prefix={prefix}", *overrides]  # fmt: skip
    stages = {
        m: subprocess.Popen([PYTHON, "pipelines/train_scratch_lines.py", *args], cwd=w,
                            env=subprocess_env(), stderr=subprocess.PIPE, text=True)
        for m, w in works.items()
    }  # fmt: skip
    for stage in stages.values():
        _, err = stage.communicate(timeout=300)
        assert stage.returncode == 0, err
    found = read_runs(uri, prefix)
    assert len(found) == 2
    by_pid = {r.data.tags["convscope.pid"]: r for r in found}
    for m, stage in stages.items():
        tags = by_pid[str(stage.pid)].data.tags
        assert by_pid[str(stage.pid)].info.status == "FINISHED"
        assert tags["convscope.git_commit"] == commits[m]
        assert tags["convscope.git_dirty"] == "false", tags.get("convscope.git_changes")
        assert tags["mlflow.source.name"] == "pipelines/train_scratch_lines.py"
        assert tags.get("test.checkout") == (m if m == "b" else None)


def sixteen_stages_at_once(repo: Path, overrides: list[str], uri: str, prefix: str) -> None:
    """16 by-hand train_scratch_lines runs (smoke) started together on one store: every run
    FINISHED with every epoch's metrics and kernels and its kernel images; none RUNNING."""
    n, epochs = 16, 3  # experiment=smoke
    stages = [
        subprocess.Popen(
            [PYTHON, "pipelines/train_scratch_lines.py", "experiment=smoke",
             f"hydra.run.dir=outputs/{prefix}/{i}", f"tracking.experiment_prefix={prefix}",
             *overrides, f"seed={i}"],
            cwd=repo, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]  # fmt: skip
    errors = [stage.communicate(timeout=600)[1] for stage in stages]
    assert [s.returncode for s in stages] == [0] * n, [e for e in errors if e]
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = read_runs(uri, prefix)
    states = sorted((r.info.status, r.data.tags.get("convscope.outbox", "")) for r in found)
    assert len(found) == n and {s for s, _ in states} == {"FINISHED"}, (states, errors)
    for r in found:
        run_id = r.info.run_id
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]
        kernels = [a.path for a in client.list_artifacts(run_id, "kernels")]
        assert kernels == [f"kernels/epoch_{e:03d}" for e in range(epochs + 1)]
        images = [a.path for a in client.list_artifacts(run_id, "images")]
        assert sum(p.endswith(".png") for p in images) == epochs + 1

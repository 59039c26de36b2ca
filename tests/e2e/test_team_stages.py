"""The real stages against the team's server (PostgreSQL store, proxied artifacts).

- ``lines`` and ``train_scratch_lines`` (DVC's way) and a joblib sweep of ``walkthrough``
  with ``tracking.backend=server`` record what they record on the local store: params,
  per-epoch metrics, kernels as arrays and as time-stepped images, the model, the dataset, a
  sweep parent with its children; ``convscope compare`` reads them back from the server;
- the server killed mid-training: the stage still writes its outputs, exits 1 with one line
  naming what was not recorded, and ``convscope sync`` sends it once the server is back on
  the same port and database; the run then has every epoch and ends FINISHED.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.project import PYTHON, copy_repo, run, subprocess_env
from harness.services import free_port, mlflow_server, stop_group
from tests.support.pipeline import UNTRACKED, pipeline_stage
from tests.support.team import image_steps, on_server, plot_losses, record_on_server, runs_of

pytestmark = pytest.mark.slow

EPOCHS = 3  # experiment=smoke


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("team-stages") / "repo")


def test_stages_sweep_and_compare_on_the_team_server(repo, team_server, tmp_path):
    from mlflow import MlflowClient

    record_on_server(repo, team_server.uri, "team")
    assert not (repo / "mlflow.db").exists()  # nothing went to the local store

    client = MlflowClient(team_server.uri)
    [lines] = runs_of(client, "team/lines")
    [train] = runs_of(client, "team/train_scratch_lines")
    assert (lines.info.status, train.info.status) == ("FINISHED", "FINISHED")
    run_id = train.info.run_id
    assert train.data.tags["param.scratch.mini_cnn.epochs"] == str(EPOCHS)
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
    assert history == plot_losses(repo)
    assert [s for s, _ in history] == list(range(1, EPOCHS + 1))
    kernels = [a.path for a in client.list_artifacts(run_id, "kernels")]
    assert kernels == [f"kernels/epoch_{e:03d}" for e in range(EPOCHS + 1)]
    layer = client.list_artifacts(run_id, "kernels/epoch_000")[0].path.rpartition("/")[2]
    assert image_steps(client, run_id, f"kernels/{layer[:-4]}") == list(range(EPOCHS + 1))
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/scratch_lines.npz"]
    assert {d.dataset.name for d in train.inputs.dataset_inputs} == {"lines"}
    # proxied: every artifact landed in the server's destination folder
    stored = {p.name for p in Path(team_server.artifacts).rglob("*") if run_id in p.parts}
    assert {"config.yaml", "scratch_lines.npz"} <= stored

    walk = runs_of(client, "team/walkthrough")
    parents = [r for r in walk if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in walk if "mlflow.parentRunId" in r.data.tags]
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}

    report = tmp_path / "compare.html"
    compared = run(
        [PYTHON, "-m", "convscope.cli", "compare", "-e", "team/train_scratch_lines",
         "--tracking-uri", team_server.uri, "-o", str(report)],
        cwd=repo,
    )  # fmt: skip
    assert compared.returncode == 0, compared.stderr
    assert "compared 1 run(s) (1 with kernels matched)" in compared.stdout
    assert run_id[:8] in report.read_text()


def test_server_killed_mid_run_keeps_the_records_for_sync(repo, postgres_url, tmp_path):
    from mlflow import MlflowClient

    epochs = 40
    if not (repo / "data/lines.npz").exists():
        assert pipeline_stage(repo, "lines", UNTRACKED).returncode == 0
    bare = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    artifacts, port = str(tmp_path / "artifacts"), free_port()
    args = ["--config-dir", ".", "--config-name", "params", f"scratch.mini_cnn.epochs={epochs}"]
    with mlflow_server(bare, artifacts, workers=1, port=port) as server:
        stage = subprocess.Popen(
            [PYTHON, "pipelines/train_scratch_lines.py", *args, *on_server(server.uri, "fault")],
            cwd=repo, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        client = MlflowClient(server.uri)
        deadline = time.monotonic() + 240
        while True:  # kill the server once the run has logged a few epochs
            exp = client.get_experiment_by_name("fault/train_scratch_lines")
            found = client.search_runs([exp.experiment_id]) if exp else []
            if found and len(client.get_metric_history(found[0].info.run_id, "loss")) >= 2:
                break
            assert stage.poll() is None and time.monotonic() < deadline, stage.communicate()
            time.sleep(0.1)
        run_id = found[0].info.run_id
        stop_group(server.proc, signal.SIGKILL)
        _, err = stage.communicate(timeout=300)

    assert stage.returncode == 1, err
    [line] = err.strip().splitlines()
    assert line.startswith("convscope: error: train_scratch_lines: the MLflow server at ")
    assert f"records of run {run_id} (its end included) are kept in" in line
    assert "`convscope sync`" in line
    assert (repo / "models/scratch_lines.npz").is_file()  # the work is not lost
    losses = plot_losses(repo)
    assert [s for s, _ in losses] == list(range(1, epochs + 1))

    with mlflow_server(bare, artifacts, workers=1, port=port) as server:
        client = MlflowClient(server.uri)
        assert client.get_run(run_id).info.status == "RUNNING"
        synced = run([PYTHON, "-m", "convscope.cli", "sync", "--root", str(repo)], cwd=repo)
        assert synced.returncode == 0, synced.stderr
        assert f"run {run_id}: " in synced.stdout
        got = client.get_run(run_id)
        assert got.info.status == "FINISHED"
        history = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
        assert history == losses  # nothing lost, nothing twice
        layer = client.list_artifacts(run_id, "kernels/epoch_000")[0].path.rpartition("/")[2]
        assert image_steps(client, run_id, f"kernels/{layer[:-4]}") == list(range(epochs + 1))
        kernels = [a.path for a in client.list_artifacts(run_id, "kernels")]
        assert kernels == [f"kernels/epoch_{e:03d}" for e in range(epochs + 1)]
        final = json.loads((repo / "metrics/train_scratch_lines.json").read_text())
        final = {k for k, v in final.items() if isinstance(v, float) and k != "loss"}
        assert final and final <= set(got.data.metrics)  # the final metrics, sent last
    assert not (repo / ".convscope/outbox" / run_id).exists()
    again = run([PYTHON, "-m", "convscope.cli", "sync", "--root", str(repo)], cwd=repo)
    assert again.returncode == 0 and "synced 0 run(s)" in again.stdout

"""hydra/launcher=ray_local runs a sweep on a Ray started for it on 127.0.0.1, then stops it.

Every Ray server of the sweep listens on 127.0.0.1 only (see convscope.launchers for why
the launcher config alone does not achieve that).

The tiny app in tests/ray_app takes the launcher configs from the project's conf/ (through
``hydra.searchpath``) and records, per job, where ``convscope`` came from. The sweep runs
from a folder outside the project; its jobs import the convscope that the same Python in
the same environment imports (the installed one, or PYTHONPATH's in a checkout): the plugin
ships no code, and Ray adds only the driver's working directory and script folder to its
workers' ``sys.path``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "tests" / "support" / "ray_app" / "app.py"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if env.get("PYTHONPATH"):  # the sweep runs elsewhere: relative entries would dangle
        paths = env["PYTHONPATH"].split(os.pathsep)
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in paths if p)
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def test_ray_sweep_runs_four_jobs_on_a_local_head(tmp_path):
    installed = subprocess.run(
        [sys.executable, "-c", "import convscope; print(convscope.__file__)"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # The sweep's TMPDIR, short (Ray's unix socket paths): no CONVSCOPE_RAY_TMPDIR, so the
    # sweep makes Ray's folder itself, a fresh private one in it.
    tmpdir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    sweep = tmp_path / "sweep"
    # fmt: off
    cmd = [sys.executable, str(APP), "-m", "x=1,2,3,4", "hydra/launcher=ray_local",
           "hydra.launcher.ray.init.num_cpus=2", f"hydra.searchpath=[file://{ROOT / 'conf'}]",
           f"hydra.sweep.dir={sweep}"]
    # fmt: on
    try:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=clean_env(TMPDIR=tmpdir),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
        [private] = Path(tmpdir).glob("ray-*")
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        assert (private / "ray" / "session_latest").is_dir()  # Ray's session lived in it
        # Ray's processes carry the session folder in their command line: none may survive.
        left = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if tmpdir in " ".join(p.info["cmdline"] or [])
        ]
        assert left == []
    finally:
        subprocess.run(["rm", "-rf", tmpdir], check=False)

    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/job.json"))]
    assert sorted(job["x"] for job in jobs) == [1, 2, 3, 4]
    assert {job["convscope"] for job in jobs} == {installed}
    assert all(str(ROOT) not in job["sys_path"] for job in jobs)
    assert [job["ray_nodes"] for job in jobs] == [["127.0.0.1"]] * 4
    assert {ip for job in jobs for ip in job["ray_listening"]} == {"127.0.0.1"}
    assert proc.pid not in {job["pid"] for job in jobs}  # jobs ran in Ray's workers
    assert "Ray Launcher is launching 4 jobs" in out


# --- a real stage's sweep on a Ray started for it, recording on the team server -----------


@pytest.mark.slow
def test_stage_sweep_on_ray_records_parent_and_children(team_server, tmp_path):
    """The sweep's Ray (2 CPUs) gets the parent run id through ``ray.init``'s runtime_env."""
    from mlflow import MlflowClient

    from harness.project import copy_repo
    from tests.support.pipeline import UNTRACKED, pipeline_stage, script

    repo = copy_repo(tmp_path / "repo")
    assert pipeline_stage(repo, "lines", UNTRACKED).returncode == 0
    sweep = ["-m", "experiment=smoke", "scratch.mini_cnn.lr=0.01,0.02,0.03,0.04"]
    track = ["tracking=server", f"tracking.uri={team_server.uri}", "tracking.experiment_prefix=ray"]
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        result = script(
            repo, "train_scratch_lines", *sweep, *track, "hydra/launcher=ray_local",
            "hydra.launcher.ray.init.num_cpus=2", CONVSCOPE_RAY_TMPDIR=ray_tmp,
            CONVSCOPE_PROJECT=str(repo),  # Ray workers import convscope from PYTHONPATH
        )  # fmt: skip
    finally:
        subprocess.run(["rm", "-rf", ray_tmp], check=False)
    assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient(team_server.uri)
    exp = client.get_experiment_by_name("ray/train_scratch_lines")
    found = client.search_runs([exp.experiment_id])
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(c.data.tags["param.scratch.mini_cnn.lr"] for c in children) == [
        "0.01", "0.02", "0.03", "0.04"
    ]  # fmt: skip
    for child in children:
        run_id = child.info.run_id
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]
        images = [a.path for a in client.list_artifacts(run_id, "images")]
        assert sum(p.endswith(".png") for p in images) >= 4  # kernels at epochs 0..3
        stored = [p for p in Path(team_server.artifacts).rglob("*.npy") if run_id in p.parts]
        assert len(stored) >= 4  # in the server's destination folder


@pytest.mark.slow
def test_local_tracking_is_refused_on_a_remote_ray_cluster(tmp_path):
    from harness.project import copy_repo
    from tests.support.pipeline import runs, script

    repo = copy_repo(tmp_path / "repo")
    result = script(
        repo, "walkthrough", "-m", "scratch.walkthrough.padding=0,1", "hydra/launcher=ray_cluster",
        RAY_ADDRESS="10.1.2.3:6379",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "convscope: error: tracking.backend=local is not allowed with the Ray cluster at "
        "10.1.2.3:6379: its jobs run on other machines and cannot reach this machine's "
        "mlflow.db; use tracking=server tracking.uri=http://HOST:PORT"
    ]
    assert runs(repo / "mlflow.db") == []

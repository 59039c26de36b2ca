"""The tracking agent: stages leave their MLflow calls to one warm process per store.

Real stage processes in a copy of the repository, the agent started by the first of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from multiprocessing.connection import Client
from pathlib import Path

import psutil
import pytest

from convscope.tracking.agent import agent_address
from convscope.tracking.store import tracking_uri
from tests.pipeline_support import (
    PYTHON,
    agent_processes,
    copy_repo,
    endless_stage,
    pipeline_stage,
    runs,
    subprocess_env,
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("agent") / "repo")


def agents(repo: Path) -> list[psutil.Process]:
    return agent_processes(repo)


def address(repo: Path) -> Path:
    """The agent socket of ``repo``'s store, as the stages' environment names it."""
    env = subprocess_env()
    return agent_address(tracking_uri({"backend": "local"}, repo), env)


def wait_for(condition, seconds: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_stages_share_one_agent_and_never_import_mlflow(repo):
    """Two stages: the first starts the agent, the second uses the same one; neither stage
    process imports mlflow, and both runs are in the store, FINISHED, with their params."""
    first = pipeline_stage(repo, "lines")
    assert first.returncode == 0, first.stderr
    [agent] = agents(repo)
    # the stage as DVC runs it, reporting at exit every module its process imported
    report = (
        "import atexit, runpy, sys; "
        "atexit.register(lambda: print('MODULES', *sorted(sys.modules), file=sys.stderr)); "
        "sys.path.insert(0, 'pipelines'); "
        "sys.argv = ['pipelines/walkthrough.py', '--config-dir', '.', '--config-name', 'params']; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    second = subprocess.run(
        [PYTHON, "-c", report],
        cwd=repo,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr[-2000:]
    [listing] = [line for line in second.stderr.splitlines() if line.startswith("MODULES ")]
    imported = set(listing.split()[1:])
    assert {"convscope.tracking.agent", "convscope.runner"} <= imported  # the listing is real
    assert not {m for m in imported if m.split(".")[0] in ("mlflow", "sqlalchemy", "alembic")}
    assert [p.pid for p in agents(repo)] == [agent.pid]
    made = {r["experiment"]: r["status"] for r in runs(repo / "mlflow.db")}
    assert made == {"convscope/lines": "FINISHED", "convscope/walkthrough": "FINISHED"}
    assert "MLflow run " in second.stdout.strip().splitlines()[-1]


def test_killed_stage_run_ends_at_once(repo):
    """SIGKILL a stage mid-training: its connection breaks and the agent ends the run KILLED
    right away, with no ``convscope runs --clean``."""
    before = {r["run_id"] for r in runs(repo / "mlflow.db")}
    victim = endless_stage(repo)

    def new() -> list[dict[str, str]]:
        return [r for r in runs(repo / "mlflow.db") if r["run_id"] not in before]

    try:
        wait_for(lambda: [r["status"] for r in new()] == ["RUNNING"], 120, "the run to start")
        time.sleep(1.0)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    wait_for(lambda: [r["status"] for r in new()] == ["KILLED"], 10, "the run to end KILLED")
    assert agents(repo)  # the agent itself lives on for the next stage


def test_killed_agent_is_one_line_and_replaced(repo):
    """The agent killed under a running stage: the stage fails in one line naming the agent,
    writes nothing; the next stage starts a new agent and succeeds."""
    target = repo / "models" / "scratch_lines.npz"
    mtime = target.stat().st_mtime_ns if target.exists() else None
    stage = endless_stage(repo, stderr=subprocess.PIPE)
    try:
        wait_for(
            lambda: any(r["status"] == "RUNNING" for r in runs(repo / "mlflow.db")), 120, "run"
        )
        for agent in agents(repo):
            agent.kill()
        _, err = stage.communicate(timeout=120)
    finally:
        if stage.poll() is None:
            stage.kill()
    assert stage.returncode == 1, err
    [line] = err.strip().splitlines()
    assert line.startswith("convscope: error: train_scratch_lines: the MLflow tracking agent ")
    assert (target.stat().st_mtime_ns if target.exists() else None) == mtime
    assert not list(repo.glob("**/.*.staged-*"))

    again = pipeline_stage(repo, "lines")
    assert again.returncode == 0, again.stderr
    assert len(agents(repo)) == 1


def test_agent_refuses_a_wrong_key_and_serves_on(repo):
    """A client without the agent's key is refused; the agent keeps serving stages."""
    done = pipeline_stage(repo, "lines")
    assert done.returncode == 0, done.stderr
    sock = address(repo)
    assert sock.exists() and (sock.stat().st_mode & 0o777) != 0
    assert sock.parent.stat().st_mode & 0o077 == 0  # the folder is this user's only
    with pytest.raises(Exception):  # noqa: B017 - multiprocessing's AuthenticationError
        Client(str(sock), "AF_UNIX", authkey=b"not the key").send(("open", {}))
    done = pipeline_stage(repo, "lines")
    assert done.returncode == 0, done.stderr


def test_agent_exits_when_idle_or_its_store_is_gone(tmp_path):
    """An agent with no run open exits after its idle time; one whose store folder was
    removed exits at once. Either way its socket and key go with it."""
    idle = copy_repo(tmp_path / "idle")
    done = pipeline_stage(idle, "lines", CONVSCOPE_AGENT_IDLE_S="2")
    assert done.returncode == 0, done.stderr
    sock = address(idle)
    wait_for(lambda: not agents(idle) and not sock.exists(), 20, "the idle agent to exit")
    assert not sock.with_suffix(".key").exists()

    gone = copy_repo(tmp_path / "gone")
    done = pipeline_stage(gone, "lines")
    assert done.returncode == 0, done.stderr
    [agent] = agents(gone)
    subprocess.run(["rm", "-rf", str(gone)], check=True)
    wait_for(lambda: not agent.is_running(), 10, "the agent of a removed store to exit")


def test_replaced_store_gets_a_new_agent(repo):
    """mlflow.db deleted between two stages: the agent of the old file exits and the next
    stage builds a new store through a new agent."""
    done = pipeline_stage(repo, "lines")
    assert done.returncode == 0, done.stderr
    [old] = agents(repo)
    db = repo / "mlflow.db"
    moved = db.with_name("mlflow.db.old")
    os.replace(db, moved)
    try:
        wait_for(lambda: not old.is_running(), 10, "the old agent to exit")
        done = pipeline_stage(repo, "lines")
        assert done.returncode == 0, done.stderr
        assert [r["status"] for r in runs(db)] == ["FINISHED"]
    finally:
        os.replace(moved, db)


def test_a_failed_cast_fails_the_next_call_and_the_run(tmp_path):
    """Metrics go to the agent without waiting; one the agent refuses fails the stage's next
    call, in order, and the run ends FAILED with every earlier record kept."""
    from mlflow import MlflowClient

    from convscope.tracking import start_hosted_run

    cfg = {"backend": "local"}
    with pytest.raises(ValueError, match=r"metrics\['acc'\]='high' is not allowed"):
        with start_hosted_run(cfg, "lines", {"data": {"seed": 1}}, root=tmp_path) as run:
            run.log_epoch(1, {"loss": 0.5})
            run.log_epoch(2, {"acc": "high"})  # refused by the agent, after the stage went on
            run.log_epoch(3, {"loss": 0.25})  # skipped: the run is failing
            run.log_text("never logged", "notes.txt")  # the first call that waits: it fails
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    got = client.get_run(run.run_id)
    assert got.info.status == "FAILED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(1, 0.5)]
    assert "notes.txt" not in {a.path for a in client.list_artifacts(run.run_id)}

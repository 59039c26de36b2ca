"""Each stage run is recorded by a tracking process of its own: started by the stage with the
stage's interpreter, code, environment and user, fed over an inherited pipe, gone with it.
Whatever dies on the tracking side, the stage's work is kept: its outputs are written, the run's
remaining records wait in the outbox for ``convscope sync``, and no run stays RUNNING.

Real stage processes in a copy of the repository.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from harness.project import PYTHON, copy_repo, run, subprocess_env
from tests.support.concurrent import sixteen_stages_at_once, two_checkouts_at_once
from tests.support.pipeline import repo_with_lines, runs, tracking_processes

pytestmark = pytest.mark.slow

MODEL = "models/scratch_lines.npz"


@pytest.fixture(scope="module")
def repo(tmp_path_factory, template_db) -> Path:
    """:func:`repo_with_lines` with an empty MLflow store, so every test here can run alone
    (its data stage records nothing)."""
    repo = repo_with_lines(tmp_path_factory.mktemp("tracking-process"))
    shutil.copy(template_db, repo / "mlflow.db")
    return repo


def wait_for(condition, seconds: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def training(repo: Path, epochs: int, *overrides: str, **env: str) -> subprocess.Popen:
    """``train_scratch_lines`` as DVC runs it, for ``epochs`` epochs (stderr kept, text)."""
    args = ["--config-dir", ".", "--config-name", "params", f"scratch.mini_cnn.epochs={epochs}"]
    args += overrides
    return subprocess.Popen(
        [PYTHON, "pipelines/train_scratch_lines.py", *args],
        cwd=repo,
        env=subprocess_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def new_run(repo: Path, before: set[str], db: str = "mlflow.db") -> dict[str, str] | None:
    made = [r for r in runs(repo / db) if r["run_id"] not in before]
    return made[0] if made else None


def epochs_logged(db: Path, run_id: str) -> int:
    try:
        with sqlite3.connect(db) as con:
            row = con.execute(
                "SELECT COUNT(*) FROM metrics WHERE run_uuid = ? AND key = 'loss'", (run_id,)
            ).fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0])


def tag(db: Path, run_id: str, key: str) -> str | None:
    with sqlite3.connect(db) as con:
        row = con.execute(
            "SELECT value FROM tags WHERE run_uuid = ? AND key = ?", (run_id, key)
        ).fetchone()
    return row[0] if row else None


def test_the_stage_owns_its_tracking_process(repo):
    """The tracking process is the stage's child, with the stage's interpreter, environment
    (variables only this stage has included), user and code; it holds no named socket; when
    the stage is SIGKILLed, it ends the run KILLED at once and exits."""
    before = {r["run_id"] for r in runs(repo / "mlflow.db")}
    marks = {
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "REQUESTS_CA_BUNDLE": str(repo / "no-such-bundle.pem"),
        "CONVSCOPE_TEST_MARK": "stage-only",
    }
    stage = training(repo, 100000, **marks)
    try:
        wait_for(lambda: new_run(repo, before) is not None, 120, "the run to start")
        [child] = tracking_processes(stage.pid)
        me = psutil.Process(stage.pid)
        assert child.ppid() == stage.pid
        assert child.exe() == me.exe()  # the same interpreter
        assert child.uids() == me.uids()
        environ = child.environ()
        assert {k: environ.get(k) for k in marks} == marks
        assert environ["PYTHONPATH"].split(os.pathsep)[0] == str(repo / "src")  # its code
        assert all(not c.laddr for c in child.net_connections("unix"))  # a socket pair
        assert not [f.path for f in child.open_files() if "convscope" in Path(f.path).name]
    finally:
        stage.send_signal(signal.SIGKILL)
        stage.wait()
    run_id = new_run(repo, before)["run_id"]
    wait_for(lambda: new_run(repo, before)["status"] == "KILLED", 15, "the run to end KILLED")
    wait_for(lambda: not child.is_running(), 15, "the tracking process to exit")
    assert (
        tag(repo / "mlflow.db", run_id, "mlflow.source.name") == "pipelines/train_scratch_lines.py"
    )
    assert tag(repo / "mlflow.db", run_id, "convscope.pid") == str(stage.pid)


def test_a_stage_process_never_imports_mlflow(repo):
    """The stage as DVC runs it, reporting at exit every module its process imported: no
    mlflow, SQLAlchemy or Alembic; the run is in the store, FINISHED."""
    report = (
        "import atexit, runpy, sys; "
        "atexit.register(lambda: print('MODULES', *sorted(sys.modules), file=sys.stderr)); "
        "sys.path.insert(0, 'pipelines'); "
        "sys.argv = ['pipelines/walkthrough.py', '--config-dir', '.', '--config-name', 'params']; "
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    done = run([PYTHON, "-c", report], cwd=repo)
    assert done.returncode == 0, done.stderr[-2000:]
    [listing] = [line for line in done.stderr.splitlines() if line.startswith("MODULES ")]
    imported = set(listing.split()[1:])
    assert {"convscope.tracking.client", "convscope.runner"} <= imported  # the listing is real
    assert not {m for m in imported if m.split(".")[0] in ("mlflow", "sqlalchemy", "alembic")}
    made = [r for r in runs(repo / "mlflow.db") if r["experiment"] == "convscope/walkthrough"]
    assert [r["status"] for r in made] == ["FINISHED"]
    assert "MLflow run " in done.stdout.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- tracking faults


def kill_tracking(stage: subprocess.Popen, repo: Path, sig: int) -> None:
    for child in tracking_processes(stage.pid):
        child.send_signal(sig)


def stop_tracking(stage: subprocess.Popen, repo: Path, sig: int) -> None:
    """SIGTERM to the tracking process while the stage is paused, so the stage cannot end its
    run within the grace the tracking process gives it (a fast stage may, and then the run
    is recorded in full and the stage exits 0, as it should); the stage goes on once the
    tracking process has exited."""
    stage.send_signal(signal.SIGSTOP)
    try:
        children = tracking_processes(stage.pid)
        for child in children:
            child.send_signal(sig)
        for child in children:
            wait_for(
                lambda c=child: not c.is_running() or c.status() == psutil.STATUS_ZOMBIE,
                60,
                "the stopped tracking process to exit",
            )
    finally:
        stage.send_signal(signal.SIGCONT)


def remove_store(stage: subprocess.Popen, repo: Path, sig: int) -> None:
    (repo / "mlflow.db").unlink()


def replace_store(stage: subprocess.Popen, repo: Path, sig: int) -> None:
    """Another store put in its place (a backup restored, say): it lacks the run."""
    os.replace(repo / "other.db", repo / "mlflow.db")


#: (fault, what the one line names, the run's status in the store the stage leaves)
FAULTS = {
    "killed": (
        kill_tracking,
        signal.SIGKILL,
        "the tracking process was killed (SIGKILL)",
        "FAILED",
    ),
    "stopped": (
        stop_tracking,
        signal.SIGTERM,
        "the tracking process was stopped (SIGTERM)",
        "FAILED",
    ),
    "removed": (remove_store, 0, "mlflow.db was removed", None),
    "replaced": (replace_store, 0, "mlflow.db was replaced", None),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_tracking_failure_costs_no_work(repo, tmp_path, fault):
    """The tracking side dies mid-training: the stage finishes, writes its outputs, keeps the
    run's remaining records in the outbox and exits 1 with one line naming the cause and
    ``convscope sync``; a run left in a store that can still be written is not RUNNING, and
    ``convscope sync`` then records every epoch and ends it FINISHED."""
    act, sig, cause, status = FAULTS[fault]
    work = copy_repo(tmp_path / "repo")
    shutil.copytree(repo / "data", work / "data", dirs_exist_ok=True)
    shutil.copy(repo / "params.yaml", work / "params.yaml")
    shutil.copy(repo / "mlflow.db", work / "mlflow.db")
    if fault == "replaced":
        with sqlite3.connect(repo / "mlflow.db") as src, sqlite3.connect(work / "other.db") as dst:
            src.backup(dst)
    before = {r["run_id"] for r in runs(work / "mlflow.db")}
    epochs = 400
    stage = training(work, epochs, "tracking.log_kernel_images=false")
    try:
        wait_for(
            lambda: (
                (r := new_run(work, before)) and epochs_logged(work / "mlflow.db", r["run_id"]) >= 2
            ),
            120,
            "two epochs",
        )
        run_id = new_run(work, before)["run_id"]
        act(stage, work, sig)
        _, err = stage.communicate(timeout=600)
    finally:
        if stage.poll() is None:
            stage.kill()
    assert stage.returncode == 1, err
    assert len(err.strip().splitlines()) == 1, err
    [line] = err.strip().splitlines()
    assert line.startswith(f"convscope: error: train_scratch_lines: {cause} during the run; "), line
    assert f"records of run {run_id} (its end included) are kept in" in line
    assert "`convscope sync`" in line
    assert (work / MODEL).is_file() and (work / "metrics/train_scratch_lines.json").is_file()
    rows = (work / "plots/train_scratch_lines.csv").read_text().splitlines()
    assert len(rows) == 1 + epochs  # the work is all there
    assert not list(work.glob("**/.*.staged-*"))
    outbox = work / ".convscope" / "outbox" / run_id
    assert outbox.is_dir()
    if status is None:  # the store the run was in is gone: nothing of it is RUNNING
        assert run_id not in {r["run_id"] for r in runs(work / "mlflow.db")}
        return
    assert {r["run_id"]: r["status"] for r in runs(work / "mlflow.db")}[run_id] == status

    synced = run([PYTHON, "-m", "convscope.cli", "sync"], cwd=work)
    assert synced.returncode == 0, synced.stderr
    assert f"run {run_id}: " in synced.stdout
    assert {r["run_id"]: r["status"] for r in runs(work / "mlflow.db")}[run_id] == "FINISHED"
    with sqlite3.connect(work / "mlflow.db") as con:
        steps = [s for (s,) in con.execute(
            "SELECT step FROM metrics WHERE run_uuid = ? AND key = 'loss' ORDER BY step",
            (run_id,),
        )]  # fmt: skip
    assert steps == list(range(1, epochs + 1))  # every epoch, each once
    assert not outbox.exists()


# ----------------------------------------------------------------------------- shared folders


def planted(shared: Path, repo: Path) -> tuple[Path, set[str]]:
    """Another user's traps at every name an earlier convscope used in the temp folder (the
    agent's folder, the store's start lock): symlinks into a folder of theirs."""
    import hashlib

    theirs = shared / "theirs"
    theirs.mkdir()
    uri = f"sqlite:///{(repo / 'mlflow.db').resolve().as_posix()}"
    lock = f"convscope-mlflow-{hashlib.sha1(uri.encode()).hexdigest()[:16]}.lock"
    (shared / f"convscope-{os.getuid()}").symlink_to(theirs)
    (shared / lock).symlink_to(theirs / "lock")
    return theirs, {"theirs", f"convscope-{os.getuid()}", lock}


@pytest.mark.parametrize("kind", ["long", "missing", "read-only", "planted"])
def test_the_temp_folder_cannot_hurt_a_stage(repo, tmp_path, kind):
    """A temp folder with a very long path, one that does not exist, a read-only one, or one
    where another user planted symlinks at every name convscope used there: the stage records
    its run as usual, follows no link, and leaves nothing in the temp folder."""
    shared = (
        tmp_path / ("t" * 120 if kind == "long" else "tmp") / ("u" * 80 if kind == "long" else "")
    )
    if kind != "missing":
        shared.mkdir(parents=True)
    theirs, names = planted(shared, repo) if kind == "planted" else (None, set())
    before = {r["run_id"] for r in runs(repo / "mlflow.db")}
    cmd = [PYTHON, "pipelines/walkthrough.py", "--config-dir", ".", "--config-name", "params"]
    if kind == "read-only":  # root ignores modes: a read-only bind mount in a namespace of its own
        mount = f'mount --bind {shared} {shared} && mount -o remount,ro,bind {shared} && exec "$@"'
        cmd = ["unshare", "-rm", "sh", "-c", mount, "sh", *cmd]
    done = run(cmd, cwd=repo, TMPDIR=str(shared))
    assert done.returncode == 0, done.stderr
    made = new_run(repo, before)
    assert made is not None and made["status"] == "FINISHED"
    if theirs is not None:
        assert list(theirs.iterdir()) == []  # nothing written through their links
    if shared.exists():  # what was there before, and nothing else
        assert {p.name for p in shared.iterdir()} == names


# ----------------------------------------------------------------------------- many at once


def test_two_checkouts_at_once_each_record_their_own_code(repo, tmp_path):
    """Two checkouts with different tracking code record to one SQLite store at the same
    moment: each run carries its own checkout's code, commit, entry point and stage process
    (the same on the team's server: tests/e2e/test_team_tracking.py)."""
    db = tmp_path / "shared" / "mlflow.db"
    db.parent.mkdir()
    two_checkouts_at_once(repo, tmp_path, [f"tracking.uri={db}"], f"sqlite:///{db}", "two")


def test_sixteen_stages_at_once_lose_no_record(repo, tmp_path):
    """16 stages started together on one SQLite store lose no record, leave none RUNNING."""
    db = tmp_path / "shared" / "mlflow.db"
    db.parent.mkdir()
    sixteen_stages_at_once(repo, [f"tracking.uri={db}"], f"sqlite:///{db}", "load-sqlite")


#: a tracking process that answers the run's open with why it goes, and exits as a stopped
#: one does
STOPPING_SERVICE = """\
import os, sys
from multiprocessing.connection import Connection
conn = Connection(int(sys.argv[1]))
request = conn.recv()
conn.send(("lost", request.seq, "the tracking process was stopped (SIGTERM)"))
os._exit(143)
"""


def test_a_send_to_a_gone_process_names_what_it_said_before_it_went(tmp_path, monkeypatch):
    """The stage's next send fails before its reader has read the process's last word (a
    stage paused while its tracking process was stopped): the run is lost for the reason the
    process gave, not for the exit code it left."""
    import socket
    import tempfile
    import threading

    from convscope.tracking import client

    ours, theirs = socket.socketpair()
    with theirs:
        proc = subprocess.Popen(
            [PYTHON, "-c", STOPPING_SERVICE, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            env=subprocess_env(),
            stderr=subprocess.DEVNULL,
        )
    # the reader thread reads nothing until the stage, its send failed, either waits for it
    # or decides the loss itself
    released = threading.Event()
    read, mark_lost = client.RemoteRun._read, client.RemoteRun._mark_lost

    def late_reader(self):
        released.wait(60)
        read(self)

    def marked(self, *args, **kwargs):
        mark_lost(self, *args, **kwargs)
        released.set()

    monkeypatch.setattr(client.RemoteRun, "_read", late_reader)
    monkeypatch.setattr(client.RemoteRun, "_mark_lost", marked)
    process = client.TrackingProcess(proc, ours, tempfile.TemporaryFile())
    remote = client.RemoteRun(process, {"stage": "lines"}, tmp_path)
    join = remote._reader.join

    def waited(timeout=None):
        released.set()
        join(timeout)

    monkeypatch.setattr(remote._reader, "join", waited)
    assert proc.wait(timeout=60) == 143
    for step in range(1, 100):  # the peer is gone: a send fails at once or soon
        remote.log_metrics({"loss": 1.0}, step=step)
        if remote._lost is not None:
            break
    assert remote._lost == "the tracking process was stopped (SIGTERM)"
    assert not remote._process_died

"""Every bad input and fault a user can cause ends as one line: ``convscope: error: ...`` on
stderr, exit 2 (refused before any work), 1 (a run that started and failed) or 130/143
(stopped), no new or changed output file, and an MLflow run, if one started, ended FAILED or
KILLED. One table per concern, so a new case is one line.

One copy of the repository serves the module (the smoke data prepared once); each case puts
back what it changed.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from harness.project import PYTHON, copy_repo, subprocess_env
from tests.support.pipeline import (
    UNTRACKED,
    endless_stage,
    files_under,
    pipeline_stage,
    runs,
    tracking_processes,
)

pytestmark = pytest.mark.slow

# Bookkeeping that is not a stage output: the MLflow store and Hydra's run folders.
NOT_OUTPUTS = ("mlflow.db", "mlartifacts", "outputs", "multirun")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = copy_repo(tmp_path_factory.mktemp("faults") / "repo")
    for stage in ("lines", "mnist"):  # the inputs of the stages under test; their runs are not
        done = pipeline_stage(root, stage, UNTRACKED)
        assert done.returncode == 0, done.stderr
    return root


def outputs(repo: Path) -> dict[str, tuple[int, int]]:
    """Every output file with its size and modification time."""
    found = {}
    for rel in files_under(repo):
        if rel.split("/", 1)[0] not in NOT_OUTPUTS:
            st = (repo / rel).stat()
            found[rel] = (st.st_size, st.st_mtime_ns)
    return found


def error_line(stderr: str) -> str:
    """The one ``convscope: error:`` line, checked to be the only one and the last line."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("convscope: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert len(errors[0]) < 400, errors[0]  # long values are cut
    return errors[0]


def stage(repo: Path, name: str, *overrides: str, **kwargs):
    """``name`` the way DVC runs it (the pipeline's own files), extra overrides appended."""
    args = ["--config-dir", ".", "--config-name", "params", *overrides]
    return subprocess.run(
        [PYTHON, f"pipelines/{name}.py", *args],
        cwd=repo,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def new_runs(repo: Path, before: list[dict[str, str]]) -> list[dict[str, str]]:
    seen = {r["run_id"] for r in before}
    return [r for r in runs(repo / "mlflow.db") if r["run_id"] not in seen]


# --------------------------------------------------------------------------- refused at once

LONG = "x" * 20_000  # far past any terminal line; Hydra's parser slows as its square past that

REFUSED = [
    ("keras.learning_rate=inf", r"keras\.learning_rate=inf .*finite"),
    ("keras.momentum=inf", r"keras\.momentum=inf .*finite"),
    ("keras.momentum=1", r"keras\.momentum=1\.0 .*\[0, 1\)"),
    ("scratch.mini_cnn.lr=nan", r"scratch\.mini_cnn\.lr=nan .*finite"),
    ("seed=4294967296", r"^convscope: error: seed=4294967296 .*int in \[0, 4294967295\]"),
    (
        "data.mnist.bundled_test_size=5000",
        r"bundled_test_size=5000 .*multiple of 10 in \[10, 4990\]",
    ),
    ("data.mnist.bundled_test_size=4999", r"bundled_test_size=4999 .*multiple of 10"),
    ("data.mnist.bundled_test_size=1", r"bundled_test_size=1 .*multiple of 10"),
    ("data.lines.noise=inf", r"data\.lines\.noise=inf .*finite"),
    (f"tracking.experiment_prefix={LONG}", r"experiment_prefix='x+\.\.\. \(20002 chars\).*236"),
    (f"keras.foo={LONG}", r"keras\.foo='x+\.\.\. \(20002 chars\) .*unknown key"),
    (
        f"keras.filters=[{LONG}",
        r"cannot parse the override 'keras\.filters=\[x+\.\.\. \(20017 chars\)",
    ),
]


@pytest.mark.parametrize(("override", "expected"), REFUSED, ids=[c[0][:40] for c in REFUSED])
def test_config_refused_before_any_work(repo, capsys, monkeypatch, override, expected):
    """What the schema can know fails before Hydra starts: exit 2, nothing made."""
    from convscope.runner import check_command_line

    monkeypatch.chdir(repo)
    before, store = outputs(repo), runs(repo / "mlflow.db")
    with pytest.raises(SystemExit) as exit_info:
        check_command_line(["experiment=smoke", "keras.optimizer=sgd", override])
    assert exit_info.value.code == 2
    assert re.search(expected, error_line(capsys.readouterr().err))
    assert outputs(repo) == before and runs(repo / "mlflow.db") == store


def test_refused_stage_process_is_one_line(repo):
    """The same through a stage's process: exit 2 before any run folder or MLflow run."""
    before, store = outputs(repo), runs(repo / "mlflow.db")
    done = stage(repo, "lines", "data.lines.noise=inf", f"tracking.experiment_prefix={LONG}")
    assert done.returncode == 2
    assert "data.lines.noise=inf" in error_line(done.stderr)
    assert outputs(repo) == before and runs(repo / "mlflow.db") == store


# --------------------------------------------------------------------------- failed runs


def models_is_a_file(repo: Path):
    shutil.rmtree(repo / "models", ignore_errors=True)
    (repo / "models").write_text("not a folder\n")
    return lambda: (repo / "models").unlink()


_MOUNTED: list[Path] = []


def read_only(path: Path) -> None:
    """Make ``path`` read-only: by its mode for a user; for root, whom modes do not stop, by a
    read-only bind mount of it onto itself (what a read-only share looks like)."""
    if os.geteuid() != 0:
        path.chmod(0o555 if path.is_dir() else 0o444)
        return
    done = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True, text=True)
    if done.returncode == 0:
        _MOUNTED.append(path)
        ro = ["mount", "-o", "remount,ro,bind", str(path)]
        done = subprocess.run(ro, capture_output=True, text=True)
    if done.returncode != 0:
        writable_again(path)
        pytest.skip(f"running as root without a read-only bind mount: {done.stderr.strip()}")


def writable_again(path: Path) -> None:
    if path in _MOUNTED:
        _MOUNTED.remove(path)
        subprocess.run(["umount", str(path)], check=True)
    elif path.exists():
        path.chmod(0o755 if path.is_dir() else 0o644)


def models_read_only(repo: Path):
    (repo / "models").mkdir(exist_ok=True)
    read_only(repo / "models")
    return lambda: writable_again(repo / "models")


FAILED_RUNS = [
    # (stage, overrides, setup, expected line, MLflow runs it leaves)
    (
        "train_scratch_lines",
        ["scratch.mini_cnn.lr=1e308"],
        None,
        r"train_scratch_lines: loss became nan at epoch 1; lower scratch\.mini_cnn\.lr \(1e\+308\)",
        ["FAILED"],
    ),
    (  # logits overflow to inf while their sigmoid stays finite
        "train_scratch_lines",
        ["scratch.mini_cnn.lr=1e30"],
        None,
        r"train_scratch_lines: loss became nan at epoch 1; lower scratch\.mini_cnn\.lr \(1e\+30\)",
        ["FAILED"],
    ),
    (
        "train_keras",
        ["keras.learning_rate=1e30"],
        None,
        r"train_keras: loss became nan at epoch 1; lower keras\.learning_rate \(1e\+30\)",
        ["FAILED"],
    ),
    (
        "train_keras",
        ["keras.input_shape=[10,10,1]"],
        None,
        r"keras\.input_shape=\[10, 10, 1\] does not fit data/mnist\.npz, whose images are 28x28x1",
        ["FAILED"],
    ),
    (
        "train_scratch_mnist",
        ["scratch.mnist_cnn.input_shape=[28,28,3]"],
        None,
        r"scratch\.mnist_cnn\.input_shape=\[28, 28, 3\] does not fit .* 28x28x1",
        ["FAILED"],
    ),
    (
        "train_keras",
        ["keras.num_classes=2"],
        None,
        r"keras\.num_classes=2 does not fit data/mnist\.npz, whose labels are 0\.\.9",
        ["FAILED"],
    ),
    (
        "train_scratch_lines",
        [],
        models_is_a_file,
        r"cannot write models/scratch_lines\.npz: .*/models is a file, not a folder",
        [],
    ),
    pytest.param(
        "train_scratch_lines",
        [],
        models_read_only,
        r"cannot write models/scratch_lines\.npz: .*/models is read-only",
        [],
    ),
]


@pytest.mark.parametrize(
    ("name", "overrides", "setup", "expected", "statuses"),
    FAILED_RUNS,
    ids=[
        f"{v[0]}-{v[1][0] if v[1] else v[2].__name__}"
        for v in (getattr(c, "values", c) for c in FAILED_RUNS)
    ],
)
def test_failed_run_is_one_line(repo, name, overrides, setup, expected, statuses):
    undo = setup(repo) if setup else None
    try:
        before, store = outputs(repo), runs(repo / "mlflow.db")
        done = stage(repo, name, *overrides)
        assert done.returncode == 1, done.stderr
        assert re.search(expected, error_line(done.stderr))
        assert outputs(repo) == before
        assert [r["status"] for r in new_runs(repo, store)] == statuses
    finally:
        if undo:
            undo()


def test_full_disk_mid_write_is_one_line(repo):
    """A write that fails for lack of space (here a file size limit) leaves nothing."""
    limit = (repo / "mlflow.db").stat().st_size + 2_000_000

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    before, store = outputs(repo), runs(repo / "mlflow.db")
    big = ["data.lines.n_samples=50000", "data.lines.size=9"]  # ~16 MB of images
    done = stage(repo, "lines", *big, preexec_fn=small_disk)
    assert done.returncode == 1, done.stderr
    assert re.search(r"lines: cannot write .*lines\.npz: File too large", error_line(done.stderr))
    assert outputs(repo) == before
    assert [r["status"] for r in new_runs(repo, store)] == ["FAILED"]


# --------------------------------------------------------------------------- the MLflow store


def _sql(*statements: str):
    def damage(db: Path) -> None:
        with sqlite3.connect(db) as con:
            for sql in statements:
                con.execute(sql)

    return damage


def _folder(db: Path) -> None:
    db.unlink()
    db.mkdir()


STORE_FAULTS = [
    (
        "truncated",
        lambda db: db.write_bytes(db.read_bytes()[:5000]),
        r"truncated \(5000 of \d+ bytes\).*move it aside",
    ),
    (
        "garbage",
        lambda db: db.write_bytes(b"garbage " * 512),
        r"not a usable SQLite.*move it aside",
    ),
    ("empty", lambda db: db.write_bytes(b""), r"damaged \(no table .*move it aside"),
    ("dropped table", _sql("DROP TABLE params"), r"damaged \(no table params\).*move it aside"),
    (
        "old schema",
        _sql("UPDATE alembic_version SET version_num = 'bf29a5ff90ea'"),
        r"older MLflow schema \(version bf29a5ff90ea\).*`mlflow db upgrade sqlite:///",
    ),
    (
        "half-built",
        _sql("CREATE TABLE _alembic_tmp_runs (x INTEGER)"),
        r"half-built \(a first run was interrupted.*move it aside",
    ),
    ("folder", _folder, r"is a folder, not an SQLite file: move it aside"),
    ("read-only", read_only, r"is read-only .*chmod u\+w"),
]


@pytest.mark.parametrize(
    ("what", "damage", "expected"),
    STORE_FAULTS,
    ids=[getattr(c, "values", c)[0] for c in STORE_FAULTS],
)
def test_damaged_store_is_one_line(repo, tmp_path, capsys, what, damage, expected):
    """A stage and ``convscope compare`` name the store, what is wrong and what to do."""
    from convscope import cli

    db = repo / "mlflow.db"
    good = db.read_bytes()
    # compare runs in this process, on a copy: mlflow keeps an engine per store URI
    other = tmp_path / "mlflow.db"
    other.write_bytes(good)
    damage(other)
    damage(db)
    try:
        before = outputs(repo)
        done = stage(repo, "lines")
        assert done.returncode == 1, done.stderr
        assert re.search(f"lines: MLflow store .*mlflow.db .*{expected}", error_line(done.stderr))
        assert outputs(repo) == before
        argv = ["compare", "-e", "convscope/lines", "--tracking-uri", f"sqlite:///{other}"]
        assert cli.main(argv) == 2
        assert re.search(expected, error_line(capsys.readouterr().err))
    finally:
        writable_again(other)
        writable_again(db)
        if db.is_dir():
            db.rmdir()
        db.write_bytes(good)


def test_store_is_built_whole(repo):
    """A new store appears complete or not at all; a killed build's leftover is removed."""
    scratch = repo / "fresh"
    scratch.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = scratch / f".mlflow.staged-{dead.pid}.db"
    leftover.write_bytes(b"half")
    uri = f"tracking.uri=sqlite:///{scratch / 'mlflow.db'}"
    done = stage(repo, "lines", uri)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in scratch.iterdir()) == ["mlartifacts", "mlflow.db"]
    assert [r["status"] for r in runs(scratch / "mlflow.db")] == ["FINISHED"]
    shutil.rmtree(scratch)


# --------------------------------------------------------------------------- commands


def _listening():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


CLI_FAULTS = [
    (["compose", "--output", "conf"], r"--output conf is a folder"),
    (["compare", "-e", "x", "-o", "conf"], r"-o conf is a folder"),
    (
        ["compare", "-e", "x", "--tracking-uri", "http://127.0.0.1:1"],
        r"MLflow tracking server at http://127\.0\.0\.1:1 is unreachable",
    ),
    (
        ["runs", "--clean", "--tracking-uri", "http://127.0.0.1:1"],
        r"MLflow tracking server at http://127\.0\.0\.1:1 is unreachable",
    ),
    (["ui", "--port", "99999"], r"--port 99999 is not allowed: expected a port in 1\.\.65535"),
    (["ui", "--port", "{busy}"], r"cannot listen on 127\.0\.0\.1:\d+: .*choose another --port"),
]


@pytest.mark.parametrize(
    ("argv", "expected"), CLI_FAULTS, ids=[" ".join(c[0][:3]) for c in CLI_FAULTS]
)
def test_command_fault_is_one_line(repo, capsys, monkeypatch, argv, expected):
    """Refused before any work, within seconds: exit 2."""
    from convscope import cli

    monkeypatch.chdir(repo)
    monkeypatch.setenv("CONVSCOPE_ROOT", str(repo))
    before = outputs(repo)
    with _listening() as busy:
        port = str(busy.getsockname()[1])
        started = time.monotonic()
        code = cli.main([a.replace("{busy}", port) for a in argv])
    assert code == 2 and time.monotonic() - started < 10
    assert re.search(expected, error_line(capsys.readouterr().err))
    assert outputs(repo) == before


def test_ui_stops_with_its_server(repo):
    """SIGTERM to ``convscope ui`` stops the MLflow server's whole group: the port is free."""
    with _listening() as probe:
        port = probe.getsockname()[1]
    env = subprocess_env(CONVSCOPE_ROOT=str(repo))
    ui = subprocess.Popen(
        [PYTHON, "-m", "convscope.cli", "ui", "--port", str(port)],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("the MLflow UI did not start")
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        ui.kill()
    time.sleep(1)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # nothing holds the port


# --------------------------------------------------------------------------- killed processes


def test_killed_stage_run_is_ended(repo, capsys, monkeypatch):
    """A stage SIGKILLed together with its tracking process (a lost machine) leaves its run
    RUNNING only until the next start (or ``runs --clean``); its staged leftovers go at the
    next start. (A stage killed alone has its run ended by its tracking process:
    test_tracking_process.py.)"""

    db = repo / "mlflow.db"
    store = runs(db)
    victim = endless_stage(repo)
    deadline = time.monotonic() + 120
    while not new_runs(repo, store) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    for process in tracking_processes(victim.pid):
        process.kill()
        process.wait(30)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    _wait_gone(victim.pid)
    assert [r["status"] for r in new_runs(repo, store)] == ["RUNNING"]

    cleaned = clean_runs(repo)
    assert cleaned.returncode == 0, cleaned.stderr
    assert "ended 1 run(s)" in cleaned.stdout
    assert [r["status"] for r in new_runs(repo, store)] == ["KILLED"]

    leftover = repo / "models" / f".scratch_lines.staged-{victim.pid}.npz"
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"half")
    done = stage(repo, "lines", "data.lines.noise=nan")  # refused, before any work
    assert done.returncode == 2 and leftover.exists()
    done = stage(repo, "train_scratch_lines")
    assert done.returncode == 0, done.stderr
    assert not leftover.exists()


def clean_runs(repo: Path) -> subprocess.CompletedProcess:
    """``convscope runs --clean`` in ``repo``, as its own process (as a user runs it)."""
    return subprocess.run(
        [PYTHON, "-m", "convscope.cli", "runs", "--clean"],
        cwd=repo,
        env=subprocess_env(CONVSCOPE_ROOT=str(repo)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _wait_gone(pid: int, group: bool = False, seconds: float = 30) -> None:
    """Wait until ``pid`` (its process group with ``group``) has no process left."""
    import psutil

    from convscope.files import pid_alive

    def alive() -> bool:
        if not group:
            return pid_alive(pid)
        members = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(proc.pid) == pid:
                    members.append(proc.pid)
        return any(pid_alive(p) for p in members)

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive():
            return
        time.sleep(0.1)
    pytest.fail(f"process {'group ' if group else ''}{pid} still alive after SIGKILL")


def _tag(db: Path, run_id: str, key: str) -> str | None:
    with sqlite3.connect(db) as con:
        row = con.execute(
            "SELECT value FROM tags WHERE run_uuid = ? AND key = ?", (run_id, key)
        ).fetchone()
    return row[0] if row else None


def _stop_main(sweep, child_pid):
    sweep.send_signal(signal.SIGTERM)


def _ctrl_c(sweep, child_pid):
    os.killpg(sweep.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group


def _kill_worker(sweep, child_pid):
    os.kill(child_pid, signal.SIGKILL)


def _kill_main(sweep, child_pid):
    os.killpg(sweep.pid, signal.SIGKILL)  # nothing of the sweep can end a run


SHM = Path("/dev/shm")
#: what joblib's loky names in /dev/shm after the process that made it: pid after the prefix
LOKY_PREFIXES = ("joblib_memmapping_folder_", "sem.loky-")


def _remove_loky_leftovers(before: set[str]) -> None:
    """Remove what a stopped sweep's joblib workers left in /dev/shm (loky cleans up at a
    normal exit only): the entries new since ``before`` whose process is gone. Entries of a
    live process, another test's sweep on the other xdist worker, stay."""
    from convscope.files import pid_alive

    for path in SHM.iterdir() if SHM.is_dir() else ():
        prefix = next((p for p in LOKY_PREFIXES if path.name.startswith(p)), None)
        if path.name in before or prefix is None:
            continue
        pid = path.name[len(prefix) :].split("_")[0].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


SWEEP_STOPS = [  # (how, the parent's status, the statuses its children may end with)
    (_stop_main, {"KILLED"}, {"KILLED"}),
    (_ctrl_c, {"KILLED"}, {"KILLED"}),
    # the dead job's run is ended KILLED by whichever comes first: the next job's start or the
    # sweep's end (FAILED); either way the parent does not end FINISHED
    (_kill_worker, {"FAILED", "KILLED"}, {"FAILED", "FINISHED", "KILLED"}),
    (_kill_main, {"FAILED", "KILLED"}, {"FAILED", "KILLED"}),  # once `convscope runs --clean`
]


@pytest.mark.parametrize(
    ("stop", "parent_status", "child_statuses"),
    SWEEP_STOPS,
    ids=[c[0].__name__.strip("_") for c in SWEEP_STOPS],
)
def test_stopped_parallel_sweep_settles_every_run(
    repo, capsys, monkeypatch, stop, parent_status, child_statuses
):
    """A parallel sweep (4 jobs) stopped midway: the parent does not end FINISHED, tag
    ``convscope.sweep_jobs`` counts the jobs, and no child stays RUNNING (after a SIGKILL of
    the whole sweep, once ``convscope runs --clean`` ran)."""

    db = repo / "mlflow.db"
    store = runs(db)
    shm_before = {p.name for p in SHM.iterdir()} if SHM.is_dir() else set()
    args = ["-m", "hydra/launcher=parallel", "experiment=smoke", "scratch.mini_cnn.epochs=100000"]
    sweep = subprocess.Popen(
        [PYTHON, "pipelines/train_scratch_lines.py", *args, "scratch.mini_cnn.seed=1,2,3,4"],
        cwd=repo,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 150
        children: list[dict[str, str]] = []
        while not children and time.monotonic() < deadline:
            time.sleep(0.5)
            children = [r for r in new_runs(repo, store) if r["parent"]]
        assert children, "no job started"
        stop(sweep, int(_tag(db, children[0]["run_id"], "convscope.pid")))
        _, stderr = sweep.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sweep.pid, signal.SIGKILL)
        _wait_gone(sweep.pid, group=True)  # the kernel may still be tearing the workers down
        _remove_loky_leftovers(shm_before)
    assert sweep.returncode != 0
    if stop is _kill_main:
        # each job's tracking process ends its run as the job's pipe breaks; the parent,
        # which the sweep's own process held, waits for `runs --clean` (or for a run's start
        # on this machine, which ends runs whose process is gone)
        deadline = time.monotonic() + 10
        while any(r["status"] == "RUNNING" for r in new_runs(repo, store) if r["parent"]):
            assert time.monotonic() < deadline, new_runs(repo, store)
            time.sleep(0.1)
        cleaned = clean_runs(repo)
        assert cleaned.returncode == 0, cleaned.stderr
        assert "ended" in cleaned.stdout
    made = new_runs(repo, store)
    parents = [r for r in made if not r["parent"]]
    assert len(parents) == 1 and parents[0]["status"] in parent_status, (made, stderr)
    children = [r for r in made if r["parent"]]
    assert children and {r["status"] for r in children} <= child_statuses, made
    jobs = _tag(db, parents[0]["run_id"], "convscope.sweep_jobs")
    assert jobs and re.match(r"\d+ jobs: \d+ finished, \d+ failed, \d+ killed", jobs), jobs

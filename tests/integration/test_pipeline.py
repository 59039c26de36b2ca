"""The real stage scripts, run as a person runs them, in a throwaway copy of the repository.

- a bad command line (every class of bad value) exits 2 with exactly one line on stderr
  naming the key, before anything is written and before any MLflow run exists;
- a stage run on params.yaml (DVC's way) writes the pipeline's outputs, metrics and plots and
  one FINISHED MLflow run, and clears what a killed run left staged; a by-hand run writes the
  same files under its own Hydra folder and leaves the pipeline's alone;
- a user error inside a stage (missing or corrupt input) exits 1 with one line, leaves no
  output behind and ends its MLflow run FAILED; SIGTERM mid-stage ends it KILLED, likewise
  without output;
- a 3-point sweep with the joblib launcher gives 1 parent and 3 FINISHED children in one store.
"""

from __future__ import annotations

import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.project import copy_repo
from tests.support.pipeline import endless_stage, files_under, pipeline_stage, runs, script

pytestmark = pytest.mark.slow

# (stage script, override, key the one line must name): one per class of bad value.
BAD_COMMAND_LINES = [
    ("train_keras", "keras.learning_rate=-0.01", "keras.learning_rate"),
    ("train_scratch_lines", "scratch.mini_cnn.lr=0", "scratch.mini_cnn.lr"),
    ("train_keras", "keras.stride=0", "keras.stride"),
    ("train_keras", "keras.kernel_size=30", "keras.kernel_size"),
    ("train_keras", "keras.activation=swish", "keras.activation"),
    ("train_scratch_mnist", "keras.optimizer=adagrad", "keras.optimizer"),
    ("train_scratch_lines", "scratch.mini_cnn.epochs=0", "scratch.mini_cnn.epochs"),
    ("lines", "+data.lines.colour=red", "data.lines.colour"),
    ("lines", "data.lines.n_samples=many", "data.lines.n_samples"),
    ("walkthrough", "experiment=nope", "experiment"),
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("pipeline") / "repo")


@pytest.fixture(scope="module")
def bad_runs(repo):
    """Run every bad command line (concurrently: each is a short Python start-up)."""
    before = files_under(repo)

    def one(case):
        stage, override, _ = case
        return script(repo, stage, override)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, BAD_COMMAND_LINES))
    return before, dict(zip([c[1] for c in BAD_COMMAND_LINES], results, strict=True))


@pytest.mark.parametrize(
    ("stage", "override", "key"), BAD_COMMAND_LINES, ids=[c[1] for c in BAD_COMMAND_LINES]
)
def test_bad_command_line_is_one_line_and_exit_2(bad_runs, stage, override, key):
    result = bad_runs[1][override]
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    value = override.split("=", 1)[1]
    assert lines[0].startswith(f"convscope: error: {key}=")
    assert value in lines[0] and "expected" in lines[0]


def test_bad_command_lines_write_nothing_and_open_no_run(bad_runs, repo):
    before, _ = bad_runs
    assert files_under(repo) == before  # no outputs, no Hydra run folder, no mlflow.db
    assert runs(repo / "mlflow.db") == []


def test_schema_is_shown_by_hydra(repo):
    result = script(repo, "train_keras", "--config-name", "schema/config", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "learning_rate: 0.001" in result.stdout


def test_stage_run_writes_outputs_and_one_finished_run(repo):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid no process has any more, as a SIGKILLed stage leaves behind
    (repo / "data").mkdir(exist_ok=True)
    leftover = repo / f"data/.lines.staged-{dead.pid}.npz"
    leftover.write_bytes(b"half of a killed run's output")
    result = pipeline_stage(repo, "lines")
    assert result.returncode == 0, result.stderr
    assert "lines: outputs in the pipeline" in result.stdout
    for rel in ("data/lines.npz", "metrics/lines.json", "plots/lines.csv"):
        assert (repo / rel).is_file(), rel
    assert not list(repo.glob("**/.*.staged-*"))
    finished = [r for r in runs(repo / "mlflow.db") if r["experiment"] == "convscope/lines"]
    assert [r["status"] for r in finished] == ["FINISHED"]


def test_by_hand_run_writes_under_its_hydra_folder(repo):
    pipeline = files_under(repo / "data") if (repo / "data").exists() else set()
    result = script(repo, "lines", "experiment=smoke", "data.lines.n_samples=8")
    assert result.returncode == 0, result.stderr
    written = list(repo.glob("outputs/lines/*/data/lines.npz"))
    assert len(written) == 1
    run_folder = written[0].parent.parent.relative_to(repo)
    assert f"lines: outputs in {run_folder}" in result.stdout
    assert (files_under(repo / "data") if (repo / "data").exists() else set()) == pipeline
    assert (run_folder / "metrics/lines.json").as_posix() in {
        str(p.relative_to(repo)) for p in repo.glob("outputs/lines/*/metrics/lines.json")
    }


def _stage_runs(repo, stage):
    return [r for r in runs(repo / "mlflow.db") if r["experiment"] == f"convscope/{stage}"]


def test_missing_input_is_one_line_no_output_and_a_failed_run(repo):
    before = len(_stage_runs(repo, "train_scratch_mnist"))
    result = script(repo, "train_scratch_mnist", "experiment=smoke")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("convscope:")]
    assert errors == [errors[0]] and "data/mnist.npz not found" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (repo / "models/scratch_mnist.npz").exists()
    assert not (repo / "metrics/train_scratch_mnist.json").exists()
    statuses = [r["status"] for r in _stage_runs(repo, "train_scratch_mnist")]
    assert len(statuses) == before + 1 and statuses[-1] == "FAILED"


def test_corrupt_input_is_one_line_no_output_and_a_failed_run(repo):
    (repo / "data").mkdir(exist_ok=True)
    (repo / "data/mnist.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    try:
        result = script(repo, "train_scratch_mnist", "experiment=smoke")
    finally:
        (repo / "data/mnist.npz").unlink()
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("convscope:")]
    assert len(errors) == 1 and "mnist.npz" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (repo / "models/scratch_mnist.npz").exists()
    assert "RUNNING" not in {r["status"] for r in runs(repo / "mlflow.db")}


def test_sigterm_mid_stage_ends_killed_without_output(repo):
    if not (repo / "data/lines.npz").exists():
        assert pipeline_stage(repo, "lines").returncode == 0
    proc = endless_stage(repo, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not any(r["status"] == "RUNNING" for r in _stage_runs(repo, "train_scratch_lines")):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the stage never opened its MLflow run"
            time.sleep(0.2)
        time.sleep(1.0)  # inside training
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert [r["status"] for r in _stage_runs(repo, "train_scratch_lines")] == ["KILLED"]
    assert not (repo / "models/scratch_lines.npz").exists()
    assert not list(repo.glob("**/.*.staged-*"))


def test_joblib_sweep_is_one_parent_and_three_finished_children(repo):
    result = script(
        repo,
        "walkthrough",
        "-m",
        "hydra/launcher=parallel",
        "scratch.walkthrough.padding=0,1,2",
    )
    assert result.returncode == 0, result.stderr
    sweep = _stage_runs(repo, "walkthrough")
    parents = [r for r in sweep if r["parent"] is None]
    children = [r for r in sweep if r["parent"] is not None]
    assert len(parents) == 1 and parents[0]["status"] == "FINISHED"
    assert len(children) == 3
    assert {r["status"] for r in children} == {"FINISHED"}
    assert {r["parent"] for r in children} == {parents[0]["run_id"]}
    # Each job wrote into its own sweep folder, not over the workspace's outputs.
    assert not (repo / "walkthrough").exists()
    job_texts = sorted(repo.glob("outputs/multirun/walkthrough/*/*/walkthrough/walkthrough.txt"))
    assert len(job_texts) == 3
    assert len({p.read_text() for p in job_texts}) == 3  # three paddings, three printouts

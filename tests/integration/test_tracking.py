"""convscope.tracking against real MLflow: SQLite stores in tmp folders, real subprocesses,
a real Hydra multirun with the joblib launcher. Nothing of mlflow is mocked.

Speed: a fresh SQLite store spends seconds creating its tables, so one is made per session and
copied for each test; subprocess tests run their processes side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from convscope.config.schema import TrackingConfig
from convscope.tracking.store import (
    PARENT_ENV,
    PARENT_FILE,
)

REPO = Path(__file__).resolve().parents[2]
CHILD_ENV = {
    "PYTHONPATH": str(REPO / "src"),  # this checkout's code, whatever the working directory
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PYTHONWARNINGS": "ignore",
}


@pytest.fixture(autouse=True)
def clean_env(clean_tracking_env):
    """Every test here chooses its store itself (see ``clean_tracking_env``)."""


@pytest.fixture
def root(tmp_path, template_db):
    """A repository root (a dvc.yaml marker) holding a ready copy of the template store."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy(template_db, repo / "mlflow.db")
    return repo


def client_for(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


# --- root, URIs, params: no mlflow needed ------------------------------------------------------


# --- a stage run into a real SQLite store -------------------------------------------------------


def test_stage_run_records_everything(root, tmp_path):
    from PIL import Image

    from convscope.tracking import start_run

    (root / "code.txt").write_text("v1\n")
    git(root, "init", "-q")
    git(root, "add", "code.txt")
    git(root, "commit", "-qm", "init")
    commit = git(root, "rev-parse", "HEAD")
    (root / "code.txt").write_text("v2\n")  # tracked change: dirty

    config = {"keras": {"filters": 8, "input_shape": [28, 28, 1]}, "seed": 0}
    kernels = {
        e: {"conv2d": np.full((3, 3, 1, 4), e + 1.0), "conv2d_1": np.full((3, 3, 4, 8), -e)}
        for e in range(2)
    }
    png = tmp_path / "fig.png"
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(png)
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "info.json").write_text('{"a": 1}')
    npz = tmp_path / "weights.npz"
    np.savez(npz, w=np.arange(3.0))
    x = np.zeros((12, 28, 28, 1), np.float32)
    y = np.arange(12) % 10

    cfg = TrackingConfig()
    source = "pipelines/train_keras.py"
    with start_run(
        cfg, "train_keras", config, ["keras.filters=8"], root=root, source=source
    ) as run:
        for epoch in range(2):
            run.log_epoch(
                epoch,
                {
                    "loss": 1.0 / (epoch + 1),
                    "val_loss": None,
                    "accuracy": np.float32(0.5 + epoch / 4),
                    "val_accuracy": float("nan"),
                },
            )
            run.log_kernels(epoch, kernels[epoch])
        run.log_kernel_images({name: {e: kernels[e][name] for e in kernels} for name in kernels[0]})
        run.log_metrics({"test_accuracy": 0.75})
        run.log_dataset("mnist", "d1g3st", "data/mnist.npz", x, y)
        run.log_artifact(tmp_path / "extra", "extra")  # a folder
        run.log_artifact(png, "figures")
        run.log_image(np.zeros((6, 8, 3), np.uint8), "figures/fig", step=3)
        with pytest.raises(FileNotFoundError, match="nothing.png"):
            run.log_artifact(tmp_path / "nothing.png")
        assert run.log_npz_model(npz) == f"runs:/{run.run_id}/model/weights.npz"
        run_id = run.run_id
        artifact_uri = client_for(root).get_run(run_id).info.artifact_uri
        assert Path(artifact_uri.removeprefix("file://")).is_relative_to(root / "mlartifacts")

    client = client_for(root)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    exp = client.get_experiment(got.info.experiment_id)
    assert exp.name == "convscope/train_keras"
    assert exp.artifact_location == (root / "mlartifacts").as_uri()
    assert got.data.params == {}  # the config is in tags: see store.TAG_PARAM_PREFIX
    tags = got.data.tags
    assert {k: v for k, v in tags.items() if k.startswith("param.")} == {
        "param.keras.filters": "8",
        "param.keras.input_shape": "[28, 28, 1]",
        "param.seed": "0",
    }
    assert tags["convscope.stage"] == "train_keras"
    assert tags["convscope.git_commit"] == commit == tags["mlflow.source.git.commit"]
    assert tags["convscope.git_dirty"] == "true"
    assert tags["convscope.overrides"] == "keras.filters=8"
    assert tags["mlflow.source.name"] == source  # the entry point, not the tracking process
    assert tags["convscope.pid"] == str(os.getpid())  # the stage's process
    assert got.info.run_name == "train_keras · keras.filters=8"

    history = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    assert history == {0: 1.0, 1: 0.5}
    assert [m.value for m in client.get_metric_history(run_id, "accuracy")] == [0.5, 0.75]
    assert "val_loss" not in got.data.metrics and "val_accuracy" not in got.data.metrics
    assert got.data.metrics["test_accuracy"] == 0.75

    dl = Path(client.download_artifacts(run_id, "", str(tmp_path / "dl")))
    assert yaml.safe_load((dl / "config.yaml").read_text()) == config
    for epoch in range(2):
        for name, kernel in kernels[epoch].items():
            saved = np.load(dl / "kernels" / f"epoch_{epoch:03d}" / f"{name}.npy")
            np.testing.assert_array_equal(saved, kernel)
    images = sorted(p.name for p in (dl / "images").glob("*.png"))
    for name in ("conv2d", "conv2d_1"):
        assert sum(f"kernels~{name}+step+0+" in n for n in images) == 1
        assert sum(f"kernels~{name}+step+1+" in n for n in images) == 1
    # one colour scale per layer for the whole run: conv2d's weights are 1 at epoch 0 and 2
    # at epoch 1, so epoch 0 is drawn at half strength, not stretched to the scale's end
    (first,) = (dl / "images").glob("kernels~conv2d+step+0+*.png")
    (last,) = (dl / "images").glob("kernels~conv2d+step+1+*.png")
    from matplotlib import colormaps

    expect = [np.round(np.array(colormaps["RdBu_r"](u)[:3]) * 255) for u in (0.75, 1.0)]
    for png, colour in ((first, expect[0]), (last, expect[1])):
        rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
        tiles = (np.abs(rgb - colour).max(axis=-1) <= 1).sum()
        assert tiles > 4 * 9 * 20**2, png.name  # 4 filters of 9 weights, >= 20 px a weight
    # a layer with several input channels also keeps its whole grid, each epoch
    grids = dl / "kernels" / "grid" / "conv2d_1"
    assert sorted(p.name for p in grids.iterdir()) == ["epoch_000.png", "epoch_001.png"]
    assert sum("figures~fig+step+3+" in n for n in images) == 1
    assert (dl / "figures" / "fig.png").is_file()
    assert json.loads((dl / "extra" / "info.json").read_text()) == {"a": 1}
    np.testing.assert_array_equal(np.load(dl / "model" / "weights.npz")["w"], np.arange(3.0))

    (dataset_input,) = got.inputs.dataset_inputs
    assert dataset_input.dataset.name == "mnist" and dataset_input.dataset.digest == "d1g3st"
    assert json.loads(dataset_input.dataset.source)["uri"] == "data/mnist.npz"
    assert json.loads(dataset_input.dataset.profile)["features_shape"] == [12, 28, 28, 1]
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"

    # a second run of the stage shares the experiment (the UI compares them)
    with start_run(cfg, "train_keras", config, [], root=root) as second:
        pass
    assert second.experiment_id == got.info.experiment_id
    assert client.get_run(second.run_id).info.run_name == "train_keras"


@pytest.mark.tf
def test_keras_model_in_the_keras_flavour(root, tmp_path):
    """The Keras 3 flavour (mlflow.keras): the saved model, logged by the tracking process,
    loads back and predicts the same."""
    keras = pytest.importorskip("keras")
    import mlflow

    from convscope.tracking import start_run

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    saved = tmp_path / "model.keras"
    model.save(saved)
    with start_run(TrackingConfig(), "train_keras", {}, root=root) as run:
        model_uri = run.log_keras_model(saved)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")  # where models:/ resolves
    loaded = mlflow.keras.load_model(model_uri)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    info = mlflow.models.get_model_info(model_uri)
    assert "keras" in info.flavors
    assert list(info.signature.inputs.inputs[0].shape) == [-1, 4]
    outputs = client_for(root).get_run(run.run_id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [model_uri.removeprefix("models:/")]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ValueError("bad"), "FAILED"),
        (KeyboardInterrupt(), "KILLED"),
        (SystemExit(2), "FAILED"),
        (SystemExit(0), "FINISHED"),
    ],
)
def test_in_process_endings(root, error, status):
    from convscope.tracking import start_run

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(type(error)):
        with start_run({"backend": "local"}, "endings", {"a": 1}, root=root) as run:
            raise error
    assert client_for(root).get_run(run.run_id).info.status == status
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored


def test_refused_record_fails_the_next_call_and_the_run(root):
    """Records go to the tracking process without waiting; one it refuses (a bad value, a bug)
    fails the stage's next call, or the run's end, and the run ends FAILED with every earlier
    record kept."""
    from convscope.tracking import start_run

    with pytest.raises(ValueError, match=r"metrics\['loss'\]='high' is not allowed"):
        with start_run({"backend": "local"}, "s", {}, root=root) as run:
            run.log_epoch(1, {"loss": 0.5})
            run.log_epoch(2, {"loss": "high"})  # refused after the stage went on
    client = client_for(root)
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(1, 0.5)]

    with pytest.raises(ValueError, match=r"metrics\['acc'\]"):
        with start_run({"backend": "local"}, "s", {}, root=root) as run:
            run.log_epoch(1, {"acc": "high"})
            run.confirm()
            time.sleep(2)  # the refusal has arrived: the next record fails
            run.log_text("never logged", "notes.txt")
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert "notes.txt" not in {a.path for a in client.list_artifacts(run.run_id)}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_real_signal_during_run_ends_it_killed(root, signum, request):
    """The OS delivers the signal to this process mid-run (Ctrl-C, or `kill` of a stage)."""
    from convscope.tracking import RunTerminated, start_run

    expected = KeyboardInterrupt if signum == signal.SIGINT else RunTerminated
    # Ctrl-C as Python sets it up in a fresh process (a test run earlier in this worker may
    # have left another handler)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    with pytest.raises(expected):
        with start_run({"backend": "local"}, "signals", {}, root=root) as run:
            os.kill(os.getpid(), signum)
            time.sleep(10)  # interrupted by the signal's exception
    assert client_for(root).get_run(run.run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or signum == signal.SIGINT


# --- statuses of real processes ----------------------------------------------------------------

CHILD = """
import os, signal, sys, time
from convscope.tracking import start_run
which, root, sweep = sys.argv[1:4]

def run(mode, **kw):
    return start_run({"backend": "local"}, "status", {"mode": mode}, [f"mode={mode}"],
                           root=root, **kw)

if which == "A":
    with run("ok") as r:
        print("ok", r.run_id, flush=True)
    with run("term") as r:
        print("term", r.run_id, flush=True)
        time.sleep(120)
else:
    try:
        with run("fail") as r:
            print("fail", r.run_id, flush=True)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    sys.stdin.readline()  # the test opens a sweep meanwhile
    with run("hard", sweep_dir=sweep) as r:
        print("hard", r.run_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # dies without any cleanup
"""


def sweep_config(sweep: Path, stage: str, overrides: list[str]):
    from omegaconf import OmegaConf

    hydra = {"sweep": {"dir": str(sweep)}, "job": {"name": stage}, "overrides": {"task": overrides}}
    return OmegaConf.create({"hydra": hydra, "tracking": {"backend": "local"}})


@pytest.mark.slow
def test_process_endings_finished_failed_killed_and_hard_kill(root, tmp_path, monkeypatch):
    """Two processes at once, racing to create a fresh store and the experiment: A ends a run
    normally, then gets SIGTERM while its second run sleeps; B's run raises, then B runs as a
    job of a sweep opened after B started (so it finds the parent through the sweep folder)
    and is killed hard (SIGKILL), which nothing in the process can catch: its tracking process
    sees its pipe break and ends that run KILLED, and the sweep's end its parent with it."""
    from convscope.tracking.hydra_callbacks import MlflowSweepCallback

    (root / "mlflow.db").unlink()
    monkeypatch.setenv("CONVSCOPE_ROOT", str(root))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    sweep = tmp_path / "sweep"
    env = {**os.environ, **CHILD_ENV}
    procs = {
        which: subprocess.Popen(
            [sys.executable, str(script), which, str(root), str(sweep)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for which in ("A", "B")
    }
    callback = MlflowSweepCallback()
    config = sweep_config(sweep, "status", ["mode=hard"])
    run_ids = {}
    try:
        for proc in procs.values():
            for _ in range(2):
                mode, _, run_id = proc.stdout.readline().strip().partition(" ")
                run_ids[mode] = run_id
                if mode == "term":
                    proc.send_signal(signal.SIGTERM)
                if mode == "fail":
                    callback.on_multirun_start(config)
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
        codes = {which: p.wait(timeout=60) for which, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    errs = {which: p.stderr.read() for which, p in procs.items()}
    assert set(run_ids) == {"ok", "term", "fail", "hard"}, errs
    assert codes["A"] != 0 and "RunTerminated" in errs["A"]
    assert codes["B"] == -signal.SIGKILL, errs["B"]

    client = client_for(root)

    def statuses() -> dict[str, str]:
        return {mode: client.get_run(rid).info.status for mode, rid in run_ids.items()}

    deadline = time.monotonic() + 30  # B's tracking process ends its run as B's pipe breaks
    while statuses()["hard"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert statuses() == {"ok": "FINISHED", "term": "KILLED", "fail": "FAILED", "hard": "KILLED"}
    parent = client.get_run(run_ids["hard"]).data.tags["mlflow.parentRunId"]
    assert json.loads((sweep / PARENT_FILE).read_text())["run_id"] == parent
    assert client.get_run(parent).info.status == "RUNNING"
    assert "mlflow.parentRunId" not in client.get_run(run_ids["fail"]).data.tags

    callback.on_multirun_end(config)
    assert client.get_run(run_ids["hard"]).info.status == "KILLED"
    assert client.get_run(parent).info.status == "KILLED"
    assert PARENT_ENV not in os.environ


def test_reaping_keeps_a_run_its_stage_ended_after_the_search(root, monkeypatch):
    """A stage that finishes (FINISHED, then exits) between another run's search for dead
    runs and its pid check keeps FINISHED; a run whose pid is gone and that nobody ended is
    ended KILLED. Sixteen stages starting and ending together met this race."""
    from convscope.tracking import settle
    from convscope.tracking.store import TAG_HOST, TAG_PID, process_tags

    client = client_for(root)
    exp = client.create_experiment("reap")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    tags = {TAG_HOST: process_tags()[TAG_HOST], TAG_PID: gone}
    finishing = client.create_run(exp, tags=tags).info.run_id
    abandoned = client.create_run(exp, tags=tags).info.run_id
    checked = []

    def stage_finishes_then_exits(pid: int) -> bool:
        checked.append(pid)
        if len(checked) == 1:
            client.set_terminated(finishing, "FINISHED")
        return False

    monkeypatch.setattr(settle, "pid_alive", stage_finishes_then_exits)
    ended = dict(settle.reap_dead_runs(client))
    assert len(checked) == 2
    statuses = {client.get_run(r).info.status for r in (finishing, abandoned)}
    assert statuses == {"FINISHED", "KILLED"}
    assert list(ended.values()) == ["KILLED"]
    assert client.get_run(next(iter(ended))).info.status == "KILLED"


# --- sweeps ------------------------------------------------------------------------------------


def sweep_runs(root: Path, experiment: str):
    client = client_for(root)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("convscope.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("convscope.role") == "stage"]
    return parents, children


def test_sweep_parent_lives_from_the_callbacks_start_to_its_end(root, tmp_path, monkeypatch):
    """The basic launcher's case: jobs one after another in the launching process. The parent
    is RUNNING while jobs run and ends FINISHED only when every job finished; a reused sweep
    folder gets a new parent."""
    from convscope.tracking import start_run
    from convscope.tracking.hydra_callbacks import MlflowSweepCallback

    monkeypatch.setenv("CONVSCOPE_ROOT", str(root))
    sweep = tmp_path / "multirun" / "12-00-00"
    cfg = {"backend": "local"}
    parents = []
    for failing in (None, 3):
        callback = MlflowSweepCallback()
        config = sweep_config(sweep, "seq", ["x=1,2,3"])
        callback.on_multirun_start(config)
        for x in (1, 2, 3):
            with contextlib.suppress(RuntimeError):
                with start_run(cfg, "seq", {"x": x}, [f"x={x}"], sweep_dir=sweep) as run:
                    parent = run.parent_run_id
                    assert client_for(root).get_run(parent).info.status == "RUNNING"
                    if x == failing:
                        raise RuntimeError(f"job {x} fails")
            assert client_for(root).get_run(parent).info.status == "RUNNING"
        callback.on_multirun_end(config)
        assert PARENT_ENV not in os.environ
        parents.append(parent)

    found, children = sweep_runs(root, "convscope/seq")
    by_id = {p.info.run_id: p for p in found}
    assert set(by_id) == set(parents) and len(parents) == 2
    first, second = by_id[parents[0]], by_id[parents[1]]
    assert first.info.status == "FINISHED"
    assert first.data.tags["convscope.sweep_jobs"] == "3 jobs: 3 finished, 0 failed, 0 killed"
    assert second.info.status == "FAILED"
    assert second.data.tags["convscope.sweep_jobs"] == "3 jobs: 2 finished, 1 failed, 0 killed"
    assert first.data.tags["convscope.sweep_dir"] == str(sweep.resolve())
    assert first.data.tags["convscope.sweep_overrides"] == "x=1,2,3"
    assert first.data.tags["convscope.stage"] == "seq"
    assert sorted(c.data.tags["mlflow.parentRunId"] for c in children) == sorted(parents * 3)

    # a sweep folder without a parent (no callback): the jobs are runs of their own
    with start_run(cfg, "seq", {}, sweep_dir=tmp_path / "bare") as run:
        assert run.parent_run_id is None


HYDRA_APP = """
import hydra
from omegaconf import OmegaConf
from convscope.tracking import start_run
from convscope.tracking.hydra_callbacks import hydra_overrides, hydra_sweep_dir
import os

@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    with start_run(cfg.tracking, "sweep_stage", OmegaConf.to_container(cfg, resolve=True),
                         hydra_overrides(), sweep_dir=hydra_sweep_dir()) as run:
        run.log_epoch(0, {"x": cfg.x, "pid": os.getpid()})
        if cfg.x == cfg.fail_at:
            raise RuntimeError("this job fails")

if __name__ == "__main__":
    main()
"""

HYDRA_CONF = """
defaults:
  - override hydra/launcher: joblib
  - _self_
x: 0
fail_at: -1
tracking: {backend: local, uri: null, experiment_prefix: hydra, log_models: true,
           log_kernel_images: true}
hydra:
  launcher: {n_jobs: 3}
  sweep: {dir: sweep, subdir: "${hydra.job.num}"}  # relative to the launch folder
  job: {chdir: true}  # jobs run inside sweep/<n>: the sweep dir must still resolve right
  callbacks:
    mlflow_sweep: {_target_: convscope.tracking.hydra_callbacks.MlflowSweepCallback}
"""


@pytest.mark.slow
def test_hydra_joblib_multirun_with_a_failing_job(root, tmp_path):
    """A real 3-point multirun with the callback and the joblib launcher (3 worker processes,
    which find the parent through the environment they inherit); the third job fails. Hydra
    then skips the end-of-sweep callback; the parent still ends, FAILED with the job counts,
    when the launching process exits. (The FINISHED end of a whole sweep: the in-process test
    above and the pipeline's sweep test.)"""
    app = tmp_path / "app"
    (app / "conf").mkdir(parents=True)
    (app / "sweep_stage.py").write_text(HYDRA_APP)
    (app / "conf" / "config.yaml").write_text(HYDRA_CONF)
    out = subprocess.run(
        [sys.executable, str(app / "sweep_stage.py"), "-m", "x=1,2,3", "fail_at=3"],
        cwd=tmp_path,
        env={**os.environ, **CHILD_ENV, "CONVSCOPE_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode != 0 and "this job fails" in out.stderr, out.stderr[-3000:]

    parents, children = sweep_runs(root, "hydra/sweep_stage")
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FAILED"
    assert parent.data.tags["convscope.sweep_jobs"] == "3 jobs: 2 finished, 1 failed, 0 killed"
    assert parent.data.tags["convscope.sweep_overrides"] == "x=1,2,3 fail_at=3"
    assert parent.data.tags["convscope.sweep_dir"] == str(tmp_path / "sweep")
    assert (
        json.loads((tmp_path / "sweep" / PARENT_FILE).read_text())["run_id"] == parent.info.run_id
    )
    status = {c.data.tags["param.x"]: c.info.status for c in children}
    assert status == {"1": "FINISHED", "2": "FINISHED", "3": "FAILED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.data.tags["convscope.overrides"] for c in children) == [
        "x=1 fail_at=3",
        "x=2 fail_at=3",
        "x=3 fail_at=3",
    ]
    assert len({c.data.metrics["pid"] for c in children}) > 1  # really separate processes


# --- the outbox ----------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["torn last line", "empty run.json"])
def test_sync_sends_every_intact_record_of_a_damaged_outbox(root, damage, monkeypatch, capsys):
    """A crash mid-write leaves a torn last line, or an empty run.json: ``convscope info``
    says in one line how many records can still be sent and what is damaged, and
    ``convscope sync`` sends every intact one, says what it could not, and ends the run as
    its stage ended it."""
    from convscope.cli import main as cli
    from convscope.tracking import start_run
    from convscope.tracking.outbox import Outbox, Request, pending_records

    with start_run({"backend": "local"}, "s", {}, root=root) as run:
        run.log_epoch(1, {"loss": 1.0})
    run_id = run.run_id
    uri = f"sqlite:///{root / 'mlflow.db'}"
    box = Outbox.create(root, run_id, run_id, uri)
    box.append(Request(1, "call", "log_epoch", (2, {"loss": 0.5}), {"timestamp": 1000}))
    box.append(Request(2, "close", "", ("FINISHED",), {}))
    if damage == "torn last line":
        with open(box.folder / "records.jsonl", "a") as out:
            out.write('{"seq": 3, "op": "call", "na')
    else:
        (box.folder / "run.json").write_text("")
    assert pending_records(root) == {run_id: 3 if damage == "torn last line" else 2}
    monkeypatch.setenv("CONVSCOPE_ROOT", str(root))
    assert cli(["info"]) == 0
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if "Not yet recorded" in ln]
    assert "2 records of 1 run(s) can be sent" in line
    torn = "1 damaged line(s) (a crash mid-write) cannot be" in line
    assert torn == (damage == "torn last line")
    assert (f"run.json damaged in {run_id}" in line) == (damage == "empty run.json")
    assert cli(["sync", "--root", str(root)]) == 0
    out = capsys.readouterr()
    assert f"run {run_id}: 2 records sent" in out.out
    [warning] = out.err.strip().splitlines()
    assert ("damaged record line" if damage == "torn last line" else "run.json") in warning
    history = sorted((m.step, m.value) for m in client_for(root).get_metric_history(run_id, "loss"))
    assert history == [(1, 1.0), (2, 0.5)]
    assert client_for(root).get_run(run_id).info.status == "FINISHED"
    assert not box.folder.exists()

"""Optuna sweeps (``-m hydra/sweeper=optuna``) on real, tiny trainings of train_scratch_lines.

One copy of the project serves the module; each study has its own name in the copy's
optuna.db, so the tests read their own trials.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from convscope.config import compose
from harness.project import PYTHON, copy_repo, git_init, run, subprocess_env
from tests.support.pipeline import repo_with_lines, script

pytestmark = pytest.mark.slow

STAGE = "train_scratch_lines"
SPACE = "scratch.mini_cnn.lr=tag(log, interval(1e-3, 1))"
BASE = ("-m", "hydra/sweeper=optuna", "experiment=smoke", "scratch.mini_cnn.epochs=4")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return repo_with_lines(tmp_path_factory.mktemp("optuna"))


def sweep(repo: Path, study: str, *overrides: str):
    return script(repo, STAGE, *BASE, f"hydra.sweeper.study_name={study}", *overrides)


def parent_id(stdout: str) -> str:
    line = next(ln for ln in stdout.splitlines() if "MLflow parent run" in ln)
    return line.split("MLflow parent run ")[1].split(";")[0]


def load(repo: Path, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{repo / 'optuna.db'}")


def client(repo: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def trial_runs(repo: Path, parent: str) -> dict[int, object]:
    c = client(repo)
    exp = c.get_run(parent).info.experiment_id
    found = c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")
    return {int(r.data.tags["convscope.trial"]): r for r in found}


@pytest.fixture(scope="module")
def pruned_study(repo):
    """Six trials, median pruner after three: the seed's proposals prune some of them."""
    done = sweep(
        repo,
        "pruning",
        SPACE,
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.sampler.seed=1",
        "hydra.sweeper.pruner.startup_trials=3",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return parent_id(done.stdout)


def test_pruned_trials_are_recorded_in_the_study_and_mlflow(repo, pruned_study):
    study = load(repo, "pruning")
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and len(complete) >= 3
    runs = trial_runs(repo, pruned_study)
    assert sorted(runs) == [t.number for t in study.trials]
    c = client(repo)
    for trial in pruned:
        stopped = max(trial.intermediate_values)
        assert stopped < 4
        run_ = runs[trial.number]
        assert run_.info.status == "FINISHED"
        assert run_.data.tags["convscope.trial_state"] == "PRUNED"
        assert run_.data.tags["convscope.trial_stopped_epoch"] == str(stopped)
        # its epochs stay in MLflow, up to the one it stopped at
        assert [m.step for m in c.get_metric_history(run_.info.run_id, "loss")] == list(
            range(1, stopped + 1)
        )
    for trial in complete:
        assert runs[trial.number].data.tags["convscope.trial_state"] == "COMPLETE"
        assert sorted(trial.intermediate_values) == [1, 2, 3, 4]

    parent = c.get_run(pruned_study)
    metrics = parent.data.metrics
    assert metrics["study_trials_pruned"] == len(pruned)
    assert metrics["study_trials_complete"] == len(complete)
    ran = sum(len(t.intermediate_values) for t in study.trials)
    assert (metrics["study_epochs_run"], metrics["study_epochs_full"]) == (ran, 6 * 4)
    assert metrics["study_best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["convscope.study_best_trial"] == str(study.best_trial.number)
    figures = {a.path for a in c.list_artifacts(pruned_study, "optuna")}
    assert {"optuna/optuna_history.png", "optuna/optuna_intermediate_values.png"} <= figures


def test_a_pruned_trial_writes_no_output(repo, pruned_study):
    study = load(repo, "pruning")
    runs = trial_runs(repo, pruned_study)
    sweep_dir = Path(client(repo).get_run(pruned_study).data.tags["convscope.sweep_dir"])
    for trial in study.trials:
        folder = sweep_dir / str(trial.number)
        written = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        written = {p for p in written if not p.startswith(".hydra/") and not p.endswith(".log")}
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert written == set(), runs[trial.number].info.run_id
        else:
            assert f"metrics/{STAGE}.json" in written and "models/scratch_lines.npz" in written


def test_the_same_seed_proposes_the_same_trials_in_the_same_order(repo, pruned_study):
    again = sweep(
        repo,
        "again",
        SPACE,
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=1",
        "hydra.sweeper.pruner.startup_trials=3",
        "tracking=none",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    first = [t.params for t in load(repo, "pruning").trials[:3]]
    assert [t.params for t in load(repo, "again").trials] == first


def test_trials_in_flight_report_from_the_launchers_worker_processes(repo):
    done = sweep(
        repo,
        "parallel",
        SPACE,
        "hydra/launcher=parallel",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=2",
        "tracking=none",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load(repo, "parallel").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(sorted(t.intermediate_values) == [1, 2, 3, 4] for t in trials)
    assert all(t.user_attrs["epochs_planned"] == 4 for t in trials)


def test_a_diverged_trial_fails_and_the_study_goes_on(repo):
    done = sweep(
        repo,
        "diverging",
        "scratch.mini_cnn.lr=choice(1e30,0.1)",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.sampler.name=random",
        "hydra.sweeper.sampler.seed=0",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load(repo, "diverging").trials
    assert len(trials) == 4
    states = {t.params["scratch.mini_cnn.lr"]: set() for t in trials}
    for t in trials:
        states[t.params["scratch.mini_cnn.lr"]].add(t.state.name)
    assert states == {1e30: {"FAIL"}, 0.1: {"COMPLETE"}}
    runs = trial_runs(repo, parent_id(done.stdout))
    for t in trials:
        assert runs[t.number].info.status == ("FAILED" if t.state.name == "FAIL" else "FINISHED")


def test_a_study_continues_under_its_name(repo):
    args = (SPACE, "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=5")
    assert sweep(repo, "resumed", *args).returncode == 0
    second = sweep(repo, "resumed", *args)
    assert second.returncode == 0, second.stderr[-3000:]
    trials = load(repo, "resumed").trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    # the continued study does not propose the first trials' values again
    assert trials[2].params != trials[0].params
    parent = client(repo).get_run(parent_id(second.stdout))
    counted = (
        parent.data.metrics["study_trials_complete"] + parent.data.metrics["study_trials_pruned"]
    )
    assert counted == 2  # this sweep's trials


def test_an_interrupted_study_fails_its_trial_in_flight_and_continues(repo):
    import signal
    import subprocess
    import time

    args = [PYTHON, f"pipelines/{STAGE}.py", *BASE, "hydra.sweeper.study_name=stopped", SPACE]
    long = [*args, "scratch.mini_cnn.epochs=100000", "hydra.sweeper.n_trials=3"]
    proc = subprocess.Popen(
        long, cwd=repo, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while True:  # until the first trial has reported an epoch
        assert time.monotonic() < deadline and proc.poll() is None
        try:
            trials = load(repo, "stopped").trials
        except KeyError:
            trials = []
        if trials and trials[0].intermediate_values:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    (trial,) = load(repo, "stopped").trials
    assert trial.state.name == "FAIL", (proc.returncode, err.decode()[-3000:])
    parent = client(repo).get_run(parent_id(out.decode()))
    assert parent.info.status == "KILLED"
    (child,) = trial_runs(repo, parent.info.run_id).values()
    assert child.info.status == "KILLED"

    again = script(repo, STAGE, *args[2:], "hydra.sweeper.n_trials=1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [t.state.name for t in load(repo, "stopped").trials][0] == "FAIL"
    assert len(load(repo, "stopped").trials) == 2


def test_adopt_writes_the_best_trial_as_a_preset_and_registers_its_model(repo, pruned_study):
    adopted = run(
        [PYTHON, "-m", "convscope.cli", "adopt", pruned_study, "--name", "lines_best"],
        cwd=repo,
        CONVSCOPE_PROJECT=str(repo),
    )
    assert adopted.returncode == 0, adopted.stderr
    preset = repo / "conf" / "experiment" / "lines_best.yaml"
    assert preset.read_text().startswith("# @package _global_\n")
    c = client(repo)
    overrides = json.loads(c.get_run(pruned_study).data.tags["convscope.study_best_overrides"])
    best = load(repo, "pruning").best_trial
    assert overrides == best.user_attrs["overrides"]
    from omegaconf import OmegaConf

    def composed(*args: str) -> dict:
        return OmegaConf.to_container(compose(list(args), config_dir=repo / "conf"), resolve=True)

    assert composed("experiment=lines_best") == composed(*overrides)
    assert (
        composed("experiment=lines_best")["scratch"]["mini_cnn"]["lr"]
        == best.params["scratch.mini_cnn.lr"]
    )
    version = c.get_model_version_by_alias(f"convscope-{STAGE}", "champion")
    assert version.run_id == trial_runs(repo, pruned_study)[best.number].info.run_id
    again = run(
        [PYTHON, "-m", "convscope.cli", "adopt", pruned_study, "--name", "lines_best"],
        cwd=repo,
        CONVSCOPE_PROJECT=str(repo),
    )
    assert again.returncode == 2 and "exists" in again.stderr


def test_dvc_repro_of_the_adopted_preset_rebuilds_the_trials_model(repo, pruned_study, tmp_path):
    """``convscope compose experiment=<preset> && dvc repro`` in another clone writes the best
    trial's model byte for byte."""
    preset = repo / "conf" / "experiment" / "lines_best.yaml"
    if not preset.exists():  # the adopt test made it; adopt again when run alone
        adopted = run(
            [PYTHON, "-m", "convscope.cli", "adopt", pruned_study, "--name", "lines_best",
             "--no-register"],
            cwd=repo, CONVSCOPE_PROJECT=str(repo),
        )  # fmt: skip
        assert adopted.returncode == 0, adopted.stderr
    clone = copy_repo(tmp_path / "clone")
    (clone / "conf" / "experiment" / "lines_best.yaml").write_bytes(preset.read_bytes())
    composed = run([PYTHON, "-m", "convscope.cli", "compose", "experiment=lines_best"], cwd=clone)
    assert composed.returncode == 0, composed.stderr
    git_init(clone)
    repro = run([str(Path(PYTHON).parent / "dvc"), "repro", STAGE], cwd=clone)
    assert repro.returncode == 0, repro.stdout + repro.stderr
    best = load(repo, "pruning").best_trial
    sweep_dir = Path(client(repo).get_run(pruned_study).data.tags["convscope.sweep_dir"])
    trial_model = sweep_dir / str(best.number) / "models" / "scratch_lines.npz"
    assert (clone / "models" / "scratch_lines.npz").read_bytes() == trial_model.read_bytes()


BAD = {
    "empty interval": ["scratch.mini_cnn.lr=interval(1, 0)"],
    "empty choice": ["scratch.mini_cnn.batch_size=choice()"],
    "unknown key": ["scratch.mini_cnn.nope=choice(1,2)"],
    "value the schema refuses": ["scratch.mini_cnn.batch_size=choice(0,2)"],
    "key the stage does not read": ["keras.filters=choice(4,8)"],
    "log interval from 0": ["scratch.mini_cnn.lr=tag(log, interval(0, 1))"],
    "no search space": [],
    "no trials": [SPACE, "hydra.sweeper.n_trials=0"],
    "unknown pruner": [SPACE, "hydra.sweeper.pruner=sometimes"],
    "unknown sampler": [SPACE, "hydra.sweeper.sampler.name=grid_of_luck"],
    "objective not recorded": [SPACE, "hydra.sweeper.objective=val_loss"],
    "unreachable storage": [SPACE, "hydra.sweeper.storage=postgresql://u@127.0.0.1:9/none"],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_exit_2_before_any_trial(repo, case):
    before = sorted((repo / "outputs").rglob("*")) if (repo / "outputs").exists() else []
    done = sweep(repo, f"bad-{case.replace(' ', '-')}", *BAD[case])
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convscope: error: "), done.stderr
    after = sorted((repo / "outputs").rglob("*")) if (repo / "outputs").exists() else []
    assert after == before  # no sweep folder, no parent run: nothing started

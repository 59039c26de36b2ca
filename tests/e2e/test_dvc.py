"""DVC end to end, in a throwaway copy of the repository with its own git history, offline.

One `dvc repro` of the whole graph with ``experiment=smoke`` (bundled MNIST, one epoch) is
shared by the tests below (module fixture): every declared out, metric and plot exists, the
MLflow store holds one FINISHED run per stage with its metrics and artifacts, a second
`dvc repro` does nothing, changing one param reruns exactly the stages that read it (and
what depends on their outputs), and `dvc exp run -S ...` (Hydra composition) runs an
experiment that `dvc exp show` lists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from convscope.files import load_arrays
from harness.project import PYTHON, copy_repo, git_init, run
from tests.support.pipeline import runs

pytestmark = pytest.mark.slow

DVC = [PYTHON, "-m", "dvc"]
RAN = re.compile(r"Running stage '([^']+)'")


def dvc(repo: Path, *args: str, timeout: float = 600):
    result = run([*DVC, *args], cwd=repo, timeout=timeout)
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def compose(repo: Path, *overrides: str) -> None:
    result = run([PYTHON, "-m", "convscope.cli", "compose", *overrides], cwd=repo)
    assert result.returncode == 0, result.stderr


def stages_ran(result) -> set[str]:
    return set(RAN.findall(result.stdout + result.stderr))


def load_stages(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]


def _paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def downstream(stages: dict, changed: set[str]) -> set[str]:
    """``changed`` and every stage that (transitively) depends on one of their outputs."""
    produced = {
        path: name
        for name, st in stages.items()
        for path in _paths(st.get("outs")) + _paths(st.get("metrics")) + _paths(st.get("plots"))
    }
    result = set(changed)
    grew = True
    while grew:
        grew = False
        for name, st in stages.items():
            if name in result:
                continue
            if any(produced.get(dep) in result for dep in _paths(st.get("deps"))):
                result.add(name)
                grew = True
    return result


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("dvc") / "repo")
    compose(repo, "experiment=smoke")
    git_init(repo)
    first = dvc(repo, "repro")
    return repo, first


def test_repro_runs_every_stage_and_writes_every_declared_file(repo):
    repo, first = repo
    stages = load_stages(repo)
    assert stages_ran(first) == set(stages)
    for name, st in stages.items():
        for rel in _paths(st.get("outs")) + _paths(st.get("metrics")) + _paths(st.get("plots")):
            assert (repo / rel).exists(), f"{name}: {rel} missing"
    # The pipeline ran on the bundled digits: offline, and said so in the data's metadata.
    assert read_arrays_meta(repo / "data/mnist.npz")["source"] == "bundled"
    header = (repo / "plots/train_keras.csv").read_text().splitlines()[0]
    assert header == "epoch,loss,accuracy,val_loss,val_accuracy"


def test_every_stage_has_one_finished_mlflow_run_with_metrics_and_artifacts(repo):
    repo, _ = repo
    from mlflow import MlflowClient

    stages = load_stages(repo)
    recorded = runs(repo / "mlflow.db")
    assert {r["status"] for r in recorded} == {"FINISHED"}
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    for name in stages:
        mine = [r for r in recorded if r["experiment"] == f"convscope/{name}"]
        assert len(mine) == 1, name
        run_ = client.get_run(mine[0]["run_id"])
        assert any(k.startswith("param.") for k in run_.data.tags), name  # the config
        assert run_.data.tags.get("convscope.stage") == name
        assert run_.data.tags["mlflow.source.name"] == f"pipelines/{name}.py"  # the entry point
        artifacts = {a.path for a in client.list_artifacts(run_.info.run_id)}
        assert "config.yaml" in artifacts, name
        stage_metrics = json.loads((repo / f"metrics/{name}.json").read_text())
        numeric = {k for k, v in stage_metrics.items() if isinstance(v, int | float)}
        assert numeric <= set(run_.data.metrics), name
    keras_run = client.get_run(
        next(r["run_id"] for r in recorded if r["experiment"] == "convscope/train_keras")
    )
    history = client.get_metric_history(keras_run.info.run_id, "val_loss")
    assert [m.step for m in history] == [1]  # one epoch, logged with its step
    assert "kernels" in {a.path for a in client.list_artifacts(keras_run.info.run_id)}
    # MLflow 3 keeps a logged model as its own entity, linked to the run that logged it.
    models = client.search_logged_models(
        [keras_run.info.experiment_id], filter_string=f"source_run_id='{keras_run.info.run_id}'"
    )
    assert len(models) == 1
    assert [o.model_id for o in keras_run.outputs.model_outputs] == [models[0].model_id]
    mlmodel = Path(models[0].artifact_location.removeprefix("file://")) / "MLmodel"
    assert "keras" in yaml.safe_load(mlmodel.read_text())["flavors"]
    assert keras_run.inputs.dataset_inputs  # the data, with its source and digest
    engine_run = next(r for r in recorded if r["experiment"] == "convscope/train_scratch_mnist")
    assert "model" in {a.path for a in client.list_artifacts(engine_run["run_id"])}


def test_runs_are_linked_to_the_files_they_made_by_md5(repo):
    """Each stage run carries the md5 dvc.lock records for its outs; visuals finds its sources."""
    repo, _ = repo
    from mlflow import MlflowClient

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    recorded = runs(repo / "mlflow.db")

    def latest(stage):
        mine = [r for r in recorded if r["experiment"] == f"convscope/{stage}"]
        return client.get_run(mine[0]["run_id"]) if len(mine) == 1 else None

    keras_run = latest("train_keras")
    for out in lock["train_keras"]["outs"]:
        assert keras_run.data.tags[f"convscope.md5.{out['path']}"] == out["md5"]
    tags = latest("visuals").data.tags
    assert tags["convscope.input_run.keras"] == keras_run.info.run_id
    for label, stage in (
        ("scratch_mnist", "train_scratch_mnist"),
        ("scratch_lines", "train_scratch_lines"),
    ):
        assert tags[f"convscope.input_run.{label}"] == latest(stage).info.run_id


def test_second_repro_does_nothing(repo):
    repo, _ = repo
    before = len(runs(repo / "mlflow.db"))
    again = dvc(repo, "repro")
    assert stages_ran(again) == set()
    assert len(runs(repo / "mlflow.db")) == before


def test_changing_one_param_reruns_only_the_stages_that_read_it(repo):
    repo, _ = repo
    compose(repo, "experiment=smoke", "scratch.mini_cnn.epochs=2")
    result = dvc(repo, "repro")
    expected = downstream(load_stages(repo), {"train_scratch_lines"})
    assert stages_ran(result) == expected
    plotted = (repo / "plots/train_scratch_lines.csv").read_text().splitlines()
    assert len(plotted) == 1 + 2  # header and one row per epoch


def test_dvc_exp_run_recomposes_params_with_hydra(repo):
    """``dvc exp run -S`` recomposes params.yaml from conf/ (Hydra) with its overrides, reruns
    the stages that read the changed value and what depends on them (here: the walkthrough
    without padding, whose 3x3 map pools to one cell, and the figures), and `dvc exp show`
    lists the experiment with its own metrics; its runs carry its name."""
    repo, _ = repo
    # -S recomposes params.yaml from conf/ with these overrides only, so keep the preset.
    result = dvc(
        repo, "exp", "run", "-S", "experiment=smoke", "-S", "scratch.walkthrough.padding=0"
    )
    expected = downstream(load_stages(repo), {"walkthrough"})
    # the preset also sets scratch.mini_cnn.epochs back from the previous test's 2 to 3: DVC
    # reruns that stage unless its run cache can restore every out
    restored = downstream(load_stages(repo), {"train_scratch_lines"})
    assert expected <= stages_ran(result) <= expected | restored
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["scratch"]["walkthrough"]["padding"] == 0
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    exps = [e for entry in shown for e in (entry.get("experiments") or [])]
    revs = [run_["data"] for e in exps for run_ in e.get("revs") or []]
    mine = [
        r for r in revs
        if r["params"]["params.yaml"]["data"]["scratch"]["walkthrough"]["padding"] == 0
    ]  # fmt: skip
    assert len(mine) == 1
    # ...with the experiment's own metrics (read from git: metrics/ is not ignored).
    walked = mine[0]["metrics"]["metrics/walkthrough.json"]["data"]
    assert walked == json.loads((repo / "metrics/walkthrough.json").read_text())
    assert walked["pooled_sum"] == 30.0  # the one cell left of the seed's map without padding
    walk_runs = [r for r in runs(repo / "mlflow.db") if r["experiment"] == "convscope/walkthrough"]
    assert [r["status"] for r in walk_runs] == ["FINISHED", "FINISHED"]
    # the experiment's runs name it, in a tag and first in their names
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    tags = [client.get_run(r["run_id"]).data.tags for r in walk_runs]
    [exp_name] = [t["dvc.exp_name"] for t in tags if "dvc.exp_name" in t]
    [named] = [r["name"] for r in walk_runs if r["name"].startswith(f"{exp_name} · ")]
    assert "walkthrough" in named


def test_a_queued_experiment_is_recorded_by_its_own_copy_and_named(repo):
    """``dvc exp run --queue`` runs in a temporary copy of the repository: its run lands in the
    original's store, carries the experiment's name and leads its run name with it; the params
    DVC wrote for it (``-S``) do not make its code dirty."""
    repo, _ = repo
    before = {r["run_id"] for r in runs(repo / "mlflow.db")}
    dvc(repo, "exp", "run", "--queue", "--name", "queued-one", "-S", "experiment=smoke",
        "-S", "data.lines.n_samples=24", "lines")  # fmt: skip
    dvc(repo, "exp", "run", "--run-all")
    made = [r for r in runs(repo / "mlflow.db") if r["run_id"] not in before]
    assert [(r["experiment"], r["status"]) for r in made] == [("convscope/lines", "FINISHED")]
    assert made[0]["name"].startswith("queued-one · lines")
    from mlflow import MlflowClient

    tags = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_run(made[0]["run_id"]).data.tags
    assert tags["dvc.exp_name"] == "queued-one"
    assert tags["mlflow.source.name"] == "pipelines/lines.py"
    assert tags["convscope.git_dirty"] == "false", tags.get("convscope.git_changes")


def test_git_dirty_means_code_conf_or_params_not_the_pipelines_outputs(repo):
    """With the outputs committed, a stage rerun while its outputs are rewritten (here: one
    of them edited) records a clean tree; an edit to the code it runs records a dirty one."""
    repo, _ = repo
    from mlflow import MlflowClient

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@invalid"]
    for cmd in ([*git, "add", "-A"], [*git, "commit", "-qm", "outputs"]):
        run_ = run(cmd, cwd=repo)
        assert run_.returncode == 0, run_.stderr
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")

    def latest_lines_run():
        mine = [r for r in runs(repo / "mlflow.db") if r["experiment"] == "convscope/lines"]
        found = [client.get_run(r["run_id"]) for r in mine]
        return max(found, key=lambda r: r.info.start_time)

    metrics = repo / "metrics/lines.json"
    metrics.write_text(metrics.read_text() + "\n")  # an output differs from HEAD
    dvc(repo, "repro", "-f", "lines")
    assert latest_lines_run().data.tags["convscope.git_dirty"] == "false"
    code = repo / "src/convscope/stages/lines.py"
    code.write_text(code.read_text() + "\n# an edit\n")
    dvc(repo, "repro", "lines")
    tags = latest_lines_run().data.tags
    assert tags["convscope.git_dirty"] == "true"
    assert tags["convscope.git_changes"] == "src/convscope/stages/lines.py"
    assert (
        tags["convscope.git_commit"] == run(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip()
    )


def test_dvc_plots_render(repo, tmp_path):
    repo, _ = repo
    dvc(repo, "plots", "show", "-o", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").is_file()


def read_arrays_meta(path):
    """The metadata a prepared dataset records (:func:`convscope.files.load_arrays`)."""
    return load_arrays(path)[1]

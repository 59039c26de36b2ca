"""What real stage processes show: each run records the keys its stage reads and the data it
really used, TensorFlow prints no C++ line at start-up, and a smoke sweep reads the smoke data
quietly and names its parent run last."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.project import PYTHON, copy_repo, run, subprocess_env
from tests.support.pipeline import UNTRACKED, pipeline_stage, script, subtree_keys


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("views") / "repo")


def _params(repo: Path, stage: str) -> tuple[dict[str, str], dict[str, str]]:
    """The config values the stage's latest run recorded (tags ``param.<key>``; no MLflow
    params at all) and its tags."""
    from mlflow import MlflowClient

    from convscope.tracking.store import run_params

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    (run_,) = client.search_runs(
        [client.get_experiment_by_name(f"convscope/{stage}").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert run_.data.params == {}  # see TAG_PARAM_PREFIX: nothing above the kernel images
    return run_params({}, run_.data.tags), run_.data.tags


def test_runs_log_their_stage_params_and_the_data_they_really_used(repo):
    """lines made data/lines.npz with 100 images; train_scratch_lines run with the smoke
    preset (which asks for 20) trains on the file's first 20, which are the 20 the preset's
    data would hold, records those and says nothing. A file with fewer images than the
    config asks for is used as it is, recorded as it is, and warned about."""
    from convscope.data.lines import make_dataset
    from convscope.files import sha256_arrays

    made = pipeline_stage(repo, "lines", "data.lines.n_samples=100")
    assert made.returncode == 0, made.stderr
    params_yaml = yaml.safe_load((repo / "params.yaml").read_text())
    logged, _ = _params(repo, "lines")
    assert set(logged) == subtree_keys(params_yaml, ["data.lines"])

    trained = script(repo, "train_scratch_lines", "experiment=smoke")
    assert trained.returncode == 0, trained.stderr
    assert "was made with" not in trained.stdout + trained.stderr
    logged, tags = _params(repo, "train_scratch_lines")
    config_keys = subtree_keys(params_yaml, ["scratch.mini_cnn"])
    assert config_keys <= set(logged)
    data = {k: v for k, v in logged.items() if k not in config_keys}
    assert data["data.lines.n_samples"] == "20"  # the preset's data, read off the file
    assert data["data.lines.sha256"] == sha256_arrays(*make_dataset(20))
    assert all(k.startswith("data.lines.") for k in data)
    assert "convscope.warning" not in tags

    made = pipeline_stage(repo, "lines", "data.lines.n_samples=10")
    assert made.returncode == 0, made.stderr
    trained = script(repo, "train_scratch_lines")  # the default config asks for 100
    assert trained.returncode == 0, trained.stderr
    logged, tags = _params(repo, "train_scratch_lines")
    assert logged["data.lines.n_samples"] == "10"  # what the file holds, not the config's
    assert "n_samples=10 (config: 100)" in tags["convscope.warning"]
    assert "n_samples=10 (config: 100)" in trained.stdout + trained.stderr

    refused = script(repo, "train_scratch_lines", "data.lines.n_samples=8")
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "data.lines.n_samples=8 is not read by stage train_scratch_lines" in line


def test_tensorflow_start_up_prints_no_cpp_log_lines(tmp_path):
    env = subprocess_env()
    assert "TF_CPP_MIN_LOG_LEVEL" not in env  # however the stage is started: no outside setting
    code = (
        "import numpy as np, convscope.keras_cnn, keras, sys\n"
        "m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])\n"
        "m.compile('adam', 'mse'); m.fit(np.zeros((8, 4)), np.zeros((8, 2)), verbose=0)\n"
        "print('python line', file=sys.stderr)\n"
    )
    done = subprocess.run(
        [PYTHON, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["python line"], done.stderr


@pytest.mark.slow
def test_a_smoke_sweep_reads_the_smoke_data_quietly_and_names_its_parent_last(tmp_path):
    """data/*.npz made by the default pipeline (all 4,000 training digits, 100 lines); a
    sweep on the smoke preset trains each job on the preset's data, the first 600 digits,
    without a warning, and its last line names the parent run `convscope compare -p`
    needs."""
    from mlflow import MlflowClient

    from convscope.tracking.store import run_params

    repo = copy_repo(tmp_path / "repo")
    for stage in ("mnist", "lines"):  # params.yaml as committed: the default config
        args = ["--config-dir", ".", "--config-name", "params", UNTRACKED]
        made = run([PYTHON, f"pipelines/{stage}.py", *args], cwd=repo)
        assert made.returncode == 0, made.stderr
    swept = script(repo, "train_keras", "-m", "experiment=smoke", "seed=1,2")
    assert swept.returncode == 0, swept.stderr
    said = swept.stdout + swept.stderr
    assert "was made with" not in said, said
    last = swept.stdout.strip().splitlines()[-1]
    match = re.fullmatch(
        r"sweep finished: MLflow parent run ([0-9a-f]{32}); .*compare -p \1`", last
    )
    assert match, last
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    parent = client.get_run(match.group(1))
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == 2
    for child in children:
        recorded = run_params({}, child.data.tags)
        assert (
            recorded["data.mnist.n_train"] == "600" and recorded["data.mnist.limit_train"] == "600"
        )
        assert "convscope.warning" not in child.data.tags

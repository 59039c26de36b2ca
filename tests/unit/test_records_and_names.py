"""What a run records and how it is named, decided in process: each stage's params are exactly
its dvc.yaml keys, an override a stage does not read is found, run names and end lines, help
texts, and the filter that keeps TensorFlow's C++ lines off the console."""

from __future__ import annotations

import pytest
import yaml

from convscope.config import compose
from convscope.paths import project_root
from convscope.stage_keys import dvc_params, unread_overrides
from convscope.tracking.store import flatten_params
from tests.support.pipeline import subtree_keys

ROOT = project_root()
STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_records_exactly_its_dvc_params(stage):
    from omegaconf import OmegaConf

    from convscope.runner import _stage_params

    prefixes = dvc_params(stage, ROOT)
    assert prefixes, f"dvc.yaml lists no params for {stage}"
    cfg = compose([])
    logged = set(flatten_params(_stage_params(stage, cfg, [])))
    assert logged == subtree_keys(OmegaConf.to_container(cfg, resolve=True), prefixes)
    assert len(logged) < 30  # not the whole config


def test_an_override_a_stage_does_not_read_is_found():
    from omegaconf import OmegaConf

    unresolved = OmegaConf.to_container(compose([]), resolve=False)
    groups = ["data", "keras", "scratch", "experiment", "viz", "tracking"]
    check = dict(unresolved=unresolved, groups=groups)
    # train_keras reads keras.*; the data comes from data/mnist.npz
    bad = ["data.mnist.limit_train=600"]
    assert unread_overrides([*bad, "keras.epochs=1"], prefixes=["keras"], **check) == bad
    # read through interpolation: scratch.mnist_cnn.* = ${keras.*}, keras.seed = ${seed}
    assert (
        unread_overrides(["keras.epochs=2", "seed=3"], prefixes=["scratch.mnist_cnn"], **check)
        == []
    )
    # presets, tracking and Hydra's own keys are not a stage's data
    fine = ["experiment=smoke", "tracking.log_models=false", "hydra.job.chdir=false"]
    assert unread_overrides(fine, prefixes=["keras"], **check) == []


def test_native_log_filter_keeps_other_lines():
    from convscope.native_logs import is_native_log_line

    info = "I0000 00:00:1796205754.659774    3439 port.cc:153] oneDNN custom operations are on."
    error = "E0000 00:00:1796205765.814048    3439 cuda_platform.cc:52] failed call to cuInit"
    assert is_native_log_line(info, 1) and is_native_log_line(error, 3)
    assert not is_native_log_line(error, 2) and not is_native_log_line(info, 0)
    assert not is_native_log_line("Traceback (most recent call last):", 3)


def test_stage_end_line_names_the_run_page_on_a_server():
    from types import SimpleNamespace

    from convscope.runner import _run_note
    from convscope.tracking import NullRun

    local = SimpleNamespace(run_id="abc", tracking_uri="sqlite:////x/mlflow.db", experiment_id="1")
    server = SimpleNamespace(run_id="abc", tracking_uri="http://127.0.0.1:5000/", experiment_id="1")
    assert _run_note(local) == "; MLflow run abc"
    page = "http://127.0.0.1:5000/#/experiments/1/runs/abc/model-metrics"
    assert _run_note(server) == f"; MLflow run abc ({page}?workflowType=machine_learning)"
    assert _run_note(NullRun()) == ""  # tracking=none


def test_run_names_lead_with_what_differs():
    from convscope.tracking.hydra_callbacks import job_run_name

    assert job_run_name("train_keras", ["keras.epochs=1"], None) == "train_keras · keras.epochs=1"
    assert job_run_name("train_keras", [], None) == "train_keras"
    swept = job_run_name("train_keras", ["experiment=smoke", "keras.filters=8"], {"keras.filters"})
    assert swept == "keras.filters=8 · train_keras · experiment=smoke"


def test_help_says_each_default_and_info_lists_every_report(capsys):
    from convscope.cli import OUTPUTS, main

    for command, expected in (("ui", "default: 5000"), ("compare", "reports/compare.html")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert expected in " ".join(capsys.readouterr().out.split())
    listed = [name for name, _ in OUTPUTS]
    assert "reports/interpret/" in listed and "reports/compare.html" in listed

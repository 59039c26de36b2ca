"""The ``interpret`` stage: its figures, its self-check, and the whole stage on the smoke preset.

The stage runs as DVC runs it (``--config-name params``) in a copy of the repository whose
inputs the smoke preset's upstream stages made; bad config values fail in one line and leave
the pipeline's files as they were.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from convscope.stages.interpret import TOLERANCE, check_agreement, check_choices, pick_images
from convscope.viz.core import DIVERGING, SEQUENTIAL, png_bytes
from convscope.viz.interpret import attribution_plot, maximisation_plot, orientation_plot
from harness.project import copy_repo
from tests.support.pipeline import UNTRACKED, pipeline_stage

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- fast checks
def test_agreement_check_fails_in_one_line_above_the_tolerance():
    ok = {"saliency": 2e-7, "grad_cam": TOLERANCE}
    assert check_agreement(ok) == ok
    for bad in ({"saliency": 3e-4, "grad_cam": 1e-7}, {"saliency": 1e-7, "grad_cam": math.nan}):
        with pytest.raises(ValueError, match="differ") as info:
            check_agreement(bad)
        assert "\n" not in str(info.value)
        assert [k for k in bad if k in str(info.value)] == [k for k, v in bad.items() if v != 1e-7]


def test_images_are_the_requested_then_one_per_class_each_once():
    labels = np.array([3, 1, 3, 0, 1, 2])
    assert pick_images([5], labels) == ([5, 3, 1, 0], ["#5: 2", "#3: 0", "#1: 1", "#0: 3"])
    assert pick_images([0, 2], labels)[0] == [0, 2, 3, 1, 5]
    with pytest.raises(ValueError, match=r"viz.images=\[6\] is not allowed"):
        pick_images([6], labels)


class Choices:
    def __init__(self, grad_cam_layer=None, layers=None, filters=None):
        self.grad_cam_layer, self.layers, self.filters = grad_cam_layer, layers, filters


def test_layer_and_filter_choices_are_checked_against_the_model():
    conv, names = {"conv1": 4, "conv2": 8}, ["conv1", "pool1", "conv2", "flatten", "dense"]
    assert check_choices(Choices(), names, conv) == (
        "conv2",
        {"conv1": [0, 1, 2, 3], "conv2": list(range(8))},
    )
    assert check_choices(Choices("conv1", ["conv2"], [7, 0]), names, conv) == (
        "conv1",
        {"conv2": [7, 0]},
    )
    for choices, message in (
        (Choices("pool1"), r"interpret.grad_cam_layer='pool1' is not allowed"),
        (Choices(layers=["conv3"]), r"interpret.layers=\['conv3'\] is not allowed"),
        (
            Choices(filters=[4]),
            r"interpret.filters=\[4\] is not allowed: \[4\] out of range for conv1",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            check_choices(choices, names, conv)


def test_figures_follow_the_colour_conventions_and_repeat_byte_for_byte():
    images = RNG.random((3, 6, 6, 1))
    maps = RNG.random((3, 6, 6)) * [[[1.0]], [[100.0]], [[0.0]]]  # scales far apart, one blank
    inputs, selectivity = RNG.normal(size=(5, 6, 6, 1)), np.tanh(RNG.normal(size=(4, 2)))
    plots = [
        lambda: attribution_plot(images, maps, ["a", "b", "c"], "saliency", "t"),
        lambda: maximisation_plot(inputs, "conv1", "engine"),
        lambda: orientation_plot(selectivity, "conv"),
    ]
    first = [p() for p in plots]
    assert [p.cmap for p in first] == [SEQUENTIAL, DIVERGING, DIVERGING]
    # attributions: each map on its own maximum, one 0..1 scale
    assert (first[0].vmin, first[0].vmax) == (0.0, 1.0) and first[0].grid == (1, 3)
    assert first[0].extra == {"all_zero": ["c"]}  # the blank map's panel says so
    assert first[1].vmin == -first[1].vmax and first[1].grid == (2, 3)
    assert (first[2].vmin, first[2].vmax) == (-1.0, 1.0)
    again = [png_bytes(p()) for p in plots]
    assert [png_bytes(p) for p in first] == again


# --------------------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("interpret") / "repo")
    # train_scratch_lines's run is read below; the others' runs are not the subject here
    for stage, tracked in (("lines", False), ("mnist", False), ("train_scratch_lines", True),
                           ("train_keras", False)):  # fmt: skip
        result = pipeline_stage(repo, stage, *([] if tracked else [UNTRACKED]))
        assert result.returncode == 0, result.stderr
    return repo


def digests(repo, *folders):
    return {
        str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted((repo / folder).rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_stage_explains_both_networks_checks_them_and_logs_everything(repo):
    from mlflow import MlflowClient

    from convscope.files import load_arrays
    from convscope.viz.manifest import load_manifest, verify_manifest

    result = pipeline_stage(repo, "interpret")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((repo / "metrics/interpret.json").read_text())
    assert 0 <= metrics["saliency_rel_diff"] <= TOLERANCE
    assert 0 <= metrics["grad_cam_rel_diff"] <= TOLERANCE
    # only what the run measured: no constants, no timings
    assert set(metrics) == {
        "saliency_rel_diff",
        "grad_cam_rel_diff",
        "activation_maximisation_rel_diff",
        "orientation_final",
    }

    manifest = repo / "reports/interpret/manifest.json"
    assert verify_manifest(manifest, repo) == []
    kinds = {(r.model, r.kind, r.layer) for r in load_manifest(manifest)}
    for model in ("keras", "engine"):
        assert {(model, "saliency", None), (model, "grad_cam", "conv2")} <= kinds
        assert {(model, "activation_maximisation", f"conv{i}") for i in (1, 2)} <= kinds
    assert ("scratch_lines", "orientation", "conv") in kinds
    assert len(kinds) == 9

    arrays, meta = load_arrays(repo / "reports/interpret.npz")
    assert arrays["keras_saliency"].shape == arrays["engine_grad_cam"].shape[:1] + (28, 28)
    assert arrays["engine_maximisation_conv2"].shape == (32, 28, 28, 1)
    assert arrays["scratch_lines_orientation"].shape == (3 + 1, 1)  # smoke: 3 epochs, 1 filter
    assert meta["grad_cam_layer"] == "conv2"

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("convscope/interpret")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    logged = {
        a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, "interpret")
    }
    on_disk = {p.name for p in (repo / "reports/interpret").iterdir()} | {"interpret.npz"}
    assert logged == on_disk
    assert run.data.metrics["grad_cam_rel_diff"] == metrics["grad_cam_rel_diff"]
    tags = run.data.tags
    assert float(tags["interpret.tolerance"]) == TOLERANCE
    assert tags["interpret.images"] == "10"  # [0], then each other digit once
    assert tags["interpret.filters_maximised"] == str(16 + 32)
    assert tags["interpret.figures"] == "9"
    assert run.data.tags["param.interpret.steps"] == "4"  # smoke preset

    # the same inputs give the same bytes: DVC sees no change on a rerun
    before = digests(repo, "reports", "metrics")
    again = pipeline_stage(repo, "interpret")
    assert again.returncode == 0, again.stderr
    assert digests(repo, "reports", "metrics") == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, message",
    [
        ("interpret.grad_cam_layer=dense", "interpret.grad_cam_layer='dense' is not allowed"),
        ("interpret.layers=[conv9]", "interpret.layers=['conv9'] is not allowed"),
        ("interpret.filters=[0,16]", "interpret.filters=[0, 16] is not allowed: [16] out of range"),
    ],
)
def test_unknown_layer_or_filter_out_of_range_is_one_line_and_writes_nothing(
    repo, override, message
):
    before = digests(repo, "reports", "metrics")
    result = pipeline_stage(repo, "interpret", override)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("convscope: error: interpret: ") and message in lines[-1]
    assert "Traceback" not in result.stderr
    assert digests(repo, "reports", "metrics") == before


# --------------------------------------------------------------------------- the seed exercise
def test_detector_epoch_is_where_the_best_filter_stays_vertical():
    from convscope.stages.train_scratch_lines import detector_epoch

    curve = [np.array([v]) for v in (-0.1, 0.6, 0.4, 0.7, 0.9)]
    assert detector_epoch(curve) == 3  # 0.6 at epoch 1 did not last
    assert detector_epoch([np.array([0.2, 0.8])]) == 0
    assert detector_epoch(curve[:3]) is None


@pytest.mark.slow
def test_lines_training_records_orientation_per_epoch(repo):
    import csv

    from mlflow import MlflowClient

    rows = list(csv.DictReader((repo / "plots/train_scratch_lines_orientation.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]  # smoke: 3 epochs, 0 untrained
    assert all(-1 <= float(r["orientation_f0"]) <= 1 for r in rows)
    metrics = json.loads((repo / "metrics/train_scratch_lines.json").read_text())
    assert metrics["orientation_final"] == pytest.approx(float(rows[-1]["orientation_f0"]))

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("convscope/train_scratch_lines")
    (run,) = client.search_runs([exp.experiment_id])
    history = client.get_metric_history(run.info.run_id, "orientation_f0")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]  # 0: before training
    by_step = {m.step: m.value for m in history}
    assert [by_step[e] for e in (0, 1, 2, 3)] == pytest.approx(
        [float(r["orientation_f0"]) for r in rows]
    )

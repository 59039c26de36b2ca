"""Filter stability across runs: the measures themselves, then a real sweep's parent run and
``convscope compare`` on its children."""

from __future__ import annotations

import numpy as np
import pytest

from convscope.compare.stability import layer_stability, stability_metrics
from convscope.paths import PROJECT_ENV, TRACKING_ROOT_ENV
from harness.project import PYTHON, run
from tests.support.pipeline import repo_with_lines, script

RNG = np.random.default_rng(0)


def test_permuted_filters_and_rotated_representations_are_perfectly_stable():
    kernel = RNG.normal(size=(3, 3, 1, 6))
    acts = RNG.normal(size=(40, 5, 5, 6))
    rotation, _ = np.linalg.qr(RNG.normal(size=(150, 150)))
    runs_kernels = [{"conv1": kernel}, {"conv1": 2.0 * kernel[..., RNG.permutation(6)]}]
    runs_acts = [{"conv1": acts}, {"conv1": acts.reshape(40, -1) @ rotation}]
    s = layer_stability(runs_kernels, runs_acts)["conv1"]
    assert s["filter_cosine"] == pytest.approx(1.0)
    assert s["cka"] == pytest.approx(1.0)
    assert s["pairs"] == 1


def test_unrelated_runs_differing_widths_and_shapes():
    a, b, c = (
        {"conv1": RNG.normal(size=(3, 3, 1, 8)), "conv2": RNG.normal(size=(3, 3, 8, 4))},
        {"conv1": RNG.normal(size=(3, 3, 1, 8)), "conv2": RNG.normal(size=(3, 3, 8, 4))},
        {"conv1": RNG.normal(size=(3, 3, 1, 16)), "conv2": RNG.normal(size=(3, 3, 16, 4))},
    )
    acts = [{"conv1": RNG.normal(size=(200, 30))} for _ in range(3)]
    s = layer_stability([a, b, c], acts)
    assert s["conv1"]["pairs"] == 3
    # random 9-dimensional filters, best matched: clearly below 1; random features: CKA low
    assert 0 < s["conv1"]["filter_cosine"] < 0.9
    assert s["conv1"]["cka"] < 0.3
    # conv2's inputs differ in width with c, so only the a-b pair is matched; no activations
    assert s["conv2"]["cka"] is None and s["conv2"]["filter_cosine"] is not None
    assert layer_stability([a]) == {}
    assert stability_metrics(s) == {
        "stability_cka_conv1": s["conv1"]["cka"],
        "stability_filter_cosine_conv1": s["conv1"]["filter_cosine"],
        "stability_filter_cosine_conv2": s["conv2"]["filter_cosine"],
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return repo_with_lines(tmp_path_factory.mktemp("stability"))


def sweep_parents(repo, stage):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"convscope/{stage}")
    return client.search_runs([exp.experiment_id], "tags.`convscope.role` = 'sweep'")


@pytest.mark.slow
def test_seed_sweep_parent_and_compare_report_carry_filter_stability(repo):
    result = script(repo, "train_scratch_lines", "-m", "seed=0,1,2", "scratch.mini_cnn.epochs=2")
    assert result.returncode == 0, result.stderr
    (parent,) = sweep_parents(repo, "train_scratch_lines")
    assert parent.info.status == "FINISHED"
    m = parent.data.metrics
    assert set(m) == {"stability_cka_conv", "stability_filter_cosine_conv"}
    assert 0 < m["stability_cka_conv"] <= 1 + 1e-9
    assert -1 <= m["stability_filter_cosine_conv"] <= 1

    # the report reads the runs and the fixed images of the copy, like the sweep's callback
    out = run(
        [PYTHON, "-m", "convscope.cli", "compare", "--parent", parent.info.run_id, "-o", "c.html"],
        cwd=repo,
        **{PROJECT_ENV: str(repo), TRACKING_ROOT_ENV: str(repo)},
    )
    assert out.returncode == 0, out.stderr
    html = (repo / "c.html").read_text()
    assert "Filter stability across the runs" in html
    row = html[html.index('<td class="text">conv</td>') :].split("</tr>")[0]
    assert f"{m['stability_cka_conv']:.4g}" in row and "<td>3</td>" in row


@pytest.mark.slow
def test_a_sweep_of_a_stage_without_kernels_ends_without_stability(repo):
    result = script(repo, "lines", "-m", "data.lines.n_samples=10,12")
    assert result.returncode == 0, result.stderr
    (parent,) = sweep_parents(repo, "lines")
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics == {}

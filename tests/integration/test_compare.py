"""``convscope compare``: filter matching, run selection, the HTML report and the CLI.

The runs are real: created in a temporary SQLite store through the tracking module (metrics
per epoch, kernels as .npy artifacts after every epoch), then read back by ``compare``.
"""

from __future__ import annotations

import base64
import io
import itertools
import re

import numpy as np
import pytest

from convscope.compare import (
    CompareError,
    EmptySelectionError,
    compare,
    match_filters,
    reorder,
)

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- matching


def test_permuted_copy_is_matched_back_exactly():
    ref = RNG.normal(size=(3, 3, 2, 9))
    perm = RNG.permutation(9)
    m = match_filters(ref, ref[..., perm])
    np.testing.assert_array_equal(ref[..., perm][..., m.order], ref)
    np.testing.assert_allclose(m.similarity, 1.0)
    assert m.matched and m.note == ""
    # scale does not matter to cosine similarity; small noise does not change the pairing
    noisy = 3.0 * ref[..., perm] + RNG.normal(scale=0.01, size=ref.shape)
    np.testing.assert_array_equal(match_filters(ref, noisy).order, np.argsort(perm))


def test_matching_maximises_total_similarity_like_brute_force():
    for _ in range(5):
        a, b = RNG.normal(size=(3, 3, 1, 6)), RNG.normal(size=(3, 3, 1, 6))
        fa, fb = a.reshape(-1, 6).T, b.reshape(-1, 6).T
        cos = (fa / np.linalg.norm(fa, axis=1, keepdims=True)) @ (
            fb / np.linalg.norm(fb, axis=1, keepdims=True)
        ).T
        best = max(itertools.permutations(range(6)), key=lambda p: cos[range(6), p].sum())
        m = match_filters(a, b)
        assert m.similarity.sum() == pytest.approx(cos[range(6), best].sum())


def test_more_fewer_and_differently_shaped_filters():
    ref = RNG.normal(size=(3, 3, 1, 6))
    fewer = ref[..., [4, 0, 2, 5]]
    m = match_filters(ref, fewer)
    assert m.order.tolist() == [1, -1, 2, -1, 0, 3] and "blank" in m.note
    shown = reorder(fewer, m)
    assert np.isnan(shown[..., 1]).all()
    np.testing.assert_array_equal(shown[..., 4], ref[..., 4])
    more = np.concatenate([ref[..., ::-1], RNG.normal(size=(3, 3, 1, 2))], axis=-1)
    m = match_filters(ref, more)
    assert m.order[:6].tolist() == [5, 4, 3, 2, 1, 0]
    assert sorted(m.order[6:].tolist()) == [6, 7] and np.isnan(m.similarity[6:]).all()
    m = match_filters(ref, RNG.normal(size=(5, 5, 1, 6)))
    assert not m.matched and m.order.tolist() == list(range(6)) and "differs" in m.note
    # the lines mini-CNN logs its one filter as a 2-D (3, 3) array
    assert match_filters(ref[..., 0, 0], ref[..., 0, 0]).order.tolist() == [0]


# --------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three runs (+ a sweep parent) in one SQLite store.

    A: kernels K; B: K with its filters permuted (child of the parent P); C: other kernels,
    more filters in the config. A is also a child of P. Every run logs 3 epochs.
    """
    import os

    from convscope.tracking import start_run
    from convscope.tracking.hydra_callbacks import open_sweep
    from convscope.tracking.store import PARENT_ENV

    for name in ("CONVSCOPE_ROOT", "DVC_ROOT", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        os.environ.pop(name, None)
    root = tmp_path_factory.mktemp("compare")
    (root / "dvc.yaml").write_text("stages: {}\n")
    cfg = {"backend": "local", "experiment_prefix": "t"}
    k = RNG.normal(size=(3, 3, 1, 8))
    perm = RNG.permutation(8)
    kernels = {"A": k, "B": k[..., perm], "C": RNG.normal(size=(3, 3, 1, 8))}
    sweep = root / "sweep"
    sweep.mkdir()
    parent = open_sweep(cfg, "train_keras", sweep, ["keras.filters=8,16"], root)
    os.environ.pop(PARENT_ENV)  # the jobs find it through the sweep folder
    ids = {}
    for name, kern in kernels.items():
        filters = 16 if name == "C" else 8
        with start_run(
            cfg,
            "train_keras",
            {"keras": {"filters": filters, "lr": 0.001}, "seed": 0},
            [f"keras.filters={filters}"],
            root=root,
            sweep_dir=sweep if name != "C" else None,
            run_name=f"run {name}",
        ) as run:
            for epoch in range(4):
                if epoch:
                    loss = {"A": 1.0, "B": 1.2, "C": 2.0}[name] / epoch
                    run.log_epoch(epoch, {"loss": loss, "val_loss": loss * 1.1, "accuracy": 0.5})
                snap = kern * (epoch + 1) / 4
                run.log_kernels(epoch, {"conv1": snap, "conv2": RNG.normal(size=(3, 3, 8, 4))})
            run.log_metrics({"test_accuracy": {"A": 0.9, "B": 0.8, "C": 0.7}[name]})
        ids[name] = run.run_id
    return {
        "root": root,
        "uri": f"sqlite:///{root / 'mlflow.db'}",
        "ids": ids,
        "parent": parent,
        "kernels": kernels,
        "perm": perm,
    }


def _images(text: str) -> list[bytes]:
    return [
        base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    ]


def test_compare_three_runs_lines_up_the_permuted_copy(store):
    from PIL import Image

    ids = store["ids"]
    report = compare(
        run_ids=[ids["A"], ids["B"], ids["C"]],
        out="reports/cmp.html",
        root=store["root"],
        tracking_uri=store["uri"],
    )
    assert report.path == store["root"] / "reports/cmp.html"
    assert [r.record.run_id for r in report.runs] == [ids["A"], ids["B"], ids["C"]]
    assert report.reference == ids["A"]
    a, b = report.runs[0], report.runs[1]
    assert a.layer == "conv1" and a.epoch == 3  # the first conv layer, last epoch
    np.testing.assert_allclose(a.kernel, store["kernels"]["A"], rtol=1e-12)
    mb = report.matches[ids["B"]]
    np.testing.assert_array_equal(b.kernel[..., mb.order], a.kernel)  # exactly lined up
    np.testing.assert_array_equal(mb.order, np.argsort(store["perm"]))
    np.testing.assert_allclose(mb.similarity, 1.0)
    assert report.matches[ids["A"]].order.tolist() == list(range(8))
    assert a.curves["loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]

    text = report.path.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained
    images = _images(text)
    assert len(images) == 1 + 1 + 3 * 8  # the loss curves, the colour bar, a tile a filter
    sizes = []
    for png in images:
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG"
            sizes.append(im.size)
    assert sizes[0][0] > 100 and sizes[2:] == [(66, 66)] * 24  # 22 px a weight
    for name in ("A", "B", "C"):
        assert ids[name][:8] in text
    assert "test_accuracy" in text and "val_loss" in text
    assert "keras.filters" in text  # the differing parameter gets a column
    assert "mean similarity 1.000" in text


def test_selection_by_experiment_filter_and_parent(store):
    ids, kw = store["ids"], {"root": store["root"], "tracking_uri": store["uri"]}
    r = compare(experiment="t/train_keras", out="reports/e.html", **kw)
    # oldest first; the sweep parent (no training of its own) is left out, with a note
    assert [x.record.run_id for x in r.runs] == [ids["A"], ids["B"], ids["C"]]
    note = (
        f"Left out: sweep parent run train_keras sweep keras.filters=8,16 ({store['parent'][:8]})"
    )
    assert note in r.path.read_text() and f"compare -p {store['parent']}" in r.path.read_text()
    r = compare(
        experiment="t/train_keras",
        filter_string="params.`keras.filters` = '8'",
        out="reports/f.html",
        **kw,
    )
    assert [x.record.run_id for x in r.runs] == [ids["A"], ids["B"]]
    r = compare(parent_run_id=store["parent"], out="reports/p.html", **kw)
    assert {x.record.run_id for x in r.runs} == {ids["A"], ids["B"]}


def test_clear_errors(store):
    kw = {"root": store["root"], "tracking_uri": store["uri"], "out": "reports/x.html"}
    with pytest.raises(CompareError, match="unknown run id.*0123456789abcdef"):
        compare(run_ids=[store["ids"]["A"], "0123456789abcdef0123456789abcdef"], **kw)
    with pytest.raises(EmptySelectionError, match="no runs match"):
        compare(experiment="t/train_keras", filter_string="params.`keras.filters` = '99'", **kw)
    with pytest.raises(CompareError, match="unknown experiment 'nope'"):
        compare(experiment="nope", **kw)
    with pytest.raises(CompareError, match="cannot search runs"):
        compare(experiment="t/train_keras", filter_string="params.x ~~ 3", **kw)
    with pytest.raises(CompareError, match="nothing to compare"):
        compare(**kw)
    with pytest.raises(CompareError, match="no MLflow store"):
        compare(run_ids=["abc"], root=store["root"], tracking_uri="sqlite:////nonexistent/m.db")
    assert issubclass(CompareError, ValueError)
    assert not (store["root"] / "reports/x.html").exists()


def test_cli(store, capsys):
    from convscope.cli import main

    ids = store["ids"]
    out = store["root"] / "cli.html"
    code = main(["compare", ids["A"], ids["C"], "--tracking-uri", store["uri"], "-o", str(out)])
    assert code == 0 and out.is_file()
    assert "compared 2 run(s)" in capsys.readouterr().out
    code = main(["compare", "feedface" * 4, "--tracking-uri", store["uri"], "-o", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("convscope: error: unknown run id")

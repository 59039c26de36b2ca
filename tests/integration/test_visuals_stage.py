"""The visuals stage in process, against small stand-ins for every input: every figure written
and listed in its manifest, every figure and kernel image recorded, nothing written or
recorded when the engine disagrees with Keras; and memory stays flat over hundreds of
figures."""

from __future__ import annotations

import os

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from convscope.scratch.layers import (  # noqa: E402  # noqa: E402
    Conv2D,  # noqa: E402
)
from convscope.viz.core import (  # noqa: E402
    write_png,  # noqa: E402
)
from convscope.viz.kernels import KernelGrid  # noqa: E402
from convscope.viz.manifest import (  # noqa: E402  # noqa: E402
    load_manifest,
    verify_manifest,
)
from convscope.viz.parity import (  # noqa: E402
    ParityError,
)


class _Recorder:
    """Stands in for the stage's MLflow run: records what the stage logs (name, args)."""

    recording = True

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)

        def record(*args, **kwargs):
            if name == "log_artifact":  # the file only exists during the call
                args = (os.path.basename(args[0]), *args[1:])
            self.calls.append((name, args, kwargs))

        return record


def _pipeline_inputs(root):
    """Small stand-ins for every input of the visuals stage, written where the stage reads."""
    import keras

    import convscope.keras_cnn as kc
    from convscope.config.schema import Config, KerasConfig, ScratchCNNConfig, VizConfig
    from convscope.data import mnist
    from convscope.data.lines import make_dataset
    from convscope.engine_train import build_mnist
    from convscope.files import save_arrays
    from convscope.scratch import mini_cnn
    from convscope.scratch.layer_walkthrough import seed_example, walkthrough

    rng = np.random.default_rng(1)
    kcfg = KerasConfig(filters=4, epochs=1)
    keras.utils.set_random_seed(0)
    model = kc.build_model(kcfg)
    kc.save_model(model, root / "models/keras_cnn.keras")
    kernels = kc.conv_kernels(model)
    history = {n: np.stack([k * 0.5, k]) for n, k in kernels.items()}
    save_arrays(
        root / "models/keras_kernels.npz",
        {**history, "steps": np.arange(2)},
        {"epochs": 1},
    )
    engine = build_mnist(ScratchCNNConfig(filters=4))
    engine.save(root / "models/scratch_mnist.npz")
    eh = {
        l.name: np.stack([l.kernel, l.kernel])
        for l in engine.layers
        if hasattr(l, "kernel") and getattr(l, "kernel", None) is not None and l.kernel.ndim == 4
    }
    save_arrays(
        root / "models/scratch_mnist_kernels.npz", {**eh, "steps": np.arange(2)}, {"epochs": 1}
    )
    lines_model = mini_cnn.build(5, seed=0)
    lines_model.save(root / "models/scratch_lines.npz")
    k2d = lines_model.layers[0].kernel
    save_arrays(
        root / "models/scratch_lines_kernels.npz",
        {"conv": np.stack([k2d * (1 + e / 10) for e in range(6)])},
        {"epochs": 5},
    )
    x_tr = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    x_te = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    y_tr, y_te = (np.arange(20) % 10).astype(np.uint8), (np.arange(60) % 10).astype(np.uint8)
    mnist.save(root / "data/mnist.npz", ((x_tr, y_tr), (x_te, y_te)), {"source": "test"})
    x, y = make_dataset(12, seed=0)
    save_arrays(root / "data/lines.npz", {"x": x, "y": y}, {"dataset": "lines"})
    save_arrays(
        root / "walkthrough/walkthrough.npz",
        walkthrough(*seed_example(), padding=1).to_arrays(),
        {},
    )
    cfg = Config(keras=kcfg, viz=VizConfig(images=[0, 3], class_sample=40, dpi=60))
    return cfg, model


@pytest.mark.tf
def test_visuals_stage_writes_every_figure_and_a_manifest_that_agrees(tmp_path, monkeypatch):
    from convscope.config import ConfigError
    from convscope.runner import StageContext
    from convscope.stages import visuals

    cfg, keras_model = _pipeline_inputs(tmp_path)
    ctx = StageContext(stage="visuals", cfg=cfg, raw={}, root=tmp_path, run=_Recorder())
    metrics = visuals.run(cfg, ctx)
    ctx.commit()

    figdir = tmp_path / "reports/figures"
    assert verify_manifest(figdir / "manifest.json", tmp_path) == []
    assert not [p.name for p in figdir.iterdir() if p.name.startswith(".")]
    recs = load_manifest(figdir / "manifest.json")
    assert len(recs) == len(list(figdir.glob("*.png"))) + 3
    tags = {
        k: v for name, args, _ in ctx.run.calls if name == "set_tags" for k, v in args[0].items()
    }
    assert tags["figures"] == len(recs) and tags["figures.gif"] == 3
    assert "engine_vs_keras_max_diff" in metrics
    count = {}
    for r in recs:
        count[(r.model, r.kind)] = count.get((r.model, r.kind), 0) + 1
    assert count[("keras", "kernels")] == 2 and count[("scratch_mnist", "kernels")] == 2
    assert count[("scratch_lines", "kernels")] == 1
    # 2 images x (conv1, pool1, conv2); lines: 2 images x (conv, pool)
    assert count[("keras", "feature_maps")] == 6 and count[("scratch_mnist", "feature_maps")] == 6
    assert count[("scratch_lines", "feature_maps")] == 4
    assert count[("keras", "class_means")] == 2 and count[("scratch_lines", "class_means")] == 1
    for model, convs in (("keras", 2), ("scratch_mnist", 2), ("scratch_lines", 1)):
        assert count[(model, "kernel_filmstrip")] == convs  # one per conv layer
        assert count[(model, "kernel_evolution_gif")] == 1  # the first conv layer
    assert count[("walkthrough", "walkthrough")] == 1 and count[("keras", "engine_vs_keras")] == 1

    by = {(r.model, r.kind, r.layer): r for r in recs}
    for name in ("conv1", "conv2"):
        r = by[("keras", "kernels", name)]
        m = float(np.abs(keras_model.get_layer(name).kernel.numpy()).max())
        assert r.vmin == -r.vmax and r.vmax == pytest.approx(m)
        assert r.source == "models/keras_cnn.keras" and r.step == 1
    assert by[("keras", "kernels", "conv1")].grid == [2, 2]  # 4 filters, one channel
    assert by[("keras", "kernels", "conv2")].grid == [4, 8]  # 4 in x 8 filters
    assert by[("scratch_lines", "class_means", "conv")].grid == [2, 1]
    gif = by[("scratch_lines", "kernel_evolution_gif", "conv")]
    with Image.open(tmp_path / gif.file) as im:
        assert im.n_frames == 6
    for r in recs:
        if r.kind == "feature_maps":
            assert r.cmap == "viridis" and r.vmin == 0.0 and r.image_index in (0, 1, 3)

    assert metrics["engine_vs_keras_max_diff"] < 1e-4
    assert 0 < metrics["figure_seconds"] <= metrics["seconds"]

    # MLflow: every file under figures/, kernel grids at the last epoch, evolution per epoch
    logged = {a[0] for n, a, _ in ctx.run.calls if n == "log_artifact"}
    assert logged == {os.path.basename(r.file) for r in recs} | {"manifest.json"}
    images = {(a[1], a[2]) for n, a, _ in ctx.run.calls if n == "log_image"}
    assert ("kernels/keras/conv1", 1) in images
    assert {("evolution/keras/conv1", 0), ("evolution/keras/conv1", 1)} <= images
    assert {s for k, s in images if k == "evolution/scratch_lines/conv"} == set(range(6))

    bad = type(cfg)(keras=cfg.keras, viz=type(cfg.viz)(images=[60]))
    with pytest.raises(ConfigError, match="viz.images"):
        visuals.run(bad, StageContext(stage="visuals", cfg=bad, raw={}, root=tmp_path))

    # An engine that disagrees with Keras (a flipped kernel: convolution instead of
    # cross-correlation) fails the stage before any figure is written or logged.
    import convscope.scratch.bridge as bridge

    from_keras = bridge.from_keras

    def flipped(model):
        engine = from_keras(model)
        conv = next(layer for layer in engine.layers if isinstance(layer, Conv2D))
        conv.kernel[...] = conv.kernel[::-1, ::-1].copy()
        return engine

    monkeypatch.setattr(bridge, "from_keras", flipped)
    before = {p.name: p.stat().st_mtime_ns for p in figdir.iterdir()}
    ctx = StageContext(stage="visuals", cfg=cfg, raw={}, root=tmp_path, run=_Recorder())
    with pytest.raises(ParityError, match="tolerance"):
        visuals.run(cfg, ctx)
    assert {p.name: p.stat().st_mtime_ns for p in figdir.iterdir()} == before
    assert ctx.run.calls == []


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_memory_stays_flat_over_200_figures(tmp_path):
    # A first-layer grid: the whole figure life cycle (figure, axes, colour bar, labels, PNG)
    # at the lowest cost per figure, so 200 of them stay a few seconds.
    k = np.random.default_rng(0).normal(size=(3, 3, 1, 8))
    rss = []
    for i in range(200):
        write_png(KernelGrid(k * (i + 1), layer="conv1").plot(dpi=30), tmp_path / "k.png")
        rss.append(_rss_mb())
    growth = max(rss[20:]) - rss[19]
    assert growth < 50, f"RSS grew {growth:.1f} MB between figure 20 and 200"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

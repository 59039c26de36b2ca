"""Stage ``visuals``: what each layer of every network learned, as figures.

Inputs: the three trained networks and their per-epoch kernels, the MNIST and lines data and
the walkthrough arrays (:data:`INPUTS`). Outputs: ``reports/figures/*.png|gif`` with
``manifest.json`` (:mod:`convscope.viz.manifest`), and ``metrics/visuals.json``.

Per network (engine MNIST CNN, lines mini-CNN, Keras CNN): a kernel grid per conv layer (dead
filters, measured on the class-mean sample, marked), feature maps of every conv and pool layer
for the images of ``viz.images``, per-class mean activations of every conv layer over the
first ``viz.class_sample`` test images, a filmstrip per conv layer and a GIF of the first conv
layer's evolution. Then the seed's part 1 walkthrough, and Keras beside the engine loaded
with its weights: the stage fails before drawing anything when their feature maps differ by
more than :data:`PARITY_TOLERANCE`.

MLflow: every file under ``figures/``; kernel grids as images ``kernels/<model>/<layer>`` at
the model's last epoch and evolution frames as ``evolution/<model>/<layer>`` at every epoch,
so the UI's image slider steps through training; each padded to the card's shape
(:func:`~convscope.viz.kernel_cards.fit_card`). The manifest names each figure's model file;
the run is tagged with the training runs that made those files (found by their md5,
:mod:`convscope.tracking.provenance`), so a figure leads back to its run in MLflow.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np

from convscope.config import Config, ConfigError
from convscope.files import load_arrays, read_npz
from convscope.runner import StageContext
from convscope.viz.activations import engine_feature_maps
from convscope.viz.evolution import load_kernel_history
from convscope.viz.kernel_cards import fit_card
from convscope.viz.manifest import Manifest
from convscope.viz.network import Network, draw_network
from convscope.viz.parity import check_parity, engine_vs_keras_figure, map_differences
from convscope.viz.walkthrough_figure import walkthrough_figure

FIGURES_DIR = "reports/figures"
#: input -> the stage that writes it
INPUTS = {
    "data/mnist.npz": "mnist",
    "data/lines.npz": "lines",
    "walkthrough/walkthrough.npz": "walkthrough",
    "models/keras_cnn.keras": "train_keras",
    "models/keras_kernels.npz": "train_keras",
    "models/scratch_mnist.npz": "train_scratch_mnist",
    "models/scratch_mnist_kernels.npz": "train_scratch_mnist",
    "models/scratch_lines.npz": "train_scratch_lines",
    "models/scratch_lines_kernels.npz": "train_scratch_lines",
}
#: network -> the model file its figures show
MODELS = {
    "keras": "models/keras_cnn.keras",
    "scratch_mnist": "models/scratch_mnist.npz",
    "scratch_lines": "models/scratch_lines.npz",
}
#: engine vs Keras feature maps, same weights: float32 rounding only (see viz.parity)
PARITY_TOLERANCE = 1e-4
DIGITS = tuple(str(i) for i in range(10))
LINES = ("horizontal", "vertical")


def run(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    """Check parity, draw every figure, write the manifest, log to MLflow; return the metrics."""
    from convscope.data import mnist
    from convscope.data.lines import clean_pair
    from convscope.scratch.model import Sequential

    started = time.perf_counter()
    v = cfg.viz
    # Every input first: a missing one fails before TensorFlow is imported.
    paths = {rel: ctx.input(rel, made_by=by) for rel, by in INPUTS.items()}
    arrays, _ = load_arrays(paths["data/mnist.npz"], required=mnist.SPLIT_KEYS)
    x_test, y_test = mnist.prepare(arrays["x_test"], arrays["y_test"])
    bad = [i for i in v.images if not 0 <= int(i) < len(x_test)]
    if bad:
        raise ConfigError(
            f"viz.images={list(v.images)!r} is not allowed: expected indices < {len(x_test)} "
            f"(the test images); {bad} out of range"
        )
    images = [int(i) for i in v.images]
    lines, _ = load_arrays(paths["data/lines.npz"], required=("x", "y"))
    xl, yl = lines["x"].astype(np.float32), lines["y"].reshape(-1).astype(np.int64)

    import convscope.keras_cnn as kc
    from convscope.scratch.bridge import from_keras

    keras_model = kc.load_model(paths["models/keras_cnn.keras"], compile=False)
    x_one = x_test[images[:1]]
    keras_maps = kc.feature_maps(keras_model, x_one)
    engine_maps = engine_feature_maps(from_keras(keras_model), x_one)
    # A disagreement is a bug in the engine or the bridge: fail before anything is written.
    max_diff = check_parity(map_differences(keras_maps, engine_maps), PARITY_TOLERANCE)

    figures_start = time.perf_counter()
    sample = (x_test[: v.class_sample], y_test[: v.class_sample])
    kernels = kc.conv_kernels(keras_model)
    relu = {n for n in kernels if keras_model.get_layer(n).get_config()["activation"] == "relu"}
    # the lines: the seed's two clean test images (vertical, horizontal), then two of the data
    x_lines = np.concatenate([clean_pair(xl.shape[1])[0], xl[:2]])
    networks = {
        "scratch_mnist": Network.engine(
            Sequential.load(paths["models/scratch_mnist.npz"]), x_test, images, sample, DIGITS
        ),
        "scratch_lines": Network.engine(
            Sequential.load(paths["models/scratch_lines.npz"]), x_lines, [0, 1], (xl, yl), LINES
        ),
        "keras": Network(
            kernels, relu, partial(kc.feature_maps, keras_model), x_test, images, sample, DIGITS
        ),
    }
    man = Manifest(ctx.root, FIGURES_DIR, writer=ctx.out)
    frames: list[tuple[np.ndarray, str, int]] = []  # evolution frames, logged once all is drawn
    metrics: dict[str, Any] = {"engine_vs_keras_max_diff": max_diff}
    for model, net in networks.items():
        history, meta = load_kernel_history(paths[f"models/{model}_kernels.npz"])

        def on_frame(layer: str, epoch: int, rgb: np.ndarray, model: str = model) -> None:
            frames.append((rgb.copy(), f"evolution/{model}/{layer}", epoch))

        dead = draw_network(
            man, model, net, history, meta, v.dpi, v.gif_fps, on_frame, MODELS[model]
        )
        metrics[f"dead_filters_{model}"] = sum(len(f) for f in dead.values())
    wt = read_npz(paths["walkthrough/walkthrough.npz"])
    man.save_plot(walkthrough_figure(wt, dpi=v.dpi), "walkthrough")
    side = engine_vs_keras_figure(x_one[0], keras_maps, engine_maps, dpi=v.dpi)
    man.save_plot(side, "keras", source=MODELS["keras"], image_index=images[0])
    man.write()
    figure_seconds = time.perf_counter() - figures_start

    log_start = time.perf_counter()
    if ctx.run.recording:
        from PIL import Image

        # on the shape of MLflow's image card, which would cut a taller figure
        for r in man.records:
            ctx.log_output(r.file, "figures")
            if r.step is not None:  # kernel grids, at the epoch they show
                with Image.open(man.target(r.file)) as img:
                    key = f"{r.kind}/{r.model}/{r.layer}"
                    ctx.run.log_image(fit_card(np.asarray(img.convert("RGB"))), key, r.step)
        for rgb, key, epoch in frames:
            ctx.run.log_image(fit_card(rgb), key, epoch)
        ctx.log_output(man.rel("manifest.json"), "figures")
        ctx.run.link_inputs(ctx.root, MODELS)
    # Last: figures of an earlier, different run (experiment=deeper's conv3) would otherwise
    # stay beside the new manifest, which does not list them.
    man.remove_stale()
    # How many figures of each kind: fixed by the config, so tags, not metrics.
    counts = {fmt: sum(r.format == fmt for r in man.records) for fmt in ("png", "gif")}
    ctx.run.set_tags(
        {"figures": len(man.records), **{f"figures.{k}": v for k, v in counts.items()}}
    )
    return {
        "figure_seconds": round(figure_seconds, 3),
        "logging_seconds": round(time.perf_counter() - log_start, 3),
        "seconds": round(time.perf_counter() - started, 3),
        **metrics,
    }

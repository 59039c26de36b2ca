"""Stage ``visuals``: what each layer learned, for every network of the pipeline, as figures.

Inputs (all written by earlier stages)::

    models/keras_cnn.keras            + models/keras_kernels.npz          (train_keras)
    models/scratch_mnist.npz          + models/scratch_mnist_kernels.npz  (train_scratch_mnist)
    models/scratch_lines.npz          + models/scratch_lines_kernels.npz  (train_scratch_lines)
    data/mnist.npz, data/lines.npz, walkthrough/walkthrough.npz

Outputs: ``reports/figures/*.png|gif`` and ``reports/figures/manifest.json`` (every figure with
its layer, shape, colour scale, source run and file), ``metrics/visuals.json`` (figure count,
seconds, the engine-vs-Keras difference). Every figure also goes into the stage's MLflow run
under ``figures/``; kernel grids are logged as images keyed ``kernels/<model>/<layer>`` at the
model's last epoch, and evolution frames as ``evolution/<model>/<layer>`` at every epoch, so
the UI's image slider steps through training.

Per network (Keras CNN, engine MNIST CNN, lines mini-CNN): a kernel grid per conv layer (dead
filters marked, measured on the class-mean sample), feature maps of every conv and pool layer
for the images of ``viz.images``, per-class mean activations of every conv layer over the first
``viz.class_sample`` test images, a filmstrip of every conv layer's kernels over the epochs
and the first conv layer's evolution as a GIF. Then the seed's part 1 walkthrough, and the
engine loaded with the Keras weights (``scratch.bridge.from_keras``) beside Keras: the stage
fails if their feature maps differ by more than ``PARITY_TOLERANCE``.

Config read: ``viz.*`` only (images, class_sample, dpi, gif_fps). Source runs: a kernels
file whose metadata has ``run_id`` names the MLflow run that trained the model; the manifest
records it as ``source_run`` (None otherwise).

The function follows the other stages: ``run(cfg, ctx) -> metrics``, called by
``convscope.runner.run_stage``. All files go through ``ctx.out`` (staged, renamed into place
only when the stage succeeds); with ``ctx.tracker=None`` nothing is logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convscope.config import Config, ConfigError
from convscope.runner import StageContext

FIGURES_DIR = "reports/figures"
KERAS_MODEL = "models/keras_cnn.keras"
KERAS_KERNELS = "models/keras_kernels.npz"
SCRATCH_MNIST = "models/scratch_mnist.npz"
SCRATCH_MNIST_KERNELS = "models/scratch_mnist_kernels.npz"
SCRATCH_LINES = "models/scratch_lines.npz"
SCRATCH_LINES_KERNELS = "models/scratch_lines_kernels.npz"
MNIST = "data/mnist.npz"
LINES = "data/lines.npz"
WALKTHROUGH = "walkthrough/walkthrough.npz"

#: engine vs Keras feature maps, same weights: float32 rounding only (see viz.parity)
PARITY_TOLERANCE = 1e-4
LINES_CLASSES = ("horizontal", "vertical")


# --------------------------------------------------------------------------- writing figures


@dataclass
class FigureWriter:
    """Saves figures through the stage context, records them, logs them, times them.

    ``ctx=None`` writes straight to ``root`` (tests, scripts); with a context every file goes
    to its staged path and is logged to the stage's MLflow run.
    """

    root: Path
    ctx: StageContext | None = None
    dpi: int = 100
    gif_fps: int = 4
    figures_dir: str = FIGURES_DIR
    seconds: float = 0.0
    manifest: Any = None
    _log: list[tuple[str, str | None, int | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        from convscope.viz.manifest import Manifest

        out = None if self.ctx is None else self.ctx.out
        self.manifest = Manifest(self.root, self.figures_dir, writer=out)

    def save(
        self,
        make: Callable[[], Any],
        model: str,
        source_run: str | None = None,
        image_index: int | None = None,
        log_step: int | None = None,
    ):
        """Render ``make()`` (a Plot) and save it; ``log_step``: also an MLflow image at step."""
        start = time.perf_counter()
        plot = make()
        record = self.manifest.save_plot(
            plot, model, source_run=source_run, step=log_step, image_index=image_index
        )
        self.seconds += time.perf_counter() - start
        key = f"{record.kind}/{model}/{record.layer}" if record.layer else f"{record.kind}/{model}"
        self._log.append((record.file, key, log_step))
        return record

    def save_gif(self, kernels, model: str, layer: str, source_run: str | None = None):
        """The evolution GIF of one layer; its frames are logged with the epoch as step."""
        from convscope.viz.kernels import kernel_evolution_gif
        from convscope.viz.manifest import figure_name

        rel = f"{self.figures_dir}/{figure_name(model, 'kernel_evolution', layer, suffix='.gif')}"
        frames: list[tuple[int, np.ndarray]] = []
        start = time.perf_counter()
        facts = kernel_evolution_gif(
            kernels,
            self.manifest.target(rel),
            layer=layer,
            fps=self.gif_fps,
            on_frame=lambda step, rgb: frames.append((step, rgb.copy())),
        )
        record = self.manifest.add_file(rel, facts, model, source_run=source_run)
        self.seconds += time.perf_counter() - start
        self._log.append((record.file, None, None))
        if self.ctx is not None:
            for step, rgb in frames:
                self.ctx.track("log_image", rgb, f"evolution/{model}/{layer}", step)
        return record

    def log_all(self) -> None:
        """Log every figure file to MLflow (``figures/``) and the stepped images."""
        if self.ctx is None or self.ctx.tracker is None:
            return
        from PIL import Image

        for rel, key, step in self._log:
            self.ctx.log_output(rel, "figures")
            if key is not None and step is not None:
                with Image.open(self.manifest.target(rel)) as img:
                    self.ctx.track("log_image", img.convert("RGB"), key, int(step))


# --------------------------------------------------------------------------- inputs


def _source_run(meta: Mapping[str, Any] | None) -> str | None:
    """The MLflow run that trained a model, when the kernels file's metadata names it."""
    if not meta:
        return None
    for key in ("run_id", "mlflow_run_id", "source_run"):
        if meta.get(key):
            return str(meta[key])
    return None


def load_kernel_history(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per-epoch kernels file -> ({layer: (steps, kh, kw, in, out)}, metadata)."""
    from convscope.files import load_arrays

    arrays, meta = load_arrays(path)
    out = {}
    for name, a in arrays.items():
        if name == "steps":
            continue
        if a.ndim != 5:
            raise ValueError(
                f"{path}: {name!r} has shape {a.shape}; expected (steps, kh, kw, in, out)"
            )
        out[name] = a
    return out, meta


def _check_images(indices: Sequence[int], n: int, what: str = "test images") -> list[int]:
    bad = [int(i) for i in indices if not 0 <= int(i) < n]
    if bad:
        raise ConfigError(
            f"viz.images={list(indices)!r} is not allowed: expected indices < {n} "
            f"(the {n} {what}); {bad} out of range"
        )
    return [int(i) for i in indices]


# --------------------------------------------------------------------------- one network


def draw_network(
    w: FigureWriter,
    model: str,
    kernels: Mapping[str, np.ndarray],
    maps_fn: Callable[[np.ndarray], dict[str, np.ndarray]],
    x: np.ndarray,
    image_indices: Sequence[int],
    x_sample: np.ndarray,
    y_sample: np.ndarray,
    relu_layers: set[str],
    class_names: Sequence[str] | None = None,
    source_run: str | None = None,
    final_step: int | None = None,
    history: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Every figure of one network: kernels, feature maps, class means, evolution.

    ``kernels``: conv layer -> HWIO. ``maps_fn(x)``: conv/pool layer -> NHWC output (conv after
    its activation). ``relu_layers``: conv layers whose dead filters can be detected (a
    sigmoid or tanh output is never exactly zero). ``history``: layer -> per-epoch kernels,
    for a filmstrip per conv layer and the first conv layer's GIF. Returns a summary (dead
    filters per layer).
    """
    from convscope.viz.activations import (
        class_mean_activations,
        class_mean_figure,
        dead_filters,
        feature_map_figure,
    )
    from convscope.viz.kernels import KernelGrid, kernel_filmstrip

    k = len(class_names) if class_names is not None else None
    stats = class_mean_activations(maps_fn, x_sample, y_sample, num_classes=k)
    dead = {
        name: dead_filters(stats.channel_max[name])
        for name in kernels
        if name in relu_layers and name in stats.channel_max
    }
    for name, kernel in kernels.items():
        w.save(
            lambda kernel=kernel, name=name: KernelGrid(
                kernel, layer=name, dead=dead.get(name)
            ).plot(w.dpi),
            model,
            source_run=source_run,
            log_step=final_step,
        )
    chosen = x[list(image_indices)]
    maps = maps_fn(chosen)
    for j, idx in enumerate(image_indices):
        for name, m in maps.items():
            w.save(
                lambda m=m, name=name, j=j, idx=idx: feature_map_figure(
                    chosen[j], m[j], name, title=f"{model} {name}: image {idx}", dpi=w.dpi
                ),
                model,
                source_run=source_run,
                image_index=idx,
            )
    for name in kernels:
        if name in stats.means:
            w.save(
                lambda name=name: class_mean_figure(
                    stats.means[name], name, stats.counts, class_names, dpi=w.dpi
                ),
                model,
                source_run=source_run,
            )
    if history:
        for name in kernels:
            if name in history:
                w.save(
                    lambda name=name: kernel_filmstrip(history[name], layer=name, dpi=w.dpi),
                    model,
                    source_run=source_run,
                )
        first = next(iter(kernels))
        if first in history:
            w.save_gif(history[first], model, first, source_run=source_run)
    return {"dead_filters": dead, "class_sample": int(stats.n)}


# --------------------------------------------------------------------------- the stage


def _keras_parts(model, kc) -> tuple[dict[str, np.ndarray], set[str]]:
    kernels = kc.conv_kernels(model)
    relu = {
        layer.name
        for layer in model.layers
        if layer.name in kernels and layer.get_config().get("activation") == "relu"
    }
    return kernels, relu


def _engine_parts(model) -> tuple[dict[str, np.ndarray], set[str]]:
    from convscope.scratch.layers import Conv2D
    from convscope.viz.activations import conv_activations

    kernels = {
        layer.name: np.array(layer.kernel) for layer in model.layers if isinstance(layer, Conv2D)
    }
    relu = {name for name, act in conv_activations(model).items() if act == "relu"}
    return kernels, relu


def run(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    """Draw every figure, write the manifest, log to MLflow; returns metrics/visuals.json."""
    from convscope.data import mnist
    from convscope.files import load_arrays, read_npz
    from convscope.scratch.model import Sequential
    from convscope.viz.activations import engine_feature_maps, engine_maps_fn
    from convscope.viz.parity import check_parity, engine_vs_keras_figure, map_differences
    from convscope.viz.walkthrough import walkthrough_figure

    started = time.perf_counter()
    v = cfg.viz
    # Inputs first: a missing one fails before TensorFlow is imported.
    paths = {
        rel: ctx.input(rel, made_by=by)
        for rel, by in (
            (MNIST, "mnist"),
            (LINES, "lines"),
            (WALKTHROUGH, "walkthrough"),
            (KERAS_MODEL, "train_keras"),
            (KERAS_KERNELS, "train_keras"),
            (SCRATCH_MNIST, "train_scratch_mnist"),
            (SCRATCH_MNIST_KERNELS, "train_scratch_mnist"),
            (SCRATCH_LINES, "train_scratch_lines"),
            (SCRATCH_LINES_KERNELS, "train_scratch_lines"),
        )
    }
    arrays, _ = load_arrays(paths[MNIST], required=mnist.SPLIT_KEYS)
    x_test, y_test = mnist.prepare(arrays["x_test"], arrays["y_test"])
    images = _check_images(v.images, len(x_test))
    n_sample = min(int(v.class_sample), len(x_test))
    xs, ys = x_test[:n_sample], y_test[:n_sample]

    w = FigureWriter(ctx.root, ctx, dpi=v.dpi, gif_fps=v.gif_fps)
    summary: dict[str, Any] = {}

    # -- the NumPy engine on MNIST
    engine = Sequential.load(paths[SCRATCH_MNIST])
    hist, meta = load_kernel_history(paths[SCRATCH_MNIST_KERNELS])
    kernels, relu = _engine_parts(engine)
    summary["scratch_mnist"] = draw_network(
        w,
        "scratch_mnist",
        kernels,
        engine_maps_fn(engine),
        x_test,
        images,
        xs,
        ys,
        relu,
        class_names=[str(i) for i in range(10)],
        source_run=_source_run(meta),
        final_step=meta.get("epochs"),
        history=hist,
    )

    # -- the lines mini-CNN
    lines_model = Sequential.load(paths[SCRATCH_LINES])
    lines, _ = load_arrays(paths[LINES], required=("x", "y"))
    xl, yl = lines["x"].astype(np.float32), lines["y"].reshape(-1).astype(np.int64)
    # The seed's two clean test lines (vertical, horizontal) when they fit, else the first two.
    from convscope.data.lines import clean_pair

    x_clean, _ = clean_pair(int(xl.shape[1]))
    x_lines = np.concatenate([x_clean.astype(np.float32), xl[:2]])
    hist, meta = load_kernel_history(paths[SCRATCH_LINES_KERNELS])
    kernels, relu = _engine_parts(lines_model)
    summary["scratch_lines"] = draw_network(
        w,
        "scratch_lines",
        kernels,
        engine_maps_fn(lines_model),
        x_lines,
        [0, 1],
        xl,
        yl,
        relu,
        class_names=list(LINES_CLASSES),
        source_run=_source_run(meta),
        final_step=meta.get("epochs"),
        history=hist,
    )

    # -- the seed's part 1
    w.save(lambda: walkthrough_figure(read_npz(paths[WALKTHROUGH]), dpi=w.dpi), "walkthrough")

    # -- Keras (TensorFlow from here on)
    import convscope.keras_cnn as kc

    keras_model = kc.load_model(paths[KERAS_MODEL], compile=False)
    hist, meta = load_kernel_history(paths[KERAS_KERNELS])
    kernels, relu = _keras_parts(keras_model, kc)
    keras_run = _source_run(meta)
    summary["keras"] = draw_network(
        w,
        "keras",
        kernels,
        lambda x: kc.feature_maps(keras_model, x),
        x_test,
        images,
        xs,
        ys,
        relu,
        class_names=[str(i) for i in range(10)],
        source_run=keras_run,
        final_step=meta.get("epochs"),
        history=hist,
    )

    # -- engine vs Keras on the same weights
    from convscope.scratch.bridge import from_keras

    bridged = from_keras(keras_model)
    x_one = x_test[images[:1]]
    keras_maps = kc.feature_maps(keras_model, x_one)
    engine_maps = engine_feature_maps(bridged, x_one)
    diffs = map_differences(keras_maps, engine_maps)
    w.save(
        lambda: engine_vs_keras_figure(x_one[0], keras_maps, engine_maps, dpi=w.dpi),
        "keras",
        source_run=keras_run,
        image_index=images[0],
    )

    # A disagreement is a bug in the engine or the bridge: fail before anything is logged.
    max_diff = check_parity(diffs, PARITY_TOLERANCE)
    w.manifest.write()
    figure_seconds = w.seconds
    log_start = time.perf_counter()
    w.log_all()
    ctx.log_output(f"{FIGURES_DIR}/manifest.json", "figures")
    logging_seconds = time.perf_counter() - log_start
    # Last: figures of an earlier, different run (say experiment=deeper's conv3) would
    # otherwise stay beside the new manifest, which does not list them.
    w.manifest.remove_stale()
    records = w.manifest.records
    dead = {
        f"dead_filters_{model}": sum(len(v) for v in s["dead_filters"].values())
        for model, s in summary.items()
    }
    return {
        "figures": len(records),
        "png": sum(r.format == "png" for r in records),
        "gif": sum(r.format == "gif" for r in records),
        "figure_seconds": round(figure_seconds, 3),
        "logging_seconds": round(logging_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
        "engine_vs_keras_max_diff": max_diff,
        **dead,
    }

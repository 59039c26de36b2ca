"""Stage ``interpret``: where the trained Keras CNN looks, and what its filters respond to.

Inputs: models/keras_cnn.keras, data/mnist.npz (the test images) and
models/scratch_lines_kernels.npz (the lines mini-CNN's kernel per epoch). The Keras model and
its engine twin (the same weights through :func:`convscope.scratch.bridge.from_keras`) are
both explained:

- saliency and Grad-CAM (``interpret.grad_cam_layer``, default the last conv layer) of the
  test images of ``viz.images`` and the first test image of each class, for its label;
- activation maximisation of every filter (``interpret.filters``) of every conv layer
  (``interpret.layers``), ``interpret.steps`` steps;
- the lines mini-CNN's orientation selectivity per epoch
  (:mod:`convscope.interpret.orientation`).

The stage checks itself: the engine and Keras explanations of the same weights must agree,
saliency and Grad-CAM within :data:`TOLERANCE` relative difference (max |engine - keras| /
max |keras| over all images). Both compute the same float32 gradients in a different order
(im2col products against TensorFlow's kernels), which moves results by a few float32 ulps
(2**-24 ~ 6e-8 relative) per operation, accumulated over the few thousand terms of each
backward product: ~1e-6 of the map's largest value. 1e-4 leaves two orders of magnitude for
that and still fails on any real disagreement (a flipped kernel, a wrong pooling route, the
wrong target logit), which moves maps by order 1. Above it the stage fails with one line and
writes nothing. Activation maximisation is an iterated ascent, so small differences may grow;
its difference is reported (``activation_maximisation_rel_diff``), not checked.

Outputs: figures with their manifest in reports/interpret/ (a directory of its own: the
visuals stage owns reports/figures/), the arrays in reports/interpret.npz, metrics in
metrics/interpret.json; every file is logged to the stage's MLflow run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from convscope.config import Config, ConfigError
from convscope.runner import StageContext
from convscope.validation import ValidationError

FIGURES_DIR = "reports/interpret"
ARRAYS = "reports/interpret.npz"
MNIST = "data/mnist.npz"
KERAS_MODEL = "models/keras_cnn.keras"
LINES_KERNELS = "models/scratch_lines_kernels.npz"
#: engine vs Keras saliency and Grad-CAM, relative max difference (see the module docstring)
TOLERANCE = 1e-4


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (0 when both are all zero)."""
    scale = float(np.max(np.abs(b)))
    diff = float(np.max(np.abs(np.asarray(a, np.float64) - b)))
    return diff / scale if scale > 0 else diff


def check_agreement(diffs: dict[str, float], tolerance: float = TOLERANCE) -> dict[str, float]:
    """``diffs`` (explanation -> engine vs Keras relative difference) if all are within
    ``tolerance``; else a one-line ValidationError naming each one above it (NaN too)."""
    failed = {k: v for k, v in diffs.items() if not v <= tolerance}
    if failed:
        raise ValidationError(
            "engine and Keras explanations of the same weights differ: "
            + ", ".join(f"{k} by {v:.3g}" for k, v in failed.items())
            + f" (relative) > tolerance {tolerance:g}"
        )
    return diffs


def pick_images(requested: list[int], labels: np.ndarray) -> tuple[list[int], list[str]]:
    """``requested`` test indices, then the first test image of each class not already
    among them, each image once; with captions."""
    bad = [i for i in requested if not 0 <= int(i) < len(labels)]
    if bad:
        raise ConfigError(
            f"viz.images={list(requested)!r} is not allowed: expected indices < {len(labels)} "
            f"(the test images); {bad} out of range"
        )
    per_class = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
    indices = list(dict.fromkeys([int(i) for i in requested] + per_class))
    captions = [f"#{i}: {int(labels[i])}" for i in indices]
    return indices, captions


def check_choices(cfg: Any, layer_names: list[str], conv: dict[str, int]):
    """(Grad-CAM layer, conv layers to maximise, filters per layer) from the config, checked
    against the model: an unknown layer or a filter out of range is one ConfigError line."""
    cam = cfg.grad_cam_layer or list(conv)[-1]
    if cam not in conv:
        raise ConfigError(
            f"interpret.grad_cam_layer={cam!r} is not allowed: expected a conv layer of the "
            f"model ({', '.join(conv)}; all layers: {', '.join(layer_names)})"
        )
    layers = list(cfg.layers) if cfg.layers is not None else list(conv)
    unknown = [name for name in layers if name not in conv]
    if unknown:
        raise ConfigError(
            f"interpret.layers={layers!r} is not allowed: {unknown} not conv layers of the "
            f"model (expected some of {', '.join(conv)})"
        )
    filters = {}
    for name in layers:
        if cfg.filters is None:
            filters[name] = list(range(conv[name]))
            continue
        out = [int(f) for f in cfg.filters if not 0 <= int(f) < conv[name]]
        if out:
            raise ConfigError(
                f"interpret.filters={list(cfg.filters)!r} is not allowed: {out} out of range "
                f"for {name}, which has {conv[name]} filters (0..{conv[name] - 1})"
            )
        filters[name] = [int(f) for f in cfg.filters]
    return cam, filters


def run(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    """Explain both networks, check they agree, draw and log; return the metrics."""
    from convscope.data import mnist
    from convscope.engine_train import blas_threads_limited
    from convscope.files import load_arrays, save_arrays
    from convscope.interpret import activation_maximisation, grad_cam, saliency, upsample
    from convscope.interpret.orientation import orientation_selectivity
    from convscope.viz.evolution import load_kernel_history
    from convscope.viz.interpret import attribution_plot, maximisation_plot, orientation_plot
    from convscope.viz.manifest import Manifest

    started = time.perf_counter()
    c, dpi = cfg.interpret, cfg.viz.dpi
    paths = {
        MNIST: ctx.input(MNIST, made_by="mnist"),
        KERAS_MODEL: ctx.input(KERAS_MODEL, made_by="train_keras"),
        LINES_KERNELS: ctx.input(LINES_KERNELS, made_by="train_scratch_lines"),
    }
    arrays, _ = load_arrays(paths[MNIST], required=("x_test", "y_test"))
    x_test, y_test = mnist.prepare(arrays["x_test"], arrays["y_test"])
    indices, captions = pick_images(list(cfg.viz.images), y_test)
    x, y = x_test[indices], y_test[indices]

    import convscope.keras_cnn as kc  # TensorFlow: only once every input is there
    from convscope.scratch.bridge import from_keras

    keras_model = kc.load_model(paths[KERAS_MODEL], compile=False)
    models = {"keras": keras_model, "engine": from_keras(keras_model)}
    conv = {name: int(k.shape[-1]) for name, k in kc.conv_kernels(keras_model).items()}
    layer_names = [layer.name for layer in keras_model.layers]
    cam_layer, filters = check_choices(c, layer_names, conv)

    explain_start = time.perf_counter()
    results: dict[str, dict[str, np.ndarray]] = {}
    for name, model in models.items():
        # one BLAS thread, as the engine trains (see convscope.engine_train): its products are
        # small, and a threaded BLAS spends more on synchronising than it gains
        with blas_threads_limited(1 if name == "engine" else None):
            out = {
                "saliency": saliency(model, x, y),
                "grad_cam": grad_cam(model, x, y, cam_layer),
            }
            for layer, chosen in filters.items():
                out[f"maximisation_{layer}"] = activation_maximisation(
                    model, layer, chosen, steps=c.steps, lr=c.lr, seed=c.seed
                )
        results[name] = out
    explain_seconds = time.perf_counter() - explain_start
    diffs = {
        key: relative_difference(results["engine"][key], results["keras"][key])
        for key in results["keras"]
    }
    checked = check_agreement({"saliency": diffs["saliency"], "grad_cam": diffs["grad_cam"]})

    history, _ = load_kernel_history(paths[LINES_KERNELS])
    lines_layer = next(iter(history))
    size = cfg.data.lines.size
    selectivity = np.stack([orientation_selectivity(k, size) for k in history[lines_layer]])

    man = Manifest(ctx.root, FIGURES_DIR, writer=ctx.out)
    size_hw = x.shape[1:3]
    for name, out in results.items():
        title = f"{name}: saliency |d logit / d input| for the image's label"
        plot = attribution_plot(x, out["saliency"], captions, "saliency", title, dpi=dpi)
        man.save_plot(plot, name)
        cam = upsample(out["grad_cam"], size_hw)
        title = f"{name}: Grad-CAM at {cam_layer} for the image's label"
        note = f"no positive\nevidence\nat {cam_layer}"
        why = (
            f"Grad-CAM keeps only positive evidence; {cam_layer}'s maps weighted by the label's "
            "gradient sum to <= 0 at every position"
        )
        plot = attribution_plot(
            x, cam, captions, "grad_cam", title, cam_layer, dpi, zero_note=note, zero_reason=why
        )
        man.save_plot(plot, name)
        for layer in filters:
            man.save_plot(maximisation_plot(out[f"maximisation_{layer}"], layer, name, dpi), name)
    man.save_plot(orientation_plot(selectivity, lines_layer, dpi), "scratch_lines")
    man.write()

    saved = {"images": x, "labels": y, "image_indices": np.asarray(indices)}
    saved |= {f"{name}_{key}": v for name, out in results.items() for key, v in out.items()}
    saved["scratch_lines_orientation"] = selectivity
    meta = {
        "stage": "interpret",
        "grad_cam_layer": cam_layer,
        "filters": filters,
        "orientation_layer": lines_layer,
        "layout": "<model>_saliency, <model>_grad_cam (n, h, w); <model>_maximisation_<layer> "
        "(filters, H, W, C); scratch_lines_orientation (epochs + 1, filters)",
    }
    save_arrays(
        ctx.out(ARRAYS),
        {k: np.asarray(v, np.float32) if v.dtype.kind == "f" else v for k, v in saved.items()},
        meta,
    )
    if ctx.run.recording:
        for r in man.records:
            ctx.log_output(r.file, "interpret")
        ctx.log_output(man.rel("manifest.json"), "interpret")
        ctx.log_output(ARRAYS, "interpret")
    man.remove_stale()

    # what the run was (counts, the agreement bound) are tags; metrics are what it measured
    ctx.run.set_tags(
        {
            "interpret.tolerance": f"{TOLERANCE:g}",
            "interpret.images": len(indices),
            "interpret.filters_maximised": sum(len(f) for f in filters.values()),
            "interpret.figures": len(man.records),
        },
    )
    return {
        **{f"{k}_rel_diff": v for k, v in checked.items()},
        "activation_maximisation_rel_diff": max(
            (v for k, v in diffs.items() if k.startswith("maximisation_")), default=0.0
        ),
        "orientation_final": float(np.max(selectivity[-1])),
        "explain_seconds": round(explain_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
    }

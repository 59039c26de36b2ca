"""Stage ``walkthrough``: the seed's part 1, one conv layer step by step on its 5x5 image.

Writes walkthrough/walkthrough.txt (the printout: image, padded image, feature map, ReLU,
pooled map) and walkthrough/walkthrough.npz (every intermediate as an array, for the figure).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convscope.config import Config
from convscope.runner import StageContext

TEXT = "walkthrough/walkthrough.txt"
ARRAYS = "walkthrough/walkthrough.npz"
STEPS = ("image", "padded", "feature_map", "activated", "pooled")


def run(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    from convscope.files import atomic_write_text, save_arrays
    from convscope.scratch import layer_walkthrough

    c = cfg.scratch.walkthrough
    image, kernel = layer_walkthrough.seed_example()
    w = layer_walkthrough.walkthrough(
        image,
        kernel,
        stride=c.stride,
        padding=c.padding,
        pool_size=c.pool_size,
        pool_stride=c.pool_stride,
    )
    text = w.render()
    atomic_write_text(ctx.out(TEXT), text if text.endswith("\n") else text + "\n")
    arrays = w.to_arrays()
    save_arrays(
        ctx.out(ARRAYS),
        arrays,
        {"stage": "walkthrough", "source": "seed 000 part 1", "steps": list(STEPS)},
        compress=False,
    )
    # One row per step: how the value range changes (ReLU drops the negatives, pooling keeps
    # the maxima). A small table `dvc plots show` can draw as bars.
    ctx.plot_rows = [
        {
            "step": i,
            "name": name,
            "height": int(arrays[name].shape[0]),
            "width": int(arrays[name].shape[1]),
            "min": float(np.min(arrays[name])),
            "max": float(np.max(arrays[name])),
            "mean": float(np.mean(arrays[name])),
        }
        for i, name in enumerate(STEPS)
    ]
    ctx.log_output(TEXT, "walkthrough")
    ctx.log_output(ARRAYS, "walkthrough")
    # the shapes are fixed by the config: they are in the plot rows, not among the metrics
    return {
        "feature_map_min": float(arrays["feature_map"].min()),
        "feature_map_max": float(arrays["feature_map"].max()),
        "pooled_sum": float(arrays["pooled"].sum()),
    }

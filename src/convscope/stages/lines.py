"""Stage ``lines``: the seed's synthetic vertical/horizontal line images -> data/lines.npz."""

from __future__ import annotations

from typing import Any

from convscope.config import Config
from convscope.runner import StageContext

OUT = "data/lines.npz"


def run(cfg: Config, ctx: StageContext) -> dict[str, Any]:
    from convscope.data.lines import make_dataset
    from convscope.files import save_arrays, sha256_arrays

    c = cfg.data.lines
    x, y = make_dataset(c.n_samples, size=c.size, noise=c.noise, position=c.position, seed=c.seed)
    digest = sha256_arrays(x, y)
    vertical = int((y[:, 0] == 1).sum())
    metadata = {
        "dataset": "lines",
        "n_samples": c.n_samples,
        "size": c.size,
        "noise": c.noise,
        "position": c.position,
        "seed": c.seed,
        "sha256": digest,
        "labels": {"1": "vertical", "0": "horizontal"},
    }
    save_arrays(ctx.out(OUT), {"x": x, "y": y}, metadata, compress=False)
    ctx.run.log_dataset("lines", digest, f"convscope.data.lines.make_dataset(seed={c.seed})", x, y)
    # One row per class: a bar chart of the balance (`dvc plots show plots/lines.csv`).
    ctx.plot_rows = [
        {"label": 0, "class": "horizontal", "count": len(y) - vertical},
        {"label": 1, "class": "vertical", "count": vertical},
    ]
    return {"n_samples": int(len(y)), "vertical": vertical, "horizontal": int(len(y) - vertical)}

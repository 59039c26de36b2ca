"""Filter stability across runs: are a layer's filters what the data dictates, or the seed's?

For runs that differ only in a seed (a ``-m seed=0,1,2`` sweep) or a width, per conv layer:

- ``cka``: linear CKA (:func:`convscope.interpret.cka`) between two runs' outputs of the layer
  on one fixed image set, the mean over all pairs of runs. It needs no matching of filters
  and compares layers of different widths: near 1 when the runs represent the images alike.
- ``filter_cosine``: the mean cosine similarity of Hungarian-matched filters
  (:func:`convscope.compare.matching.match_filters`), the mean over all pairs. Near 1 when
  the runs learned the same filters in another order; undefined (None) when the kernels'
  shapes differ (a deeper layer after a wider one).

The fixed image set is the first :data:`N_IMAGES` test images of data/mnist.npz for a 28x28
model and the lines data set for the lines mini-CNN (the files the runs trained on, read from
the project). Runs are read through :mod:`convscope.tracking.query`: their kernels at the last
logged epoch, and their logged models for the activations (CKA is left out for a run without
a model).
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convscope.compare.collection import natural_key
from convscope.compare.matching import match_filters

__all__ = ["fixed_images", "layer_stability", "run_stability", "stability_metrics"]

N_IMAGES = 256
log = logging.getLogger(__name__)


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def layer_stability(
    kernels: Sequence[Mapping[str, np.ndarray]],
    activations: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> dict[str, dict[str, float | None]]:
    """Per conv layer common to all runs: ``{"cka": .., "filter_cosine": .., "pairs": ..}``.

    ``kernels[i]``: run ``i``'s HWIO kernels by layer; ``activations[i]``: its layer outputs
    on the same images, (n, ...) by layer (None, or a layer missing: no CKA for it).
    """
    from convscope.interpret import cka

    if len(kernels) < 2:
        return {}
    layers = sorted(set.intersection(*(set(k) for k in kernels)), key=natural_key)
    out = {}
    for layer in layers:
        pairs = list(itertools.combinations(range(len(kernels)), 2))
        cosine = [match_filters(kernels[i][layer], kernels[j][layer]) for i, j in pairs]
        ckas = []
        if activations is not None and all(layer in a for a in activations):
            flat = [np.asarray(a[layer]).reshape(len(a[layer]), -1) for a in activations]
            ckas = [cka(flat[i], flat[j]) for i, j in pairs]
        out[layer] = {
            "cka": _mean(ckas),
            "filter_cosine": _mean([m.mean_similarity for m in cosine if m.matched]),
            "pairs": len(pairs),
        }
    return out


def stability_metrics(stability: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Flat metric keys ``stability_cka_<layer>``, ``stability_filter_cosine_<layer>``."""
    return {
        f"stability_{what}_{layer}": float(values[what])
        for layer, values in stability.items()
        for what in ("cka", "filter_cosine")
        if values.get(what) is not None
    }


def fixed_images(root: str | Path, input_shape: Sequence[int]) -> np.ndarray | None:
    """The image set a model of ``input_shape`` is compared on (see the module docstring)."""
    from convscope.files import DataError, load_arrays

    root = Path(root)
    try:
        if tuple(input_shape[:2]) == (28, 28) and (root / "data/mnist.npz").is_file():
            arrays, _ = load_arrays(root / "data/mnist.npz", required=("x_test",))
            x = arrays["x_test"][:N_IMAGES].astype(np.float32) / 255.0
            return x.reshape(len(x), *input_shape)
        if (root / "data/lines.npz").is_file():
            x = load_arrays(root / "data/lines.npz", required=("x",))[0]["x"][:N_IMAGES]
            if x.shape[1:] == tuple(input_shape):
                return x.astype(np.float32)
    except DataError as e:
        log.warning("filter stability: no image set (%s)", e)
    return None


def _load_model(path: str) -> Any:
    if path.endswith(".npz"):
        from convscope.scratch.model import Sequential

        return Sequential.load(path)
    import convscope.keras_cnn as kc

    return kc.load_model(path, compile=False)


def _run_activations(uri: str, run_id: str, layers: Sequence[str], root: Path, tmp: str):
    """The run's conv layer outputs on the fixed images, or None (no model, no image set)."""
    from convscope.interpret.factory import as_network
    from convscope.tracking import query

    path = query.download_model(uri, run_id, Path(tmp) / run_id)
    if path is None:
        return None
    net = as_network(_load_model(path))
    images = fixed_images(root, net.input_shape)
    if images is None:
        return None
    return {layer: net.activations(images.astype(net.dtype), layer) for layer in layers}


def run_stability(
    uri: str, run_ids: Sequence[str], root: str | Path
) -> dict[str, dict[str, float | None]]:
    """:func:`layer_stability` of MLflow runs (kernels at each run's last logged epoch, logged
    models on the fixed images under ``root``); {} when fewer than two runs logged kernels."""
    from convscope.tracking import query

    kernels = []
    for run_id in run_ids:
        by_epoch = query.kernel_artifacts(uri, run_id)
        if by_epoch:
            last = by_epoch[max(by_epoch)]
            named = {Path(p).stem: query.load_npy(uri, run_id, p) for p in last}
            kernels.append((run_id, named))
    if len(kernels) < 2:
        return {}
    layers = sorted(set.intersection(*(set(k) for _, k in kernels)), key=natural_key)
    with tempfile.TemporaryDirectory(prefix="convscope-stability-") as tmp:
        acts = [_run_activations(uri, run_id, layers, Path(root), tmp) for run_id, _ in kernels]
    if any(a is None for a in acts):
        log.info("filter stability: a run has no logged model or image set; CKA left out")
        acts = None
    return layer_stability([k for _, k in kernels], acts)


def sweep_stability(uri: str, parent_id: str, run_ids: list[str]) -> dict[str, float]:
    """The filter stability of a sweep's finished children (``stability_cka_<layer>``,
    ``stability_filter_cosine_<layer>``), which the sweep callback logs on the parent (its
    ``summarise`` in conf/config.yaml). Empty for fewer than two runs or a stage without
    kernels; a failure to read the children is a warning, never a reason to keep the parent
    open."""
    from convscope.paths import project_root

    if len(run_ids) < 2:
        return {}
    try:
        return stability_metrics(run_stability(uri, run_ids, project_root()))
    except Exception as e:  # noqa: BLE001 (any failure here only costs the metrics)
        log.warning("filter stability of sweep %s not computed: %s", parent_id, e)
        return {}

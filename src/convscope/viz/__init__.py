"""Figures of what each layer learned: kernels, feature maps, class means, evolution, parity.

Everything is drawn with matplotlib's object API (``matplotlib.figure.Figure`` on an Agg
canvas), never ``pyplot``: no global figure registry, no GUI backend, memory freed as soon as a
figure is written (see :mod:`convscope.viz.core`). NumPy and matplotlib only; TensorFlow is
never imported here (the visuals stage passes Keras's feature maps in as arrays).

Modules:

* :mod:`~convscope.viz.kernels` -- :class:`KernelGrid`, :func:`kernel_filmstrip`,
  :func:`kernel_evolution_gif`
* :mod:`~convscope.viz.activations` -- :func:`feature_map_figure`, :func:`class_mean_figure`,
  :func:`class_mean_activations`, :func:`engine_feature_maps`, :func:`dead_filters`
* :mod:`~convscope.viz.walkthrough` -- :func:`walkthrough_figure` (the seed's part 1)
* :mod:`~convscope.viz.parity` -- :func:`engine_vs_keras_figure`, :func:`check_parity`
* :mod:`~convscope.viz.manifest` -- :class:`Manifest`, :func:`verify_manifest`
* :mod:`~convscope.viz.compare` -- figures of ``convscope compare`` and its CLI hook

Names are resolved lazily so that ``import convscope.viz.compare`` (done for every
``convscope`` command to build the parser) does not import matplotlib.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Plot": "core",
    "write_png": "core",
    "KernelGrid": "kernels",
    "kernel_filmstrip": "kernels",
    "kernel_evolution_gif": "kernels",
    "ClassMeans": "activations",
    "class_mean_activations": "activations",
    "class_mean_figure": "activations",
    "dead_filters": "activations",
    "engine_feature_maps": "activations",
    "feature_map_figure": "activations",
    "walkthrough_figure": "walkthrough",
    "ParityError": "parity",
    "check_parity": "parity",
    "engine_vs_keras_figure": "parity",
    "map_differences": "parity",
    "FigureRecord": "manifest",
    "Manifest": "manifest",
    "diff_manifests": "manifest",
    "load_manifest": "manifest",
    "verify_manifest": "manifest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"convscope.viz.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

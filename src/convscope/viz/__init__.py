"""Figures of what each layer learned: kernels, feature maps, class means, evolution, parity.

Everything is drawn on matplotlib ``Figure`` objects with the Agg canvas, never ``pyplot``
(:mod:`~convscope.viz.core`); NumPy and matplotlib only, TensorFlow never (the visuals stage
passes Keras's feature maps in as arrays). One module per figure family:

* :mod:`~convscope.viz.kernels` -- :class:`KernelGrid`, one conv layer's filters
* :mod:`~convscope.viz.activations` -- feature maps, per-class mean activations, dead filters
* :mod:`~convscope.viz.evolution` -- kernel filmstrip and evolution GIF over the epochs
* :mod:`~convscope.viz.walkthrough_figure` -- the seed's part 1, one conv layer step by step
* :mod:`~convscope.viz.parity` -- engine vs Keras side by side, and the parity check
* :mod:`~convscope.viz.manifest` -- the JSON record of every figure written

Names are resolved lazily, so importing ``convscope.viz.compare`` (done for every
``convscope`` command to build the parser) does not import matplotlib.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "kernels": ("KernelGrid",),
    "activations": ("class_mean_activations", "class_mean_figure", "dead_filters"),
    "evolution": ("kernel_evolution_gif", "kernel_filmstrip"),
    "walkthrough_figure": ("walkthrough_figure",),
    "parity": ("ParityError", "check_parity", "engine_vs_keras_figure"),
    "manifest": ("Manifest", "diff_manifests", "load_manifest", "verify_manifest"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"convscope.viz.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""MLflow tracking for convscope: the only package that imports mlflow.

The cheap parts (root discovery, tracking URI, server check, param flattening) import without
mlflow, so an entry point can validate its settings before paying mlflow's import; the run
API (``start_stage_run``, ``StageRun``, ``sweep_parent``, ...) loads mlflow on first access.
Hydra helpers (``hydra_sweep_dir``, ``hydra_overrides``, ``MlflowSweepCallback``) live in
``convscope.tracking.hydra_callbacks``.
"""

from __future__ import annotations

import importlib
from typing import Any

from convscope.tracking.store import (
    ROOT_ENV,
    TrackingError,
    artifact_location,
    check_server,
    find_root,
    flatten_params,
    git_state,
    tracking_uri,
)

_LAZY = {
    "RunTerminated": "convscope.tracking.mlflow_run",
    "StageRun": "convscope.tracking.mlflow_run",
    "connect": "convscope.tracking.mlflow_run",
    "experiment_name": "convscope.tracking.mlflow_run",
    "settle_sweep": "convscope.tracking.mlflow_run",
    "start_stage_run": "convscope.tracking.mlflow_run",
    "sweep_parent": "convscope.tracking.mlflow_run",
    "kernel_mosaic": "convscope.tracking.images",
    "hydra_overrides": "convscope.tracking.hydra_callbacks",
    "hydra_sweep_dir": "convscope.tracking.hydra_callbacks",
    "MlflowSweepCallback": "convscope.tracking.hydra_callbacks",
}

__all__ = [
    "ROOT_ENV",
    "TrackingError",
    "artifact_location",
    "check_server",
    "find_root",
    "flatten_params",
    "git_state",
    "tracking_uri",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'convscope.tracking' has no attribute {name!r}")

"""MLflow tracking for convscope: the only package that imports mlflow.

Modules by concern: ``store`` (URI, server check, params and tags; no mlflow), ``lifecycle``
(the store connected, a stage run from start to FINISHED/FAILED/KILLED), ``logger`` (what a
run logs), ``hydra_callbacks`` (one parent run per multirun), ``query`` (runs read back as
plain data). The names below that need mlflow load it on first access, so a stage checks its
settings before paying for the import.
"""

from __future__ import annotations

import importlib
from typing import Any

from convscope.tracking.store import TrackingError, check_server, flatten_params, tracking_uri

_LAZY = {
    "RunTerminated": "session",
    "start_hosted_run": "agent",
    "start_stage_run": "lifecycle",
    "StageRun": "logger",
    "settle_sweep": "hydra_callbacks",
}

__all__ = ["TrackingError", "check_server", "flatten_params", "tracking_uri", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"convscope.tracking.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'convscope.tracking' has no attribute {name!r}")

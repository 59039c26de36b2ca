"""The store a stage writes to: connect once per process, one experiment per stage."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from filelock import FileLock, Timeout
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from convscope.tracking.store import (
    TrackingError,
    apply_http_defaults,
    artifact_location,
    cfg_get,
    check_server,
    sqlite_path,
    tracking_uri,
)

_READY_STORES: set[str] = set()


def connect(cfg_tracking: Any, root: str | os.PathLike[str] | None = None) -> str:
    """Resolve the tracking URI, check a server answers, point mlflow at it; returns the URI.

    A fresh SQLite store creates its tables on first use and two processes doing that at once
    (parallel sweep jobs) collide, so each process touches a store first under a file lock.
    """
    uri = tracking_uri(cfg_tracking, root)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        apply_http_defaults()
    mlflow.set_tracking_uri(uri)
    if uri not in _READY_STORES and sqlite_path(uri) is not None:
        digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
        lock = Path(tempfile.gettempdir()) / f"convscope-mlflow-{digest}.lock"
        try:
            with FileLock(lock, timeout=120):
                MlflowClient(uri).search_experiments(max_results=1)
        except Timeout:
            raise TrackingError(f"timed out waiting for the store lock {lock}") from None
    _READY_STORES.add(uri)
    return uri


def experiment_name(cfg_tracking: Any, stage: str) -> str:
    """``<experiment_prefix>/<stage>``: every run of a stage in one experiment, so the UI
    compares them side by side."""
    prefix = cfg_get(cfg_tracking, "experiment_prefix", "convscope")
    return f"{prefix}/{stage}" if prefix else stage


def stage_experiment(
    cfg_tracking: Any, stage: str, root: str | os.PathLike[str] | None = None
) -> tuple[str, MlflowClient, str]:
    """(tracking URI, client, experiment id) of ``stage``; the experiment is created (its
    artifacts beside an SQLite store) or restored when needed.

    Parallel jobs race to create it; the loser reads the winner's experiment.
    """
    if not isinstance(stage, str) or not stage.strip():
        raise ValueError(f"stage={stage!r} is not allowed: expected a non-empty stage name")
    uri = connect(cfg_tracking, root)
    client = MlflowClient(uri)
    name = experiment_name(cfg_tracking, stage)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return uri, client, client.create_experiment(name, artifact_location(uri))
        except MlflowException:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return uri, client, exp.experiment_id

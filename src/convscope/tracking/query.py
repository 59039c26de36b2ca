"""Runs read back from an MLflow store as plain Python data (for ``convscope compare``).

Runs come back as :class:`RunRecord` dataclasses, metric histories as ``(step, value)`` lists
and artifacts as NumPy arrays, so the comparison code depends on this module, not on mlflow's
entities. Errors a user can cause (an unknown run id or experiment, a missing store, a filter
MLflow cannot parse) raise :class:`QueryError`, a ValueError with a one-line message.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from convscope.tracking.store import (
    TAG_PARAM_PREFIX,
    TAG_ROLE,
    apply_http_defaults,
    check_server,
    check_sqlite_store,
    run_params,
    sqlite_path,
    tracking_uri,
)

_KERNEL_DIR = re.compile(r"^kernels/epoch_(\d+)$")


class QueryError(ValueError):
    """A selection of runs cannot be read; the message is one line."""


@dataclass
class RunRecord:
    """One run as plain data: ``metrics`` holds each metric's latest value; ``params`` (the
    config values the run recorded, :func:`~convscope.tracking.store.run_params`) and
    ``tags`` are strings, as MLflow stores them."""

    run_id: str
    name: str
    experiment_name: str
    status: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The run name and the first 8 characters of its id."""
        return f"{self.name or 'run'} ({self.run_id[:8]})"


def default_uri(root: str | os.PathLike[str] | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the local store under ``root``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri({"backend": "local"}, root)


def _client(uri: str) -> MlflowClient:
    """A client for ``uri``; an SQLite store that does not exist is an error, not a new store,
    and a damaged one or a server that does not answer a one-line TrackingError."""
    from convscope.tracking.lifecycle import open_store

    path = sqlite_path(uri)
    if path is not None:
        if not path.exists():
            raise QueryError(f"no MLflow store at {path} (tracking URI {uri})")
        check_sqlite_store(path)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        apply_http_defaults()
    return open_store(uri)


def _records(client: MlflowClient, runs: list[Any]) -> list[RunRecord]:
    experiment = functools.cache(lambda exp_id: client.get_experiment(exp_id).name)
    return [
        RunRecord(
            run.info.run_id,
            run.info.run_name or "",
            experiment(run.info.experiment_id),
            run.info.status,
            run_params(run.data.params, run.data.tags),
            {k: float(v) for k, v in run.data.metrics.items()},
            dict(run.data.tags),
        )
        for run in runs
    ]


def get_runs(uri: str, run_ids: list[str]) -> list[RunRecord]:
    """The runs with these ids, in the order given; the error lists every unknown id."""
    client = _client(uri)
    found, missing = [], []
    for run_id in run_ids:
        try:
            found.append(client.get_run(run_id))
        except MlflowException:
            missing.append(run_id)
    if missing:
        raise QueryError(f"unknown run id(s) {', '.join(missing)} in {uri}")
    return _records(client, found)


def _experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    if experiment is None:
        return [e.experiment_id for e in client.search_experiments(max_results=50000)]
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        try:
            exp = client.get_experiment(experiment)
        except MlflowException:
            known = sorted(e.name for e in client.search_experiments(max_results=1000))
            raise QueryError(
                f"unknown experiment {experiment!r}; experiments: {', '.join(known) or 'none'}"
            ) from None
    return [exp.experiment_id]


_PARAM_CLAUSE = re.compile(r"\bparams\.(`[^`]+`|\"[^\"]+\"|[A-Za-z0-9_.\-/]+)")


def experiments_with_runs(uri: str) -> list[tuple[str, str]]:
    """``(experiment id, name)`` of every active experiment of the store that has a run,
    by name."""
    client = _client(uri)
    found = [
        (exp.experiment_id, exp.name)
        for exp in client.search_experiments(max_results=1000)
        if client.search_runs([exp.experiment_id], max_results=1)
    ]
    return sorted(found, key=lambda e: e[1])


def config_filter(filter_string: str) -> str:
    """``filter_string`` with each ``params.<key>`` read as the tag ``param.<key>`` in which
    runs record their config values (``TAG_PARAM_PREFIX``)."""

    def tag(match: re.Match[str]) -> str:
        key = match.group(1).strip('`"')
        return f"tags.`{TAG_PARAM_PREFIX}{key}`"

    return _PARAM_CLAUSE.sub(tag, filter_string.strip())


def search_runs(
    uri: str,
    experiment: str | None = None,
    filter_string: str | None = None,
    parent_run_id: str | None = None,
    include_parents: bool = False,
    max_results: int = 10000,
) -> list[RunRecord]:
    """Runs matching a selection, oldest first.

    Args:
        experiment: an experiment name or id; None searches every experiment.
        filter_string: MLflow's search syntax, e.g. ``"params.`keras.filters` = '32'"``; a
            ``params.<key>`` names the config value, which runs record as tag ``param.<key>``
            (:func:`config_filter`).
        parent_run_id: only children of this run (a sweep's parent). Its experiment is used
            when ``experiment`` is None.
        include_parents: keep sweep parent runs (tag ``convscope.role=sweep``), which hold no
            training of their own and are left out by default.
    """
    client = _client(uri)
    if parent_run_id is not None and experiment is None:
        try:
            experiment = client.get_run(parent_run_id).info.experiment_id
        except MlflowException:
            raise QueryError(f"unknown parent run id {parent_run_id} in {uri}") from None
    exp_ids = _experiment_ids(client, experiment)
    # MLflow's grammar is a flat AND of comparisons, so a parent is one more clause.
    clauses = [config_filter(filter_string)] if filter_string and filter_string.strip() else []
    if parent_run_id is not None:
        clauses.append(f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'")
    query = " and ".join(clauses)
    try:
        runs = client.search_runs(
            exp_ids, query, max_results=max_results, order_by=["attributes.start_time ASC"]
        )
    except MlflowException as e:
        message = " ".join(str(e.message).split())
        raise QueryError(f"cannot search runs with filter {query!r}: {message}") from None
    records = _records(client, runs)
    return [r for r in records if include_parents or r.tags.get(TAG_ROLE) != "sweep"]


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of a metric, by step (the last value logged at a step wins)."""
    try:
        history = _client(uri).get_metric_history(run_id, key)
    except MlflowException as e:
        raise QueryError(f"cannot read metric {key!r} of run {run_id}: {e}") from None
    latest = {}
    for m in sorted(history, key=lambda m: m.timestamp):
        latest[m.step] = float(m.value)
    return sorted(latest.items())


def kernel_artifacts(uri: str, run_id: str) -> dict[int, list[str]]:
    """Kernel ``.npy`` artifacts of a run by epoch, ``{epoch: [artifact paths]}``, as
    ``StageRun.log_kernels`` writes them (``kernels/epoch_XXX/<layer>.npy``)."""
    client = _client(uri)
    try:
        folders = client.list_artifacts(run_id, "kernels")
    except MlflowException as e:
        raise QueryError(f"cannot list artifacts of run {run_id}: {e}") from None
    out: dict[int, list[str]] = {}
    for folder in folders:
        match = _KERNEL_DIR.match(folder.path)
        if folder.is_dir and match:
            files = client.list_artifacts(run_id, folder.path)
            npy = sorted(f.path for f in files if f.path.endswith(".npy"))
            if npy:
                out[int(match.group(1))] = npy
    return out


def load_npy(uri: str, run_id: str, artifact_path: str) -> np.ndarray:
    """Download one ``.npy`` artifact and load it (no pickle)."""
    client = _client(uri)
    # one progress bar per small downloaded file would bury the report's one line
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="convscope-artifact-") as tmp:
        try:
            local = client.download_artifacts(run_id, artifact_path, tmp)
            return np.load(local, allow_pickle=False)
        except (MlflowException, OSError, ValueError) as e:
            raise QueryError(f"cannot read {artifact_path} of run {run_id} as .npy: {e}") from None


def download_model(uri: str, run_id: str, dest: str | os.PathLike[str]) -> str | None:
    """Download the model a run logged into folder ``dest``; its local path, or None if none.

    An engine model is a ``model/<name>.npz`` artifact of the run (``StageRun.log_npz_model``);
    a Keras model is a logged model whose source is the run (``StageRun.log_keras_model``),
    read as its ``data/model.keras`` file.
    """
    import mlflow

    client = _client(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    previous = mlflow.get_tracking_uri()
    # MLflow 3 reads a run's "model" folder as its logged model, which it looks up in the
    # process's tracking store, not the client's: the same store, for the time of the call
    mlflow.set_tracking_uri(uri)
    try:
        npz = [f.path for f in client.list_artifacts(run_id, "model") if f.path.endswith(".npz")]
        if npz:
            return client.download_artifacts(run_id, npz[0], str(dest))
        experiment_id = client.get_run(run_id).info.experiment_id
        logged = client.search_logged_models(
            experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        if not logged:
            return None
        import mlflow.artifacts

        return mlflow.artifacts.download_artifacts(
            artifact_uri=f"{logged[0].artifact_location}/data/model.keras",
            dst_path=str(dest),
            tracking_uri=uri,
        )
    except (MlflowException, OSError) as e:
        raise QueryError(f"cannot download the model of run {run_id}: {e}") from None
    finally:
        mlflow.set_tracking_uri(previous)

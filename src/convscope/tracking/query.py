"""Reading runs back from an MLflow store, as plain Python data (for ``convscope compare``).

The rest of convscope never sees an mlflow object: runs come back as :class:`RunRecord`
dataclasses, metric histories as ``(step, value)`` lists and artifacts as NumPy arrays, so the
comparison code (and its tests) depend on this module's contract, not on mlflow's entities.

Errors a user can cause (a run id that does not exist, an unknown experiment, a store that is
not there, a filter MLflow cannot parse) raise :class:`QueryError` subclasses, ValueErrors
with a one-line message.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from convscope.tracking.store import DB_NAME, find_root

__all__ = [
    "QueryError",
    "RunRecord",
    "UnknownExperimentError",
    "UnknownRunError",
    "default_uri",
    "get_runs",
    "kernel_artifacts",
    "load_npy",
    "metric_history",
    "search_runs",
]

TAG_PARENT = "mlflow.parentRunId"
TAG_ROLE = "convscope.role"
_KERNEL_DIR = re.compile(r"^kernels/epoch_(\d+)$")


class QueryError(ValueError):
    """A selection of runs cannot be read; the message is one line."""


class UnknownRunError(QueryError):
    """One or more run ids are not in the store."""


class UnknownExperimentError(QueryError):
    """No experiment with that name or id."""


@dataclass
class RunRecord:
    """One run, as plain data.

    ``metrics`` holds each metric's latest value; ``params`` and ``tags`` are strings, as
    MLflow stores them.
    """

    run_id: str
    name: str
    experiment_id: str
    experiment_name: str
    status: str
    start_time: int | None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Short, readable name: the run name and the first 8 characters of its id."""
        return f"{self.name or 'run'} ({self.run_id[:8]})"


def default_uri(root: str | os.PathLike[str] | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the repository's SQLite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    base = Path(root).resolve() if root is not None else find_root()
    return "sqlite:///" + (base / DB_NAME).as_posix()


def _client(uri: str) -> MlflowClient:
    """A client for ``uri``; a SQLite store that does not exist is an error, not a new store."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_file():
            raise QueryError(f"no MLflow store at {path} (tracking URI {uri})")
    return MlflowClient(uri)


def _record(run: Any, experiment_names: dict[str, str], client: MlflowClient) -> RunRecord:
    exp_id = run.info.experiment_id
    if exp_id not in experiment_names:
        try:
            experiment_names[exp_id] = client.get_experiment(exp_id).name
        except MlflowException:
            experiment_names[exp_id] = exp_id
    return RunRecord(
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        experiment_id=exp_id,
        experiment_name=experiment_names[exp_id],
        status=run.info.status,
        start_time=run.info.start_time,
        params=dict(run.data.params),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        tags=dict(run.data.tags),
    )


def get_runs(uri: str, run_ids: list[str]) -> list[RunRecord]:
    """The runs with these ids, in the order given; :class:`UnknownRunError` lists every id
    the store does not have."""
    client = _client(uri)
    names: dict[str, str] = {}
    found, missing = [], []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            missing.append(run_id)
            continue
        found.append(_record(run, names, client))
    if missing:
        raise UnknownRunError(f"unknown run id(s) {', '.join(missing)} in {uri}")
    return found


def _experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    if experiment is None:
        return [e.experiment_id for e in client.search_experiments(max_results=50000)]
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        try:
            exp = client.get_experiment(experiment)
        except MlflowException:
            exp = None
    if exp is None:
        known = sorted(e.name for e in client.search_experiments(max_results=1000))
        raise UnknownExperimentError(
            f"unknown experiment {experiment!r}; experiments: {', '.join(known) or 'none'}"
        )
    return [exp.experiment_id]


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
        filter_string: MLflow's search syntax, e.g. ``"params.keras.filters = '32'"``.
        parent_run_id: only children of this run (a sweep's parent). Its experiment is used
            when ``experiment`` is None.
        include_parents: keep sweep parent runs (tag ``convscope.role=sweep``), which hold no
            training of their own and are left out by default.
    """
    client = _client(uri)
    if parent_run_id is not None and experiment is None:
        try:
            experiment = client.get_run(parent_run_id).info.experiment_id
        except MlflowException as e:
            raise UnknownRunError(f"unknown parent run id {parent_run_id} in {uri}") from e
    exp_ids = _experiment_ids(client, experiment)
    # MLflow's grammar is a flat AND of comparisons (no OR, no parentheses), so a parent
    # restriction is one more clause.
    clauses = [filter_string.strip()] if filter_string and filter_string.strip() else []
    if parent_run_id is not None:
        clauses.append(f"tags.`{TAG_PARENT}` = '{parent_run_id}'")
    query = " and ".join(clauses)
    try:
        runs = client.search_runs(
            exp_ids,
            filter_string=query,
            max_results=max_results,
            order_by=["attributes.start_time ASC"],
        )
    except MlflowException as e:
        message = " ".join(str(e.message if hasattr(e, "message") else e).split())
        raise QueryError(f"cannot search runs with filter {query!r}: {message}") from e
    names: dict[str, str] = {}
    records = [_record(r, names, client) for r in runs]
    if not include_parents:
        records = [r for r in records if r.tags.get(TAG_ROLE) != "sweep"]
    return records


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of a metric, by step (the last value logged at a step wins)."""
    client = _client(uri)
    try:
        history = client.get_metric_history(run_id, key)
    except MlflowException as e:
        raise UnknownRunError(f"cannot read metric {key!r} of run {run_id}: {e}") from e
    by_step: dict[int, tuple[int, float]] = {}
    for m in history:
        if m.step not in by_step or m.timestamp >= by_step[m.step][0]:
            by_step[m.step] = (m.timestamp, float(m.value))
    return [(step, by_step[step][1]) for step in sorted(by_step)]


def kernel_artifacts(uri: str, run_id: str) -> dict[int, list[str]]:
    """Kernel ``.npy`` artifacts of a run by epoch: ``{epoch: [artifact paths]}``.

    Stage runs log the kernels after every epoch as ``kernels/epoch_XXX/<layer>.npy``
    (:meth:`convscope.tracking.mlflow_run.StageRun.log_kernels`).
    """
    client = _client(uri)
    try:
        folders = client.list_artifacts(run_id, "kernels")
    except MlflowException as e:
        raise UnknownRunError(f"cannot list artifacts of run {run_id}: {e}") from e
    out: dict[int, list[str]] = {}
    for folder in folders:
        match = _KERNEL_DIR.match(folder.path)
        if not folder.is_dir or not match:
            continue
        files = [f.path for f in client.list_artifacts(run_id, folder.path)]
        npy = sorted(p for p in files if p.endswith(".npy"))
        if npy:
            out[int(match.group(1))] = npy
    return out


@contextlib.contextmanager
def _quiet_downloads():
    """No progress bar per downloaded file (mlflow reads this variable at every download)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def load_npy(uri: str, run_id: str, artifact_path: str) -> np.ndarray:
    """Download one ``.npy`` artifact and load it (no pickle)."""
    client = _client(uri)
    with tempfile.TemporaryDirectory(prefix="convscope-artifact-") as tmp, _quiet_downloads():
        try:
            local = client.download_artifacts(run_id, artifact_path, tmp)
        except (MlflowException, OSError) as e:
            raise QueryError(f"cannot download {artifact_path} of run {run_id}: {e}") from e
        try:
            return np.load(local, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise QueryError(f"{artifact_path} of run {run_id} is not a .npy array: {e}") from e

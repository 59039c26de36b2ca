"""One MLflow run per stage: the store connected, the run opened with the config, and always
ended with the right status. Runs in the stage's tracking process
(:mod:`convscope.tracking.service`) and in ``convscope sync``.

A run goes to the experiment ``<experiment_prefix>/<stage>`` (tagged as model training); the
flattened keys the stage reads (:mod:`convscope.stage_keys`) are its tags ``param.<key>``
(``store.TAG_PARAM_PREFIX`` says why not MLflow params), the composed config is its
``config.yaml`` artifact, and tags carry the stage, the entry point, git commit and dirty
state, and the Hydra overrides. In a multirun the run is a child of the sweep's parent run
(:mod:`convscope.tracking.hydra_callbacks`).

A run's tracking process ends it when its stage ends or dies; only the death of both (a lost
machine, SIGKILL to the process group) leaves a run RUNNING: runs record the stage's host and
pid, and every run's start ends this host's runs whose stage is gone
(:mod:`convscope.tracking.settle`; ``convscope runs --clean`` on demand).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from convscope.files import Staging, remove_stale_staged
from convscope.paths import tracking_root
from convscope.tracking.logger import StageRun
from convscope.tracking.store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    TAG_OVERRIDES,
    TAG_ROLE,
    TAG_STAGE,
    TrackingError,
    apply_http_defaults,
    artifact_location,
    check_server,
    check_sqlite_store,
    experiment_name,
    flatten_params,
    git_tags,
    param_tags,
    process_tags,
    sqlite_path,
    tracking_uri,
    truncate,
)
from convscope.validation import redact_credentials


def connect(cfg_tracking: Any, root: str | os.PathLike[str] | None = None) -> str:
    """Resolve the tracking URI, check the store can be used, point mlflow at it; returns the URI.

    A server must answer; an SQLite store must pass
    :func:`~convscope.tracking.store.check_sqlite_store`, and a missing one is built whole
    (:func:`_build_sqlite_store`), under a file lock since parallel sweep jobs start at once.
    """
    return connect_uri(tracking_uri(cfg_tracking, root))


@event.listens_for(Engine, "connect")
def _wait_for_sqlite_locks(dbapi_connection: Any, connection_record: Any) -> None:
    """Every run has a tracking process of its own, so many processes may write one SQLite
    store at once (a parallel sweep, a queue of experiments): each waits for the others'
    write locks for up to a minute instead of SQLite's default five seconds."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")


#: how long a write to an SQLite store waits for another process's lock (ms)
SQLITE_BUSY_MS = 60_000


def warm_up(uri: str | None) -> None:
    """Pay what opening a store costs before a run asks for it: the SQL store's module and
    its ORM mappings, and (when it exists already) the store at ``uri``, the one a stage
    records to unless its config names another. Nothing is created."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    from sqlalchemy.orm import configure_mappers

    configure_mappers()
    path = sqlite_path(uri) if uri else None
    if path is not None and path.is_file():
        with contextlib.suppress(Exception):  # a damaged store is reported by the run's open
            MlflowClient(uri).search_experiments(max_results=1)


def connect_uri(uri: str) -> str:
    """:func:`connect` for a resolved URI."""
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        apply_http_defaults()
    mlflow.set_tracking_uri(uri)
    path = sqlite_path(uri)
    if path is not None and not check_sqlite_store(path):
        _build_sqlite_store(path)
    open_store(uri)
    return uri


def _build_sqlite_store(path: Path) -> None:
    """Create MLflow's tables in a staged file beside ``path``, then link it in as ``path``.

    MLflow creates a store by a dozen schema migrations; a first run killed among them used
    to leave a half-migrated ``mlflow.db`` that every later run failed on. Built beside, an
    interruption leaves either no store or a complete one. Parallel jobs may race to build
    it: each builds its own, the first link wins (a link never replaces a file) and the
    others use that store, with no lock file left behind. A staged file a killed build left
    behind is removed here.
    """
    remove_stale_staged(path.parent, recursive=False)
    staging = Staging()
    staged = staging.path(path)
    try:
        open_store(f"sqlite:///{staged.as_posix()}")
        with contextlib.suppress(FileExistsError):
            os.link(staged, path)
    finally:
        staging.discard()


def open_store(uri: str) -> MlflowClient:
    """A client on ``uri`` that has read the store once; MLflow's failures (an old schema, a
    database error) become one-line :class:`TrackingError` s that say what to do."""
    try:
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    except (MlflowException, SQLAlchemyError) as err:
        raise store_error(uri, err) from None
    return client


def store_error(uri: str, err: BaseException) -> TrackingError:
    """One line for an exception MLflow raised on the store at ``uri``."""
    text = " ".join(str(getattr(err, "message", None) or err).split())
    store = f"MLflow store {sqlite_path(uri) or uri}"
    if "out-of-date database schema" in text:
        found = re.search(r"found version (\w+)", text)
        return schema_error(uri, found.group(1) if found else None)
    first = text.split(" [SQL:")[0].split(" (Background on")[0]
    return TrackingError(f"{store} cannot be used: {first[:300]}")


def schema_error(uri: str, found: str | None) -> TrackingError:
    """One line for a store whose schema is not the one this MLflow uses."""
    version = f" (version {found})" if found else ""
    return TrackingError(
        f"MLflow store {sqlite_path(uri) or uri} has an older MLflow schema{version}: back it "
        f"up, then run `mlflow db upgrade {uri}`"
    )


def stage_experiment(
    cfg_tracking: Any, stage: str, root: str | os.PathLike[str] | None = None
) -> tuple[str, MlflowClient, str]:
    """(tracking URI, client, experiment id) of ``stage``'s experiment,
    ``<experiment_prefix>/<stage>``, where every run of the stage goes so that the UI compares
    them side by side. It is created (artifacts beside an SQLite store) or restored when
    needed; parallel jobs race to create it, and the loser reads the winner's. It is tagged
    ``mlflow.experimentKind`` as model training (an experiment made before is tagged now),
    the kind MLflow's UI uses to open it on its training runs.
    """
    if not isinstance(stage, str) or not stage.strip():
        raise ValueError(f"stage={stage!r} is not allowed: expected a non-empty stage name")
    uri = connect(cfg_tracking, root)
    client = MlflowClient(uri)
    name = experiment_name(cfg_tracking, stage)
    exp = client.get_experiment_by_name(name)
    kind = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
    if exp is None:
        try:
            return uri, client, client.create_experiment(name, artifact_location(uri), kind)
        except MlflowException:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if exp.tags.get(EXPERIMENT_KIND_TAG) is None:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return uri, client, exp.experiment_id


def _end_run(client: MlflowClient, run_id: str, status: str, end_time: int | None) -> None:
    """End ``run_id`` (and any run user code left open inside it) with ``status``."""
    while (active := mlflow.active_run()) is not None:
        mlflow.end_run(status)
        if active.info.run_id == run_id:
            break
    client.set_terminated(run_id, status, end_time)


def open_stage_run(
    cfg_tracking: Any,
    stage: str,
    config_container: Mapping[str, Any],
    overrides: Sequence[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    code_dir: str | os.PathLike[str] | None = None,
    params: Mapping[str, Any] | None = None,
    origin: Mapping[str, str] | None = None,
) -> StageRun:
    """Start the run of one stage, log its config values and ``config.yaml``; end it FAILED if
    that fails.

    ``config_container`` is the resolved composed config (a dict or DictConfig), ``overrides``
    the run's Hydra overrides (a tag, and the run name unless ``run_name`` is given), ``root``
    the local store's folder (default :func:`convscope.paths.tracking_root`).
    ``parent_run_id`` makes the run a child of a sweep's parent. ``code_dir`` is where the git
    state is read (default ``root``); it differs for DVC's queued experiments, which run in a
    temporary checkout. ``params`` is the part of the config the stage reads (nested),
    recorded flattened as tags ``param.<key>`` (default: the whole config; see
    ``TAG_PARAM_PREFIX``); ``config.yaml`` always holds the whole config. ``origin`` holds the
    tags only the stage's process knows (:func:`~convscope.tracking.client.origin_tags`: its
    pid, the entry point, the DVC experiment); they win over this process's own.
    """
    root = root if root is not None else tracking_root()
    container = config_container
    if isinstance(container, DictConfig):
        container = OmegaConf.to_container(container, resolve=True)
    # bad input fails before the store is touched
    params = flatten_params(container if params is None else params)
    # a password in an override or config value (a database URL) stays out of the record
    override_list = [redact_credentials(str(o)) for o in (overrides or [])]
    uri, client, exp_id = stage_experiment(cfg_tracking, stage, root)

    run_tags = {
        TAG_ROLE: "stage",
        TAG_STAGE: stage,
        TAG_OVERRIDES: truncate(" ".join(override_list)),
        **git_tags(code_dir if code_dir is not None else root),
        **process_tags(),
        **(origin or {}),
    }
    name = truncate(run_name or " · ".join(filter(None, [stage, " ".join(override_list)])), 250)
    active = mlflow.start_run(
        experiment_id=exp_id, run_name=name, parent_run_id=parent_run_id, tags=run_tags
    )
    run_id = active.info.run_id
    run = StageRun(client, run_id, exp_id, uri, stage, parent_run_id)
    try:
        run.set_tags(param_tags(params))
        text = yaml.safe_dump(container, sort_keys=False, default_flow_style=None)
        run.log_text(redact_credentials(text), "config.yaml")
    except BaseException:
        close_stage_run(run, "FAILED")
        raise
    return run


def close_stage_run(run: StageRun, status: str, end_time: int | None = None) -> list[str]:
    """End ``run`` with ``status`` (at ``end_time``, ms, when the stage says when). Returns
    warnings (one line each) for a run that did not finish and could not be ended; raises
    :class:`TrackingError` for a FINISHED one."""
    try:
        _end_run(run.client, run.run_id, status, end_time)
    except Exception as err:
        from convscope.tracking.logger import lost_server

        if lost_server(run.tracking_uri, err):
            raise
        message = " ".join(f"could not end MLflow run {run.run_id} as {status}: {err}".split())
        if status == "FINISHED":
            raise TrackingError(message) from err
        return [message]
    return []


def resume_stage_run(uri: str, run_id: str) -> StageRun:
    """``run_id`` (in the store at ``uri``) made mlflow's active run again, to replay the
    requests its stage could not send (``convscope sync``)."""
    connect_uri(uri)
    client = MlflowClient(uri)
    found = client.get_run(run_id)
    mlflow.start_run(run_id=run_id)
    stage = found.data.tags.get(TAG_STAGE, "")
    parent = found.data.tags.get("mlflow.parentRunId")
    return StageRun(client, run_id, found.info.experiment_id, uri, stage, parent)


def abandon_run(uri: str, run_id: str, status: str) -> None:
    """End ``run_id`` with ``status``: its stage's tracking process died, and what it did not
    record waits in the stage's outbox (``convscope sync`` records it and ends the run as the
    stage ended it)."""
    connect_uri(uri)
    client = MlflowClient(uri)
    client.set_tag(run_id, "convscope.outbox", "records wait in the stage's outbox")
    _end_run(client, run_id, status, None)  # the fluent run too: its exit handler ends it FINISHED

"""One MLflow run per stage: the store connected, the run opened with the config, and always
ended with the right status.

Usage (what ``convscope.runner`` does for every stage)::

    with start_stage_run(cfg.tracking, "train_keras", container, overrides=hydra_overrides(),
                         sweep_dir=hydra_sweep_dir()) as run:
        run.log_epoch(1, {"loss": ..., "val_loss": ...})
        run.log_kernels(1, {"conv2d": w1})

A run goes to the experiment ``<experiment_prefix>/<stage>`` (tagged as model training); the
flattened keys the stage reads (:mod:`convscope.stage_keys`) are its tags ``param.<key>``
(``store.TAG_PARAM_PREFIX`` says why not MLflow params), the composed config is its
``config.yaml`` artifact, and tags carry the stage, git commit and dirty state, and the Hydra
overrides. It
ends FINISHED when the block completes, FAILED on an exception, KILLED on Ctrl-C or SIGTERM (a
handler turns SIGTERM into ``RunTerminated``, a ``KeyboardInterrupt``, while the run is open).
In a multirun the run is a child of the sweep's parent run
(:mod:`convscope.tracking.hydra_callbacks`).

Only SIGKILL (or a lost machine) leaves a run RUNNING: runs record their host and pid, and
every stage start ends this host's runs whose process is gone (:func:`reap_dead_runs`;
``convscope runs --clean`` on demand, :func:`clean_runs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import yaml
from filelock import FileLock, Timeout
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf
from sqlalchemy.exc import SQLAlchemyError

from convscope.files import Staging, pid_alive, remove_stale_staged
from convscope.paths import tracking_root
from convscope.tracking.logger import StageRun
from convscope.tracking.session import find_parent, origin_tags, run_block
from convscope.tracking.store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    TAG_HOST,
    TAG_OVERRIDES,
    TAG_PID,
    TAG_ROLE,
    TAG_STAGE,
    TAG_SWEEP_DIR,
    TERMINAL,
    TrackingError,
    apply_http_defaults,
    artifact_location,
    cfg_get,
    check_server,
    check_sqlite_store,
    flatten_params,
    git_tags,
    param_tags,
    process_tags,
    sanitize_key,
    schema_version,
    sqlite_path,
    tracking_uri,
    truncate,
)

#: URI -> the schema version MLflow accepted when this process opened the store; MLflow checks
#: a store's schema once per process, the tracking agent's life, so a change is caught here
_READY_STORES: dict[str, str | None] = {}


def connect(cfg_tracking: Any, root: str | os.PathLike[str] | None = None) -> str:
    """Resolve the tracking URI, check the store can be used, point mlflow at it; returns the URI.

    A server must answer; an SQLite store must pass
    :func:`~convscope.tracking.store.check_sqlite_store`, and a missing one is built whole
    (:func:`_build_sqlite_store`), under a file lock since parallel sweep jobs start at once.
    """
    return connect_uri(tracking_uri(cfg_tracking, root))


def connect_uri(uri: str) -> str:
    """:func:`connect` for a resolved URI (what the tracking agent opens when it starts)."""
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        apply_http_defaults()
    mlflow.set_tracking_uri(uri)
    path = sqlite_path(uri)
    if path is None:
        return uri
    exists = check_sqlite_store(path)  # every time: the file may have changed since
    if exists and uri in _READY_STORES:
        found = schema_version(path)
        if found != _READY_STORES[uri]:
            raise schema_error(uri, found)
        return uri
    digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
    lock = Path(tempfile.gettempdir()) / f"convscope-mlflow-{digest}.lock"
    try:
        with FileLock(lock, timeout=120):
            if not check_sqlite_store(path):
                _build_sqlite_store(path)
            open_store(uri)
    except Timeout:
        raise TrackingError(f"timed out waiting for the store lock {lock}") from None
    _READY_STORES[uri] = schema_version(path)
    return uri


def _build_sqlite_store(path: Path) -> None:
    """Create MLflow's tables in a staged file beside ``path``, then rename it onto ``path``.

    MLflow creates a store by a dozen schema migrations; a first run killed among them used
    to leave a half-migrated ``mlflow.db`` that every later run failed on. Built beside and
    renamed, an interruption leaves either no store or a complete one; a staged file a killed
    build left behind is removed here.
    """
    remove_stale_staged(path.parent, recursive=False)
    staging = Staging()
    staged = staging.path(path)
    try:
        open_store(f"sqlite:///{staged.as_posix()}")
        staging.commit()
    except BaseException:
        staging.discard()
        raise


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
    prefix = cfg_get(cfg_tracking, "experiment_prefix", "convscope")
    name = f"{prefix}/{stage}" if prefix else stage
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


def running_runs(client: MlflowClient, where: str = "") -> list[Any]:
    """Every RUNNING run of the store (deleted experiments too), ``where`` one more clause."""
    from mlflow.entities import ViewType

    exp_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    query = " and ".join(filter(None, ["attributes.status = 'RUNNING'", where]))
    return list(client.search_runs(exp_ids, query, ViewType.ALL, max_results=50000))


def reap_dead_runs(client: MlflowClient) -> list[tuple[str, str]]:
    """End the RUNNING runs whose process is gone: ``[(run id, new status)]``.

    A SIGKILLed stage cannot end its run, which would stay RUNNING forever. Every run records
    its host and pid (tags), and every stage start calls this: a run of this host whose pid
    no longer runs ends KILLED; a sweep parent is settled from its children
    (:func:`~convscope.tracking.hydra_callbacks.settle_sweep`). Runs of other hosts (a Ray
    cluster's workers) are left alone, as is a run whose pid was reused.
    """
    from convscope.tracking.hydra_callbacks import settle_sweep

    ended = []
    for run in running_runs(client, f"tags.`{TAG_HOST}` = '{process_tags()[TAG_HOST]}'"):
        pid = run.data.tags.get(TAG_PID, "")
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        run_id, status, sweep_dir = run.info.run_id, None, run.data.tags.get(TAG_SWEEP_DIR)
        if run.data.tags.get(TAG_ROLE) == "sweep" and sweep_dir:
            status = settle_sweep(sweep_dir)
        if status is None:
            status = "KILLED"
            client.set_terminated(run_id, status)
        ended.append((run_id, status))
    return ended


def clean_runs(uri: str) -> list[tuple[str, str]]:
    """``convscope runs --clean``: :func:`reap_dead_runs`, then settle every sweep parent still
    RUNNING whose children have all ended and whose own process is gone (or elsewhere)."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from convscope.tracking.hydra_callbacks import settle_sweep

    client = open_store(uri)
    ended = reap_dead_runs(client)
    host = process_tags()[TAG_HOST]
    for run in running_runs(client, f"tags.`{TAG_ROLE}` = 'sweep'"):
        tags = run.data.tags
        pid = tags.get(TAG_PID, "")
        if tags.get(TAG_HOST) == host and pid.isdigit() and pid_alive(int(pid)):
            continue  # its sweep still runs
        children = client.search_runs(
            [run.info.experiment_id],
            f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run.info.run_id}'",
            max_results=50000,
        )
        if all(c.info.status in TERMINAL for c in children):
            status = settle_sweep(tags[TAG_SWEEP_DIR]) if tags.get(TAG_SWEEP_DIR) else None
            if status is None:
                status = "FAILED" if children else "KILLED"
                client.set_terminated(run.info.run_id, status)
            ended.append((run.info.run_id, status))
    return ended


def _end_run(client: MlflowClient, run_id: str, status: str) -> None:
    """End ``run_id`` (and any run user code left open inside it) with ``status``."""
    while (active := mlflow.active_run()) is not None:
        mlflow.end_run(status)
        if active.info.run_id == run_id:
            return
    client.set_terminated(run_id, status)


def open_stage_run(
    cfg_tracking: Any,
    stage: str,
    config_container: Mapping[str, Any],
    overrides: Sequence[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    sweep_dir: str | os.PathLike[str] | None = None,
    code_dir: str | os.PathLike[str] | None = None,
    params: Mapping[str, Any] | None = None,
    origin: Mapping[str, str] | None = None,
) -> StageRun:
    """Start the run of one stage, log its config values and ``config.yaml``; end it FAILED if
    that fails.

    ``config_container`` is the resolved composed config (a dict or DictConfig), ``overrides``
    the run's Hydra overrides (a tag, and the run name unless ``run_name`` is given), ``root``
    the local store's folder (default :func:`convscope.paths.tracking_root`). ``sweep_dir``,
    the Hydra sweep folder in a multirun, makes the run a child of the sweep's parent unless
    ``parent_run_id`` names one. ``code_dir`` is where the git state is read (default
    ``root``); it differs for DVC's queued experiments, which run in a temporary checkout.
    ``params`` is the part of the config the stage reads (nested), recorded flattened as tags
    ``param.<key>`` (default: the whole config; see ``TAG_PARAM_PREFIX``); ``config.yaml``
    always holds the whole config. ``origin``
    holds the tags only the stage's process knows
    (:func:`~convscope.tracking.session.origin_tags`, the default), given explicitly when this
    runs in the tracking agent on the stage's behalf.
    """
    root = root if root is not None else tracking_root()
    container = config_container
    if isinstance(container, DictConfig):
        container = OmegaConf.to_container(container, resolve=True)
    # bad input fails before the store is touched
    params = flatten_params(container if params is None else params)
    override_list = [str(o) for o in (overrides or [])]
    uri, client, exp_id = stage_experiment(cfg_tracking, stage, root)
    reap_dead_runs(client)
    if parent_run_id is None:
        parent_run_id = find_parent(sweep_dir)

    run_tags = {
        TAG_ROLE: "stage",
        TAG_STAGE: stage,
        TAG_OVERRIDES: truncate(" ".join(override_list)),
        **git_tags(code_dir if code_dir is not None else root),
        **(origin_tags() if origin is None else origin),
        **{sanitize_key(str(k)): truncate(str(v)) for k, v in (tags or {}).items()},
    }
    name = truncate(run_name or " · ".join(filter(None, [stage, " ".join(override_list)])), 250)
    active = mlflow.start_run(
        experiment_id=exp_id, run_name=name, parent_run_id=parent_run_id, tags=run_tags
    )
    run_id = active.info.run_id
    run = StageRun(client, run_id, exp_id, uri, stage, cfg_tracking, parent_run_id, root)
    try:
        run.set_tags(param_tags(params))
        text = yaml.safe_dump(container, sort_keys=False, default_flow_style=None)
        run.log_text(text, "config.yaml")
    except BaseException:
        close_stage_run(run, "FAILED")
        raise
    return run


def close_stage_run(run: StageRun, status: str) -> list[str]:
    """End ``run`` with ``status``, its kernel images logged first when it FINISHED (one colour
    scale per layer needs every epoch's kernels). Returns warnings (one line each) for a run
    that did not finish and could not be fully recorded; for a FINISHED run that could not be,
    raises :class:`TrackingError` (the kernel images' own error, if they failed)."""
    failure: BaseException | None = None
    if status == "FINISHED":
        try:
            run.log_kernel_images()
        except Exception as err:
            failure, status = err, "FAILED"
    messages = []
    try:
        run.end(status, lambda: _end_run(run.client, run.run_id, status))
    except Exception as err:
        messages.append(
            " ".join(f"could not end MLflow run {run.run_id} as {status}: {err}".split())
        )
    if run.outbox is not None:
        messages.append(unsent_message(run))
    if failure is not None:
        raise failure
    if status == "FINISHED" and messages:
        raise TrackingError(messages[0])
    return messages


def start_stage_run(*args: Any, **kwargs: Any) -> contextlib.AbstractContextManager[StageRun]:
    """Open the MLflow run of one stage in this process; a context manager yielding a
    ``StageRun``, which ends with the block's status. See the module docstring; the
    arguments are :func:`open_stage_run`'s."""
    return run_block(lambda: open_stage_run(*args, **kwargs), close_stage_run)


def unsent_message(run: StageRun) -> str:
    """One line: what of ``run`` the server did not take, where it is kept, what to do."""
    assert run.outbox is not None
    return (
        f"MLflow server {run.tracking_uri} stopped answering ({run.lost}); "
        f"{run.outbox.pending()} records of run {run.run_id} (its end included) are kept "
        f"in {run.outbox.folder}: run `convscope sync` once the server is back"
    )

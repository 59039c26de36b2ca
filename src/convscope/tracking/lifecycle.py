"""One MLflow run per stage: the store connected, the run opened with the config, and always
ended with the right status.

Usage (what ``convscope.runner`` does for every stage)::

    with start_stage_run(cfg.tracking, "train_keras", container, overrides=hydra_overrides(),
                         sweep_dir=hydra_sweep_dir()) as run:
        run.log_epoch(1, {"loss": ..., "val_loss": ...})
        run.log_kernels(1, {"conv2d": w1})

A run goes to the experiment ``<experiment_prefix>/<stage>``; its params are the flattened keys
the stage reads (:mod:`convscope.stage_keys`), the composed config is its ``config.yaml``
artifact, and tags carry the stage, git commit and dirty state, and the Hydra overrides. It
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
import json
import os
import re
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
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
from convscope.tracking.store import (
    PARENT_ENV,
    PARENT_FILE,
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
    process_tags,
    sanitize_key,
    sqlite_path,
    tracking_uri,
    truncate,
)

_READY_STORES: set[str] = set()


def connect(cfg_tracking: Any, root: str | os.PathLike[str] | None = None) -> str:
    """Resolve the tracking URI, check the store can be used, point mlflow at it; returns the URI.

    A server must answer; an SQLite store must pass
    :func:`~convscope.tracking.store.check_sqlite_store`, and a missing one is built whole
    (:func:`_build_sqlite_store`), under a file lock since parallel sweep jobs start at once.
    """
    uri = tracking_uri(cfg_tracking, root)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        apply_http_defaults()
    mlflow.set_tracking_uri(uri)
    path = sqlite_path(uri)
    if uri not in _READY_STORES and path is not None:
        digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
        lock = Path(tempfile.gettempdir()) / f"convscope-mlflow-{digest}.lock"
        try:
            with FileLock(lock, timeout=120):
                if not check_sqlite_store(path):
                    _build_sqlite_store(path)
                open_store(uri)
        except Timeout:
            raise TrackingError(f"timed out waiting for the store lock {lock}") from None
    _READY_STORES.add(uri)
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
        version = f" (version {found.group(1)})" if found else ""
        return TrackingError(
            f"{store} has an older MLflow schema{version}: back it up, then run "
            f"`mlflow db upgrade {uri}`"
        )
    first = text.split(" [SQL:")[0].split(" (Background on")[0]
    return TrackingError(f"{store} cannot be used: {first[:300]}")


def stage_experiment(
    cfg_tracking: Any, stage: str, root: str | os.PathLike[str] | None = None
) -> tuple[str, MlflowClient, str]:
    """(tracking URI, client, experiment id) of ``stage``'s experiment,
    ``<experiment_prefix>/<stage>``, where every run of the stage goes so that the UI compares
    them side by side. It is created (artifacts beside an SQLite store) or restored when
    needed; parallel jobs race to create it, and the loser reads the winner's.
    """
    if not isinstance(stage, str) or not stage.strip():
        raise ValueError(f"stage={stage!r} is not allowed: expected a non-empty stage name")
    uri = connect(cfg_tracking, root)
    client = MlflowClient(uri)
    prefix = cfg_get(cfg_tracking, "experiment_prefix", "convscope")
    name = f"{prefix}/{stage}" if prefix else stage
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


# DVC names the experiment a stage runs in; recording it links `dvc exp show` rows to runs.
DVC_ENV_TAGS = (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"))


class RunTerminated(KeyboardInterrupt):
    """SIGTERM arrived during a stage run. A KeyboardInterrupt so Ctrl-C handling covers it."""


def _raise_run_terminated(signum: int, frame: Any) -> None:
    raise RunTerminated(f"received signal {signum} (SIGTERM)")


class _SignalGuard:
    """SIGTERM raises ``RunTerminated`` while a run is open; both signals wait while it starts
    or ends.

    Starting or ending a run is a few store writes; a signal in the middle would leave a run
    RUNNING that nobody ends, so SIGINT and SIGTERM are blocked (``pthread_sigmask``) for that
    moment and delivered right after. Handlers can only be set from the main thread;
    elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self.previous: Any = None
        self.mask: set[int] | None = None

    def __enter__(self) -> _SignalGuard:
        if self.active:
            self.previous = signal.signal(signal.SIGTERM, _raise_run_terminated)
        return self

    def hold(self) -> None:
        if self.active and self.mask is None:
            self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})

    def release(self) -> None:
        """Unblock; a signal that arrived meanwhile is raised now."""
        if self.mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
            self.mask = None

    def __exit__(self, *exc: Any) -> None:
        if self.active:
            signal.signal(signal.SIGTERM, self.previous or signal.SIG_DFL)
            self.release()


def find_parent(sweep_dir: str | os.PathLike[str]) -> str | None:
    """The parent run of the sweep in ``sweep_dir``; None when no sweep callback opened one."""
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    try:
        return str(json.loads((Path(sweep_dir) / PARENT_FILE).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


@contextlib.contextmanager
def start_stage_run(
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
) -> Iterator[StageRun]:
    """Open the MLflow run of one stage; yields a ``StageRun``. See the module docstring.

    ``config_container`` is the resolved composed config (a dict or DictConfig), ``overrides``
    the run's Hydra overrides (a tag, and the run name unless ``run_name`` is given), ``root``
    the local store's folder (default :func:`convscope.paths.tracking_root`). ``sweep_dir``,
    the Hydra sweep folder in a multirun, makes the run a child of the sweep's parent unless
    ``parent_run_id`` names one. ``code_dir`` is where the git state is read (default
    ``root``); it differs for DVC's queued experiments, which run in a temporary checkout.
    ``params`` is the part of the config the stage reads (nested), logged as flattened params
    (default: the whole config); ``config.yaml`` always holds the whole config.
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
    if parent_run_id is None and sweep_dir is not None:
        parent_run_id = find_parent(sweep_dir)

    run_tags = {
        TAG_ROLE: "stage",
        TAG_STAGE: stage,
        TAG_OVERRIDES: truncate(" ".join(override_list)),
        **git_tags(code_dir if code_dir is not None else root),
        **process_tags(),
        **{tag: os.environ[env] for env, tag in DVC_ENV_TAGS if os.environ.get(env)},
        **{sanitize_key(str(k)): truncate(str(v)) for k, v in (tags or {}).items()},
    }
    name = truncate(run_name or " · ".join(filter(None, [stage, " ".join(override_list)])), 250)

    with _SignalGuard() as guard:
        guard.hold()
        try:
            active = mlflow.start_run(
                experiment_id=exp_id, run_name=name, parent_run_id=parent_run_id, tags=run_tags
            )
        finally:
            guard.release()  # a signal held during start-up is raised here
        run_id = active.info.run_id
        run = StageRun(client, run_id, exp_id, uri, stage, cfg_tracking, parent_run_id, root)
        status = "FINISHED"
        try:
            run.log_params(params)
            text = yaml.safe_dump(container, sort_keys=False, default_flow_style=None)
            run.log_text(text, "config.yaml")
            yield run
            run.log_kernel_images()  # one colour scale per layer needs every epoch's kernels
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except SystemExit as exc:
            status = "FINISHED" if exc.code in (None, 0) else "FAILED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            guard.hold()  # released by the guard's exit, after the old handler is back
            try:
                run.end(status, lambda: _end_run(client, run_id, status))
            except Exception as err:
                message = " ".join(f"could not end MLflow run {run_id} as {status}: {err}".split())
                if status == "FINISHED":
                    raise TrackingError(message) from err
                warnings.warn(message, stacklevel=2)
            if run.outbox is not None:
                message = unsent_message(run)
                if status == "FINISHED":
                    raise TrackingError(message)
                warnings.warn(message, stacklevel=2)


def unsent_message(run: StageRun) -> str:
    """One line: what of ``run`` the server did not take, where it is kept, what to do."""
    assert run.outbox is not None
    return (
        f"MLflow server {run.tracking_uri} stopped answering ({run.lost}); "
        f"{run.outbox.pending()} records of run {run.run_id} (its end included) are kept "
        f"in {run.outbox.folder}: run `convscope sync` once the server is back"
    )

"""One MLflow run per stage: opened with the config, always ended with the right status.

Usage (what ``convscope.runner`` does for every stage)::

    with start_stage_run(cfg.tracking, "train_keras", container, overrides=hydra_overrides(),
                         sweep_dir=hydra_sweep_dir()) as run:
        run.log_epoch(1, {"loss": ..., "val_loss": ...})
        run.log_kernels(1, {"conv2d": w1})

A run goes to the experiment ``<experiment_prefix>/<stage>``; its params are the flattened
resolved config, the composed config is its ``config.yaml`` artifact, and tags carry the stage,
git commit and dirty state, and the Hydra overrides. It ends FINISHED when the block completes,
FAILED on an exception, KILLED on Ctrl-C or SIGTERM (a handler turns SIGTERM into
``RunTerminated``, a ``KeyboardInterrupt``, while the run is open). In a multirun the run is a
child of the sweep's parent run (:mod:`convscope.tracking.sweep`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Param

from convscope.paths import tracking_root
from convscope.tracking.connection import stage_experiment
from convscope.tracking.logger import StageRun
from convscope.tracking.store import (
    TAG_OVERRIDES,
    TAG_ROLE,
    TAG_STAGE,
    TrackingError,
    flatten_params,
    git_tags,
    sanitize_key,
    truncate,
)
from convscope.tracking.sweep import find_parent

# DVC names the experiment a stage runs in; recording it links `dvc exp show` rows to runs.
DVC_ENV_TAGS = (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"))


class RunTerminated(KeyboardInterrupt):
    """SIGTERM arrived during a stage run. A KeyboardInterrupt so Ctrl-C handling covers it."""


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

    @staticmethod
    def _on_sigterm(signum: int, frame: Any) -> None:
        raise RunTerminated(f"received signal {signum} (SIGTERM)")

    def __enter__(self) -> _SignalGuard:
        if self.active:
            self.previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def hold(self) -> None:
        """Block SIGINT/SIGTERM (they stay pending)."""
        if self.active and self.mask is None:
            self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})

    def release(self) -> None:
        """Unblock; a signal that arrived meanwhile is raised now."""
        if self.mask is not None:
            mask, self.mask = self.mask, None
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def __exit__(self, *exc: Any) -> None:
        if self.active:
            signal.signal(signal.SIGTERM, self.previous or signal.SIG_DFL)
            self.release()


def _plain_container(config: Any) -> dict[str, Any]:
    """Accept a plain dict, a DictConfig or a dataclass instance; return plain containers."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    return dict(config) if isinstance(config, Mapping) else config


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
) -> Iterator[StageRun]:
    """Open the MLflow run of one stage; yields a ``StageRun``. See the module docstring.

    Args:
        cfg_tracking: the ``tracking`` config (TrackingConfig, DictConfig or dict).
        stage: stage name (the DVC stage); experiment ``<experiment_prefix>/<stage>``.
        config_container: the resolved composed config; flattened into params and saved as
            ``config.yaml``.
        overrides: the Hydra overrides of this run (tag ``convscope.overrides``, run name).
        root: the local store's folder; default :func:`convscope.paths.tracking_root`.
        parent_run_id: make the run a child of this run.
        run_name: default ``"<stage> <overrides>"``.
        tags: extra tags.
        sweep_dir: the Hydra sweep folder in a multirun: the run becomes a child of the
            sweep's parent run. Ignored when ``parent_run_id`` is given.
        code_dir: where to read the git commit/dirty state (default ``root``); differs from
            the root for DVC's queued experiments, which run in a temporary checkout.
    """
    root = root if root is not None else tracking_root()
    container = _plain_container(config_container)
    params = flatten_params(container)  # bad input fails before the store is touched
    override_list = [str(o) for o in (overrides or [])]
    uri, client, exp_id = stage_experiment(cfg_tracking, stage, root)
    if parent_run_id is None and sweep_dir is not None:
        parent_run_id = find_parent(sweep_dir)

    run_tags = {
        TAG_ROLE: "stage",
        TAG_STAGE: stage,
        TAG_OVERRIDES: truncate(" ".join(override_list)),
        **git_tags(code_dir if code_dir is not None else root),
        **{tag: os.environ[env] for env, tag in DVC_ENV_TAGS if os.environ.get(env)},
        **{sanitize_key(str(k)): truncate(str(v)) for k, v in (tags or {}).items()},
    }
    name = truncate(run_name or " ".join([stage, *override_list]), 250)

    with _SignalGuard() as guard:
        guard.hold()
        try:
            active = mlflow.start_run(
                experiment_id=exp_id, run_name=name, parent_run_id=parent_run_id, tags=run_tags
            )
        finally:
            guard.release()  # a signal held during start-up is raised here
        run_id = active.info.run_id
        status = "FINISHED"
        try:
            client.log_batch(
                run_id, params=[Param(k, v) for k, v in params.items()], synchronous=True
            )
            text = yaml.safe_dump(container, sort_keys=False, default_flow_style=None)
            client.log_text(run_id, text, "config.yaml")
            yield StageRun(client, run_id, exp_id, uri, stage, cfg_tracking, parent_run_id)
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
                _end_run(client, run_id, status)
            except Exception as err:
                message = " ".join(f"could not end MLflow run {run_id} as {status}: {err}".split())
                if status == "FINISHED":
                    raise TrackingError(message) from err
                warnings.warn(message, stacklevel=2)

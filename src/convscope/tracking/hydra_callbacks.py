"""One MLflow parent run per Hydra multirun, its jobs' runs as children; Hydra helpers.

:class:`MlflowSweepCallback` (enabled in ``conf/config.yaml`` under ``hydra.callbacks``) owns
the parent: :func:`open_sweep` creates it before the first job and
:func:`~convscope.tracking.settle.settle_sweep` ends
it after the last. Jobs find it through ``PARENT_ENV``, which the launcher's jobs inherit
(in-process for the basic launcher, worker processes for joblib; Ray's workers get it in
``ray.init``'s runtime environment), or else through ``PARENT_FILE`` in the sweep folder. A
sweep on a Ray cluster of other machines with ``tracking.backend=local`` is refused in one
line before anything starts.

The parent ends FINISHED only when the sweep completed and every child finished; otherwise
KILLED when the sweep was interrupted or a child was killed, FAILED when not, and tag
``convscope.sweep_jobs`` counts the children by status. A child still RUNNING at that point
lost its process and is ended first (KILLED in an interrupted sweep, else FAILED), so no
child outlives its sweep as RUNNING.

Before it ends, the callback's ``summarise`` function (a dotted name set in conf/config.yaml;
there :func:`convscope.compare.stability.sweep_stability`, the filter stability of the
finished children) returns metrics that are logged on the parent, so tracking never imports
the packages that read runs back.

Importing this module does not import mlflow; the functions that talk to the store do.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from convscope.files import atomic_write_text
from convscope.paths import tracking_root
from convscope.tracking.store import (
    PARENT_ENV,
    PARENT_FILE,
    TAG_ROLE,
    TAG_STAGE,
    TAG_SWEEP_DIR,
    TAG_SWEEP_OVERRIDES,
    TrackingError,
    check_server,
    experiment_name,
    git_tags,
    process_tags,
    tracking_uri,
    truncate,
)
from convscope.validation import error_line, redact_credentials

log = logging.getLogger(__name__)


def _absolute(sweep_dir: Any, launch_cwd: Any) -> Path:
    """A relative sweep dir is relative to where Hydra was launched, which is not the job's
    working directory when ``hydra.job.chdir=true``."""
    path = Path(str(sweep_dir)).expanduser()
    if not path.is_absolute() and launch_cwd:
        path = Path(str(launch_cwd)) / path
    return path.resolve()


def hydra_sweep_dir() -> Path | None:
    """The current multirun's sweep folder (absolute), or None outside a Hydra multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return _absolute(HydraConfig.get().sweep.dir, HydraConfig.get().runtime.cwd)


def hydra_overrides() -> list[str]:
    """This job's task overrides (``keras.filters=16``), [] outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def swept_keys(sweep_dir: str | os.PathLike[str] | None) -> set[str] | None:
    """The keys a multirun sweeps (``keras.filters`` of ``keras.filters=4,8``), read from the
    ``multirun.yaml`` Hydra writes into the sweep folder; None outside a sweep or when that
    file cannot be read (a worker on another machine)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if sweep_dir is None:
        return None
    try:
        saved = OmegaConf.load(Path(sweep_dir) / "multirun.yaml")
        task = [str(o) for o in OmegaConf.select(saved, "hydra.overrides.task") or []]
        parsed = OverridesParser.create().parse_overrides(overrides=task)
    except Exception:  # noqa: BLE001 - any unreadable file means: not known here
        return None
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def job_run_name(stage: str, overrides: list[str], swept: set[str] | None) -> str:
    """A run's name, leading with what tells it apart from its neighbours in the UI's list.

    By hand: ``train_keras · keras.epochs=1`` (the stage, then what was changed). A sweep's
    job: ``keras.filters=8 · train_keras`` (the swept values first, as its siblings share the
    stage and the other overrides), then any other overrides.
    """
    if swept is None:
        return " · ".join(filter(None, [stage, " ".join(overrides)]))
    key = [o.partition("=")[0].lstrip("+~") for o in overrides]
    lead = " ".join(o for o, k in zip(overrides, key, strict=True) if k in swept)
    rest = " ".join(o for o, k in zip(overrides, key, strict=True) if k not in swept)
    return " · ".join(filter(None, [lead, stage, rest]))


def open_sweep(
    cfg_tracking: Any,
    stage: str,
    sweep_dir: str | os.PathLike[str],
    overrides: list[str],
    root: str | os.PathLike[str] | None = None,
) -> str:
    """Create the sweep's parent run in ``stage``'s experiment and publish its id to the jobs
    (``PARENT_ENV`` and ``PARENT_FILE``); returns the id."""
    from convscope.tracking.lifecycle import stage_experiment

    folder = Path(sweep_dir).resolve()
    # the login and the permission to record in the experiment, before any job starts
    check_server(tracking_uri(cfg_tracking, root), experiment=experiment_name(cfg_tracking, stage))
    uri, client, exp_id = stage_experiment(cfg_tracking, stage, root)
    tags = {
        TAG_ROLE: "sweep",
        TAG_STAGE: stage,
        TAG_SWEEP_DIR: str(folder),
        TAG_SWEEP_OVERRIDES: truncate(redact_credentials(" ".join(overrides))),
        **git_tags(root if root is not None else tracking_root()),
        **process_tags(),
    }
    name = truncate(redact_credentials(" ".join([stage, "sweep", *overrides])), 250)
    run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    atomic_write_text(folder / PARENT_FILE, json.dumps({"run_id": run_id, "tracking_uri": uri}))
    os.environ[PARENT_ENV] = run_id
    return run_id


def _sweep_dir_of(config: DictConfig) -> Path:
    return _absolute(
        OmegaConf.select(config, "hydra.sweep.dir"),
        OmegaConf.select(config, "hydra.runtime.cwd", default=None),
    )


class MlflowSweepCallback(Callback):
    """Opens the sweep's parent run in the experiment of the stage (default: the job's name,
    which is the stage's script) and settles it when the multirun ends.

    Hydra skips ``on_multirun_end`` when a job fails (the sweeper re-raises first), so the
    parent is also settled at the launching process's exit, as not completed. SIGTERM would
    end that process without running exit handlers, so while the sweep runs it raises
    ``KeyboardInterrupt`` like Ctrl-C does (the launcher then stops its workers), and either
    signal settles the parent KILLED.
    """

    def __init__(self, stage: str | None = None, summarise: str | None = None) -> None:
        self.stage = stage
        self.summarise = summarise  # "pkg.module.function" run on the parent before it ends
        self.sweep_dir: Path | None = None
        self.interrupted = False
        self._previous: dict[int, Any] = {}

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def _interrupt(self, signum: int, frame: Any) -> None:
        self.interrupted = True
        raise KeyboardInterrupt(f"sweep stopped by signal {signum}")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from convscope.launchers import check_tracking_reach, pass_to_ray_workers

        if (problem := check_tracking_reach(config)) is not None:
            print(f"convscope: error: {problem}", file=sys.stderr, flush=True)
            raise SystemExit(2)
        self.sweep_dir = _sweep_dir_of(config)
        stage = self.stage or str(OmegaConf.select(config, "hydra.job.name"))
        overrides = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task") or []]
        tracking = OmegaConf.select(config, "tracking", default=None) or {}
        if OmegaConf.select(config, "tracking.backend", default=None) == "none":
            self.sweep_dir = None  # nothing is recorded: no parent run to open or settle
            return
        try:
            run_id = open_sweep(tracking, stage, self.sweep_dir, overrides)
        except TrackingError as exc:
            print(f"convscope: error: {error_line(str(exc))}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        pass_to_ray_workers(config, PARENT_ENV, run_id)
        atexit.register(self._settle, False)
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._interrupt) for s in self.SIGNALS}

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep_dir is None:
            return
        atexit.unregister(self._settle)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self.sweep_dir = _sweep_dir_of(config)
        self._settle(True)

    def _settle(self, completed: bool) -> None:
        from convscope.tracking.settle import settle_sweep

        os.environ.pop(PARENT_ENV, None)
        if self.sweep_dir is not None:
            status = settle_sweep(
                self.sweep_dir, completed, self.summarise, interrupted=self.interrupted
            )
            log.info("MLflow sweep parent: %s", status)
            try:
                run_id = json.loads((self.sweep_dir / PARENT_FILE).read_text())["run_id"]
            except (OSError, ValueError, KeyError, TypeError):
                return
            # the sweep's last line: the id `convscope compare -p` needs
            print(
                f"sweep {str(status).lower()}: MLflow parent run {run_id}; compare its jobs "
                f"with `convscope compare -p {run_id}`",
                flush=True,
            )

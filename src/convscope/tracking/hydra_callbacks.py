"""Hydra glue: what a job needs to know, and the callback that owns a sweep's parent run.

Enabled in ``conf/config.yaml``::

    hydra:
      callbacks:
        mlflow_sweep:
          _target_: convscope.tracking.hydra_callbacks.MlflowSweepCallback

Importing this module does not import mlflow; the callback's methods do.
"""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _absolute(sweep_dir: Any, launch_cwd: Any) -> Path:
    """A relative sweep dir is relative to where Hydra was launched, which is not the job's
    working directory when ``hydra.job.chdir=true``."""
    path = Path(str(sweep_dir)).expanduser()
    if not path.is_absolute() and launch_cwd:
        path = Path(str(launch_cwd)) / path
    return path.resolve()


def _sweep_dir_of(config: DictConfig) -> Path:
    return _absolute(
        OmegaConf.select(config, "hydra.sweep.dir"),
        OmegaConf.select(config, "hydra.runtime.cwd", default=None),
    )


def hydra_sweep_dir() -> Path | None:
    """The current multirun's sweep folder (absolute), or None outside a Hydra multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return _absolute(hydra_cfg.sweep.dir, hydra_cfg.runtime.cwd)


def hydra_overrides() -> list[str]:
    """This job's task overrides (``keras.filters=16``), [] outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


class MlflowSweepCallback(Callback):
    """One MLflow parent run per multirun, in the experiment of the stage (the job's name).

    Start: creates the parent, tagged with the sweep's overrides (``keras.filters=8,16,32``);
    see :mod:`convscope.tracking.sweep` for how jobs find it. End: settles it from its
    children. Hydra skips ``on_multirun_end`` when a job fails (the sweeper re-raises first),
    so the parent is also settled at the launching process's exit, as not completed.
    """

    def __init__(self, stage: str | None = None) -> None:
        self.stage = stage
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from convscope.tracking.sweep import open_sweep

        self.sweep_dir = _sweep_dir_of(config)
        stage = self.stage or str(OmegaConf.select(config, "hydra.job.name"))
        overrides = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task") or []]
        tracking = OmegaConf.select(config, "tracking", default=None) or {}
        open_sweep(tracking, stage, self.sweep_dir, overrides)
        atexit.register(self._settle, False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._settle)
        self.sweep_dir = _sweep_dir_of(config)
        self._settle(True)

    def _settle(self, completed: bool) -> None:
        from convscope.tracking.sweep import PARENT_ENV, settle_sweep

        os.environ.pop(PARENT_ENV, None)
        if self.sweep_dir is not None:
            log.info("MLflow sweep parent: %s", settle_sweep(self.sweep_dir, completed))

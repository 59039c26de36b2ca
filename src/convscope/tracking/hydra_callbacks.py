"""Hydra glue for MLflow: one parent run per multirun sweep, and what a job needs to know.

Enable in conf/ (e.g. in ``conf/config.yaml`` or ``conf/hydra/...``)::

    hydra:
      callbacks:
        mlflow_sweep:
          _target_: convscope.tracking.hydra_callbacks.MlflowSweepCallback

Hydra calls ``on_multirun_start`` in the launching process before any job and
``on_multirun_end`` after the last one (it is *not* called when a job fails: the sweeper
re-raises first; the jobs' own settling keeps the parent from staying RUNNING then). The jobs
(in-process for the basic launcher, worker processes for joblib) find the sweep through
``hydra_sweep_dir()`` and pass it as ``start_stage_run(..., sweep_dir=...)``.

Importing this module does not import mlflow; only the final settle does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from convscope.tracking import sweeps

log = logging.getLogger(__name__)


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


def hydra_overrides() -> list[str]:
    """This job's task overrides (``keras.filters=16``), [] outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


class MlflowSweepCallback(Callback):
    """Marks the start of a multirun and settles its MLflow parent runs at the end.

    Start: writes a fresh sweep id and the sweep's overrides (``keras.filters=8,16,32``) into
    the sweep folder's state file, so the first job creates a new parent run tagged with them,
    even if the sweep folder is reused. End: every parent run recorded there ends FINISHED
    (or FAILED/KILLED from its children), and a child left RUNNING by a hard-killed job
    is ended FAILED.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _sweep_dir_of(config)
        overrides = [str(o) for o in config.hydra.overrides.task]
        sweep_id = sweeps.begin_sweep(sweep_dir, overrides)
        log.debug("convscope sweep %s in %s", sweep_id, sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = sweeps.resolve_sweep_dir(_sweep_dir_of(config))
        state = sweeps.read_state(sweep_dir)
        if not sweeps.needs_settling(state):
            # every job closed its run and the last one ended the parent: skip mlflow's import
            for stage, entry in state.get("parents", {}).items():
                log.info("MLflow sweep parent of %s: %s", stage, entry.get("status"))
            return
        from convscope.tracking.mlflow_run import settle_sweep

        for stage, status in settle_sweep(sweep_dir, orphans_failed=True).items():
            log.info("MLflow sweep parent of %s: %s", stage, status)

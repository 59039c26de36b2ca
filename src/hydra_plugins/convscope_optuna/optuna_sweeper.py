"""``-m hydra/sweeper=optuna``: a thin Hydra sweeper over Optuna's ask-and-tell interface.

Why convscope carries its own: the released hydra-optuna-sweeper (1.3.x) pins optuna<3, and
its Optuna 4 version exists only as a pre-release that needs a pre-release hydra-core; and
no Hydra sweeper can prune a trial mid-training, since a sweeper sees a job only once it
returns. This one keeps hydra-optuna-sweeper's user-facing names (``hydra.sweeper.params``
in Hydra's override grammar, ``n_trials``, ``n_jobs``, ``direction``, ``sampler.seed``,
``study_name``, ``storage``) and adds ``objective`` and ``pruner``.

Each round asks the study for ``n_jobs`` trials, launches them as one batch through the
configured launcher (basic, joblib, Ray), and tells the study each job's result: the
objective from the metrics the stage returns, PRUNED for a job the pruner stopped (the job
reports its epochs to the study itself, :mod:`convscope.search.trial`), FAIL for a job that
failed; the study goes on. A study with the same ``study_name`` and storage continues where
it stopped: ``n_trials`` more trials. At the end the sweep's MLflow parent run records the
study (:mod:`convscope.search.summary`).

Hydra imports every module under ``hydra_plugins`` at start-up: this one imports optuna and
convscope only when a sweep runs.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    """Hydra's sweeper plugin of conf/hydra/sweeper/optuna.yaml (its keys are the study's)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None
        self.job_idx = 0

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> Any:
        from convscope.config import ConfigError
        from convscope.search.check import check_settings
        from convscope.search.study import open_study

        assert self.config is not None
        stage = str(OmegaConf.select(self.config, "hydra.job.name"))
        settings_cfg = OmegaConf.to_container(self.config.hydra.sweeper, resolve=True)
        try:
            settings, space = check_settings(
                stage, arguments, settings_cfg, compose_point=self._compose_point
            )
            study = open_study(settings)
        except ConfigError as exc:
            print(f"convscope: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        return run_study(self, settings, space, study)

    def _compose_point(self, overrides: list[str]) -> Any:
        """One trial's config, composed as its job will compose it (the app's loader)."""
        from convscope.config import ConfigError, describe_hydra_error

        assert self.hydra_context is not None and self.config is not None
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        except Exception as exc:  # noqa: BLE001 - Hydra's composition errors
            raise ConfigError(describe_hydra_error(exc, overrides)) from None
        with open_dict(cfg):
            del cfg["hydra"]  # a job's config has no hydra node (its values need a job)
        return cfg


def run_study(sweeper: OptunaSweeper, settings: Any, space: Any, study: Any) -> list[Any]:
    """Ask, launch, tell, in batches of ``n_jobs``, until ``n_trials`` trials have run."""
    import optuna

    from convscope.search.summary import record_study
    from convscope.search.trial import TRIAL_ENV, encode

    first = len(study.trials)
    returns: list[Any] = []
    left = settings.n_trials
    while left > 0:
        batch = min(left, settings.n_jobs)
        trials = [study.ask(fixed_distributions=space.distributions) for _ in range(batch)]
        jobs = []
        for trial in trials:
            spec = {**settings.job_spec(), "trial_id": trial._trial_id, "number": trial.number}
            env = f"++hydra.job.env_set.{TRIAL_ENV}={encode(spec)}"
            overrides = space.overrides(trial.params)
            trial.set_user_attr("overrides", overrides)  # what `convscope adopt` writes
            jobs.append((*overrides, env))
        try:
            results = sweeper.launcher.launch(jobs, initial_job_idx=sweeper.job_idx)
        except BaseException:  # Ctrl-C, SIGTERM: the trials in flight end FAIL in the study
            for trial in trials:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        sweeper.job_idx += len(results)
        for trial, result in zip(trials, results, strict=True):
            state, value = _outcome(result, settings.objective)
            if state == "COMPLETE":
                study.tell(trial, value)
            elif state == "PRUNED":
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.info("trial %d: %s %s", trial.number, state, "" if value is None else value)
        returns.append(results)
        left -= batch
    try:
        record_study(sweeper.config, settings, study, first)
    except Exception as exc:  # noqa: BLE001 - the study is kept in its storage either way
        log.warning("the study's summary was not recorded in MLflow: %s", exc)
    return returns


def _outcome(result: Any, objective: str) -> tuple[str, float | None]:
    """A job's state in the study and its objective value."""
    import math

    failure = getattr(result, "_return_value", None)
    if isinstance(failure, BaseException):  # the job failed: say why (Hydra's getter re-raises)
        log.warning("trial failed: %s", " ".join(str(failure).split())[:500])
        return "FAIL", None
    metrics = result.return_value
    if not isinstance(metrics, dict):
        return "FAIL", None
    if "pruned_epoch" in metrics:
        return "PRUNED", None
    value = metrics.get(objective)
    if value is None or not math.isfinite(float(value)):
        return "FAIL", None
    return "COMPLETE", float(value)

"""Studies from the sweeper's settings: storage, sampler, pruner, direction, objective.

Local runs keep their studies in SQLite beside the tracking store (``optuna.db`` next to
``mlflow.db``); a team points ``hydra.sweeper.storage`` at its PostgreSQL. SQLite is opened
with a generous lock timeout: a sweep's jobs in flight (``n_jobs``) each write their epochs.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from convscope.config import ConfigError
from convscope.config.schema import config_checks
from convscope.validation import check_choice, check_int, redact_credentials

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "StudySettings",
    "default_storage",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "open_study",
]

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = ("minimize", "maximize")
STUDY_DB = "optuna.db"
#: defaults of the median pruner: trials it lets finish before it compares, and the first
#: epoch at which it may stop a trial (Optuna's ``n_warmup_steps``: no pruning below it)
MEDIAN_STARTUP_TRIALS = 5
MEDIAN_WARMUP_EPOCHS = 1


def default_storage() -> str:
    """``sqlite:///<tracking root>/optuna.db``: beside the local MLflow store."""
    from convscope.paths import tracking_root

    return f"sqlite:///{tracking_root() / STUDY_DB}"


def stage_module(stage: str) -> Any:
    return importlib.import_module(f"convscope.stages.{stage}")


class StudySettings:
    """The sweeper's settings, checked: one :class:`ConfigError` line for a bad one."""

    @config_checks
    def __init__(self, stage: str, settings: Mapping[str, Any]) -> None:
        self.stage = stage
        self.n_trials = check_int(settings.get("n_trials", 20), "hydra.sweeper.n_trials", min=1)
        self.n_jobs = check_int(settings.get("n_jobs", 1), "hydra.sweeper.n_jobs", min=1)
        direction = str(settings.get("direction") or "minimize")
        self.direction = check_choice(direction, "hydra.sweeper.direction", DIRECTIONS)
        sampler = settings.get("sampler") or "tpe"
        if isinstance(sampler, str):
            sampler = {"name": sampler}
        name = str(sampler.get("name") or "tpe")
        self.sampler = check_choice(name, "hydra.sweeper.sampler", SAMPLERS)
        self.seed = sampler.get("seed")
        pruner = settings.get("pruner") or "none"
        if isinstance(pruner, str):
            pruner = {"name": pruner}
        name = str(pruner.get("name") or "none")
        self.pruner = {"name": check_choice(name, "hydra.sweeper.pruner", PRUNERS)}
        for key, default in (
            ("startup_trials", MEDIAN_STARTUP_TRIALS),
            ("warmup_epochs", MEDIAN_WARMUP_EPOCHS),
        ):
            value = pruner.get(key, default)
            self.pruner[key] = check_int(value, f"hydra.sweeper.pruner.{key}", min=0)
        module = stage_module(stage)
        recorded = tuple(getattr(module, "OBJECTIVES", ()))
        if not recorded:
            raise ConfigError(f"stage {stage} records no metric a study can optimise")
        self.objective = str(settings.get("objective") or recorded[0])
        if self.objective not in recorded:
            raise ConfigError(
                f"hydra.sweeper.objective={self.objective!r} is not allowed: stage {stage} "
                "records " + ", ".join(recorded)
            )
        self.epochs_key = getattr(module, "EPOCHS_KEY", None)
        self.study_name = str(settings.get("study_name") or f"convscope-{stage}")
        self.storage = str(settings.get("storage") or default_storage())

    def job_spec(self) -> dict[str, Any]:
        """What a trial's job needs to report to the study (see :mod:`.trial`)."""
        return {
            "storage": self.storage,
            "study": self.study_name,
            "objective": self.objective,
            "pruner": self.pruner,
            "epochs_key": self.epochs_key,
        }


def make_sampler(settings: StudySettings, done: int = 0) -> Any:
    """The sampler; a seeded one continuing a study of ``done`` trials is seeded
    ``seed + done``, else it would propose the first trials' values again."""
    import optuna

    seed = None if settings.seed is None else int(settings.seed) + done
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(spec: Mapping[str, Any]) -> Any:
    """The pruner of ``spec`` (:attr:`StudySettings.pruner`): median (after
    ``startup_trials`` complete trials, from epoch ``warmup_epochs`` on), hyperband (its
    epochs from 1 to what the trials report), or none."""
    import optuna

    if spec["name"] == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(spec["startup_trials"]),
            n_warmup_steps=int(spec["warmup_epochs"]),
        )
    if spec["name"] == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    return optuna.pruners.NopPruner()


def make_storage(url: str) -> Any:
    """Optuna's RDB storage at ``url``; an unreachable or refused one is a ConfigError."""
    import optuna

    kwargs: dict[str, Any] = {}
    engine_url = url
    if url.startswith("postgresql://"):  # the project's PostgreSQL driver is psycopg 3
        engine_url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite:"):
        kwargs = {"connect_args": {"timeout": 60}}
    try:
        return optuna.storages.RDBStorage(engine_url, engine_kwargs=kwargs)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy's errors come in many classes
        reason = getattr(exc, "orig", None) or exc  # the driver's own words, not sqlalchemy's
        raise ConfigError(
            f"hydra.sweeper.storage={redact_credentials(url)} cannot be opened: "
            + " ".join(str(reason).split())[:300]
        ) from None


def open_study(settings: StudySettings) -> Any:
    """The study named in ``settings`` (created, or loaded to continue it)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=make_storage(settings.storage),
        sampler=make_sampler(settings),
        pruner=make_pruner(settings.pruner),
        direction=settings.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != settings.direction:
        raise ConfigError(
            f"hydra.sweeper.direction={settings.direction} is not allowed: study "
            f"{settings.study_name!r} exists and minimizes or maximizes the other way"
        )
    if done := len(study.get_trials(deepcopy=False)):
        study.sampler = make_sampler(settings, done)
    return study

"""Everything an Optuna sweep can get wrong, checked before its parent run or first trial."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from convscope.config import ConfigError, compose, describe_hydra_error, validate
from convscope.search.space import SearchSpace, check_space, parse_space
from convscope.search.study import StudySettings, make_storage

__all__ = ["check_settings", "check_study"]


def check_settings(
    stage: str,
    arguments: Sequence[str],
    sweeper: Any,
    config_name: str = "config",
    compose_point: Callable[[list[str]], Any] | None = None,
    config_dir: str | None = None,
) -> tuple[StudySettings, SearchSpace]:
    """The sweeper's settings (``hydra.sweeper``, a mapping) and search space, checked: an
    unknown key or a value the schema refuses in the space, a bad setting, an objective the
    stage does not record, a storage that cannot be opened; each a one-line ConfigError.

    ``compose_point(overrides)`` composes one trial's config (default: conf/ through
    :func:`convscope.config.compose`; inside a running Hydra app, the app's config loader)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(sweeper, DictConfig):
        sweeper = OmegaConf.to_container(sweeper, resolve=True)
    settings = StudySettings(stage, sweeper)
    space = parse_space(arguments, sweeper.get("params") or {})
    compose_point = compose_point or _composer(config_name, config_dir)
    check_space(space, point_checker(stage, compose_point))
    make_storage(settings.storage).remove_session()
    return settings, space


def _composer(config_name: str, config_dir: str | None) -> Callable[[list[str]], Any]:
    def compose_point(overrides: list[str]) -> Any:
        try:
            return compose(overrides, config_name, extra_search_dir=config_dir)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - Hydra's composition errors come in many classes
            raise ConfigError(describe_hydra_error(exc, overrides)) from None

    return compose_point


def point_checker(
    stage: str, compose_point: Callable[[list[str]], Any]
) -> Callable[[list[str]], None]:
    """Check one trial's overrides as its job will: the schema, and that the stage reads every
    key they set (else each trial would fail in its job)."""
    from convscope.stage_keys import params_read  # the job's own check, before any trial

    def check(overrides: list[str]) -> None:
        cfg = compose_point(overrides)
        validate(cfg)
        params_read(stage, cfg, [o for o in overrides if not o.lstrip("+~").startswith("hydra")])

    return check


def check_study(
    stage: str | None,
    overrides: Sequence[str],
    config_name: str = "config",
    config_dir: str | None = None,
) -> None:
    """Check an Optuna sweep's command line (``overrides``) before Hydra runs it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if stage is None:
        return
    try:
        parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
    except HydraException as exc:
        raise ConfigError(f"cannot parse {' '.join(overrides)!r}: {exc}") from None
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    swept = [o.input_line for o in parsed if o.is_sweep_override()]
    try:
        cfg = compose(fixed, config_name, extra_search_dir=config_dir, return_hydra_config=True)
    except Exception as exc:  # noqa: BLE001 - Hydra's composition errors come in many classes
        raise ConfigError(" ".join(str(exc).split())) from None
    sweeper = cfg.hydra.sweeper
    check_settings(stage, swept, sweeper, config_name=config_name, config_dir=config_dir)

"""Compose the run config with Hydra and check it against the typed schemas.

conf/ holds every default value (YAML); :mod:`convscope.config.schema` the types and ranges
(dataclasses). :func:`compose` builds a config as a Hydra app would, without starting one;
:func:`validate` turns it into a :class:`Config`, every failure one :class:`ConfigError` line
naming the key, the value and what is allowed; :func:`register` puts the schemas in Hydra's
ConfigStore (``--config-name schema/config --cfg job`` shows them).

The YAML does not inherit the schemas (Hydra's "schema in the defaults list"): DVC composes
params.yaml in its own process for ``dvc exp run -S``, where convscope's ConfigStore entries
do not exist, so conf/ composes from YAML alone and the schema check follows composition.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from convscope.config.schema import (
    Config,
    ConfigError,
    DataConfig,
    InterpretConfig,
    KerasConfig,
    LinesDataConfig,
    MiniCNNConfig,
    MnistDataConfig,
    ScratchCNNConfig,
    ScratchConfig,
    TrackingConfig,
    VizConfig,
    check_seed,
)
from convscope.paths import conf_dir
from convscope.validation import short_repr

__all__ = [
    "Config",
    "ConfigError",
    "compose",
    "dump_params",
    "params_text",
    "register",
    "validate",
    "validate_overrides",
]

_registered = False


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (group ``schema``); safe to call again."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="schema", name="config", node=Config, package="_global_")
    for name, node, package in (
        ("data", DataConfig, "data"),
        ("data_lines", LinesDataConfig, "data.lines"),
        ("data_mnist", MnistDataConfig, "data.mnist"),
        ("scratch", ScratchConfig, "scratch"),
        ("scratch_mini_cnn", MiniCNNConfig, "scratch.mini_cnn"),
        ("scratch_mnist_cnn", ScratchCNNConfig, "scratch.mnist_cnn"),
        ("keras", KerasConfig, "keras"),
        ("viz", VizConfig, "viz"),
        ("interpret", InterpretConfig, "interpret"),
        ("tracking", TrackingConfig, "tracking"),
    ):
        cs.store(group="schema", name=name, node=node, package=package)
    _registered = True


# --------------------------------------------------------------------------- composition


def compose(
    overrides: Iterable[str] = (),
    config_name: str = "config",
    config_dir: str | os.PathLike[str] | None = None,
    *,
    extra_search_dir: str | os.PathLike[str] | None = None,
    return_hydra_config: bool = False,
):
    """What a Hydra app on ``config_dir`` (default conf/) receives as ``cfg``, unresolved.

    ``extra_search_dir`` is searched first, like a command line's ``--config-dir`` (DVC's
    ``--config-dir . --config-name params``). Hydra's errors propagate.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    overrides = list(overrides)
    primary = Path(config_dir or conf_dir()).resolve()
    if extra_search_dir is not None:
        extra = Path(extra_search_dir).resolve()
        if not extra.is_dir():
            raise ConfigError(
                f"--config-dir={str(extra_search_dir)!r} is not allowed: expected a folder"
            )
        # Searched first, with conf/ still reachable for groups, like `--config-dir`.
        overrides.append(f"hydra.searchpath=[file://{primary}]")
        primary = extra
    with initialize_config_dir(str(primary), version_base="1.3", job_name="convscope"):
        return hydra_compose(
            config_name=config_name,
            overrides=overrides,
            return_hydra_config=return_hydra_config,
        )


def params_text(
    overrides: Iterable[str] = (), config_dir: str | os.PathLike[str] | None = None
) -> str:
    """params.yaml's text: conf/ composed with ``overrides``, resolved, dumped the way DVC's
    own Hydra composition (``dvc exp run -S``) dumps it, so DVC never rewrites it differently.
    """
    from omegaconf import OmegaConf

    cfg = compose(overrides, config_dir=config_dir)
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)


def dump_params(
    path: str | os.PathLike[str],
    overrides: Iterable[str] = (),
    config_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Validate ``overrides`` and write the composed params file atomically; return its path."""
    from convscope.files import atomic_write_text

    overrides = list(overrides)
    validate_overrides(overrides, config_dir=config_dir)
    return atomic_write_text(path, params_text(overrides, config_dir))


# --------------------------------------------------------------------------- validation


def validate(cfg: Any) -> Config:
    """Check a composed config against the schemas; return it as a :class:`Config`.

    ``cfg`` is a DictConfig or a plain mapping; interpolations are resolved first and the
    ``hydra`` node is ignored. OmegaConf checks the types and unknown keys while merging into
    the structured schema, the dataclasses' ``__post_init__`` the ranges; every failure is one
    :class:`ConfigError` line naming the key, the value and what is allowed.
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    register()
    values: Any = None
    try:
        if not isinstance(cfg, DictConfig):
            cfg = OmegaConf.create(dict(cfg))
        # Hydra's own node is not ours to check, and resolving it outside a running app fails.
        if "hydra" in cfg:
            cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        values = OmegaConf.to_container(cfg, resolve=True)
        if isinstance(values.get("seed"), int):
            # every group's seed interpolates it: name the key the user typed
            check_seed("seed", values["seed"])
        # Merged in the schema's field order, keras before scratch (see Config), so an error
        # names the key the user typed, not the interpolation it flows into.
        order = [f.name for f in dataclasses.fields(Config)]
        ordered = sorted(values, key=lambda k: order.index(k) if k in order else len(order))
        merged = OmegaConf.merge(OmegaConf.structured(Config), {k: values[k] for k in ordered})
        return OmegaConf.to_object(merged)
    except ConfigKeyError as exc:
        parent, _, _ = (exc.full_key or "").rpartition(".")
        allowed = ", ".join(_schema_keys(parent))
        raise ConfigError(
            f"{exc.full_key}={short_repr(_lookup(values, exc.full_key))} is not allowed: "
            f"unknown key, expected one of {allowed}"
        ) from exc
    except ValidationError as exc:
        field_type = None
        if dataclasses.is_dataclass(exc.object_type) and exc.key is not None:
            field_type = typing.get_type_hints(exc.object_type).get(str(exc.key))
        expected = _describe_type(field_type) if field_type else "a valid value"
        raise ConfigError(
            f"{exc.full_key}={short_repr(_lookup(values, exc.full_key))} is not allowed: "
            f"expected {expected}"
        ) from exc
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from exc


def _lookup(tree: Any, key: str | None) -> Any:
    """The value at ``key`` (``viz.images[0]``) in plain containers, None if absent."""
    node = tree
    for part in re.findall(r"[^.\[\]]+", key or ""):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


_TYPE_NAMES = {
    int: ("an integer", "integers"),
    float: ("a float", "floats"),
    str: ("a string", "strings"),
    bool: ("a boolean (true/false)", "booleans (true/false)"),
}


def _describe_type(annotation: Any) -> str:
    """'an integer', 'a float', 'a list of integers or null', ... for an error message."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        text = " or ".join(_describe_type(a) for a in args if a is not type(None))
        return text + (" or null" if type(None) in args else "")
    if origin is list:
        return f"a list of {_TYPE_NAMES.get(args[0] if args else None, ('', 'values'))[1]}"
    return _TYPE_NAMES.get(annotation, (f"a {getattr(annotation, '__name__', annotation)}",))[0]


def _one_line(exc: BaseException) -> str:
    """The first meaningful line of an exception message (OmegaConf appends key dumps)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


# --------------------------------------------------------------------------- command lines


def validate_overrides(
    overrides: Sequence[str],
    config_name: str = "config",
    config_dir: str | os.PathLike[str] | None = None,
    *,
    extra_search_dir: str | os.PathLike[str] | None = None,
) -> Config:
    """Compose and validate one run's overrides; any failure is a one-line ConfigError.

    A stage so refuses a bad command line before Hydra makes a run folder or MLflow a run.
    """
    try:
        cfg = compose(overrides, config_name, config_dir, extra_search_dir=extra_search_dir)
    except ConfigError:
        raise
    except Exception as exc:  # Hydra's composition errors come in several classes
        raise ConfigError(describe_hydra_error(exc, overrides)) from exc
    return validate(cfg)


def describe_hydra_error(exc: BaseException, overrides: Sequence[str]) -> str:
    """One line for a Hydra composition error: an unknown key, a missing group option, ..."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, MissingConfigException):
        missing = exc.missing_cfg_file or ""
        group, _, option = missing.rpartition("/")
        options = list(exc.options or [])
        if group and options:
            return f"{group}={option!r} is not allowed: expected one of " + ", ".join(options)
        return _one_line(exc)
    if isinstance(exc, OverrideParseException):
        return f"cannot parse the override {short_repr(exc.override)}: {_one_line(exc)}"

    key = getattr(exc.__cause__, "full_key", None)
    if not key:
        return _one_line(exc)
    typed = (o.partition("=") for o in overrides)
    value = next((short_repr(v) for name, sep, v in typed if sep and name.lstrip("+~") == key), "?")
    allowed = _schema_keys(key.rpartition(".")[0])
    where = f"expected one of {', '.join(allowed)}" if allowed else "not in the config"
    return f"{key}={value} is not allowed: unknown key, {where}"


def _schema_keys(dotted: str) -> list[str]:
    """Field names of the schema node at ``dotted`` ('' is the top level)."""
    node: Any = Config
    for part in filter(None, dotted.split(".")):
        hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        node = hints.get(part)
        if node is None:
            return []
    if not dataclasses.is_dataclass(node):
        return []
    return [f.name for f in dataclasses.fields(node)]

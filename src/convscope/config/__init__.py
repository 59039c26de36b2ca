"""Compose the run config with Hydra and check it against the typed schemas.

conf/ holds every default value (YAML, composed by Hydra); :mod:`convscope.config.schema`
holds the types and allowed ranges (dataclasses). The two meet here:

* :func:`compose` builds a config exactly as a Hydra app does (same search path, same
  overrides grammar), without starting an app. The CLI uses it to write params.yaml, the stage
  runner uses it to check a command line before Hydra starts anything.
* :func:`validate` turns a composed config into a :class:`~convscope.config.schema.Config`
  and turns every way that can fail (wrong type, unknown key, out-of-range value, a bad
  override) into one :class:`ConfigError` whose message is one line naming the key, the
  value and what is allowed.
* :func:`register` puts the schemas in Hydra's ConfigStore under ``schema/`` so Hydra can show
  them, e.g. ``python pipelines/train_keras.py --config-name schema/config --cfg job``.

Why the YAML does not *inherit* the schemas (Hydra's "schema in the defaults list" pattern):
DVC composes params.yaml itself in its own process for ``dvc exp run -S ...``, where
convscope's ConfigStore entries do not exist, so conf/ must compose from YAML alone. The schema
check therefore runs after composition, in :func:`validate`, for every run.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from convscope.config.schema import (
    Config,
    ConfigError,
    DataConfig,
    KerasConfig,
    LinesDataConfig,
    MiniCNNConfig,
    MnistDataConfig,
    ScratchCNNConfig,
    ScratchConfig,
    TrackingConfig,
    VizConfig,
)

__all__ = [
    "CONF_DIR",
    "REPO_ROOT",
    "Config",
    "ConfigError",
    "compose",
    "dump_params",
    "params_text",
    "register",
    "validate",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
"""The checkout this package lives in (src layout: <root>/src/convscope/config/)."""

CONF_DIR = REPO_ROOT / "conf"
"""conf/ of this checkout: the only place a default value lives."""

# The order groups are checked in. keras comes before scratch because scratch.mnist_cnn
# interpolates keras.*: a bad keras.stride must be reported as keras.stride, where the user
# typed it, not as the scratch.mnist_cnn.stride it flows into.
_CHECK_ORDER = ("seed", "data", "keras", "scratch", "viz", "tracking")

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
        ("tracking", TrackingConfig, "tracking"),
    ):
        cs.store(group="schema", name=name, node=node, package=package)
    _registered = True


# --------------------------------------------------------------------------- composition


def compose(
    overrides: Iterable[str] = (),
    config_name: str = "config",
    config_dir: str | os.PathLike[str] = CONF_DIR,
    *,
    extra_search_dir: str | os.PathLike[str] | None = None,
    return_hydra_config: bool = False,
):
    """Compose ``config_name`` from ``config_dir`` with Hydra ``overrides`` (unresolved).

    The result is what a Hydra app built on conf/ receives as ``cfg``, interpolations left
    in place. ``extra_search_dir`` is searched *before* ``config_dir``, as Hydra does with a
    command line's ``--config-dir`` (the DVC stages run with ``--config-dir .
    --config-name params``). Hydra errors propagate; :func:`validate_overrides` turns them
    into one-line :class:`ConfigError`.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    overrides = list(overrides)
    primary = Path(config_dir).resolve()
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
    overrides: Iterable[str] = (), config_dir: str | os.PathLike[str] = CONF_DIR
) -> str:
    """params.yaml's text: conf/ composed with ``overrides`` and resolved.

    Byte for byte what DVC's own Hydra composition writes (``dvc exp run -S``): it resolves
    the config and dumps it with ``OmegaConf.to_yaml``, so params.yaml does not change when
    DVC rewrites it with the same overrides. A test compares the two.
    """
    from omegaconf import OmegaConf

    cfg = compose(overrides, config_dir=config_dir)
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)


def dump_params(
    path: str | os.PathLike[str],
    overrides: Iterable[str] = (),
    config_dir: str | os.PathLike[str] = CONF_DIR,
) -> Path:
    """Validate ``overrides`` and write the composed params file atomically; return its path."""
    from convscope.files import atomic_write_text

    overrides = list(overrides)
    validate_overrides(overrides, config_dir=config_dir)
    return atomic_write_text(path, params_text(overrides, config_dir))


# --------------------------------------------------------------------------- validation


def validate(cfg: Any) -> Config:
    """Check a composed config against the schemas; return it as a :class:`Config`.

    ``cfg`` is a DictConfig (or a plain mapping). Interpolations are resolved first and the
    ``hydra`` node, if present, is ignored. Raises :class:`ConfigError` with one line naming
    the key, the value and what is allowed.
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    register()
    try:
        if not isinstance(cfg, DictConfig):
            cfg = OmegaConf.create(dict(cfg))
        # Hydra's own node is not ours to check, and resolving it outside a running app fails.
        if "hydra" in cfg:
            cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from exc

    known = [f.name for f in dataclasses.fields(Config)]
    for key, value in container.items():
        if key not in known:
            raise ConfigError(
                f"{key}={_short(value)} is not allowed: unknown key, expected one of "
                + ", ".join(known)
            )

    values: dict[str, Any] = {}
    hints = typing.get_type_hints(Config)
    for key in sorted(known, key=lambda k: _CHECK_ORDER.index(k) if k in _CHECK_ORDER else 99):
        if key not in container:
            continue
        values[key] = _to_typed(key, hints[key], container[key])
    return Config(**values)


def _to_typed(prefix: str, annotation: Any, value: Any) -> Any:
    """Build ``annotation`` (a dataclass or a scalar type) from ``value``, one-line errors."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    if not (isinstance(annotation, type) and dataclasses.is_dataclass(annotation)):
        if not _is_instance(value, annotation):
            raise ConfigError(
                f"{prefix}={_short(value)} is not allowed: expected {_describe_type(annotation)}"
            )
        return value
    if not isinstance(value, dict):
        raise ConfigError(
            f"{prefix}={_short(value)} is not allowed: expected a mapping of "
            + ", ".join(f.name for f in dataclasses.fields(annotation))
        )
    try:
        node = OmegaConf.merge(OmegaConf.structured(annotation), value)
        return OmegaConf.to_object(node)
    except ConfigError:
        raise
    except ConfigKeyError as exc:
        key = f"{prefix}.{exc.full_key}" if exc.full_key else prefix
        owner = exc.object_type if dataclasses.is_dataclass(exc.object_type) else annotation
        allowed = ", ".join(f.name for f in dataclasses.fields(owner))
        raise ConfigError(
            f"{key}={_short(_lookup(value, exc.full_key))} is not allowed: unknown key, "
            f"expected one of {allowed}"
        ) from exc
    except ValidationError as exc:
        key = f"{prefix}.{exc.full_key}" if exc.full_key else prefix
        expected = "a valid value"
        if dataclasses.is_dataclass(exc.object_type) and exc.key is not None:
            field_type = typing.get_type_hints(exc.object_type).get(str(exc.key))
            if field_type is not None:
                expected = _describe_type(field_type)
        raise ConfigError(
            f"{key}={_short(_lookup(value, exc.full_key))} is not allowed: expected {expected}"
        ) from exc
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{prefix}: {_one_line(exc)}") from exc


def _lookup(tree: Any, dotted: str | None) -> Any:
    node = tree
    for part in (dotted or "").split("."):
        if not part:
            continue
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.strip("[]").isdigit():
            idx = int(part.strip("[]"))
            node = node[idx] if idx < len(node) else None
        else:
            return None
    return node


def _is_instance(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _describe_type(annotation: Any) -> str:
    """'an integer', 'a float', 'a list of integers or null', ... for an error message."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        text = " or ".join(_describe_type(a) for a in args)
        if len(args) < len(typing.get_args(annotation)):
            text += " or null"
        return text
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        plural = {
            int: "integers",
            float: "floats",
            str: "strings",
            bool: "booleans (true/false)",
        }.get(item, "values")
        return f"a list of {plural}"
    return {
        int: "an integer",
        float: "a float",
        str: "a string",
        bool: "a boolean (true/false)",
    }.get(annotation, f"a {getattr(annotation, '__name__', annotation)}")


def _short(value: Any, limit: int = 60) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    config_dir: str | os.PathLike[str] = CONF_DIR,
    *,
    extra_search_dir: str | os.PathLike[str] | None = None,
) -> Config:
    """Compose and validate one run's overrides; any failure is a one-line ConfigError.

    This is what lets a stage refuse a bad command line before Hydra creates a run directory,
    before any data is touched and before an MLflow run exists.
    """
    try:
        cfg = compose(overrides, config_name, config_dir, extra_search_dir=extra_search_dir)
    except ConfigError:
        raise
    except Exception as exc:  # Hydra's composition errors come in several classes
        raise ConfigError(_describe_hydra_error(exc, overrides)) from exc
    return validate(cfg)


def _describe_hydra_error(exc: BaseException, overrides: Sequence[str]) -> str:
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
        return f"cannot parse the override {exc.override!r}: {_one_line(exc)}"

    cause = exc.__cause__
    full_key = getattr(cause, "full_key", None)
    if full_key:
        value = _override_value(overrides, full_key)
        parent, _, _ = full_key.rpartition(".")
        allowed = _schema_keys(parent)
        where = f"expected one of {', '.join(allowed)}" if allowed else "not in the config"
        return f"{full_key}={value} is not allowed: unknown key, {where}"
    return _one_line(exc)


def _override_value(overrides: Sequence[str], key: str) -> str:
    for item in overrides:
        name, sep, value = item.partition("=")
        if sep and name.lstrip("+~") == key:
            return repr(value)
    return "?"


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

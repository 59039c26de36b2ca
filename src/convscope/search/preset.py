"""A trial's overrides written as an experiment preset (``convscope adopt``).

The preset is an ordinary ``conf/experiment/<name>.yaml`` (``# @package _global_``): the
trial's values as nested keys, an ``experiment=<other>`` override as a defaults entry
(the preset builds on it), another group's choice as ``override /<group>: <option>``.
``convscope compose experiment=<name>`` then composes what the trial's job composed.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

from convscope.config import ConfigError

__all__ = ["PRESET_NAME", "preset_text", "write_preset"]

PRESET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


def preset_text(overrides: Sequence[str], note: str, groups: Sequence[str]) -> str:
    """The YAML of a preset equal to ``overrides``; ``groups`` are conf/'s config groups."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    body = OmegaConf.create({})
    defaults: list[object] = []
    for override in OverridesParser.create().parse_overrides(overrides=list(overrides)):
        key = override.key_or_group
        if override.is_hydra_override() or override.is_delete():
            continue
        value = override.value()
        if key == "experiment":
            defaults.append(str(value))
        elif key in groups:
            defaults.append({f"override /{key}": value})
        else:
            OmegaConf.update(body, key, value, force_add=True)
    lines = ["# @package _global_", *(f"# {line}" for line in textwrap.wrap(note, 96))]
    text = "\n".join(lines) + "\n"
    if defaults:
        text += OmegaConf.to_yaml({"defaults": [*defaults, "_self_"]})
    if len(body):
        text += OmegaConf.to_yaml(body)
    return text


def write_preset(
    conf: Path, name: str, overrides: Sequence[str], note: str, force: bool = False
) -> Path:
    """Write ``conf/experiment/<name>.yaml``; refuse a bad name or (without ``force``) an
    existing preset."""
    from convscope.files import atomic_write_text

    if not PRESET_NAME.match(name):
        raise ConfigError(f"--name {name!r} is not allowed: expected letters, digits, _ and -")
    target = conf / "experiment" / f"{name}.yaml"
    if target.exists() and not force:
        raise ConfigError(f"{target} exists: choose another --name, or --force to replace it")
    groups = [p.name for p in conf.iterdir() if p.is_dir()]
    atomic_write_text(target, preset_text(overrides, note, groups))
    return target

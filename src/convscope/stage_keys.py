"""Which config keys a stage reads: its ``params`` in dvc.yaml, the one list of them.

DVC reruns a stage when one of the keys under its ``stages.<name>.params`` changes, so that
list is what the stage's output depends on, and so what its MLflow run records as its config
values (:func:`stage_params`; tags ``param.<key>``): a run of ``train_keras`` shows
``keras.*``, not the 60 keys of the other stages. The whole composed config stays an
artifact of the run (``config.yaml``).

A by-hand override of a key the stage does not read would change nothing but the record, so
it is refused (:func:`unread_overrides`): ``python pipelines/train_keras.py
data.mnist.limit_train=600`` trains on whatever data/mnist.npz holds, and the run must not
say otherwise. A key counts as read when it is under one of the stage's params, under
``tracking`` (where the run is recorded), or referenced by an interpolation inside them
(``scratch.mnist_cnn.epochs: ${keras.epochs}``, ``keras.seed: ${seed}``), transitively.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "dvc_outputs",
    "dvc_params",
    "dvc_stages",
    "read_keys",
    "stage_params",
    "unread_overrides",
]

#: keys every stage reads besides its dvc.yaml params: where its run is recorded
RUNNER_KEYS = ("tracking",)
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def dvc_stages(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``stages`` of ``root``/dvc.yaml, or None when there is no readable dvc.yaml."""
    import yaml

    try:
        stages = (yaml.safe_load((Path(root) / "dvc.yaml").read_text()) or {}).get("stages")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return stages if isinstance(stages, dict) else None


def dvc_outputs(root: str | os.PathLike[str], stage: str | None = None) -> list[str] | None:
    """The outs, metrics and plots (relative paths) dvc.yaml declares for ``stage``, or for
    every stage; None when there is no readable dvc.yaml or no such stage."""
    stages = dvc_stages(root)
    if stages is None or (stage is not None and stage not in stages):
        return None
    chosen = [stages[stage]] if stage is not None else list(stages.values())
    entries = [
        e for s in chosen for kind in ("outs", "metrics", "plots") for e in s.get(kind) or []
    ]
    return [str(next(iter(e))) if isinstance(e, Mapping) else str(e) for e in entries]


def dvc_params(stage: str, root: str | os.PathLike[str]) -> list[str] | None:
    """The keys under ``stages.<stage>.params`` of ``root``/dvc.yaml (params.yaml's), or None
    when there is no dvc.yaml or it has no such stage (then a run records every key)."""
    stages = dvc_stages(root)
    if stages is None or stage not in stages:
        return None
    keys: list[str] = []
    for entry in stages[stage].get("params") or []:
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, Mapping):  # {"params.yaml": [keys]}; other files are not config
            for file, listed in entry.items():
                if Path(str(file)).name == "params.yaml":
                    keys.extend(str(k) for k in listed or [])
    return keys


def _covers(key: str, prefixes: Iterable[str]) -> bool:
    """``key`` is one of ``prefixes``, below one, or a parent of one."""
    return any(key == p or key.startswith(p + ".") or p.startswith(key + ".") for p in prefixes)


def _leaves(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list | tuple):
        for v in node:
            yield from _leaves(v, prefix)
    else:
        yield prefix, node


def read_keys(unresolved: Mapping[str, Any], prefixes: Sequence[str]) -> set[str]:
    """``prefixes`` plus every key their values interpolate, transitively.

    ``unresolved`` is the composed config before interpolation
    (``OmegaConf.to_container(cfg, resolve=False)``).
    """
    read = set(prefixes)
    while True:
        refs = {
            ref
            for key, value in _leaves(unresolved)
            if isinstance(value, str) and _covers(key, read)
            for ref in _INTERPOLATION.findall(value)
        }
        if refs <= read:
            return read
        read |= refs


def stage_params(resolved: Mapping[str, Any], prefixes: Sequence[str]) -> dict[str, Any]:
    """The part of the resolved config under ``prefixes``, still nested (what MLflow records)."""
    picked: dict[str, Any] = {}
    for prefix in prefixes:
        node: Any = resolved
        for part in prefix.split("."):
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            *parents, last = prefix.split(".")
            target = picked
            for part in parents:
                target = target.setdefault(part, {})
            target[last] = node
    return picked


def unread_overrides(
    overrides: Sequence[str],
    unresolved: Mapping[str, Any],
    prefixes: Sequence[str],
    groups: Iterable[str] = (),
) -> list[str]:
    """The ``key=value`` overrides that set a key the stage does not read.

    Config group choices (``experiment=smoke``, ``keras=seed_cnn``: names in ``groups``) pick
    whole presets for every stage and are not checked; Hydra's own ``hydra.*`` neither.
    """
    read = read_keys(unresolved, [*prefixes, *RUNNER_KEYS])
    groups = set(groups)
    unread = []
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~").strip()
        if not key or key in groups or "/" in key or key == "hydra" or key.startswith("hydra."):
            continue
        if not _covers(key, read):
            unread.append(override)
    return unread


def params_read(stage: str, cfg: Any, overrides: Sequence[str]) -> dict[str, Any] | None:
    """The resolved config keys ``stage`` reads (its dvc.yaml params; None: no dvc.yaml, all).

    An override of a key the stage does not read is a :class:`ConfigError`: the run would
    record a value that changed nothing (see :mod:`convscope.stage_keys`).
    """
    from omegaconf import OmegaConf

    from convscope.config import ConfigError
    from convscope.paths import conf_dir, project_root

    prefixes = dvc_params(stage, project_root())
    if prefixes is None:
        return None
    unresolved = OmegaConf.to_container(cfg, resolve=False)
    groups = [p.name for p in conf_dir().iterdir() if p.is_dir()]
    unread = unread_overrides(overrides, unresolved, prefixes, groups)
    if unread:
        reads = ", ".join(f"{p}.*" for p in prefixes)
        raise ConfigError(
            f"{' '.join(unread)} is not read by stage {stage} (it reads {reads} and tracking.*, "
            "see dvc.yaml); set it for the stage that reads it, which writes this stage's inputs"
        )
    return stage_params(OmegaConf.to_container(cfg, resolve=True), prefixes)

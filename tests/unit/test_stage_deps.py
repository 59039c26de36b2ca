"""A stage's dvc.yaml deps follow from its code: every convscope module a stage computes with
(the import closure of ``pipelines/<stage>.py`` and ``stages/<stage>.py``, function-level
imports included, each package's ``__init__`` with its modules) is a dep, so a change to any of
them reruns the stage and the committed outputs stay what the code makes.

Modules that cannot change a stage's outputs are left out, by name, with the reason beside
each (:data:`CANNOT_CHANGE_OUTPUTS`); the closure does not go through them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

#: module -> why it cannot change what a stage writes
CANNOT_CHANGE_OUTPUTS = {
    "convscope.tracking": "records the run in MLflow; no output depends on it",
    "convscope.launchers": "how a sweep's jobs are launched (joblib, Ray), not what they compute",
    "convscope.paths": "where the project and the store are, not what goes into a file",
    "convscope.native_logs": "keeps TensorFlow's C++ log lines off the console",
    "convscope.stage_keys": "which keys a run records and which overrides it refuses",
    "convscope.search": "an Optuna sweep's trials; a sweep never writes the pipeline's outputs",
}


def module_file(name: str) -> Path | None:
    """The source file of module ``name`` under src/ (a package's __init__.py)."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def excluded(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in CANNOT_CHANGE_OUTPUTS)


def imported(path: Path, name: str) -> set[str]:
    """The convscope modules ``path`` (module ``name``) imports anywhere in it, with the
    packages each import runs (``convscope.a.b`` runs ``convscope`` and ``convscope.a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # a submodule, if it is one
    modules = set()
    for full in found:
        parts = full.split(".")
        for i in range(1, len(parts) + 1):
            candidate = ".".join(parts[:i])
            if candidate.startswith("convscope") and module_file(candidate) is not None:
                modules.add(candidate)
    return modules


def closure(stage: str) -> set[Path]:
    """Every file stage ``stage`` computes with, not counting the modules left out."""
    entry = ROOT / "pipelines" / f"{stage}.py"
    todo = [(entry, "pipelines_entry"), (module_file(f"convscope.stages.{stage}"), "")]
    seen: set[Path] = {entry}
    while todo:
        path, name = todo.pop()
        name = name or module_name(path)
        for module in imported(path, name):
            target = module_file(module)
            if excluded(module) or target in seen:
                continue
            seen.add(target)
            todo.append((target, module))
    return seen


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == ROOT / d or (ROOT / d) in path.parents for d in deps)


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_computes_with_is_a_dep(stage):
    deps = [str(d) for d in STAGES[stage].get("deps", [])]
    missing = sorted(str(p.relative_to(ROOT)) for p in closure(stage) if not covered(p, deps))
    assert missing == [], f"dvc.yaml's {stage} lacks deps: {missing}"


def test_the_closure_follows_function_level_imports():
    """A sanity check of the walk itself: train_keras reaches Keras code only through an
    import inside its run()."""
    reached = {module_name(p) for p in closure("train_keras") if p.is_relative_to(SRC)}
    assert {"convscope.keras_cnn", "convscope.keras_cnn.train", "convscope.runner"} <= reached
    assert not any(excluded(m) for m in reached)

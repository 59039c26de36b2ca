"""The package graph: imports point one way (no cycles between convscope's packages), and
mlflow is imported by tracking/ only."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import convscope

SRC = Path(convscope.__file__).parent


def _imports() -> dict[str, set[str]]:
    """package -> the convscope packages its modules import (top level or in functions)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        parts = ("convscope", *path.relative_to(SRC).with_suffix("").parts)
        here = ".".join(parts[:2])
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("convscope.") or name == "mlflow" or name.startswith("mlflow."):
                    edges[here].add(".".join(name.split(".")[:2]))
    return edges


def test_no_import_cycles_between_packages():
    edges = _imports()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cycles = sorted(
        (a, b)
        for a in edges
        for b in edges[a]
        if a < b and b.startswith("convscope") and reaches(b, a)
    )
    assert cycles == []


def test_only_tracking_imports_mlflow():
    users = {pkg for pkg, names in _imports().items() if any(n.startswith("mlflow") for n in names)}
    assert users == {"convscope.tracking"}

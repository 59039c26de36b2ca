"""The import graph: imports point one way (no cycle between convscope's packages, nor between
its modules, function-level imports included), mlflow is imported by tracking/ only, and the
benchmarks and the harness they share with the tests never import the tests."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import convscope

SRC = Path(convscope.__file__).parent
ROOT = SRC.parents[1]


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


def _module_imports() -> dict[str, set[str]]:
    """module -> the convscope modules it imports, anywhere in it (a package is its
    __init__; ``from pkg import name`` is an import of module ``pkg.name`` when there is one,
    else of ``pkg``)."""
    modules = {
        ".".join(("convscope", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(
            ".__init__"
        ): p
        for p in SRC.rglob("*.py")
    }
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        edges[name] = {m for m in found if m in modules and m != name}
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycles_between_modules():
    edges = _module_imports()
    assert edges["convscope.interpret.factory"]  # the graph is real
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_bench_and_harness_never_import_the_tests():
    """bench/ measures what tests/ checks through harness/, not through the test suite."""
    found = []
    for path in [*ROOT.glob("bench/*.py"), *ROOT.glob("harness/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [(path.name, n) for n in names if n == "tests" or n.startswith("tests.")]
    assert len(list(ROOT.glob("bench/*.py"))) > 5 and (ROOT / "harness/services.py").is_file()
    assert found == []

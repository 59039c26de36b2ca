"""``convscope exps``: DVC's experiments as one table that fits a terminal.

``dvc exp show`` prints every param, metric, dependency and output hash as a column (over a
hundred here); its ``--json`` output holds the same records, which this module reads: one
row per baseline commit (and the workspace) with its experiments under it; as columns the
params that differ between the rows, then each stage's test accuracy (where a stage writes
``test_accuracy``). Columns are dropped from the right, the table says
how many, until it fits the width (the terminal's, 120 without one); values are cut with
``…``, never wrapped. DVC's own command is what gathers the data:
:func:`dvc_experiments` runs ``dvc exp show --json``.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ExperimentRow", "dvc_experiments", "experiment_rows", "render_table"]

#: metric keys shown per metrics file, in this order, when present
HEADLINE_METRICS = ("test_accuracy",)
ELLIPSIS = "…"


@dataclass
class ExperimentRow:
    """One commit, workspace or experiment: its label, time, flat params and metrics."""

    label: str
    created: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def _row(entry: Mapping[str, Any], label: str) -> ExperimentRow:
    data = entry.get("data") or {}
    params: dict[str, Any] = {}
    for by_file in (data.get("params") or {}).values():
        params.update(_flat((by_file or {}).get("data") or {}))
    metrics: dict[str, Any] = {}
    for path, by_file in (data.get("metrics") or {}).items():
        values = (by_file or {}).get("data") or {}
        stage = Path(path).stem.removeprefix("train_")
        for key in HEADLINE_METRICS:
            if key in values:
                metrics[f"{stage} {key.replace('accuracy', 'acc')}"] = values[key]
    stamp = data.get("timestamp") or ""
    created = stamp.replace("T", " ")[5:16]  # MM-DD HH:MM
    error = entry.get("error") or {}
    message = error.get("msg", "") if isinstance(error, Mapping) else str(error)
    return ExperimentRow(label, created, params, metrics, message)


def _short(rev: str) -> str:
    return rev[:7] if len(rev) == 40 else rev


def experiment_rows(show: Sequence[Mapping[str, Any]]) -> list[ExperimentRow]:
    """Rows from ``dvc exp show --json``: the workspace, each baseline commit and, under it,
    its experiments (newest first, as DVC lists them)."""
    rows = []
    for baseline in show:
        rev = str(baseline.get("rev", ""))
        name = baseline.get("name")
        label = rev if rev == "workspace" else f"{name or _short(rev)}"
        if rev != "workspace" and name:
            label = f"{name} ({_short(rev)})"
        rows.append(_row(baseline, label))
        runs = [r for group in baseline.get("experiments") or [] for r in group.get("revs", [])]
        for i, run in enumerate(runs):
            branch = "└─ " if i == len(runs) - 1 else "├─ "
            exp_name = run.get("name") or _short(str(run.get("rev", "")))
            rows.append(_row(run, f"{branch}{exp_name} ({_short(str(run.get('rev', '')))})"))
    return rows


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + ELLIPSIS


def render_table(rows: Sequence[ExperimentRow], width: int = 120, max_cell: int = 16) -> str:
    """The rows as a table at most ``width`` characters wide (see the module docstring)."""
    keys = sorted({k for r in rows for k in r.params})
    changed = [k for k in keys if len({_text(r.params.get(k)) for r in rows}) > 1]
    metric_keys = list(dict.fromkeys(k for r in rows for k in r.metrics))
    columns: list[tuple[str, list[str], bool]] = [
        ("Experiment", [r.label for r in rows], False),
        ("Created", [r.created or "-" for r in rows], False),
    ]
    columns += [(k, [_text(r.params.get(k)) for r in rows], False) for k in changed]
    columns += [(k, [_text(r.metrics.get(k)) for r in rows], True) for k in metric_keys]

    def cell_width(head: str, cells: list[str], first: bool) -> int:
        limit = 40 if first else max_cell
        return min(max(len(head), *(len(c) for c in cells)), max(limit, len(head)))

    widths = [cell_width(h, c, i == 0) for i, (h, c, _) in enumerate(columns)]
    dropped: list[str] = []
    # the params that differ are dropped before the metrics, the rightmost first
    while sum(widths) + 2 * (len(widths) - 1) > width and len(columns) > 2:
        params_at = [i for i, (_, _, is_metric) in enumerate(columns) if not is_metric][2:]
        at = params_at[-1] if params_at else len(columns) - 1
        dropped.append(columns[at][0])
        del columns[at], widths[at]
    lines = []
    for r in range(-1, len(rows)):
        cells = []
        for (head, values, numeric), w in zip(columns, widths, strict=True):
            text = _cut(head if r < 0 else values[r], w)
            cells.append(text.rjust(w) if numeric else text.ljust(w))
        lines.append("  ".join(cells).rstrip())
    if dropped:
        note = f"({len(dropped)} more column(s) left out to fit {width} characters: "
        lines.append(_cut(note + ", ".join(reversed(dropped)) + ")", width))
    errors = [f"{r.label.lstrip('├└─ ')}: {r.error}" for r in rows if r.error]
    lines += [_cut(e, width) for e in errors]
    return "\n".join(lines)


def dvc_experiments(repo: str | Path, extra: Sequence[str] = ()) -> list[Mapping[str, Any]]:
    """``dvc exp show --json`` in ``repo`` (DVC from this environment), parsed. A failure is
    a :class:`RuntimeError` with DVC's own last error line."""
    dvc = Path(sys.executable).with_name("dvc")
    command = [str(dvc) if dvc.exists() else "dvc", "exp", "show", "--json", *extra]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"`dvc exp show --json` failed in {repo}: {last}")
    return json.loads(done.stdout or "[]")


def terminal_width(default: int = 120) -> int:
    """The terminal's columns, ``default`` when there is no terminal."""
    return shutil.get_terminal_size((default, 24)).columns

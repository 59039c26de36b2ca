"""Which runs a comparison shows, and what it reads of each: curves and one conv kernel."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convscope.validation import check_kernel

CURVE_KEYS = ("loss", "val_loss")


class CompareError(ValueError):
    """The runs cannot be compared as asked (unknown ids, bad filter, no store). One line."""


class EmptySelectionError(CompareError):
    """The selection matched no run."""


@dataclass
class RunData:
    """One run's record, curves and first-layer kernel (None when it logged none)."""

    record: Any  # convscope.tracking.query.RunRecord
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    kernel: np.ndarray | None = None
    layer: str | None = None
    epoch: int | None = None
    note: str = ""


def natural_key(name: str) -> list:
    """Sort key with numbers by value: conv1 before conv2 before conv10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _kernel(uri: str, run: RunData, layer: str | None) -> None:
    """Fill in the run's kernel of ``layer`` (default the first by name) at its last epoch."""
    from convscope.tracking import query

    by_epoch = query.kernel_artifacts(uri, run.record.run_id)
    if not by_epoch:
        run.note = "no kernels logged"
        return
    run.epoch = max(by_epoch)
    names = {Path(p).stem: p for p in by_epoch[run.epoch]}
    if layer is not None and layer not in names:
        run.note = f"no layer {layer!r} (has {', '.join(sorted(names))})"
        return
    run.layer = layer or sorted(names, key=natural_key)[0]
    kernel = query.load_npy(uri, run.record.run_id, names[run.layer])
    try:
        run.kernel = check_kernel(kernel, f"{run.layer}.npy")
    except ValueError as e:
        run.note = str(e)


def _select(uri, run_ids, experiment, filter_string, parent_run_id) -> tuple[list[Any], list]:
    """The records to compare, and the sweep parents a search found and left out (they hold
    no training of their own; their jobs are their child runs)."""
    from convscope.tracking import query
    from convscope.tracking.store import TAG_ROLE

    selection = {"experiment": experiment, "filter": filter_string, "parent": parent_run_id}
    if run_ids and any(selection.values()):
        raise CompareError("give run ids or a selection (--experiment/--filter/--parent), not both")
    if run_ids:
        return query.get_runs(uri, list(run_ids)), []
    if not any(selection.values()):
        raise CompareError("nothing to compare: give run ids, --experiment, --filter or --parent")
    found = query.search_runs(uri, experiment, filter_string, parent_run_id, include_parents=True)
    parents = [r for r in found if r.tags.get(TAG_ROLE) == "sweep"]
    runs = [r for r in found if r.tags.get(TAG_ROLE) != "sweep"]
    if not runs:
        what = ", ".join(f"{k}={v!r}" for k, v in selection.items() if v)
        raise EmptySelectionError(f"no runs match {what} in {uri}")
    return runs, parents


def collect_runs(
    uri: str,
    run_ids: Sequence[str] | None = None,
    experiment: str | None = None,
    filter_string: str | None = None,
    parent_run_id: str | None = None,
    layer: str | None = None,
) -> tuple[list[RunData], list[Any]]:
    """The selected runs (ids in the order given, or a search, oldest first) with their loss
    curves and kernels, and the sweep parent runs a search left out (records); a store
    error is a :class:`CompareError`."""
    from convscope.tracking import query

    try:
        records, parents = _select(uri, run_ids, experiment, filter_string, parent_run_id)
        runs = [RunData(rec) for rec in records]
        for run in runs:
            for key in CURVE_KEYS:
                history = query.metric_history(uri, run.record.run_id, key)
                if history:
                    run.curves[key] = history
            _kernel(uri, run, layer)
    except query.QueryError as e:
        raise CompareError(" ".join(str(e).split())) from e
    return runs, parents

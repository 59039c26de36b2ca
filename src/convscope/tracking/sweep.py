"""One MLflow parent run per Hydra multirun, its jobs' runs as children.

The Hydra callback (:class:`~convscope.tracking.hydra_callbacks.MlflowSweepCallback`) owns
the parent: :func:`open_sweep` creates it before the first job and :func:`settle_sweep` ends
it after the last. Jobs find it through :data:`PARENT_ENV`, which the launcher's jobs inherit
(in-process for the basic launcher, worker processes for joblib), or else through
:data:`PARENT_FILE` in the sweep folder (a launcher whose workers start elsewhere).

The parent ends FINISHED only when the sweep completed and every child finished; otherwise
KILLED when a child was killed, FAILED when not, and tag ``convscope.sweep_jobs`` counts the
children by status. A child still RUNNING at that point lost its process (killed hard) and is
ended FAILED first, so no child outlives its sweep as RUNNING.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from convscope.files import atomic_write_text
from convscope.tracking.store import (
    TAG_ROLE,
    TAG_STAGE,
    TAG_SWEEP_DIR,
    TAG_SWEEP_JOBS,
    TAG_SWEEP_OVERRIDES,
    git_tags,
    truncate,
)

PARENT_ENV = "CONVSCOPE_SWEEP_PARENT"
PARENT_FILE = ".convscope_sweep.json"
TERMINAL = ("FINISHED", "FAILED", "KILLED")


def find_parent(sweep_dir: str | os.PathLike[str]) -> str | None:
    """The parent run id of the sweep in ``sweep_dir``; None when no callback opened one."""
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    try:
        return str(json.loads((Path(sweep_dir) / PARENT_FILE).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_sweep(
    cfg_tracking: Any,
    stage: str,
    sweep_dir: str | os.PathLike[str],
    overrides: list[str],
    root: str | os.PathLike[str] | None = None,
) -> str:
    """Create the sweep's parent run in ``stage``'s experiment and publish its id to the jobs
    (:data:`PARENT_ENV` and :data:`PARENT_FILE`); returns the id."""
    from convscope.paths import tracking_root
    from convscope.tracking.connection import stage_experiment

    folder = Path(sweep_dir).resolve()
    uri, client, exp_id = stage_experiment(cfg_tracking, stage, root)
    tags = {
        TAG_ROLE: "sweep",
        TAG_STAGE: stage,
        TAG_SWEEP_DIR: str(folder),
        TAG_SWEEP_OVERRIDES: truncate(" ".join(overrides)),
        **git_tags(root if root is not None else tracking_root()),
    }
    name = f"{stage} sweep {folder.parent.name}/{folder.name}"[:250]
    run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    atomic_write_text(folder / PARENT_FILE, json.dumps({"run_id": run_id, "tracking_uri": uri}))
    os.environ[PARENT_ENV] = run_id
    return run_id


def settle_sweep(sweep_dir: str | os.PathLike[str], completed: bool = False) -> str | None:
    """End the parent run of the sweep in ``sweep_dir`` from its children; returns its status.

    ``completed``: the launcher ran every job (the callback's end of a multirun). Without it
    (a sweep that aborted, or recovery after the launching process died) the parent cannot
    end FINISHED. A parent that already ended keeps its status. None when the folder records
    no parent.
    """
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    try:
        record = json.loads((Path(sweep_dir) / PARENT_FILE).read_text())
        run_id, uri = record["run_id"], record["tracking_uri"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    client = MlflowClient(uri)
    parent = client.get_run(run_id)
    if parent.info.status in TERMINAL:
        return parent.info.status
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run_id}'",
        max_results=50000,
    )
    counts: Counter[str] = Counter()
    for child in children:
        status = child.info.status
        if status not in TERMINAL:
            client.set_terminated(child.info.run_id, "FAILED")
            status = "FAILED"
        counts[status] += 1
    if counts["KILLED"]:
        final = "KILLED"
    elif counts["FAILED"] or not completed or not children:
        final = "FAILED"
    else:
        final = "FINISHED"
    summary = ", ".join(f"{counts[s]} {s.lower()}" for s in TERMINAL)
    client.set_tag(run_id, TAG_SWEEP_JOBS, f"{len(children)} jobs: {summary}")
    client.set_terminated(run_id, final)
    return final

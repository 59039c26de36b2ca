"""Runs that lost their process, settled: a sweep's parent from its children, this host's
runs whose stage and tracking process are gone, and ``convscope runs --clean``.

A sweep's parent is ended by the sweep's own process (:mod:`convscope.tracking.hydra_callbacks`)
or, if that process died, by whoever settles it from here. Importing this module imports mlflow.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from typing import Any

from mlflow import MlflowClient

from convscope.files import pid_alive
from convscope.tracking.lifecycle import open_store
from convscope.tracking.store import (
    TAG_HOST,
    TAG_PID,
    TAG_ROLE,
    TAG_SWEEP_DIR,
    TAG_SWEEP_JOBS,
    TERMINAL,
    process_tags,
    sweep_parent,
)

log = logging.getLogger(__name__)


def settle_sweep(
    sweep_dir: str | os.PathLike[str],
    completed: bool = False,
    summarise: str | None = None,
    interrupted: bool = False,
) -> str | None:
    """End the parent run of the sweep in ``sweep_dir`` from its children; returns its status
    (None when the folder records no parent; a parent that already ended keeps its status).
    Only a ``completed`` sweep (the launcher ran every job) can end FINISHED; recovery after
    the launching process died calls this without it. An ``interrupted`` sweep (Ctrl-C or
    SIGTERM to the launching process) ends KILLED.
    """
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    if (parent_record := sweep_parent(sweep_dir)) is None:
        return None
    run_id, uri = parent_record
    client = MlflowClient(uri)
    parent = client.get_run(run_id)
    if parent.info.status in TERMINAL:
        return parent.info.status
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run_id}'",
        max_results=50000,
    )
    # A child still RUNNING lost its process: stopped with the sweep, else died of its own.
    lost = "KILLED" if interrupted else "FAILED"
    for child in children:
        if child.info.status not in TERMINAL:
            client.set_terminated(child.info.run_id, lost)
    counts = Counter(c.info.status if c.info.status in TERMINAL else lost for c in children)
    finished = completed and children and not counts["FAILED"]
    final = "KILLED" if counts["KILLED"] or interrupted else "FINISHED" if finished else "FAILED"
    summary = ", ".join(f"{counts[s]} {s.lower()}" for s in TERMINAL)
    client.set_tag(run_id, TAG_SWEEP_JOBS, f"{len(children)} jobs: {summary}")
    if summarise:  # e.g. the filter stability of the finished children, before the end
        from hydra.utils import get_method
        from mlflow.entities import Metric

        finished = [c.info.run_id for c in children if c.info.status == "FINISHED"]
        try:
            metrics = get_method(summarise)(uri, run_id, finished) or {}
        except Exception as e:  # noqa: BLE001 - a summary must not keep the parent open
            log.warning("sweep %s: %s failed: %s", run_id, summarise, e)
            metrics = {}
        stamp = int(time.time() * 1000)
        entries = [Metric(k, float(v), stamp, 0) for k, v in metrics.items()]
        if entries:
            client.log_batch(run_id, metrics=entries, synchronous=True)
    client.set_terminated(run_id, final)
    return final


def running_runs(client: MlflowClient, where: str = "") -> list[Any]:
    """Every RUNNING run of the store (deleted experiments too), ``where`` one more clause."""
    from mlflow.entities import ViewType

    exp_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    query = " and ".join(filter(None, ["attributes.status = 'RUNNING'", where]))
    return list(client.search_runs(exp_ids, query, ViewType.ALL, max_results=50000))


def reap_dead_runs(client: MlflowClient) -> list[tuple[str, str]]:
    """End the RUNNING runs whose process is gone: ``[(run id, new status)]``.

    A stage SIGKILLed with its tracking process (a lost machine) cannot end its run, which
    would stay RUNNING forever. Every run records its stage's host and pid (tags), and every
    run's tracking process calls this once the run is open: a run of this host whose pid
    no longer runs ends KILLED; a sweep parent is settled from its children
    (:func:`~convscope.tracking.hydra_callbacks.settle_sweep`). Runs of other hosts (a Ray
    cluster's workers) are left alone, as is a run whose pid was reused.

    A stage ends its run before its process exits (its close is awaited), so the run is read
    again once its pid is seen gone: one that ended between the search and the pid check
    (another stage finishing as this one starts) keeps the status its stage gave it.
    """
    ended = []
    for run in running_runs(client, f"tags.`{TAG_HOST}` = '{process_tags()[TAG_HOST]}'"):
        pid = run.data.tags.get(TAG_PID, "")
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        run_id, status, sweep_dir = run.info.run_id, None, run.data.tags.get(TAG_SWEEP_DIR)
        if client.get_run(run_id).info.status in TERMINAL:
            continue  # its stage ended it after the search, then exited
        if run.data.tags.get(TAG_ROLE) == "sweep" and sweep_dir:
            status = settle_sweep(sweep_dir)
        if status is None:
            status = "KILLED"
            client.set_terminated(run_id, status)
        ended.append((run_id, status))
    return ended


def clean_runs(uri: str) -> list[tuple[str, str]]:
    """``convscope runs --clean``: :func:`reap_dead_runs`, then settle every sweep parent still
    RUNNING whose children have all ended and whose own process is gone (or elsewhere)."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    client = open_store(uri)
    ended = reap_dead_runs(client)
    host = process_tags()[TAG_HOST]
    for run in running_runs(client, f"tags.`{TAG_ROLE}` = 'sweep'"):
        tags = run.data.tags
        pid = tags.get(TAG_PID, "")
        if tags.get(TAG_HOST) == host and pid.isdigit() and pid_alive(int(pid)):
            continue  # its sweep still runs
        children = client.search_runs(
            [run.info.experiment_id],
            f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run.info.run_id}'",
            max_results=50000,
        )
        if all(c.info.status in TERMINAL for c in children):
            status = settle_sweep(tags[TAG_SWEEP_DIR]) if tags.get(TAG_SWEEP_DIR) else None
            if status is None:
                status = "FAILED" if children else "KILLED"
                client.set_terminated(run.info.run_id, status)
            ended.append((run.info.run_id, status))
    return ended

"""An Optuna study's records in MLflow: the summary on the sweep's parent run, and the best
trial's run found again and its model registered (``convscope adopt``).

Importing this module imports mlflow.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

from mlflow import MlflowClient

from convscope.tracking.store import (
    TAG_BEST_OVERRIDES,
    TAG_BEST_TRIAL,
    TAG_ROLE,
    TAG_STAGE,
    TAG_STUDY,
    TAG_TRIAL,
    TrackingError,
    sweep_parent,
    truncate,
)

__all__ = ["best_overrides", "best_trial_run", "log_study", "register_champion"]

CHAMPION = "champion"


def log_study(
    sweep_dir: str | os.PathLike[str],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    figures: Mapping[str, Any],
) -> str | None:
    """Metrics, tags and figures on the parent run of the sweep in ``sweep_dir``; its id."""
    from mlflow.entities import Metric, RunTag

    if (parent := sweep_parent(sweep_dir)) is None:
        return None
    run_id, uri = parent
    client = MlflowClient(uri)
    stamp = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()],
        tags=[RunTag(k, truncate(str(v))) for k, v in tags.items()],
        synchronous=True,
    )
    for name, figure in figures.items():
        client.log_figure(run_id, figure, f"optuna/{name}")
    return run_id


def best_trial_run(client: MlflowClient, parent_id: str) -> tuple[Any, Any]:
    """``(parent, child)``: a study's parent run and the run of its best trial."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    try:
        parent = client.get_run(parent_id)
    except MlflowException:
        raise TrackingError(f"no MLflow run {parent_id}") from None
    tags = parent.data.tags
    if tags.get(TAG_ROLE) != "sweep" or TAG_BEST_TRIAL not in tags:
        raise TrackingError(
            f"run {parent_id} is not an Optuna sweep's parent with a completed trial"
        )
    number = tags[TAG_BEST_TRIAL]
    # this sweep's trial, else (a resumed study's best may be older) the study's trial
    study = tags.get(TAG_STUDY, "")
    scopes = [f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'", f"tags.`{TAG_STUDY}` = '{study}'"]
    for scope in scopes:
        clauses = [scope, f"tags.`{TAG_TRIAL}` = '{number}'"]
        children = client.search_runs(
            [parent.info.experiment_id], filter_string=" and ".join(clauses), max_results=10
        )
        if children:
            break
    else:
        raise TrackingError(f"the run of trial {number} of sweep {parent_id} is not in the store")
    return parent, children[0]


def best_overrides(parent: Any) -> list[str]:
    """The Hydra overrides of a study's best trial, as its sweep recorded them."""
    try:
        overrides = json.loads(parent.data.tags.get(TAG_BEST_OVERRIDES, ""))
    except ValueError:
        overrides = None
    if not isinstance(overrides, list) or not overrides:
        raise TrackingError(f"run {parent.info.run_id} records no best trial's overrides")
    return [str(o) for o in overrides]


def register_champion(client: MlflowClient, child: Any) -> tuple[str, str]:
    """Register the model logged by ``child`` as ``convscope-<stage>`` with the alias
    ``champion``; returns (name, version)."""
    from mlflow.exceptions import MlflowException

    stage = child.data.tags.get(TAG_STAGE, "stage")
    name = f"convscope-{stage}"
    source, model_id = _model_source(client, child)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        name, source, run_id=child.info.run_id, model_id=model_id
    ).version
    client.set_registered_model_alias(name, CHAMPION, str(version))
    return name, str(version)


def _model_source(client: MlflowClient, child: Any) -> tuple[str, str | None]:
    """Where the model a run logged lies, and its LoggedModel id (MLflow 3) if any."""
    run_id = child.info.run_id
    models = client.search_logged_models(
        experiment_ids=[child.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
    )
    if models:
        return models[0].artifact_location, models[0].model_id
    if not [a for a in client.list_artifacts(run_id) if a.path == "model"]:
        raise TrackingError(
            f"run {run_id} logged no model (tracking.log_models=false?); nothing to register"
        )
    return f"runs:/{run_id}/model", None

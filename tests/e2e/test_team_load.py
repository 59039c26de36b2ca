"""16 training-like writers at once into the PostgreSQL-backed server: none lost, none left open.

Each writer is its own process and its own run, as 16 sweep jobs would be: params, then per
epoch two metrics at that step and one or two small PNG images (MLflow's time-stepped
images), then the run is ended. Processes are forked after mlflow is imported, so the
test measures the server, not 16 imports of mlflow.
"""

from __future__ import annotations

import multiprocessing

from harness.team import write_run
from tests.support.team import WRITERS, check_writers


def test_sixteen_writers_lose_nothing(team_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    client = MlflowClient(team_server.uri)
    exp = client.create_experiment("team-load")
    with multiprocessing.get_context("fork").Pool(WRITERS) as pool:
        jobs = [pool.apply_async(write_run, (team_server.uri, exp, w)) for w in range(WRITERS)]
        run_ids = [job.get(timeout=120) for job in jobs]

    check_writers(client, exp, run_ids)

"""16 training-like writers at once into the PostgreSQL-backed server: none lost, none left open.

Each writer is its own process and its own run, as 16 sweep jobs would be: params, then per
epoch two metrics at that step and one or two small PNG images (MLflow's time-stepped
images), then the run is ended. Processes are forked after mlflow is imported, so the
test measures the server, not 16 imports of mlflow.
"""

from __future__ import annotations

import multiprocessing
import time

import numpy as np

pytest_plugins = ["tests.services"]

WRITERS = 16
EPOCHS = 5


def images_in(epoch: int) -> int:
    return 1 + epoch % 2  # one or two per epoch, as a stage logs kernels and sometimes maps


def write_run(uri: str, experiment_id: str, writer: int) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run_id = client.create_run(experiment_id, run_name=f"writer-{writer}").info.run_id
    try:
        client.log_param(run_id, "writer", writer)
        rng = np.random.default_rng(writer)
        for epoch in range(1, EPOCHS + 1):
            client.log_metric(run_id, "loss", 1.0 / epoch + writer, step=epoch)
            client.log_metric(run_id, "accuracy", epoch / EPOCHS, step=epoch)
            for i in range(images_in(epoch)):
                image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                client.log_image(run_id, image, key=f"kernels/{i}", step=epoch)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    return run_id


def test_sixteen_writers_lose_nothing(team_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    client = MlflowClient(team_server.uri)
    exp = client.create_experiment("team-load")
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(WRITERS) as pool:
        jobs = [pool.apply_async(write_run, (team_server.uri, exp, w)) for w in range(WRITERS)]
        run_ids = [job.get(timeout=120) for job in jobs]
    seconds = time.perf_counter() - start
    print(f"{WRITERS} writers x {EPOCHS} epochs: {seconds:.1f} s")

    check_writers(client, exp, run_ids)


def check_writers(client, exp: str, run_ids: list[str]) -> None:
    """Every writer's run is there, FINISHED, with every metric step and image it logged."""
    runs = client.search_runs([exp], max_results=100)
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        writer = int(run.data.params["writer"])
        loss = client.get_metric_history(run.info.run_id, "loss")
        assert [(m.step, m.value) for m in sorted(loss, key=lambda m: m.step)] == [
            (e, 1.0 / e + writer) for e in range(1, EPOCHS + 1)
        ]
        assert len(client.get_metric_history(run.info.run_id, "accuracy")) == EPOCHS
        pngs = [
            f.path.removeprefix("images/").split("+")
            for f in client.list_artifacts(run.info.run_id, "images")
            if f.path.endswith(".png")
        ]  # images/<key with ~ for />+step+<step>+timestamp+<ms>+<uuid>.png
        assert sorted((p[0], int(p[2])) for p in pngs) == sorted(
            (f"kernels~{i}", e) for e in range(1, EPOCHS + 1) for i in range(images_in(e))
        )

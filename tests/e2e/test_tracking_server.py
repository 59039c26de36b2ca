"""tracking=server against a real `mlflow server` on 127.0.0.1, and an unreachable one.

The server runs with proxied artifacts (``--artifacts-destination``), so the client uploads
artifacts over HTTP as it would to a remote server; one uvicorn worker and no job runner keep
its start-up to a few seconds. It lives in its own process group and is always stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from convscope.config.schema import TrackingConfig
from convscope.tracking import TrackingError, check_server
from convscope.tracking.store import run_params

MLFLOW = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def clean_env(clean_tracking_env):
    """Every test here chooses its store itself (see ``clean_tracking_env``)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real tracking server; yields its URI; stopped (SIGTERM, then SIGKILL) afterwards."""
    tmp = tmp_path_factory.mktemp("server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(tmp / "server.log", "wb")
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    # fmt: off
    cmd = [str(MLFLOW), "server",
           "--backend-store-uri", f"sqlite:///{tmp / 's.db'}",
           "--artifacts-destination", str(tmp / "art"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # fmt: on
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        import mlflow  # noqa: F401  (the client's import overlaps the server's start-up)

        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("mlflow server did not start:\n" + (tmp / "server.log").read_text())
            time.sleep(0.2)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:  # anything of the server's group still alive (a worker) goes too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()


@pytest.fixture
def root(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return tmp_path


@pytest.mark.slow
def test_stage_run_against_a_real_server(server, root, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from convscope.tracking import start_run

    config = {"keras": {"filters": 4, "epochs": 2}}
    cfg = TrackingConfig(backend="server", uri=server)
    with start_run(cfg, "train_keras", config, ["keras.filters=4"], root=root) as run:
        for epoch in range(2):
            run.log_epoch(epoch, {"loss": 2.0 - epoch, "accuracy": 0.5 + epoch / 10})
            run.log_kernels(epoch, {"conv2d": np.full((3, 3, 1, 4), epoch + 0.5)})
        run.log_kernel_images({"conv2d": {e: np.full((3, 3, 1, 4), e + 0.5) for e in range(2)}})
        run.log_metrics({"test_accuracy": 0.8})
        run_id = run.run_id
    assert run.tracking_uri == server
    assert not (root / "mlflow.db").exists()  # nothing went to the local store

    client = MlflowClient(server)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert client.get_experiment(got.info.experiment_id).name == "convscope/train_keras"
    assert run_params(got.data.params, got.data.tags) == {"keras.filters": "4", "keras.epochs": "2"}
    assert got.data.tags["convscope.stage"] == "train_keras"
    assert got.data.tags["convscope.overrides"] == "keras.filters=4"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [
        (0, 2.0),
        (1, 1.0),
    ]
    assert got.data.metrics["test_accuracy"] == 0.8
    dl = Path(client.download_artifacts(run_id, "", str(tmp_path / "dl")))  # through HTTP
    assert yaml.safe_load((dl / "config.yaml").read_text()) == config
    np.testing.assert_array_equal(np.load(dl / "kernels/epoch_001/conv2d.npy"), 1.5)
    assert len(list((dl / "images").glob("kernels~conv2d+step+*.png"))) == 2

    # tracking=server with the URI from the environment instead of the config
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    with pytest.raises(ValueError):
        with start_run(
            TrackingConfig(backend="server"), "train_keras", config, root=root
        ) as failing:
            raise ValueError("stage bug")
    assert client.get_run(failing.run_id).info.status == "FAILED"
    assert client.get_run(failing.run_id).info.experiment_id == got.info.experiment_id


def test_unreachable_server_is_one_fast_line(root):
    from convscope.tracking import start_run

    uri = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    start = time.monotonic()
    with pytest.raises(TrackingError) as err:
        check_server(uri)
    message = str(err.value)
    assert message.startswith(f"MLflow tracking server at {uri} is unreachable: ")
    assert "\n" not in message

    with pytest.raises(TrackingError, match="is unreachable"):
        with start_run(TrackingConfig(backend="server", uri=uri), "s", {}, root=root):
            pytest.fail("the run must not start")
    assert time.monotonic() - start < 5


def test_silent_server_times_out_quickly():
    """A port that accepts connections but never answers: the check gives up after its timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(TrackingError, match="unreachable") as err:
            check_server(uri, timeout=0.5)
        assert time.monotonic() - start < 3
        assert "\n" not in str(err.value)

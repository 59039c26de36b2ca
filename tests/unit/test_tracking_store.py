"""What tracking decides without mlflow: the store's location, server URIs, params flattened,
the Hydra helpers outside Hydra, the outbox's request format, and ``tracking=none``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convscope.config.schema import TrackingConfig
from convscope.tracking import store
from convscope.tracking.store import (
    PARENT_ENV,
    TrackingError,
    artifact_location,
    flatten_params,
    tracking_uri,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Tests choose the root themselves; no outer DVC or tracking settings leak in."""
    for name in ("CONVSCOPE_ROOT", "DVC_ROOT", "MLFLOW_TRACKING_URI", PARENT_ENV):
        monkeypatch.delenv(name, raising=False)


def test_store_root_is_the_project_unless_the_environment_names_another(tmp_path, monkeypatch):
    """DVC_ROOT (set by DVC, the original repository for a queued experiment) beats the
    project; CONVSCOPE_ROOT beats both; a root that is not a folder is one line."""
    local = {"backend": "local"}
    assert tracking_uri(local) == f"sqlite:///{REPO}/mlflow.db"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking_uri(local) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("CONVSCOPE_ROOT", str(other))
    assert tracking_uri(local) == f"sqlite:///{other.resolve()}/mlflow.db"
    monkeypatch.setenv("CONVSCOPE_ROOT", str(tmp_path / "missing"))
    with pytest.raises(TrackingError, match="missing is not a directory") as err:
        tracking_uri(local)
    assert "\n" not in str(err.value)


def test_local_uri_is_absolute_and_independent_of_cwd(tmp_path, monkeypatch):
    cfg = TrackingConfig()
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path)
    first = tracking_uri(cfg, root="repo")
    monkeypatch.chdir("/")
    assert tracking_uri(cfg, root=tmp_path / "repo") == first
    assert first == f"sqlite:///{tmp_path.resolve()}/repo/mlflow.db"
    assert first.startswith("sqlite:////")
    assert artifact_location(first) == (tmp_path / "repo" / "mlartifacts").resolve().as_uri()
    # another file named by path or sqlite URI: relative to the root, not the cwd
    for uri in ("stores/x.db", "sqlite:///stores/x.db"):
        got = tracking_uri({"backend": "local", "uri": uri}, root=tmp_path)
        assert got == f"sqlite:///{tmp_path.resolve()}/stores/x.db"
    assert artifact_location("http://127.0.0.1:5000") is None


def test_server_uri_from_config_or_env(monkeypatch):
    cfg = TrackingConfig(backend="server", uri="http://127.0.0.1:5123/")
    assert tracking_uri(cfg) == "http://127.0.0.1:5123"
    cfg = TrackingConfig(backend="server")
    with pytest.raises(TrackingError) as err:
        tracking_uri(cfg)
    assert "MLFLOW_TRACKING_URI" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(cfg) == "http://127.0.0.1:5999"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x.db")
    with pytest.raises(TrackingError, match="tracking.uri='sqlite:////tmp/x.db'"):
        tracking_uri(cfg)
    with pytest.raises(TrackingError, match="tracking.backend='cloud'"):
        tracking_uri({"backend": "cloud"})


def test_flatten_params_dotted_keys_lists_whole_and_limits():
    container = {
        "keras": {"filters": 16, "input_shape": [28, 28, 1], "pool_after": None, "lr": 1e-3},
        "tracking": {"log_models": True},
        "bad key!": "v",
        "long": "x" * 7000,
        "empty": {},
    }
    flat = flatten_params(container)
    assert flat["keras.filters"] == "16"
    assert flat["keras.input_shape"] == "[28, 28, 1]"
    assert flat["keras.pool_after"] == "null"
    assert flat["keras.lr"] == "0.001"
    assert flat["tracking.log_models"] == "true"
    assert flat["bad key_"] == "v"
    assert len(flat["long"]) == store.MAX_PARAM_VALUE_LENGTH and flat["long"].endswith("...")
    assert flat["empty"] == "{}"
    with pytest.raises(ValueError, match="config_container"):
        flatten_params([1, 2])


def test_hydra_helpers_outside_hydra():
    from convscope.tracking.hydra_callbacks import hydra_overrides, hydra_sweep_dir

    assert hydra_sweep_dir() is None and hydra_overrides() == []


def test_outbox_keeps_requests_whole_with_their_payloads(tmp_path):
    """Arrays, files, shape records and epoch-keyed maps come back as they went in."""
    from convscope.tracking.outbox import Outbox, Request
    from convscope.tracking.store import ArraySpec

    payload = tmp_path / "model.npz"
    payload.write_bytes(b"weights")
    sent = [
        Request(1, "call", "log_kernels", (3, {"conv1": np.arange(6.0).reshape(1, 2, 3, 1)})),
        Request(2, "call", "log_dataset", ("d", "x", "s", ArraySpec((4, 2), "<f4"), None)),
        Request(3, "call", "log_kernel_images", ({"conv1": {0: np.ones((1, 1, 1, 1))}},)),
        Request(4, "call", "log_npz_model", (payload, "model"), {}, awaited=True),
        Request(5, "close", "", ("FINISHED",), {"end_time": 123}),
    ]
    box = Outbox.create(tmp_path, "run1", "run1", "sqlite:////x.db")
    for request in sent:
        box.append(request)
    payload.unlink()  # the outbox holds its own copy
    got, damaged = box.read()
    assert damaged == 0 and [r.seq for r in got] == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(got[0].args[1]["conv1"], sent[0].args[1]["conv1"])
    assert got[1].args[3] == ArraySpec((4, 2), "<f4") and got[1].args[4] is None
    assert list(got[2].args[0]["conv1"]) == [0]  # an int key stays an int
    assert got[3].args[0].read_bytes() == b"weights" and got[3].awaited
    assert got[4].kwargs == {"end_time": 123}
    assert (box.run_id(), box.tracking_uri(), box.count()) == ("run1", "sqlite:////x.db", 5)


def test_tracking_none_records_nothing(tmp_path):
    """``tracking=none``: a null run takes every record and starts no process."""
    from convscope.tracking import NullRun, start_run

    with start_run({"backend": "none"}, "s", {"a": 1}, root=tmp_path) as run:
        assert isinstance(run, NullRun) and not run.recording
        run.log_epoch(1, {"loss": 1.0})
        run.log_kernels(1, {"k": np.ones((3, 3, 1, 1))})
        run.confirm()
        assert run.run_id is None
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(AttributeError):
        run.log_everything()  # not a record a run takes

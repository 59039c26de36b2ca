"""The team's tracking server (convscope.tracking.server) against a real PostgreSQL.

The session server is started from a bare ``postgresql://`` URL, so every test on it also
proves that the URL is rewritten to the psycopg 3 driver. The client only ever sees
``http://127.0.0.1:PORT``: artifacts travel through the server (proxied) and land in the
destination folder, or in an S3 bucket served by moto.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from convscope.tracking.server import ENV, database_url, main, server_launch
from convscope.validation import ValidationError

# The session fixtures (postgres_url, team_server, s3_endpoint); a plugin is registered once,
# so modules that name it share one PostgreSQL and one server.

NO_ENV: dict[str, str] = {}


@pytest.fixture
def client_env(monkeypatch):
    """A client process environment with no tracking settings; mlflow's URI reset after."""
    for names in ENV.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)


# --- the command line -------------------------------------------------------------------


def flags(cmd: list[str]) -> dict[str, str]:
    return {cmd[i]: cmd[i + 1] for i in range(4, len(cmd) - 1) if cmd[i].startswith("--")}


def test_command_binds_loopback_and_proxies_artifacts(tmp_path):
    launch = server_launch("postgresql://u:pw@db:5432/m", str(tmp_path / "art"), env=NO_ENV)
    cmd = launch.cmd
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert "--serve-artifacts" in cmd
    assert flags(cmd)["--host"] == "127.0.0.1" and flags(cmd)["--port"] == "5000"
    assert flags(cmd)["--artifacts-destination"] == str(tmp_path / "art")
    assert "--workers" not in cmd and "--app-name" not in cmd
    # the database URL (its password) goes through the environment, never the command line
    assert "--backend-store-uri" not in cmd and not any("pw" in arg for arg in cmd)
    assert launch.env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg://u:pw@db:5432/m"
    assert launch.env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_options_come_from_the_environment_and_arguments_win():
    env = {
        "CONVSCOPE_BACKEND_STORE_URI": "postgres://u@db/m",
        "CONVSCOPE_ARTIFACTS_DESTINATION": "s3://bucket/mlflow",
        "CONVSCOPE_SERVER_HOST": "0.0.0.0",
        "CONVSCOPE_SERVER_PORT": "5050",
        "CONVSCOPE_SERVER_WORKERS": "3",
    }
    launch = server_launch(env=env, insecure=True, extra=["--allowed-hosts", "mlflow.lan"])
    flag = flags(launch.cmd)
    assert launch.env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg://u@db/m"
    assert flag["--artifacts-destination"] == "s3://bucket/mlflow"
    assert (flag["--host"], flag["--port"], flag["--workers"]) == ("0.0.0.0", "5050", "3")
    assert launch.cmd[-2:] == ["--allowed-hosts", "mlflow.lan"]
    launch = server_launch("sqlite:////srv/x.db", port=6000, env=env, insecure=True)
    assert launch.env["MLFLOW_BACKEND_STORE_URI"] == "sqlite:////srv/x.db"
    assert flags(launch.cmd)["--port"] == "6000"
    mlflow_env = {
        "MLFLOW_BACKEND_STORE_URI": "postgresql://m@db/m",
        "MLFLOW_ARTIFACTS_DESTINATION": "d",
    }
    assert server_launch(env=mlflow_env).backend == "postgresql+psycopg://m@db/m"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:pw@db:5432/mlflow", "postgresql+psycopg://u:pw@db:5432/mlflow"),
        ("postgres://u@db/mlflow", "postgresql+psycopg://u@db/mlflow"),
        ("postgresql+psycopg://u@db/mlflow", "postgresql+psycopg://u@db/mlflow"),
        ("sqlite:////srv/mlflow.db", "sqlite:////srv/mlflow.db"),
    ],
)
def test_database_url(url, expected):
    assert database_url(url) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "no backend store uri: pass --backend-store-uri or set CONVSCOPE_BACKEND_STORE_URI"),
        ({"backend_store_uri": "postgresql://u@db/m"}, "no artifacts destination"),
        ({"backend_store_uri": "mlflow.db", "artifacts_destination": "a"}, "not a database URL"),
        ({"backend_store_uri": "garbage://x/y", "artifacts_destination": "a"}, "'garbage' is not"),
        ({"backend_store_uri": "sqlite:///a", "artifacts_destination": "a", "port": 0}, "port=0"),
        (
            {"backend_store_uri": "sqlite:///a", "artifacts_destination": "a", "workers": "x"},
            "workers",
        ),
        (
            {"backend_store_uri": "sqlite:///a", "artifacts_destination": "a", "host": "0.0.0.0"},
            "--host 0.0.0.0 exposes the server without authentication",
        ),
    ],
)
def test_bad_options_are_one_line(kwargs, message):
    with pytest.raises(ValidationError, match=message) as err:
        server_launch(**kwargs, env=NO_ENV)
    assert "\n" not in str(err.value)


def test_auth_keeps_users_beside_the_runs_with_no_secret_on_the_command_line(tmp_path):
    password_file = tmp_path / "admin.txt"
    password_file.write_text("from-the-File-123\n")
    env = {"CONVSCOPE_SERVER_ADMIN_USER": "root-of-mlflow"}
    launch = server_launch(
        "postgresql://mlflow:db%40Secret@db:5432/runs", str(tmp_path), host="0.0.0.0",
        auth=True, admin_password_file=str(password_file), default_permission="EDIT", env=env,
    )  # fmt: skip
    assert flags(launch.cmd)["--app-name"] == "basic-auth"
    assert not any("Secret" in arg or "File-123" in arg for arg in launch.cmd)
    assert launch.env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "from-the-File-123"
    assert launch.env["MLFLOW_AUTH_ADMIN_USERNAME"] == "root-of-mlflow"
    assert launch.env["PGPASSWORD"] == "db@Secret"  # the users' database URL has none
    assert launch.auth_database == (
        "postgresql+psycopg://mlflow@db:5432/runs?options=-csearch_path%3Dmlflow_auth"
    )
    assert "Secret" not in launch.auth_ini
    assert "database_uri = postgresql+psycopg://mlflow@db:5432/runs?options=-csearch_path%%3D" in (
        launch.auth_ini
    )
    assert "default_permission = EDIT\n" in launch.auth_ini
    assert "auth_cache_ttl_seconds = 60\n" in launch.auth_ini
    import configparser

    settings = configparser.ConfigParser()
    settings.read_string(launch.auth_ini)  # as MLflow reads it: '%' doubled, read back single
    assert settings["mlflow"]["database_uri"] == launch.auth_database
    sqlite = server_launch(
        "sqlite:////srv/mlflow/mlflow.db", "/srv/art", auth=True,
        env={"CONVSCOPE_SERVER_ADMIN_PASSWORD": "from-the-Env-123"},
    )  # fmt: skip
    assert sqlite.auth_database == "sqlite:////srv/mlflow/basic_auth.db"
    assert sqlite.env["MLFLOW_AUTH_ADMIN_USERNAME"] == "admin"


def test_tls_options_become_uvicorns(tmp_path):
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    key.write_text("key")
    cert.write_text("cert")
    launch = server_launch(
        "sqlite:////srv/m.db", "/srv/a", ssl_keyfile=str(key), ssl_certfile=str(cert), env=NO_ENV
    )
    assert flags(launch.cmd)["--uvicorn-opts"] == f"--ssl-keyfile {key} --ssl-certfile {cert}"
    assert launch.url.startswith("https://")


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        ({"auth": True}, {}, "--auth needs the admin's password"),
        ({"auth": True}, {"CONVSCOPE_SERVER_ADMIN_PASSWORD": "short"}, "too short"),
        ({"auth": True}, {"CONVSCOPE_SERVER_ADMIN_PASSWORD": "password1234"}, "public"),
        ({"auth": True, "admin_password_file": "/no/such/file"}, {}, "cannot be read"),
        (
            {"auth": True, "default_permission": "ALL"},
            {"CONVSCOPE_SERVER_ADMIN_PASSWORD": "long-enough-123"},
            "--default-permission ALL is not allowed: expected one of READ, EDIT, MANAGE",
        ),
        ({"ssl_keyfile": "/no/key"}, {}, "TLS needs both"),
        ({"ssl_keyfile": "/no/key", "ssl_certfile": "/no/cert"}, {}, "not a readable file"),
        ({"host": "10.0.0.5"}, {}, "--host 10.0.0.5 exposes the server without authentication"),
    ],
)
def test_bad_auth_and_tls_options_are_one_line(kwargs, env, message):
    with pytest.raises(ValidationError, match=message) as err:
        server_launch("sqlite:////srv/m.db", "/srv/a", **kwargs, env=env)
    assert "\n" not in str(err.value)


def test_loopback_and_insecure_exposure_are_allowed():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert server_launch("sqlite:////m.db", "/a", host=host, env=NO_ENV).host == host
    assert server_launch("sqlite:////m.db", "/a", host="0.0.0.0", insecure=True, env=NO_ENV)


def test_cli_without_backend_prints_one_line_and_exits_2(client_env, capsys):
    assert main(["--artifacts-destination", "/srv/a"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--backend-store-uri" in err


def test_module_entry_point_prints_the_command(client_env):
    out = subprocess.run(
        [sys.executable, "-m", "convscope.tracking.server", "--print",
         "--artifacts-destination", "s3://b/p", "--allowed-hosts", "mlflow.lan"],
        capture_output=True, text=True, check=True, timeout=60,
        env={**os.environ, "CONVSCOPE_BACKEND_STORE_URI": "postgresql://u:secret@db/m"},
    )  # fmt: skip
    command, names = out.stdout.splitlines()
    assert command.split()[3:] == [
        "server", "--artifacts-destination", "s3://b/p", "--serve-artifacts",
        "--host", "127.0.0.1", "--port", "5000", "--allowed-hosts", "mlflow.lan",
    ]  # fmt: skip
    assert "MLFLOW_BACKEND_STORE_URI" in names and "secret" not in out.stdout + out.stderr


# --- the real server on PostgreSQL ------------------------------------------------------


def png_bytes(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def listening_addresses(port: int) -> set[str]:
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def test_server_listens_on_loopback_only(team_server):
    assert listening_addresses(team_server.port) == {"127.0.0.1"}


def test_params_metrics_and_image_round_trip(team_server, client_env, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(team_server.uri)
    client = MlflowClient(team_server.uri)
    exp = client.create_experiment("team-roundtrip")
    image = tmp_path / "kernels.png"
    image.write_bytes(png_bytes(0))
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_params({"lr": 0.01, "filters": 8})
        for epoch in range(1, 4):
            mlflow.log_metrics({"loss": 1.0 / epoch, "accuracy": epoch / 4}, step=epoch)
        mlflow.log_artifact(str(image), "figures")
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"lr": "0.01", "filters": "8"}
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]
    # Proxied: the client is handed an mlflow-artifacts URI, never the server's folder.
    assert got.info.artifact_uri.startswith("mlflow-artifacts:")
    assert team_server.artifacts not in got.info.artifact_uri
    back = client.download_artifacts(run.info.run_id, "figures/kernels.png", str(tmp_path))
    assert Path(back).read_bytes() == image.read_bytes()
    stored = list(Path(team_server.artifacts).rglob("kernels.png"))
    assert [p.read_bytes() for p in stored] == [image.read_bytes()]
    assert run.info.run_id in stored[0].parts


def test_s3_destination_and_sigterm_releases_the_port(postgres_url, s3_endpoint, client_env):
    """Artifacts proxied into moto's S3; SIGTERM to the server stops it and its workers."""
    from mlflow import MlflowClient

    from harness.services import mlflow_server, port_is_free, s3_client, server_env

    with mlflow_server(
        postgres_url, "s3://mlflow/artifacts", workers=1, env=server_env(**s3_endpoint)
    ) as server:
        client = MlflowClient(server.uri)
        exp = client.create_experiment("team-s3")
        run = client.create_run(exp)
        client.log_text(run.info.run_id, "hello", "notes/hello.txt")
        client.set_terminated(run.info.run_id)
        keys = [
            o["Key"]
            for o in s3_client(s3_endpoint).list_objects_v2(Bucket="mlflow").get("Contents", [])
        ]
        assert [k for k in keys if k.endswith("notes/hello.txt")] == [
            f"artifacts/{exp}/{run.info.run_id}/artifacts/notes/hello.txt"
        ]
        assert "s3://" not in client.get_run(run.info.run_id).info.artifact_uri

        os.kill(server.pid, signal.SIGTERM)  # the process only, as a service manager would
        assert server.proc.wait(timeout=30) is not None
        assert listening_addresses(server.port) == set()
        assert port_is_free(server.port)
        with pytest.raises(ProcessLookupError):  # no uvicorn worker left behind
            os.killpg(server.pid, 0)


# --- the client's side: credentials, answers that are errors -----------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://u:s3cret@db:5432/m", "postgresql://u:***@db:5432/m"),
        (
            "at http://alice:pa@ss@host:5000/x?mail=a@b.c",
            "at http://alice:***@host:5000/x?mail=a@b.c",
        ),
        ("http://host:5000/p?mail=a@b.c", "http://host:5000/p?mail=a@b.c"),
        ("postgresql://u@db/m and s3://b/k", "postgresql://u@db/m and s3://b/k"),
    ],
)
def test_every_url_password_is_hidden(text, shown):
    from convscope.validation import error_line, redact_credentials

    assert redact_credentials(text) == shown
    assert error_line(f"failed:\n {text}") == f"failed: {shown}"


def test_a_tracking_uri_with_a_login_is_refused_in_one_hidden_line():
    from convscope.tracking.store import TrackingError, tracking_uri

    with pytest.raises(TrackingError) as err:
        tracking_uri({"backend": "server", "uri": "https://alice:s3cret@mlflow.lan:5000"})
    assert "https://alice:***@mlflow.lan:5000 carries a login" in str(err.value)
    assert "s3cret" not in str(err.value) and "MLFLOW_TRACKING_USERNAME" in str(err.value)


@contextlib.contextmanager
def answering(status: int, body: bytes, paths: tuple[str, ...] = ("/health",)):
    """An HTTP server on 127.0.0.1 that answers ``paths`` with ``status`` and ``body``
    (others 200, an MLflow-like user), and records the Authorization headers it got."""
    import http.server
    import threading

    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(self.headers.get("Authorization"))
            path = self.path.partition("?")[0]
            code, data = (status, body) if path in paths else (200, b'{"user": {}}')
            self.send_response(code)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_answers_5xx_is_said_to_answer_with_an_error(monkeypatch):
    from convscope.tracking.store import TrackingError, check_server

    body = b'{"error_code": "INTERNAL_ERROR", "message": "database is down"}'
    with answering(503, body) as (uri, _), pytest.raises(TrackingError) as err:
        check_server(uri)
    line = str(err.value)
    assert (
        f"the MLflow server at {uri} answered with an error (HTTP 503 Service Unavailable" in line
    )
    assert "database is down" in line and "unreachable" not in line


def test_a_refused_login_names_the_user_and_sends_mlflows_credentials(monkeypatch):
    from convscope.tracking.store import TrackingError, check_server

    path = ("/api/2.0/mlflow/users/current",)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    with answering(401, b"You are not authenticated", path) as (uri, seen):
        with pytest.raises(TrackingError, match="asks for a login .* set MLFLOW_TRACKING_USERNAME"):
            check_server(uri)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-her-password")
        with pytest.raises(TrackingError) as err:
            check_server(uri)
    assert "refused the login of user 'alice' (HTTP 401)" in str(err.value)
    assert "not-her-password" not in str(err.value)
    assert seen[-1] == "Basic " + base64.b64encode(b"alice:not-her-password").decode()
    assert seen[0] is None  # /health is asked without a login


def test_mlflows_retried_5xx_is_an_answer_not_a_lost_server():
    from mlflow.exceptions import MlflowException

    from convscope.tracking.logger import lost_server, server_failure

    uri = "http://127.0.0.1:5000"
    err = MlflowException(
        f"API request to {uri}/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/k.npy failed "
        "with exception HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded "
        "with url: /api/... (Caused by ResponseError('too many 500 error responses'))",
        error_code="INTERNAL_ERROR",
    )
    assert not lost_server(uri, err)
    assert server_failure(uri, err) == (
        f"the MLflow server at {uri} answered with an error (HTTP 500 Internal Server Error to "
        "/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/k.npy; its log says why)"
    )
    refused = MlflowException(
        f"API request to {uri}/api/2.0/mlflow/runs/create failed with exception "
        "HTTPConnectionPool(...): Max retries exceeded (Caused by NewConnectionError(refused))",
        error_code="INTERNAL_ERROR",
    )
    assert lost_server(uri, refused) and server_failure(uri, refused) is None

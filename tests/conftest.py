"""Fixtures every tier may use: real services started once per test worker, the first time a
test asks for one (PostgreSQL, an MLflow server on it, moto's S3), and stopped at the end."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator

import pytest

from harness.services import Postgres, Server, mlflow_server, moto_s3, postgres


@pytest.fixture
def clean_tracking_env(monkeypatch):
    """In-process tracking tests choose their store themselves: no outer DVC, MLflow or sweep
    setting leaks in, and none that mlflow exports is left behind."""
    from convscope.tracking.store import PARENT_ENV

    for name in (
        "CONVSCOPE_ROOT",
        "DVC_ROOT",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_RUN_ID",
        "DVC_EXP_NAME",
        "DVC_EXP_BASELINE_REV",
        PARENT_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    yield
    if "mlflow" in sys.modules:  # mlflow exports its URI to the environment; leave none behind
        sys.modules["mlflow"].set_tracking_uri(None)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Postgres]:
    """The session's PostgreSQL (skipped when PostgreSQL is not installed)."""
    if not shutil.which("initdb") or not shutil.which("postgres"):
        pytest.skip("PostgreSQL (initdb, postgres) is not installed")
    with postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster) -> str:
    """URL of the session's PostgreSQL database (trusted login)."""
    return postgres_cluster.url


@pytest.fixture(scope="session")
def team_server(postgres_url, tmp_path_factory) -> Iterator[Server]:
    """An MLflow server on the session's PostgreSQL, artifacts proxied to a local folder.

    It is given the bare ``postgresql://`` URL a person would write, so every test on it
    also covers the rewrite to the psycopg 3 driver.
    """
    bare = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with mlflow_server(bare, str(tmp_path_factory.mktemp("team-artifacts"))) as server:
        yield server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[dict[str, str]]:
    """moto's S3 for the session; the value is the environment a server or client needs."""
    with moto_s3() as env:
        yield env

"""Fixtures every tier may use: real services started once per test worker, the first time a
test asks for one (PostgreSQL, an MLflow server on it, moto's S3), and stopped at the end."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.support.services import Postgres, Server, mlflow_server, moto_s3, postgres


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

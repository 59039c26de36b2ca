"""Fixtures the integration tests share."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def template_db(tmp_path_factory):
    """An SQLite store with MLflow's tables, made once (table creation takes seconds)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)
    return path

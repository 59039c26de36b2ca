"""An Optuna sweep's study kept in the team's PostgreSQL (a database of its own beside
MLflow's: both record their schema version in an ``alembic_version`` table), continued by a
second sweep of the same name, as workers on other machines would share it."""

from __future__ import annotations

from pathlib import Path

import optuna
import psycopg
import pytest

from harness.services import PG_USER
from tests.support.pipeline import repo_with_lines, script

pytestmark = pytest.mark.slow

STUDIES_DB = "optuna_studies"


@pytest.fixture(scope="module")
def storage(postgres_cluster) -> str:
    with psycopg.connect(
        host="127.0.0.1", port=postgres_cluster.port, user=PG_USER, dbname="postgres",
        autocommit=True,
    ) as conn:  # fmt: skip
        conn.execute(f"CREATE DATABASE {STUDIES_DB}")
    # a bare postgresql:// URL, as a user writes it: the sweeper picks psycopg 3
    return f"postgresql://{PG_USER}@127.0.0.1:{postgres_cluster.port}/{STUDIES_DB}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return repo_with_lines(tmp_path_factory.mktemp("optuna-pg"))


def test_a_study_in_postgresql_is_shared_and_continued(repo, storage):
    args = (
        "-m",
        "hydra/sweeper=optuna",
        "experiment=smoke",
        "scratch.mini_cnn.lr=tag(log, interval(1e-3, 1))",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.seed=3",
        "hydra.sweeper.study_name=team",
        f"hydra.sweeper.storage={storage}",
    )
    for _ in range(2):
        done = script(repo, "train_scratch_lines", *args)
        assert done.returncode == 0, done.stderr[-3000:]
    url = storage.replace("postgresql://", "postgresql+psycopg://")
    trials = optuna.load_study(study_name="team", storage=url).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert not (repo / "optuna.db").exists()  # nothing kept locally

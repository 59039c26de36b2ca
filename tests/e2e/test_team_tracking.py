"""Stage runs on the team's server, many at once: two checkouts with different code each
record their own runs, and 16 stages started together lose no record (the same on one SQLite
store: tests/integration/test_tracking_process.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.project import copy_repo
from tests.support.concurrent import sixteen_stages_at_once, two_checkouts_at_once
from tests.support.pipeline import pipeline_stage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("team-tracking") / "repo")
    made = pipeline_stage(repo, "lines", "tracking.backend=none")
    assert made.returncode == 0, made.stderr
    return repo


def on_server(team_server) -> list[str]:
    return ["tracking.backend=server", f"tracking.uri={team_server.uri}"]


def test_two_checkouts_at_once_each_record_their_own_code(repo, tmp_path, team_server):
    two_checkouts_at_once(repo, tmp_path, on_server(team_server), team_server.uri, "two")


def test_sixteen_stages_at_once_lose_no_record(repo, team_server):
    sixteen_stages_at_once(repo, on_server(team_server), team_server.uri, "load-server")

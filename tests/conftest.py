"""Session-wide test set-up: the tracking agents the tests' stages start are stopped at the end.

An agent exits by itself after two idle minutes (or when its store folder is removed); the
test suite's stores live in pytest's temporary folders, which outlive the session, so the
agents serving them are stopped here rather than left to idle out after the last test.
"""

from __future__ import annotations

import contextlib

import psutil
import pytest

from tests.pipeline_support import agent_processes


@pytest.fixture(scope="session", autouse=True)
def stop_agents_at_the_end(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    yield
    for proc in agent_processes(base):
        with contextlib.suppress(psutil.Error):
            proc.terminate()

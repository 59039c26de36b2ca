"""The glue of :mod:`convscope.launchers` that runs before a sweep's launcher starts."""

from __future__ import annotations

import os
import stat
import tempfile

from convscope.launchers import RAY_SINGLE_NODE_ENV, RAY_TMPDIR_ENV, RayLoopback


def test_each_local_ray_sweep_gets_a_fresh_private_folder(tmp_path, monkeypatch):
    """No name in a shared temp folder that another sweep, checkout or user could have made
    first: each sweep's Ray gets a new folder inside one that only its user may enter, where
    TMPDIR says."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what TMPDIR would set
    folders = []
    for _ in range(2):
        monkeypatch.delenv(RAY_TMPDIR_ENV, raising=False)
        monkeypatch.delenv(RAY_SINGLE_NODE_ENV, raising=False)
        RayLoopback().on_multirun_start(config=None)
        folders.append(os.environ[RAY_TMPDIR_ENV])
        assert os.environ[RAY_SINGLE_NODE_ENV] == "0"
    assert folders[0] != folders[1]
    for folder in folders:  # Ray's own folder (Ray makes it, open to all) in a private one
        private = os.path.dirname(folder)
        info = os.stat(private)
        assert os.path.dirname(private) == str(tmp_path)
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()


def test_a_ray_folder_the_user_names_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv(RAY_TMPDIR_ENV, str(tmp_path / "mine"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    RayLoopback().on_multirun_start(config=None)
    assert os.environ[RAY_TMPDIR_ENV] == str(tmp_path / "mine")
    assert list(tmp_path.iterdir()) == []  # nothing made

"""Where convscope's files are: the project folder, its conf/, and the names it gives files.

A *project* is a folder with ``conf/config.yaml`` and ``dvc.yaml``. In a checkout the code
lives in ``<project>/src/convscope``; an installed package has no such parent, so the project
is the nearest folder at or above the working directory. ``CONVSCOPE_PROJECT`` overrides
both. The MLflow store has a root of its own (:func:`tracking_root`): a queued DVC experiment
runs a copy of the project under ``.dvc/tmp/exps`` while its runs belong to the original's
store, whose path DVC passes as ``DVC_ROOT``.

Standard library only: every entry point resolves paths before it imports anything heavy.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = [
    "MLFLOW_ARTIFACTS",
    "MLFLOW_DB",
    "PROJECT_ENV",
    "TRACKING_ROOT_ENV",
    "conf_dir",
    "is_project",
    "project_root",
    "tracking_root",
]

PROJECT_ENV = "CONVSCOPE_PROJECT"
TRACKING_ROOT_ENV = "CONVSCOPE_ROOT"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"


def is_project(folder: Path) -> bool:
    return (folder / "conf" / "config.yaml").is_file() and (folder / "dvc.yaml").is_file()


@functools.cache
def project_root() -> Path:
    """The project this process works on (see the module docstring); the cwd if none is found."""
    if os.environ.get(PROJECT_ENV):
        return Path(os.environ[PROJECT_ENV]).resolve()
    checkout = Path(__file__).resolve().parents[2]
    if is_project(checkout):
        return checkout
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if is_project(folder):
            return folder
    return cwd


def conf_dir() -> Path:
    """conf/ of the project: the only place a default value lives."""
    return project_root() / "conf"


def tracking_root() -> Path:
    """The local MLflow store's folder: ``CONVSCOPE_ROOT``, else ``DVC_ROOT``, else the project."""
    for env in (TRACKING_ROOT_ENV, "DVC_ROOT"):
        if os.environ.get(env):
            return Path(os.environ[env]).resolve()
    return project_root()

"""Where runs are recorded and how a config becomes params and tags; no mlflow import.

Importing mlflow costs seconds, so a stage resolves its store, checks a server and fails on a
bad setting before paying for it. The store's folder is :func:`convscope.paths.tracking_root`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import socket
import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from convscope.paths import MLFLOW_ARTIFACTS, MLFLOW_DB, tracking_root

TAG_STAGE = "convscope.stage"
TAG_COMMIT = "convscope.git_commit"
TAG_DIRTY = "convscope.git_dirty"
TAG_CHANGES = "convscope.git_changes"  # the files that make a run's code dirty
TAG_OVERRIDES = "convscope.overrides"
TAG_ROLE = "convscope.role"  # "stage" for a stage run, "sweep" for a sweep's parent
TAG_SWEEP_DIR = "convscope.sweep_dir"
TAG_SWEEP_OVERRIDES = "convscope.sweep_overrides"
TAG_SWEEP_JOBS = "convscope.sweep_jobs"
TAG_HOST = "convscope.host"  # with TAG_PID: whose process runs a run, to end it if it died
TAG_PID = "convscope.pid"
TERMINAL = ("FINISHED", "FAILED", "KILLED")  # MLflow run statuses that end a run
# A stage's config values are run tags ``param.<key>``, not MLflow params: MLflow 3's image
# cards list every param of a run above each image, which pushes a run's kernel images out
# of their cards (see README, "The MLflow UI"). Runs recorded before keep them as params.
TAG_PARAM_PREFIX = "param."
# The experiment kind MLflow's UI gives model training (experiments convscope creates carry
# it). MLflow 3.17's UI opens every experiment by the browser's own choice (the sidebar's
# "GenAI" / "Model training" switch, GenAI in a fresh profile) unless the page's URL names it,
# so the links convscope prints name it: UI_TRAINING_QUERY.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
UI_TRAINING_QUERY = "workflowType=machine_learning"

# How a sweep's jobs find its parent run (see convscope.tracking.hydra_callbacks).
PARENT_ENV = "CONVSCOPE_SWEEP_PARENT"
PARENT_FILE = ".convscope_sweep.json"

# MLflow's limits (mlflow.utils.validation), here so that flattening needs no mlflow import.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250
_KEY_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")

# mlflow retries a failing HTTP call 7 times with exponential backoff (minutes in all); a
# stage should fail soon after its server goes away, so these apply unless the user set them.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackingError(RuntimeError):
    """A tracking problem the user can fix (bad URI, server down). The message is one line."""


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """An array's shape and dtype: all MLflow's dataset record needs of it, small enough to
    send to the tracking agent instead of the data."""

    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def of(cls, array: Any) -> ArraySpec:
        import numpy as np

        array = np.asarray(array)
        return cls(tuple(int(n) for n in array.shape), array.dtype.str)

    @staticmethod
    def stand_in(array: Any) -> Any:
        """An array of the spec's shape and dtype that takes no memory (all strides 0); an
        array is returned as it is."""
        import numpy as np

        if not isinstance(array, ArraySpec):
            return np.asarray(array)
        zero = np.zeros(1, dtype=np.dtype(array.dtype))
        return np.lib.stride_tricks.as_strided(
            zero, shape=array.shape, strides=(0,) * len(array.shape), writeable=False
        )


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a dataclass, a DictConfig or a plain mapping alike."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _root(root: str | os.PathLike[str] | None) -> Path:
    path = Path(root).expanduser().resolve() if root is not None else tracking_root()
    if not path.is_dir():
        raise TrackingError(f"the tracking root {path} is not a directory (CONVSCOPE_ROOT?)")
    return path


def sqlite_path(uri: str) -> Path | None:
    """The file of an ``sqlite:///`` URI, None for any other URI."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def tracking_uri(cfg: Any, root: str | os.PathLike[str] | None = None) -> str:
    """The MLflow tracking URI a run with tracking config ``cfg`` writes to.

    local: ``sqlite:////<abs root>/mlflow.db``; an explicit ``tracking.uri`` may name another
    SQLite file (a path or ``sqlite:///`` URI, relative paths taken from the root, never from
    the working directory) or any other URI MLflow accepts.
    server: ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, an http(s) URI. An SQLite URI in
    that variable is refused: ``mlflow.set_tracking_uri`` exports the variable, so after a local
    run in the same process it names that run's store, not a server.
    """
    backend = cfg_get(cfg, "backend", "local")
    uri = cfg_get(cfg, "uri")
    if backend == "local":
        uri = str(uri or MLFLOW_DB)
        if sqlite_path(uri) is None and "://" in uri:
            return uri
        db = Path(uri.removeprefix("sqlite:///")).expanduser()
        return "sqlite:///" + (db if db.is_absolute() else _root(root) / db).resolve().as_posix()
    if backend == "server":
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise TrackingError(
                "tracking.backend=server needs a server URI: set tracking.uri=http://HOST:PORT "
                "or the MLFLOW_TRACKING_URI environment variable"
            )
        uri = str(uri).rstrip("/")
        if not uri.startswith(("http://", "https://")):
            raise TrackingError(
                f"tracking.uri={uri!r} is not allowed for tracking.backend=server: "
                "expected http://HOST:PORT or https://..."
            )
        return uri
    raise TrackingError(
        f"tracking.backend={backend!r} is not allowed: expected one of local, server"
    )


# Tables every MLflow SQLite store has; a store without one of them is damaged.
STORE_TABLES = ("alembic_version", "experiments", "runs", "metrics", "params", "tags")


def _move_aside(path: Path) -> str:
    """What to do with a damaged store; its path is already in the line once."""
    return (
        f"move it aside (`mv {path.name} {path.name}.broken` in its folder) "
        "and rerun to start a new store"
    )


def check_sqlite_store(path: Path) -> bool:
    """Refuse, in one line saying what to do, an SQLite store MLflow cannot use; True when the
    store exists (False: none yet, a first run builds it).

    MLflow itself answers a damaged store with SQLAlchemy tracebacks, or silently builds on
    a half-made one. Checked: a folder in the file's place, a read-only file or folder,
    a file that is not an SQLite database or is shorter than its header says (truncated), a
    store that a killed first run left half-built (Alembic's ``_alembic_tmp_*`` table, no schema
    version), and a store missing one of MLflow's tables. An old schema is found by
    MLflow itself when it opens the store (see :mod:`convscope.tracking.lifecycle`).
    """
    if path.is_dir():
        raise TrackingError(
            f"MLflow store {path} is a folder, not an SQLite file: {_move_aside(path)}"
        )
    if not path.exists():
        folder = path.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise TrackingError(
                f"cannot create the MLflow store {path}: {folder} is not a writable folder"
            )
        return False
    for where in (path, path.parent):
        if not os.access(where, os.R_OK | os.W_OK):
            raise TrackingError(
                f"MLflow store {path} is read-only ({where} is not writable): make it writable "
                f"(chmod u+w {where}) or set tracking.uri to another store"
            )
    with path.open("rb") as f:
        header = f.read(100)
    # The header's page count is valid when its "version-valid-for" matches the change counter.
    if header.startswith(b"SQLite format 3\0") and header[92:96] == header[24:28]:
        page_size = int.from_bytes(header[16:18], "big")
        expected = (65536 if page_size == 1 else page_size) * int.from_bytes(header[28:32], "big")
        if path.stat().st_size < expected:
            raise TrackingError(
                f"MLflow store {path} is truncated ({path.stat().st_size} of {expected} bytes): "
                + _move_aside(path)
            )
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            version = (
                db.execute("SELECT version_num FROM alembic_version").fetchall()
                if "alembic_version" in tables
                else []
            )
    except sqlite3.DatabaseError as err:
        raise TrackingError(
            f"MLflow store {path} is not a usable SQLite database ({err}): {_move_aside(path)}"
        ) from None
    if any(t.startswith("_alembic_tmp_") for t in tables) or (tables and not version):
        raise TrackingError(
            f"MLflow store {path} is half-built (a first run was interrupted while creating it): "
            + _move_aside(path)
        )
    missing = [t for t in STORE_TABLES if t not in tables]
    if missing:
        raise TrackingError(
            f"MLflow store {path} is damaged (no table {', '.join(missing)}): {_move_aside(path)}"
        )
    return True


def artifact_location(uri: str) -> str | None:
    """File URI of the artifact folder beside an SQLite store (``<db dir>/mlartifacts``).

    New experiments get it explicitly: MLflow's own default for a database store is
    ``./mlruns`` relative to the working directory, which would scatter artifacts. None for
    other stores (a server decides its own artifact root).
    """
    path = sqlite_path(uri)
    return None if path is None else (path.parent / MLFLOW_ARTIFACTS).resolve().as_uri()


def check_server(uri: str, timeout: float = 3.0) -> None:
    """Fail fast, in one line, when an http(s) tracking URI does not answer.

    A plain GET of ``/health`` (every ``mlflow server`` has it) with a short timeout, instead
    of mlflow's client, which retries for minutes. A server that answers ``/health`` with an
    HTTP error (a proxy in front, say) is asked for its REST API; an auth challenge there
    still counts as reachable (mlflow sends the credentials itself). Other URIs pass.
    """
    if not uri.startswith(("http://", "https://")):
        return
    reasons = []
    for path in ("/health", "/api/2.0/mlflow/experiments/search?max_results=1"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + path, timeout=timeout):
                return
        except urllib.error.HTTPError as err:
            if err.code in (401, 403) and reasons:
                return
            reasons.append(f"HTTP {err.code} at {path.partition('?')[0]}")
        except OSError as err:  # refused, unknown host, timed out
            reasons.append(str(getattr(err, "reason", None) or err) or type(err).__name__)
            break
    reason = " ".join(", then ".join(reasons).split())
    raise TrackingError(f"MLflow tracking server at {uri} is unreachable: {reason}")


def apply_http_defaults() -> None:
    """Shorten mlflow's HTTP retries (see ``HTTP_DEFAULTS``) unless the user set them."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def git_tags(path: str | os.PathLike[str]) -> dict[str, str]:
    """Commit and dirty tags of a run whose code is at ``path`` ("unknown" without git), and
    MLflow's own commit tag, which the UI links.

    Dirty means the tracked code, conf or params differ from HEAD (``convscope.git_changes``
    names the files). The pipeline's own outputs
    (dvc.lock and every out, metric and plot dvc.yaml declares) never count: a stage run by
    ``dvc repro`` runs while they are being rewritten. Untracked files do not count either.
    ``--no-optional-locks`` keeps ``git status`` from taking ``index.lock``, which would race
    with a concurrent ``git commit`` and with the other jobs of a parallel sweep.
    """
    from convscope.stage_keys import dvc_outputs

    def git(*args: str) -> str | None:
        cmd = ["git", "--no-optional-locks", *args]
        try:
            out = subprocess.run(cmd, cwd=path, capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {TAG_COMMIT: "unknown", TAG_DIRTY: "unknown"}
    outputs = ["dvc.lock", *(dvc_outputs(path) or [])]
    excluded = [f":(top,exclude,literal){out}" for out in outputs]
    status = git("status", "--porcelain", "--untracked-files=no", "--", *excluded)
    tags = {TAG_COMMIT: commit, "mlflow.source.git.commit": commit}
    tags[TAG_DIRTY] = "unknown" if status is None else str(bool(status)).lower()
    if status:  # which files: the evidence, cut to a tag's length
        tags[TAG_CHANGES] = truncate(" ".join(line[2:].strip() for line in status.splitlines()))
    return tags


def process_tags() -> dict[str, str]:
    """This process's host and pid, as tags of a run it opens (see ``reap_dead_runs``)."""
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}


def sanitize_key(key: str) -> str:
    """An MLflow-legal param/tag/metric/image key: other characters become '_'."""
    return _KEY_BAD_CHARS.sub("_", key)[:MAX_KEY_LENGTH]


def truncate(value: str, limit: int = MAX_TAG_VALUE_LENGTH) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def param_value(value: Any) -> str:
    """A config leaf as a param string: JSON spelling (true, null, [28, 28, 1]) except that
    strings stay bare, so values read the same as in params.yaml."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)


def ui_page(base_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment's training runs, or of one run's metric charts
    (its kernel images), opened as model training (``UI_TRAINING_QUERY``)."""
    page = f"{base_uri.rstrip('/')}/#/experiments/{experiment_id}/runs"
    page += f"/{run_id}/model-metrics" if run_id else ""
    return f"{page}?{UI_TRAINING_QUERY}"


def param_tags(params: Mapping[str, Any]) -> dict[str, str]:
    """A stage's config values (nested or dotted keys) as run tags ``param.<dotted key>``."""
    flat = flatten_params(params, MAX_TAG_VALUE_LENGTH)
    return {TAG_PARAM_PREFIX + key: value for key, value in flat.items()}


def run_params(params: Mapping[str, str], tags: Mapping[str, str]) -> dict[str, str]:
    """A recorded run's config values by dotted key: its ``param.*`` tags over any MLflow
    params (runs recorded before the values moved to tags)."""
    start = len(TAG_PARAM_PREFIX)
    tagged = {k[start:]: v for k, v in tags.items() if k.startswith(TAG_PARAM_PREFIX)}
    return {**params, **tagged}


def flatten_params(
    container: Mapping[str, Any], max_value_length: int = MAX_PARAM_VALUE_LENGTH
) -> dict[str, str]:
    """Flatten a nested config to MLflow params: dotted keys, lists kept whole as one string.

    Lists stay one param (``keras.input_shape = [28, 28, 1]``) because their items mean
    nothing alone and a sweep over a list should compare as one column. Values longer than
    MLflow's limit are cut with '...'.
    """
    if not isinstance(container, Mapping):
        raise ValueError(
            f"config_container={type(container).__name__} is not allowed: expected a mapping "
            "(OmegaConf.to_container(cfg, resolve=True))"
        )
    flat: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping) and (node or not prefix):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            value = list(node) if isinstance(node, tuple) else node
            flat[sanitize_key(prefix)] = truncate(param_value(value), max_value_length)

    walk("", container)
    return flat

"""Where runs are recorded: repository root, tracking URI, server reachability, git state.

Nothing here imports mlflow (importing it costs seconds), so a pipeline can resolve the store,
check a server and fail on a bad setting before paying for that import.

Root discovery order (first that applies wins):

1. an explicit ``root`` argument;
2. the ``CONVSCOPE_ROOT`` environment variable;
3. ``DVC_ROOT``, which DVC sets for every stage command; for queued experiments
   (``dvc exp run --queue``) it points at the *parent* repository rather than the temporary
   executor checkout, which is what makes queued runs land in the same store as direct runs;
4. the first folder holding ``dvc.yaml``, ``pyproject.toml`` or ``.git`` at or above ``start``
   (default: this file's folder). Entry points pass their own ``__file__`` as ``start`` so a
   temporary copy of the repository finds itself, not the checkout the package was installed
   from.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT_ENV = "CONVSCOPE_ROOT"
ROOT_MARKERS = ("dvc.yaml", "pyproject.toml", ".git")
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"

# MLflow's limits (mlflow.utils.validation); kept here so flattening needs no mlflow import.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250
_KEY_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")

# mlflow retries a failing HTTP call 7 times with exponential backoff (minutes in all) and
# waits 120 s per request. A stage should fail in seconds when its server goes away, so these
# become the defaults unless the user set them.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class TrackingError(RuntimeError):
    """A tracking problem the user can fix (bad URI, server down). The message is one line."""


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a dataclass, a DictConfig or a plain mapping alike."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def find_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The repository root that holds the MLflow store (see the module docstring for the order)."""
    for env in (ROOT_ENV, "DVC_ROOT"):
        value = os.environ.get(env)
        if value:
            path = Path(value).expanduser().resolve()
            if not path.is_dir():
                raise TrackingError(f"{env}={value!r} is not a directory")
            return path
    begin = Path(start).expanduser().resolve() if start is not None else Path(__file__).parent
    if begin.is_file():
        begin = begin.parent
    for folder in (begin, *begin.parents):
        if any((folder / marker).exists() for marker in ROOT_MARKERS):
            return folder
    raise TrackingError(
        f"no repository root (a folder with {', '.join(ROOT_MARKERS)}) at or above {begin}; "
        f"set {ROOT_ENV}"
    )


def _resolve_root(root: str | os.PathLike[str] | None) -> Path:
    return Path(root).expanduser().resolve() if root is not None else find_root()


def _sqlite_path(uri: str) -> str | None:
    """The file path of an ``sqlite:///`` URI, None for anything else."""
    if uri.startswith("sqlite:///"):
        return uri[len("sqlite:///") :]
    return None


def tracking_uri(cfg: Any, root: str | os.PathLike[str] | None = None) -> str:
    """The MLflow tracking URI a run with tracking config ``cfg`` writes to.

    local: ``sqlite:////<abs root>/mlflow.db``; an explicit ``tracking.uri`` may name another
    SQLite file (a path or ``sqlite:///`` URI, relative paths taken from the root, never from
    the working directory) or any other URI MLflow accepts.
    server: ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, an http(s) URI; neither is a
    one-line error. (Note that ``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI into the
    process environment, so after a local run in the same process the variable holds that
    SQLite URI; it is rejected here rather than silently used as a "server".)
    """
    backend = cfg_get(cfg, "backend", "local")
    uri = cfg_get(cfg, "uri")
    if backend == "local":
        if not uri:
            return "sqlite:///" + (_resolve_root(root) / DB_NAME).as_posix()
        uri = str(uri)
        path = _sqlite_path(uri)
        if path is None and "://" in uri:
            return uri
        db = Path(path if path is not None else uri).expanduser()
        if not db.is_absolute():
            db = _resolve_root(root) / db
        return "sqlite:///" + db.resolve().as_posix()
    if backend == "server":
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise TrackingError(
                "tracking.backend=server needs a server URI: set tracking.uri=http://HOST:PORT "
                "or the MLFLOW_TRACKING_URI environment variable"
            )
        uri = str(uri).rstrip("/")
        if not uri.startswith(("http://", "https://")):
            # mlflow itself exports MLFLOW_TRACKING_URI, so a stale local URI can leak in here
            raise TrackingError(
                f"tracking.uri={uri!r} is not allowed for tracking.backend=server: "
                "expected http://HOST:PORT or https://..."
            )
        return uri
    raise TrackingError(
        f"tracking.backend={backend!r} is not allowed: expected one of local, server"
    )


def artifact_location(uri: str) -> str | None:
    """File URI of the artifact folder beside an SQLite store (``<db dir>/mlartifacts``).

    New experiments get it explicitly: MLflow's own default for a database store is
    ``./mlruns`` relative to the *working directory*, which would scatter artifacts.
    None for other stores (a server decides its own artifact root).
    """
    path = _sqlite_path(uri)
    if path is None:
        return None
    return (Path(path).parent / ARTIFACTS_DIR).resolve().as_uri()


def check_server(uri: str, timeout: float = 3.0) -> None:
    """Fail fast, in one line, when an http(s) tracking URI does not answer.

    A plain GET of ``/health`` (every ``mlflow server`` has it) with a short timeout, instead
    of mlflow's own client which retries for minutes. A server that answers ``/health`` with an
    HTTP error (a proxy in front, say) is asked for ``/api/2.0/mlflow/experiments/search``; an
    auth challenge there still counts as reachable (mlflow sends the credentials itself).
    Other URIs (files, databases) are not checked.
    """
    if not uri.startswith(("http://", "https://")):
        return
    base = uri.rstrip("/")
    reason = "no answer"
    try:
        with urllib.request.urlopen(base + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError as err:
        reason = f"HTTP {err.code} at /health"
        try:
            api = base + "/api/2.0/mlflow/experiments/search?max_results=1"
            with urllib.request.urlopen(api, timeout=timeout):
                return
        except urllib.error.HTTPError as api_err:
            if api_err.code in (401, 403):
                return
            reason += f" and HTTP {api_err.code} at the REST API (is this an MLflow server?)"
        except (urllib.error.URLError, OSError) as api_err:
            reason += f", then {getattr(api_err, 'reason', api_err)}"
    except urllib.error.URLError as err:
        reason = str(err.reason)
    except TimeoutError:
        reason = f"no answer within {timeout:g} s"
    except OSError as err:
        reason = str(err) or type(err).__name__
    reason = " ".join(reason.split()) or "unknown error"
    raise TrackingError(f"MLflow tracking server at {uri} is unreachable: {reason}")


def apply_http_defaults() -> None:
    """Shorten mlflow's HTTP retries (see ``HTTP_DEFAULTS``) unless the user set them."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def git_state(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(commit, dirty) of the git checkout at ``path``; ("unknown", "unknown") without git.

    Dirty means tracked files differ from HEAD; untracked files (outputs, scratch) do not count.
    ``--no-optional-locks`` keeps ``git status`` from taking ``index.lock``, which would race
    with a concurrent ``git commit`` and with the other jobs of a parallel sweep.
    """

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown", "unknown"
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", "unknown"
    dirty = "unknown" if status.returncode != 0 else str(bool(status.stdout.strip())).lower()
    return head.stdout.strip(), dirty


def sanitize_key(key: str) -> str:
    """An MLflow-legal param/tag/metric/image key: other characters become '_'."""
    return _KEY_BAD_CHARS.sub("_", key)[:MAX_KEY_LENGTH]


def truncate(value: str, limit: int) -> str:
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
        elif isinstance(node, tuple):
            flat[sanitize_key(prefix)] = truncate(param_value(list(node)), max_value_length)
        else:
            flat[sanitize_key(prefix)] = truncate(param_value(node), max_value_length)

    walk("", container)
    return flat


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], timeout: float = 120.0) -> Iterator[None]:
    """An inter-process lock (POSIX ``flock``) held while the block runs.

    Used so that parallel sweep jobs agree on one parent run and so that only one process at a
    time creates a fresh SQLite store's tables. The lock dies with its process, so a killed job
    never leaves it held.
    """
    import fcntl

    lock_path = Path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(lock_path, "a+b") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise TrackingError(
                        f"timed out after {timeout:g} s waiting for the lock {lock_path}"
                    ) from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def sqlite_initialized(uri: str) -> bool:
    """True when the SQLite store behind ``uri`` exists and already has MLflow's tables.

    Only a fresh store needs the creation lock; asking SQLite directly (read-only) avoids
    taking it, and leaving a lock file behind, for every run of an existing store.
    """
    import sqlite3

    path = _sqlite_path(uri)
    if path is None or not Path(path).is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)) as db:
            row = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'"
            ).fetchone()
    except sqlite3.Error:
        return False
    return row is not None


def store_lock_path(uri: str) -> Path:
    """A lock file for one store, in the temp folder so the repository stays clean."""
    digest = hashlib.sha1(uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"convscope-mlflow-{digest}.lock"

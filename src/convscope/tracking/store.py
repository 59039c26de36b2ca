"""Where runs are recorded and how a config becomes params and tags; no mlflow import.

Importing mlflow costs seconds, so a stage resolves its store, checks a server and fails on a
bad setting before paying for it. The store's folder is :func:`convscope.paths.tracking_root`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http
import json
import os
import re
import socket
import sqlite3
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from convscope.paths import MLFLOW_ARTIFACTS, MLFLOW_DB, tracking_root
from convscope.validation import redact_credentials

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
# An Optuna trial's run: its number, its study, its end state, the epoch it was pruned at.
TAG_TRIAL = "convscope.trial"
TAG_STUDY = "convscope.study"
TAG_BEST_TRIAL = "convscope.study_best_trial"
TAG_BEST_OVERRIDES = "convscope.study_best_overrides"
TAG_TRIAL_STATE = "convscope.trial_state"
TAG_TRIAL_STOPPED = "convscope.trial_stopped_epoch"
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


def sweep_parent(sweep_dir: str | os.PathLike[str]) -> tuple[str, str] | None:
    """``(run id, tracking URI)`` of the parent run recorded in a sweep folder, or None."""
    import json

    try:
        record = json.loads((Path(sweep_dir) / PARENT_FILE).read_text())
        return str(record["run_id"]), str(record["tracking_uri"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
        refuse_credentials_in(uri)
        return uri
    raise TrackingError(
        f"tracking.backend={backend!r} is not allowed: expected one of local, server"
    )


def experiment_name(cfg: Any, stage: str) -> str:
    """The experiment every run of ``stage`` goes to: ``<experiment_prefix>/<stage>``."""
    prefix = cfg_get(cfg, "experiment_prefix", "convscope")
    return f"{prefix}/{stage}" if prefix else stage


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


#: the MLflow client's own variables for a server's login and certificate (MLflow reads them;
#: convscope's checks before a run send the same)
USERNAME_ENV, PASSWORD_ENV, TOKEN_ENV = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
CERT_ENV, INSECURE_TLS_ENV = "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_INSECURE_TLS"
#: the permissions on an experiment that let a user record runs in it
RECORDING_PERMISSIONS = ("EDIT", "MANAGE")
_LOGIN_HINT = f"{USERNAME_ENV} and {PASSWORD_ENV} (or {TOKEN_ENV})"


def refuse_credentials_in(uri: str, what: str = "the tracking URI") -> None:
    """A server URI never carries a login: it is a config value, so it would land in
    params.yaml, run tags, Hydra's run folders and command lines. One line, password hidden."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is not None or parts.password is not None:
        raise TrackingError(
            f"{what} {redact_credentials(uri)} carries a login: give the URI without it and "
            f"set {_LOGIN_HINT} instead"
        )


def _login() -> tuple[str | None, str | None]:
    """(user name or None, ``Authorization`` header or None), as MLflow's client sends them:
    a user name and password first, else a token."""
    user, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        return user, f"Basic {pair}"
    token = os.environ.get(TOKEN_ENV)
    return (user or None), (f"Bearer {token}" if token else None)


def _tls_context() -> ssl.SSLContext | None:
    """The certificate check MLflow's client makes: the CA file in ``CERT_ENV``, none with
    ``INSECURE_TLS_ENV``, else the default (the system's store)."""
    if os.environ.get(INSECURE_TLS_ENV, "").lower() in ("true", "1"):
        unchecked = ssl.create_default_context()  # the user's explicit choice
        unchecked.check_hostname, unchecked.verify_mode = False, ssl.CERT_NONE
        return unchecked
    cert = os.environ.get(CERT_ENV)
    if not cert:
        return None
    try:
        return ssl.create_default_context(cafile=cert)
    except (OSError, ssl.SSLError) as err:
        why = getattr(err, "strerror", None) or err
        raise TrackingError(f"{CERT_ENV}={cert} cannot be read as a certificate: {why}") from None


@dataclasses.dataclass(frozen=True)
class Answer:
    """A server's answer to one GET: status and body."""

    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def phrase(self) -> str:
        try:
            return http.HTTPStatus(self.status).phrase
        except ValueError:
            return ""

    def text(self, limit: int = 200) -> str:
        """What the body says in one short line (MLflow's ``message`` when it is JSON)."""
        data = self.json()
        text = data.get("message") if isinstance(data, dict) else None
        text = " ".join(str(text or self.body.decode(errors="replace")).split())
        return text[:limit] or self.phrase


def _get(uri: str, path: str, timeout: float, login: str | None) -> Answer:
    """GET ``path`` of the server at ``uri``; an HTTP error is an answer, not an exception
    (OSError: no answer)."""
    request = urllib.request.Request(uri.rstrip("/") + path)
    if login:
        request.add_header("Authorization", login)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_tls_context()) as resp:
            return Answer(resp.status, resp.read())
    except urllib.error.HTTPError as err:
        return Answer(err.code, err.read())


def server_error(uri: str, answer: Answer, path: str) -> TrackingError:
    """One line for a server that answered HTTP 5xx: it is up, and said what went wrong."""
    return TrackingError(
        f"the MLflow server at {uri} answered with an error (HTTP {answer.status} "
        f"{answer.phrase} at {path.partition('?')[0]}: {answer.text()}); its log says more"
    )


def login_refused(uri: str, user: str | None, login: str | None) -> TrackingError:
    """One line for HTTP 401: the login that was refused, or that none was given."""
    if login is None:
        return TrackingError(
            f"the MLflow server at {uri} asks for a login (HTTP 401): set {_LOGIN_HINT}"
        )
    who = f"the login of user {user!r}" if user else f"the token in {TOKEN_ENV}"
    return TrackingError(
        f"the MLflow server at {uri} refused {who} (HTTP 401): check {_LOGIN_HINT}"
    )


def check_server(
    uri: str, timeout: float = 3.0, experiment: str | None = None
) -> dict[str, Any] | None:
    """Fail fast, in one line, when an http(s) tracking server cannot take this user's runs.

    Plain GETs with a short timeout, instead of mlflow's client, which retries for minutes:
    ``/health`` (every ``mlflow server`` has it; no login), then, with the login MLflow's
    client would send (``USERNAME_ENV``/``PASSWORD_ENV`` or ``TOKEN_ENV``) and its
    certificate check (``CERT_ENV``), the current user of MLflow's basic-auth app (a server
    without it answers 404 and is asked for its REST API instead). Refused: no answer, a
    certificate that cannot be verified, HTTP 5xx (the server answered, with an error), a
    refused or missing login (401), and, for ``experiment``, a user who may not record runs
    in it (an existing experiment where the user holds less than EDIT; a new one is the
    creator's to manage). Other URIs pass. Returns the basic-auth app's record of the logged-in
    user (``username``, ``is_admin``), None for a server without it or another URI.
    """
    if not uri.startswith(("http://", "https://")):
        return None
    refuse_credentials_in(uri)
    user, login = _login()
    try:
        health = _get(uri, "/health", timeout, None)
        if health.status >= 500:
            raise server_error(uri, health, "/health")
        path = "/api/2.0/mlflow/users/current"
        current = _get(uri, path, timeout, login)
        if current.status == 404:  # no basic-auth app: its REST API must answer
            path = "/api/2.0/mlflow/experiments/search?max_results=1"
            current = _get(uri, path, timeout, login)
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise TrackingError(
                f"the certificate of the MLflow server at {uri} cannot be verified "
                f"({reason.verify_message}): set {CERT_ENV} to the certificate that signed it "
                "(a self-signed server's own certificate)"
            ) from None
        raise _unreachable(uri, reason) from None
    except OSError as err:  # refused, reset, timed out
        raise _unreachable(uri, err) from None
    if current.status == 401:
        raise login_refused(uri, user, login)
    if current.status >= 500:
        raise server_error(uri, current, path)
    if current.status == 403:
        raise TrackingError(
            f"the MLflow server at {uri} refused {user or 'this client'!r} access to its "
            f"experiments (HTTP 403 at {path.partition('?')[0]})"
        )
    if current.status != 200:
        raise TrackingError(
            f"{uri} does not answer as an MLflow tracking server (HTTP {current.status} at "
            f"{path.partition('?')[0]})"
        )
    me = (current.json() or {}).get("user") if path.endswith("/users/current") else None
    if not isinstance(me, dict):
        return None
    if experiment is not None and not me.get("is_admin"):
        _check_recording(uri, str(me.get("username")), experiment, timeout, login)
    return me


def _unreachable(uri: str, err: BaseException | str) -> TrackingError:
    reason = " ".join((str(getattr(err, "reason", None) or err) or type(err).__name__).split())
    return TrackingError(f"MLflow tracking server at {uri} is unreachable: {reason}")


def _check_recording(
    uri: str, user: str, experiment: str, timeout: float, login: str | None
) -> None:
    """Refuse a user who may not record runs in ``experiment`` (one line, with the grant an
    admin gives); an experiment that does not exist yet is the creator's."""
    quoted = urllib.parse.quote(experiment, safe="")
    path = f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={quoted}"
    found = _get(uri, path, timeout, login)
    grant = f"an admin grants it with `convscope server users grant {user} {experiment} EDIT`"
    if found.status == 404:
        return
    if found.status == 403:
        raise TrackingError(
            f"user {user!r} may not read experiment {experiment!r} on the MLflow server at "
            f"{uri} (HTTP 403): recording a run needs EDIT; {grant}"
        )
    exp = (found.json() or {}).get("experiment") if found.status == 200 else None
    if not isinstance(exp, dict):
        return  # an older server: the run's creation says it
    query = urllib.parse.urlencode(
        {"username": user, "resource_type": "experiment", "resource_id": exp["experiment_id"]}
    )
    answer = _get(uri, f"/api/3.0/mlflow/users/permissions/get?{query}", timeout, login)
    permission = (answer.json() or {}).get("permission") if answer.status == 200 else None
    if permission is not None and permission not in RECORDING_PERMISSIONS:
        raise TrackingError(
            f"user {user!r} has {permission} permission on experiment {experiment!r} "
            f"(id {exp['experiment_id']}) on the MLflow server at {uri}: recording a run "
            f"needs EDIT; {grant}"
        )


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
    ``dvc repro`` runs while they are being rewritten. Inside a DVC experiment
    (``DVC_EXP_NAME`` set) params.yaml does not count either: ``dvc exp run -S`` writes it,
    and the experiment's own commit keeps it. Untracked files do not count.
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
    if os.environ.get("DVC_EXP_NAME"):
        outputs.append("params.yaml")
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
    """A stage's config values (nested or dotted keys) as run tags ``param.<dotted key>``; a
    URL's password among them shows as ``***``."""
    flat = flatten_params(params, MAX_TAG_VALUE_LENGTH)
    return {TAG_PARAM_PREFIX + key: redact_credentials(value) for key, value in flat.items()}


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

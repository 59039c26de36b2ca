"""A team's MLflow tracking server: MLflow's own ``mlflow server``, started with the right options
and checked first.

Nothing here reimplements the server. :func:`server_launch` builds its command line (run as
``python -m mlflow`` with this interpreter, so the server is this environment's MLflow) and the
environment it gets::

    MLFLOW_BACKEND_STORE_URI=postgresql+psycopg://mlflow:***@db:5432/mlflow \\
    mlflow server --artifacts-destination s3://bucket/mlflow --serve-artifacts
                  --host 127.0.0.1 --port 5000 [--app-name basic-auth]

and :func:`serve` checks what the server will need, then runs it in the foreground. Artifacts
are *proxied*: clients upload and download them through the server (``mlflow-artifacts:/``
URIs), so only the server needs access to the folder or the bucket (S3 credentials and
``MLFLOW_S3_ENDPOINT_URL`` are read by the server from its environment, as boto3 does).

Secrets stay out of sight. The backend URI, which carries the database password, reaches
``mlflow server`` through its environment (``MLFLOW_BACKEND_STORE_URI``, which MLflow reads
itself and hands its workers the same way), never its command line, where any local user reads
it with ``ps``; every line printed shows a URL's password as ``***``.

Start-up checks, each one line and exit 1 in seconds instead of MLflow's minute of retries and
tracebacks: the backend's scheme is one convscope can drive (PostgreSQL through psycopg 3, or
SQLite), the database answers and takes the login (one connection with a short timeout, saying
whether the host, the database or the login is wrong), the artifacts destination can be written
(a folder: a probe file written and removed; S3: a head-bucket call), the port is free.

Authentication (``--auth``): MLflow's basic-auth app (``--app-name basic-auth``), its users and
permissions kept in the same database as the runs: schema :data:`AUTH_SCHEMA` of the
PostgreSQL database, or ``basic_auth.db`` beside an SQLite store (a local trial). MLflow reads
the app's settings from an ini file, written to a private temporary folder for the server's
lifetime; it holds no secret (a PostgreSQL password reaches the app as ``PGPASSWORD``, which
libpq reads). The admin (``admin``, or ``CONVSCOPE_SERVER_ADMIN_USER``) is created on the first
start with the password in ``CONVSCOPE_SERVER_ADMIN_PASSWORD`` or the file named by
``--admin-password-file``; there is no default, and ``--auth`` without one refuses to start.
Users and grants: ``convscope server users`` (:mod:`convscope.tracking.users`). Each request's
password check is a deliberately slow hash; the app caches a successful check per worker for
``--auth-cache-seconds`` (:data:`AUTH_CACHE_SECONDS`; 0 turns the cache off), so a changed
password or a deleted user may still log in on another worker for that long.

Exposure is a decision: the server binds to 127.0.0.1 unless a host is given, and any other
address without ``--auth`` is refused unless ``--insecure`` says the operator means it. MLflow's
``--allowed-hosts`` should then name the public host name (options this module does not know are
passed to ``mlflow server`` unchanged). TLS: ``--ssl-keyfile`` and ``--ssl-certfile`` become
uvicorn's options (``--uvicorn-opts``), so the server speaks HTTPS itself; clients verify it
against the system's store or ``MLFLOW_TRACKING_SERVER_CERT_PATH``.

Every option may come from the environment instead of an argument, which suits a service
manager or a container (:data:`ENV`; MLflow's own ``MLFLOW_BACKEND_STORE_URI`` and
``MLFLOW_ARTIFACTS_DESTINATION`` are read too). MLflow's background job runner (GenAI jobs) is
off unless ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` says otherwise.

PostgreSQL URLs: SQLAlchemy 2.1 picks no driver for a bare ``postgresql://`` URL and the
installed driver is psycopg 3, so ``postgresql://`` and ``postgres://`` are rewritten to
``postgresql+psycopg://``; a URL naming another driver is kept as given.

``python -m convscope.tracking.server --help`` runs :func:`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from convscope.validation import ValidationError, check_int, error_line, redact_credentials

__all__ = [
    "AUTH_SCHEMA",
    "ENV",
    "Launch",
    "StartupError",
    "check_artifacts",
    "check_database",
    "database_url",
    "main",
    "serve",
    "server_launch",
]

# Each option's environment variables, first set wins.
ENV = {
    "backend_store_uri": ("CONVSCOPE_BACKEND_STORE_URI", "MLFLOW_BACKEND_STORE_URI"),
    "artifacts_destination": ("CONVSCOPE_ARTIFACTS_DESTINATION", "MLFLOW_ARTIFACTS_DESTINATION"),
    "host": ("CONVSCOPE_SERVER_HOST",),
    "port": ("CONVSCOPE_SERVER_PORT",),
    "workers": ("CONVSCOPE_SERVER_WORKERS",),
    "admin_password_file": ("CONVSCOPE_SERVER_ADMIN_PASSWORD_FILE",),
    "default_permission": ("CONVSCOPE_SERVER_DEFAULT_PERMISSION",),
    "auth_cache_seconds": ("CONVSCOPE_SERVER_AUTH_CACHE_SECONDS",),
    "ssl_keyfile": ("CONVSCOPE_SERVER_SSL_KEYFILE",),
    "ssl_certfile": ("CONVSCOPE_SERVER_SSL_CERTFILE",),
}
AUTH_ENV = "CONVSCOPE_SERVER_AUTH"  # "true": as --auth
ADMIN_PASSWORD_ENV = "CONVSCOPE_SERVER_ADMIN_PASSWORD"
ADMIN_USER_ENV = "CONVSCOPE_SERVER_ADMIN_USER"
DEFAULT_ADMIN = "admin"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
#: the schema of the PostgreSQL database that holds the basic-auth app's users and permissions
AUTH_SCHEMA = "mlflow_auth"
#: the basic-auth app's user database beside an SQLite store
AUTH_SQLITE = "basic_auth.db"
#: what users hold on an experiment nobody granted them anything on
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
DEFAULT_PERMISSION = "READ"
#: seconds a worker trusts a password it has checked (MLflow's own default is 0: no cache)
AUTH_CACHE_SECONDS = 60
#: MLflow's rule for passwords, checked here so a short one is refused before anything starts
MIN_PASSWORD = 12
#: the admin password older MLflow versions shipped: public knowledge
PUBLIC_PASSWORD = "password1234"
#: seconds each start-up check may take (all of them stay well under 15 s)
CHECK_TIMEOUT = 4
_PG_SCHEMES = ("postgresql://", "postgres://")
_KNOWN_DATABASES = ("postgresql", "sqlite")
_LOOPBACK_NAMES = ("localhost",)


class StartupError(RuntimeError):
    """Something the server needs is missing or broken; the message is one line."""


@dataclass
class Launch:
    """How ``mlflow server`` is started: ``cmd`` (no secret in it), the variables ``env`` sets
    for it on top of this process's environment (secrets among them), and what :func:`serve`
    checks and prepares first."""

    cmd: list[str]
    env: dict[str, str]
    backend: str  # the SQLAlchemy URL of the runs' database
    artifacts: str
    host: str
    port: int
    auth_ini: str | None = None  # the basic-auth app's settings (no secret in them)
    auth_database: str | None = None  # its user database (no password in it)
    tls: bool = False
    drop_env: tuple[str, ...] = field(default=(ADMIN_PASSWORD_ENV,))

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def _from_env(option: str, value: object, env: Mapping[str, str]) -> object:
    if value not in (None, ""):
        return value
    return next((env[name] for name in ENV[option] if env.get(name)), None)


def _missing(option: str, example: str) -> ValidationError:
    flag = "--" + option.replace("_", "-")
    return ValidationError(
        f"no {option.replace('_', ' ')}: pass {flag} or set {ENV[option][0]} (e.g. {example})"
    )


def _as_int(value: object, name: str, **bounds: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return check_int(value, name, **bounds)


def database_url(uri: str) -> str:
    """The SQLAlchemy URL MLflow gets: ``postgresql://`` and ``postgres://`` use psycopg 3.
    A URL of a database convscope cannot drive is refused in one line."""
    for scheme in _PG_SCHEMES:
        if uri.startswith(scheme):
            return "postgresql+psycopg://" + uri[len(scheme) :]
    if "://" not in uri:
        raise ValidationError(
            f"backend store {redact_credentials(uri)!r} is not a database URL: expected e.g. "
            "postgresql://user@host:5432/mlflow"
        )
    scheme = uri.partition("://")[0]
    if scheme.partition("+")[0] not in _KNOWN_DATABASES:
        raise ValidationError(
            f"backend store scheme {scheme!r} is not known: expected postgresql://USER@HOST:PORT/"
            "DATABASE or sqlite:////absolute/path/mlflow.db"
        )
    return uri


def _artifacts_destination(dest: str) -> str:
    """A URI (``s3://``, ``file://``...) as given; a plain folder made absolute."""
    return dest if "://" in dest else str(Path(dest).expanduser().resolve())


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _admin_password(file: object, env: Mapping[str, str]) -> str:
    """The admin's first password: ``--admin-password-file`` (its first line), else
    ``ADMIN_PASSWORD_ENV``. Never a default."""
    if file:
        try:
            lines = Path(str(file)).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            why = getattr(err, "strerror", None) or err
            raise ValidationError(f"--admin-password-file {file} cannot be read: {why}") from None
        password, where = (lines[0] if lines else ""), f"--admin-password-file {file}"
    else:
        password, where = env.get(ADMIN_PASSWORD_ENV, ""), ADMIN_PASSWORD_ENV
    if not password:
        raise ValidationError(
            f"--auth needs the admin's password (MLflow's basic-auth app has no default): set "
            f"{ADMIN_PASSWORD_ENV} or pass --admin-password-file FILE"
        )
    if len(password) < MIN_PASSWORD:
        raise ValidationError(
            f"the admin password in {where} is too short: MLflow needs at least {MIN_PASSWORD} "
            "characters"
        )
    if password == PUBLIC_PASSWORD:
        raise ValidationError(
            f"the admin password in {where} is the one older MLflow versions shipped (public "
            "knowledge): choose another"
        )
    return password


def _auth_database(backend: str) -> tuple[str, dict[str, str]]:
    """The basic-auth app's user database beside ``backend``, without a password, and the
    variables that give the app the password (``PGPASSWORD``, which libpq reads)."""
    from sqlalchemy.engine import URL, make_url

    url = make_url(backend)
    if url.get_backend_name() == "sqlite":
        folder = Path(url.database or ".").expanduser().resolve().parent
        return f"sqlite:///{(folder / AUTH_SQLITE).as_posix()}", {}
    options = " ".join(filter(None, [url.query.get("options"), f"-csearch_path={AUTH_SCHEMA}"]))
    # URL.set(password=None) keeps the password: a new URL without one
    bare = URL.create(url.drivername, url.username, None, url.host, url.port, url.database)
    auth = bare.update_query_dict({**url.query, "options": options})
    extra = {"PGPASSWORD": url.password} if url.password else {}
    return auth.render_as_string(hide_password=False), extra


def auth_settings(database: str, default_permission: str, cache_seconds: int) -> str:
    """The basic-auth app's ini file (``MLFLOW_AUTH_CONFIG_PATH``); configparser reads '%' as
    interpolation, so a URL's encoded characters are doubled."""
    return (
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {database.replace('%', '%%')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {cache_seconds}\n"
    )


def server_launch(
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    host: str | None = None,
    port: int | str | None = None,
    workers: int | str | None = None,
    auth: bool = False,
    admin_password_file: str | None = None,
    default_permission: str | None = None,
    auth_cache_seconds: int | str | None = None,
    insecure: bool = False,
    ssl_keyfile: str | None = None,
    ssl_certfile: str | None = None,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Launch:
    """How to start ``mlflow server``; arguments left ``None`` come from ``env``.

    ``env`` defaults to ``os.environ``. A bad or missing option raises
    :class:`ValidationError` with one line: no backend store or artifacts destination, a
    database scheme convscope cannot drive, a port outside 1..65535, fewer than 1 worker, a
    host other than loopback without ``auth`` or ``insecure``, ``auth`` without an admin
    password, a permission MLflow does not know, half of a key and certificate pair. ``extra``
    is appended as is (e.g. ``["--allowed-hosts", "mlflow.lan"]``).
    """
    env = os.environ if env is None else env
    backend = _from_env("backend_store_uri", backend_store_uri, env)
    if not backend:
        raise _missing("backend_store_uri", "postgresql://mlflow@db.lan:5432/mlflow")
    backend = database_url(str(backend))
    dest = _from_env("artifacts_destination", artifacts_destination, env)
    if not dest:
        raise _missing("artifacts_destination", "s3://bucket/mlflow or /srv/mlflow-artifacts")
    dest = _artifacts_destination(str(dest))
    host = str(_from_env("host", host, env) or DEFAULT_HOST)
    port = _from_env("port", port, env)
    port = _as_int(DEFAULT_PORT if port is None else port, "port", min=1, max=65535)
    workers = _from_env("workers", workers, env)
    auth = auth or env.get(AUTH_ENV, "").lower() in ("1", "true", "yes")
    if not auth and not insecure and not is_loopback(host):
        raise ValidationError(
            f"--host {host} exposes the server without authentication (anyone who reaches the "
            "port can read, change and delete every run): add --auth, or --insecure if you "
            "mean it"
        )
    keyfile = _from_env("ssl_keyfile", ssl_keyfile, env)
    certfile = _from_env("ssl_certfile", ssl_certfile, env)
    if bool(keyfile) != bool(certfile):
        raise ValidationError("TLS needs both --ssl-keyfile and --ssl-certfile")
    for flag, path in (("--ssl-keyfile", keyfile), ("--ssl-certfile", certfile)):
        if path and not os.access(str(path), os.R_OK):
            raise ValidationError(f"{flag} {path} is not a readable file")
    if keyfile and any(arg.startswith("--uvicorn-opts") for arg in extra):
        raise ValidationError("--ssl-keyfile/--ssl-certfile cannot be combined with --uvicorn-opts")

    # fmt: off
    cmd = [sys.executable, "-m", "mlflow", "server", "--artifacts-destination", dest,
           "--serve-artifacts", "--host", host, "--port", str(port)]
    # fmt: on
    if workers is not None:
        cmd += ["--workers", str(_as_int(workers, "workers", min=1))]
    if keyfile:
        key, cert = (str(Path(str(f)).resolve()) for f in (keyfile, certfile))
        cmd += ["--uvicorn-opts", shlex.join(["--ssl-keyfile", key, "--ssl-certfile", cert])]
    jobs = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"
    child_env = {"MLFLOW_BACKEND_STORE_URI": backend, jobs: env.get(jobs, "false")}
    launch = Launch(cmd, child_env, backend, dest, host, port, tls=bool(keyfile))
    if auth:
        password = _admin_password(_from_env("admin_password_file", admin_password_file, env), env)
        permission = str(
            _from_env("default_permission", default_permission, env) or DEFAULT_PERMISSION
        )
        if permission not in PERMISSIONS:
            raise ValidationError(
                f"--default-permission {permission} is not allowed: expected one of "
                + ", ".join(PERMISSIONS)
            )
        cache = _from_env("auth_cache_seconds", auth_cache_seconds, env)
        cache = _as_int(AUTH_CACHE_SECONDS if cache is None else cache, "auth-cache-seconds", min=0)
        launch.auth_database, auth_env = _auth_database(backend)
        launch.auth_ini = auth_settings(launch.auth_database, permission, cache)
        launch.cmd += ["--app-name", "basic-auth"]
        child_env.update(auth_env)
        child_env.update(
            MLFLOW_AUTH_ADMIN_USERNAME=env.get(ADMIN_USER_ENV) or DEFAULT_ADMIN,
            MLFLOW_AUTH_ADMIN_PASSWORD=password,
            # CSRF protection of the sign-up page; every worker gets the same key
            MLFLOW_FLASK_SERVER_SECRET_KEY=env.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
            or secrets.token_hex(32),
        )
    launch.cmd += list(extra)
    return launch


# --------------------------------------------------------------------------- start-up checks


def _pg_error(err: BaseException, url) -> str:  # noqa: ANN001 - a sqlalchemy URL
    """Which of host, database or login a failed PostgreSQL connection got wrong."""
    text = " ".join(str(err).split())
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    sqlstate = getattr(err, "sqlstate", None)
    if sqlstate == "3D000" or ("does not exist" in text and "database" in text):
        return (
            f"the database server at {where} has no database {url.database!r}: create it "
            f"(createdb {url.database}) or fix the backend URI"
        )
    if sqlstate in ("28P01", "28000") or "password authentication failed" in text:
        return (
            f"the database server at {where} refused the login of user {url.username!r}: "
            "wrong password (or the user is not allowed in)"
        )
    if "no password supplied" in text:
        return (
            f"the database server at {where} asks user {url.username!r} for a password: put it "
            "in the backend URI (it stays out of the command line)"
        )
    if "role" in text and "does not exist" in text:
        return (
            f"the database server at {where} has no user {url.username!r}: fix the backend URI's "
            "user (or create the role)"
        )
    # libpq: 'connection to server at "HOST", port N failed: <reason>'
    reason = text.rsplit(" failed: ", 1)[-1].removeprefix("FATAL:").strip()
    return f"cannot reach the database server at {where} ({reason})"


def check_database(url: str, auth: bool = False, timeout: float = CHECK_TIMEOUT) -> None:
    """Connect to the runs' database once, with a short timeout, before MLflow does (MLflow
    retries for minutes, then prints tracebacks). With ``auth``, make the basic-auth app's
    schema (PostgreSQL). One-line :class:`StartupError` when it cannot be used."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite(Path(parsed.database or ""))
        return
    import psycopg

    options = {k: v for k, v in parsed.query.items() if isinstance(v, str)}
    try:
        with psycopg.connect(
            host=parsed.host, port=parsed.port, user=parsed.username, password=parsed.password,
            dbname=parsed.database, connect_timeout=max(1, int(timeout)), autocommit=True,
            **options,
        ) as conn:  # fmt: skip
            if auth:
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {AUTH_SCHEMA}")
    except psycopg.errors.InsufficientPrivilege:
        raise StartupError(
            f"user {parsed.username!r} may not create schema {AUTH_SCHEMA} (the users of --auth) "
            f"in database {parsed.database!r}: create it for that user, or grant CREATE"
        ) from None
    except psycopg.Error as err:
        raise StartupError(_pg_error(err, parsed)) from None


def _check_sqlite(path: Path) -> None:
    from convscope.tracking.store import TrackingError, check_sqlite_store

    if not path.is_absolute():
        raise StartupError(
            f"backend store sqlite:///{path} is relative: give an absolute path, "
            "sqlite:////srv/mlflow/mlflow.db"
        )
    try:
        check_sqlite_store(path)
    except TrackingError as err:
        raise StartupError(str(err)) from None


def check_artifacts(
    dest: str, env: Mapping[str, str] | None = None, timeout: float = CHECK_TIMEOUT
) -> None:
    """The artifacts destination can be written: a folder (made if missing) takes a probe
    file, written and removed; an S3 bucket answers a head-bucket call with ``env``'s
    credentials and endpoint. Other schemes are MLflow's to check. One-line
    :class:`StartupError` otherwise."""
    env = os.environ if env is None else env
    if dest.startswith("s3://"):
        _check_bucket(dest, env, timeout)
    elif "://" not in dest or dest.startswith("file://"):
        _check_folder(Path(dest.removeprefix("file://")))


def _check_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".convscope-probe-"):
            pass
    except OSError as err:
        raise StartupError(
            f"the artifacts destination {folder} cannot be written "
            f"({err.strerror or err}): every upload would fail"
        ) from None


def _check_bucket(dest: str, env: Mapping[str, str], timeout: float) -> None:
    import boto3
    import botocore.config
    import botocore.exceptions

    bucket = dest.removeprefix("s3://").partition("/")[0]
    config = botocore.config.Config(
        connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1}
    )
    endpoint = env.get("MLFLOW_S3_ENDPOINT_URL") or None
    where = f"S3 bucket {bucket!r}" + (f" at {endpoint}" if endpoint else "")
    try:
        client = boto3.client("s3", endpoint_url=endpoint, config=config)
        client.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        why = {
            "404": "does not exist",
            "NoSuchBucket": "does not exist",
            "403": "refuses these credentials (HTTP 403)",
        }.get(code, f"answered {code or err}")
        raise StartupError(f"the artifacts destination {where} {why}") from None
    except botocore.exceptions.NoCredentialsError:
        raise StartupError(
            f"no credentials for the artifacts destination {where}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or an AWS profile)"
        ) from None
    except botocore.exceptions.BotoCoreError as err:
        raise StartupError(f"cannot reach the artifacts destination {where} ({err})") from None


def port_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` (None: it can)."""
    if not 1 <= port <= 65535:
        return f"--port {port} is not allowed: expected a port in 1..65535"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as err:
            return f"cannot listen on {host}:{port}: {err.strerror or err}; choose another --port"
    return None


def check(launch: Launch, env: Mapping[str, str] | None = None) -> None:
    """Every start-up check of :func:`serve`, in the order a fault is most likely."""
    problem = port_problem(launch.host, launch.port)
    if problem:
        raise StartupError(problem)
    check_database(launch.backend, auth=launch.auth_ini is not None)
    check_artifacts(launch.artifacts, env)


# --------------------------------------------------------------------------- running it


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervising process dies (Linux), so a
    killed ``convscope server`` takes its MLflow server with it."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def serve(launch: Launch, env: Mapping[str, str] | None = None) -> int:
    """Check, then run the server in the foreground until it exits; returns its exit code.

    This process stays as the server's parent: it keeps the basic-auth app's settings in a
    private folder for the server's lifetime and removes it after, and forwards SIGTERM,
    SIGINT and SIGHUP to MLflow's CLI, which forwards them to its uvicorn workers and waits for
    them, so stopping this process releases the port.
    """
    env = dict(os.environ if env is None else env)
    started = time.monotonic()
    check(launch, env)
    child_env = {k: v for k, v in env.items() if k not in launch.drop_env} | launch.env
    with tempfile.TemporaryDirectory(prefix="convscope-server-") as private:
        if launch.auth_ini is not None:
            settings = Path(private) / "basic_auth.ini"
            settings.write_text(launch.auth_ini, encoding="utf-8")
            child_env["MLFLOW_AUTH_CONFIG_PATH"] = str(settings)
        users = f"; users in {redact_credentials(launch.auth_database)}" if launch.auth_ini else ""
        print(
            f"convscope server: checks passed in {time.monotonic() - started:.1f} s; MLflow on "
            f"{launch.url} (runs in {redact_credentials(launch.backend)}, artifacts in "
            f"{launch.artifacts}{users})",
            file=sys.stderr,
            flush=True,
        )
        server = subprocess.Popen(launch.cmd, env=child_env, preexec_fn=_die_with_parent)  # noqa: PLW1509

        def forward(signum: int, frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                server.send_signal(signum)

        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, forward) for sig in signals}
        try:
            code = server.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return code if code >= 0 else 128 - code


def main(argv: Sequence[str] | None = None) -> int:
    """``convscope server``: parse options, check, then :func:`serve`. ``users`` manages the
    basic-auth app's users (:mod:`convscope.tracking.users`). Returns 2 on a bad option, 1 on
    a failed start-up check."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["users"]:
        from convscope.tracking.users import main as users_main

        return users_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="convscope server",
        description="Run MLflow's tracking server for a team (PostgreSQL store, proxied "
        "artifacts, optionally MLflow's basic-auth app and TLS). `convscope server users "
        "--help` manages users. Options not listed here are passed on to `mlflow server`.",
    )
    parser.add_argument(
        "--backend-store-uri", help=f"database URL (env {ENV['backend_store_uri'][0]})"
    )
    parser.add_argument(
        "--artifacts-destination",
        help=f"folder or s3://bucket/prefix (env {ENV['artifacts_destination'][0]})",
    )
    parser.add_argument(
        "--host", help=f"interface to bind (env {ENV['host'][0]}; default {DEFAULT_HOST})"
    )
    parser.add_argument("--port", help=f"port (env {ENV['port'][0]}; default {DEFAULT_PORT})")
    parser.add_argument(
        "--workers", help=f"uvicorn workers (env {ENV['workers'][0]}; MLflow's default)"
    )
    parser.add_argument(
        "--auth",
        action="store_true",
        help="MLflow's basic-auth app: users and per-experiment permissions (the admin's first "
        f"password from {ADMIN_PASSWORD_ENV} or --admin-password-file; env {AUTH_ENV}=true)",
    )
    parser.add_argument(
        "--admin-password-file",
        help=f"file whose first line is the admin's first password (env "
        f"{ENV['admin_password_file'][0]})",
    )
    parser.add_argument(
        "--default-permission",
        help=f"what users hold on experiments nobody granted them: {', '.join(PERMISSIONS)} "
        f"(env {ENV['default_permission'][0]}; default {DEFAULT_PERMISSION})",
    )
    parser.add_argument(
        "--auth-cache-seconds",
        help=f"seconds a worker trusts a checked password; 0: none (env "
        f"{ENV['auth_cache_seconds'][0]}; default {AUTH_CACHE_SECONDS})",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a host other than loopback without --auth",
    )
    parser.add_argument("--ssl-keyfile", help=f"TLS private key (env {ENV['ssl_keyfile'][0]})")
    parser.add_argument("--ssl-certfile", help=f"TLS certificate (env {ENV['ssl_certfile'][0]})")
    parser.add_argument(
        "--print",
        action="store_true",
        help="print the command (and the names of the variables it gets) instead of running it",
    )
    args, extra = parser.parse_known_args(argv)
    options = {k: v for k, v in vars(args).items() if k != "print"}
    if redact_credentials(args.backend_store_uri or "") != (args.backend_store_uri or ""):
        print(
            "convscope server: warning: the backend URI's password is on this command line, "
            f"where any local user reads it (ps): set {ENV['backend_store_uri'][0]} instead",
            file=sys.stderr,
        )
    try:
        launch = server_launch(**options, extra=extra)
        if args.print:
            print(shlex.join(launch.cmd))
            print(f"# and in its environment (not shown): {' '.join(sorted(launch.env))}")
            return 0
        return serve(launch)
    except ValidationError as exc:
        print(f"convscope server: error: {error_line(str(exc))}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"convscope server: error: {error_line(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

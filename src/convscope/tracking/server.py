"""A team's MLflow tracking server: MLflow's own ``mlflow server``, started with the right options.

Nothing here reimplements the server. :func:`server_command` builds its command line (run
as ``python -m mlflow`` with this interpreter, so the server is this environment's MLflow)::

    mlflow server --backend-store-uri postgresql+psycopg://user@db:5432/mlflow
                  --artifacts-destination s3://bucket/mlflow --serve-artifacts
                  --host 127.0.0.1 --port 5000

and :func:`serve` runs it in the foreground. Artifacts are *proxied*: clients upload and
download them through the server (``mlflow-artifacts:/`` URIs), so only the server needs
access to the folder or the bucket (S3 credentials and ``MLFLOW_S3_ENDPOINT_URL`` are read
by the server from its environment, as boto3 does).

Every option may come from the environment instead of an argument, which suits a service
manager or a container: ``CONVSCOPE_BACKEND_STORE_URI``, ``CONVSCOPE_ARTIFACTS_DESTINATION``,
``CONVSCOPE_SERVER_HOST``, ``CONVSCOPE_SERVER_PORT``, ``CONVSCOPE_SERVER_WORKERS`` (MLflow's
own ``MLFLOW_BACKEND_STORE_URI`` and ``MLFLOW_ARTIFACTS_DESTINATION`` are read too). The
server binds to 127.0.0.1 unless a host is given: exposing it is a decision, and then
MLflow's ``--allowed-hosts`` should name the public host name (options this module does not
know are passed through to ``mlflow server`` unchanged).

PostgreSQL URLs: SQLAlchemy 2.1 picks no driver for a bare ``postgresql://`` URL and the
installed driver is psycopg 3, so ``postgresql://`` and ``postgres://`` are
rewritten to ``postgresql+psycopg://``; a URL naming another driver is kept as given.

``python -m convscope.tracking.server --help`` runs :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from convscope.validation import ValidationError, check_int

__all__ = [
    "ENV",
    "database_url",
    "main",
    "serve",
    "server_command",
]

# Each option's environment variables, first set wins.
ENV = {
    "backend_store_uri": ("CONVSCOPE_BACKEND_STORE_URI", "MLFLOW_BACKEND_STORE_URI"),
    "artifacts_destination": ("CONVSCOPE_ARTIFACTS_DESTINATION", "MLFLOW_ARTIFACTS_DESTINATION"),
    "host": ("CONVSCOPE_SERVER_HOST",),
    "port": ("CONVSCOPE_SERVER_PORT",),
    "workers": ("CONVSCOPE_SERVER_WORKERS",),
}
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
_PG_SCHEMES = ("postgresql://", "postgres://")


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
    """The SQLAlchemy URL MLflow gets: ``postgresql://`` and ``postgres://`` use psycopg 3."""
    for scheme in _PG_SCHEMES:
        if uri.startswith(scheme):
            return "postgresql+psycopg://" + uri[len(scheme) :]
    if "://" not in uri:
        raise ValidationError(
            f"backend store {uri!r} is not a database URL: expected e.g. "
            "postgresql://user@host:5432/mlflow"
        )
    return uri


def _artifacts_destination(dest: str) -> str:
    """A URI (``s3://``, ``file://``...) as given; a plain folder made absolute."""
    return dest if "://" in dest else str(Path(dest).expanduser().resolve())


def server_command(
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    host: str | None = None,
    port: int | str | None = None,
    workers: int | str | None = None,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """The ``mlflow server`` command line; arguments left ``None`` come from ``env``.

    ``env`` defaults to ``os.environ``. A missing backend store or artifacts destination,
    a port outside 1..65535 or a worker count below 1 raise :class:`ValidationError`
    with one line. ``extra`` is appended as is (e.g. ``["--allowed-hosts", "mlflow.lan"]``).
    """
    env = os.environ if env is None else env
    backend = _from_env("backend_store_uri", backend_store_uri, env)
    if not backend:
        raise _missing("backend_store_uri", "postgresql://mlflow@db.lan:5432/mlflow")
    dest = _from_env("artifacts_destination", artifacts_destination, env)
    if not dest:
        raise _missing("artifacts_destination", "s3://bucket/mlflow or /srv/mlflow-artifacts")
    host = str(_from_env("host", host, env) or DEFAULT_HOST)
    port = _from_env("port", port, env)
    port = _as_int(DEFAULT_PORT if port is None else port, "port", min=1, max=65535)
    workers = _from_env("workers", workers, env)
    # fmt: off
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", database_url(str(backend)),
           "--artifacts-destination", _artifacts_destination(str(dest)),
           "--serve-artifacts", "--host", host, "--port", str(port)]
    # fmt: on
    if workers is not None:
        cmd += ["--workers", str(_as_int(workers, "workers", min=1))]
    return cmd + list(extra)


def serve(**options: object) -> None:
    """Run the server in the foreground, in place of this process; never returns.

    The process becomes MLflow's CLI (``os.execv``), which forwards SIGTERM and SIGINT to its
    uvicorn workers and waits for them, so stopping this process releases the port.
    """
    cmd = server_command(**options)  # type: ignore[arg-type]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)


def main(argv: Sequence[str] | None = None) -> int:
    """``convscope server``: parse options, then :func:`serve`. Returns 2 on a bad option."""
    parser = argparse.ArgumentParser(
        prog="convscope server",
        description="Run MLflow's tracking server for a team (PostgreSQL store, proxied "
        "artifacts). Options not listed here are passed on to `mlflow server`.",
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
        "--print", action="store_true", help="print the command instead of running it"
    )
    args, extra = parser.parse_known_args(argv)
    options = {k: v for k, v in vars(args).items() if k != "print"}
    try:
        if args.print:
            print(shlex.join(server_command(**options, extra=extra)))
            return 0
        serve(**options, extra=extra)
    except ValidationError as exc:
        print(f"convscope server: error: {exc}", file=sys.stderr)
        return 2
    return 0  # not reached: serve() replaces the process


if __name__ == "__main__":
    sys.exit(main())

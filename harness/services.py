"""Real services for the team tests and benchmarks: PostgreSQL 15, an MLflow server on it, an
S3 endpoint (moto).

Helpers, not tests. Each service is a context manager that starts a real process bound to
127.0.0.1 on a free port, waits (bounded) until it answers, and stops it, with its children,
on exit; the session-scoped fixtures in ``tests/conftest.py`` wrap them (one of each per
test worker, started when a test first asks for it).

PostgreSQL refuses to run as root. When the tests run as root, ``initdb`` and ``postgres``
run as the unprivileged ``postgres`` user (``subprocess``'s ``user=``/``group=``, which
drop privileges between fork and exec), in a folder made under ``/tmp`` and handed to that
user: pytest's own temporary folders are private to root. Authentication is ``trust`` on
127.0.0.1 and the socket folder only (the cluster lives as long as the test session and
is reachable from this machine only), except for ``PG_SECURED_USER``, who logs in with a
password (``Postgres.secured_url``). ``fsync`` is off, which changes durability, not
behaviour.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PG_USER = "convscope"  # the cluster's superuser, the name clients connect with
PG_DATABASE = "mlflow"
# A user that must give a password (scram-sha-256), owner of a database of its own: the URL a
# team writes, with a secret in it.
PG_SECURED_USER = "secured"
PG_SECURED_PASSWORD = "pg-Secret-2718"  # only for this throw-away cluster
START_TIMEOUT = 120.0  # seconds; a cold MLflow server migrates a fresh database first


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether a new server could bind ``port`` (connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until(ready, proc: subprocess.Popen, what: str, log: Path | None = None) -> None:
    """Poll ``ready()`` until true; fail with the log if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} did not start (exit code {proc.poll()}):\n{tail}")
        time.sleep(0.2)


def http_ok(url: str, cafile: str | None = None) -> bool:
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return resp.status == 200
    except OSError:
        return False


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Stop a process started with ``start_new_session=True`` and everything it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    # Whatever is left in the group (workers of a killed parent) goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout)


def _unprivileged() -> dict:
    """``subprocess`` arguments that run a command as ``postgres`` (or ``nobody``) when root."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


@dataclass(frozen=True)
class Postgres:
    port: int
    socket_dir: Path
    database: str = PG_DATABASE

    @property
    def url(self) -> str:
        """SQLAlchemy URL with the psycopg 3 driver, over TCP on 127.0.0.1."""
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{self.database}"

    @property
    def secured_url(self) -> str:
        """A bare ``postgresql://`` URL with a password, of the secured user's own database."""
        user, password = PG_SECURED_USER, PG_SECURED_PASSWORD
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{PG_SECURED_USER}"


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster with an empty ``mlflow`` database."""
    import psycopg

    drop = _unprivileged()
    base = Path(tempfile.mkdtemp(prefix="convscope-pg-"))
    if drop:
        os.chown(base, drop["user"], drop["group"])
    data, log = base / "data", base / "postgres.log"
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    try:
        subprocess.run(
            ["initdb", "-D", str(data), "-U", PG_USER, "--auth=trust", "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, env=env, cwd=base, **drop,
        )  # fmt: skip
        hba = data / "pg_hba.conf"  # the first matching line wins: the secured user's first
        secured = f"host all {PG_SECURED_USER} 127.0.0.1/32 scram-sha-256\n"
        hba.write_text(secured + hba.read_text())
        port = free_port()
        # fmt: off
        cmd = ["postgres", "-D", str(data), "-p", str(port), "-k", str(base),
               "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
               "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
               "-c", "max_connections=200"]
        # fmt: on
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=base,
                start_new_session=True, **drop,
            )  # fmt: skip
        try:

            def ready() -> bool:
                try:
                    psycopg.connect(
                        host="127.0.0.1", port=port, user=PG_USER, dbname="postgres",
                        connect_timeout=2, autocommit=True,
                    ).close()  # fmt: skip
                except psycopg.OperationalError:
                    return False
                return True

            wait_until(ready, proc, "postgres", log)
            with psycopg.connect(
                host="127.0.0.1", port=port, user=PG_USER, dbname="postgres", autocommit=True
            ) as conn:
                conn.execute(f"CREATE DATABASE {PG_DATABASE}")
                conn.execute(
                    f"CREATE ROLE {PG_SECURED_USER} LOGIN PASSWORD '{PG_SECURED_PASSWORD}'"
                )
                conn.execute(f"CREATE DATABASE {PG_SECURED_USER} OWNER {PG_SECURED_USER}")
            yield Postgres(port=port, socket_dir=base)
        finally:
            # SIGINT is PostgreSQL's "fast" shutdown: roll back clients, stop at once.
            stop_group(proc, signal.SIGINT)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class Server:
    uri: str
    port: int
    artifacts: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def server_env(**extra: str) -> dict[str, str]:
    """The environment of an MLflow server in tests: no telemetry, no job runner."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CONVSCOPE_"))}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **extra)
    return env


@contextlib.contextmanager
def mlflow_server(
    backend: str,
    artifacts: str,
    workers: int = 2,
    env: dict[str, str] | None = None,
    port: int | None = None,
    args: Sequence[str] = (),
    cafile: str | None = None,
) -> Iterator[Server]:
    """``convscope.tracking.server`` on ``port`` (default: a free one) of 127.0.0.1, stopped
    on exit. ``args``: more options (``--auth``, a key and certificate); ``cafile``: the
    certificate to trust, for a server that speaks HTTPS."""
    port = port or free_port()
    log = Path(tempfile.mkdtemp(prefix="convscope-mlflow-")) / "server.log"
    # fmt: off
    cmd = [sys.executable, "-m", "convscope.tracking.server",
           "--artifacts-destination", artifacts, "--port", str(port), "--workers", str(workers),
           *args]
    # fmt: on
    # the backend URI (a password in it) through the environment, as an operator should
    env = {**(env or server_env()), "CONVSCOPE_BACKEND_STORE_URI": backend}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    uri = f"{'https' if cafile else 'http'}://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(uri + "/health", cafile), proc, "mlflow server", log)
        yield Server(uri=uri, port=port, artifacts=artifacts, proc=proc, log=log)
    finally:
        stop_group(proc)
        shutil.rmtree(log.parent, ignore_errors=True)


@contextlib.contextmanager
def moto_s3(bucket: str = "mlflow") -> Iterator[dict[str, str]]:
    """moto's S3 on 127.0.0.1 with ``bucket`` created; yields the environment a client needs."""
    port = free_port()
    env = {
        "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: http_ok(env["MLFLOW_S3_ENDPOINT_URL"] + "/moto-api/"), proc, "moto")
        s3_client(env).create_bucket(Bucket=bucket)
        yield env
    finally:
        stop_group(proc)


def s3_client(env: dict[str, str]):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def self_signed_certificate(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A private key and a self-signed certificate for ``host`` (and localhost), made with
    ``cryptography``; returns (key file, certificate file). The certificate is its own CA:
    a client trusts it by naming it (``MLFLOW_TRACKING_SERVER_CERT_PATH``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    alt = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(alt, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = folder / "server.key", folder / "server.crt"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file

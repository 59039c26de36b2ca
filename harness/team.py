"""The team server's cases that the tests check and the benchmarks time: writers logging a
short training at once, and every fault ``convscope server`` meets at start-up."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np

from harness.project import PYTHON
from harness.services import PG_SECURED_PASSWORD, PG_SECURED_USER, Postgres, server_env

WRITER_EPOCHS = 5  # epochs each writer logs


def images_in(epoch: int) -> int:
    return 1 + epoch % 2  # one or two per epoch, as a stage logs kernels and sometimes maps


def write_run(uri: str, experiment_id: str, writer: int) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run_id = client.create_run(experiment_id, run_name=f"writer-{writer}").info.run_id
    try:
        client.log_param(run_id, "writer", writer)
        rng = np.random.default_rng(writer)
        for epoch in range(1, WRITER_EPOCHS + 1):
            client.log_metric(run_id, "loss", 1.0 / epoch + writer, step=epoch)
            client.log_metric(run_id, "accuracy", epoch / WRITER_EPOCHS, step=epoch)
            for i in range(images_in(epoch)):
                image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                client.log_image(run_id, image, key=f"kernels/{i}", step=epoch)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    return run_id


FAULT_LIMIT = 15.0  # seconds: a start-up fault is one line well before MLflow's minute of retries


def start_up_faults(pg: Postgres, folder: Path, s3_env: dict[str, str]):
    """(name, server arguments, environment, what its one line says, expected exit code) of
    every start-up fault: each is a context manager's worth of setting up, so this yields."""
    port = pg.port
    good = pg.url
    secured = pg.secured_url
    read_only = folder / "read-only"
    read_only.mkdir(exist_ok=True)
    read_only.chmod(0o555)
    a_file = folder / "a-file"
    a_file.write_text("not a folder")
    art = str(folder / "artifacts")
    wrong = secured.replace(PG_SECURED_PASSWORD, "wrong-Password-1")
    yield (
        "unknown scheme",
        ["--artifacts-destination", art],
        {"CONVSCOPE_BACKEND_STORE_URI": "garbage://x/y"},
        "scheme 'garbage' is not known",
        2,
    )
    # a port bound here and never listened on: refused at once, and no other test's server
    # can take it meanwhile (a port found free and let go could be by the time it is tried)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        yield (
            "database port closed",
            ["--artifacts-destination", art],
            {
                "CONVSCOPE_BACKEND_STORE_URI": (
                    f"postgresql://u@127.0.0.1:{closed.getsockname()[1]}/mlflow"
                )
            },
            "cannot reach the database server at 127.0.0.1",
            1,
        )
    yield (
        "database host unknown",
        ["--artifacts-destination", art],
        {"CONVSCOPE_BACKEND_STORE_URI": "postgresql://u@no-such-host.invalid/mlflow"},
        "cannot reach the database server at no-such-host.invalid:5432",
        1,
    )
    with silent_port() as silent:
        yield (
            "database server silent",
            ["--artifacts-destination", art],
            {"CONVSCOPE_BACKEND_STORE_URI": f"postgresql://u@127.0.0.1:{silent}/mlflow"},
            f"cannot reach the database server at 127.0.0.1:{silent}",
            1,
        )
    yield (
        "database missing",
        ["--artifacts-destination", art],
        {"CONVSCOPE_BACKEND_STORE_URI": good.replace("/mlflow", "/no_such_db")},
        "has no database 'no_such_db'",
        1,
    )
    yield (
        "database user unknown",
        ["--artifacts-destination", art],
        {"CONVSCOPE_BACKEND_STORE_URI": f"postgresql://nobody@127.0.0.1:{port}/mlflow"},
        "has no user 'nobody'",
        1,
    )
    yield (
        "database password wrong",
        ["--artifacts-destination", art],
        {"CONVSCOPE_BACKEND_STORE_URI": wrong},
        f"refused the login of user '{PG_SECURED_USER}'",
        1,
    )
    yield (
        "artifacts folder read-only",
        ["--artifacts-destination", str(read_only)],
        {"CONVSCOPE_BACKEND_STORE_URI": good},
        f"{read_only} cannot be written (Permission denied)",
        1,
    )
    yield (
        "artifacts path under a file",
        ["--artifacts-destination", str(a_file / "art")],
        {"CONVSCOPE_BACKEND_STORE_URI": good},
        "cannot be written (Not a directory)",
        1,
    )
    yield (
        "S3 bucket missing",
        ["--artifacts-destination", "s3://no-such-bucket/mlflow"],
        {"CONVSCOPE_BACKEND_STORE_URI": good, **s3_env},
        "S3 bucket 'no-such-bucket' at http://127.0.0.1",
        1,
    )
    yield (
        "--auth without an admin password",
        ["--artifacts-destination", art, "--auth"],
        {"CONVSCOPE_BACKEND_STORE_URI": good},
        "--auth needs the admin's password",
        2,
    )
    yield (
        "exposed without --auth",
        ["--artifacts-destination", art, "--host", "0.0.0.0"],
        {"CONVSCOPE_BACKEND_STORE_URI": good},
        "--host 0.0.0.0 exposes the server",
        2,
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        used = taken.getsockname()[1]
        yield (
            "port in use",
            ["--artifacts-destination", art, "--port", str(used)],
            {"CONVSCOPE_BACKEND_STORE_URI": good},
            f"cannot listen on 127.0.0.1:{used}",
            1,
        )


def start_server(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    """``convscope server ARGS`` that is expected to fail: (seconds, the finished process)."""
    start = time.perf_counter()
    done = subprocess.run(
        [PYTHON, "-m", "convscope.cli", "server", *args], env=server_env(**env),
        capture_output=True, text=True, timeout=120,
        preexec_fn=_without_dac_override if os.geteuid() == 0 else None,
    )  # fmt: skip
    return time.perf_counter() - start, done


def _without_dac_override() -> None:
    """In the child: root without the capabilities that ignore file modes (so a read-only
    folder is read-only to it too)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "cannot drop a capability")


@contextlib.contextmanager
def silent_port():
    """A port that takes connections and never answers (a database server hung or behind a
    filtering firewall)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]

"""Per-record logging latency: the team server (PostgreSQL, proxied artifacts), with and without
authentication, vs local SQLite; then 16 writers at once, with and without authentication.

    .venv/bin/python bench/tracking_latency.py [--metrics 100] [--images 20] [--writers 16]

Starts a throw-away PostgreSQL and ``convscope server`` on it (harness/services.py, all on
127.0.0.1) four ways: without authentication; with ``--auth`` (MLflow's basic-auth app, the
default password cache of ``convscope server``); with ``--auth --auth-cache-seconds 0`` (MLflow's
own default: every request hashes the password); with ``--auth`` over HTTPS (a self-signed
certificate). Against each, and against a local SQLite store in a temporary folder, it times one
call at a time ``log_metric`` (one value at a step), ``log_image`` (a 64x64 PNG, time-stepped as
a stage logs kernels) and ``log_artifact`` (a small file), and prints median and 95th
percentile milliseconds per record, and each row's median as a ratio to the unauthenticated
server's. Then ``--writers`` processes log a short training each (harness/team.py's
writer) into the server without and with authentication, and the wall time, records per
second and records lost (expected minus found in the store) are printed. PostgreSQL runs with
fsync off (as in tests).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# harness/ (the service starters) sits beside bench/; this script runs from bench/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.services import mlflow_server, postgres, self_signed_certificate, server_env  # noqa: E402
from harness.team import WRITER_EPOCHS, images_in, write_run  # noqa: E402

ADMIN_PASSWORD = "bench-Admin-Secret-1"
PLAIN = "server"


def timed(calls: int, fn) -> np.ndarray:
    """Milliseconds of each of ``calls`` calls of ``fn(i)``."""
    out = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        fn(i)
        out[i] = (time.perf_counter() - start) * 1000
    return out


def measure(uri: str, artifact_location: str | None, args, folder: Path) -> dict[str, np.ndarray]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.create_experiment(f"latency-{time.time_ns()}", artifact_location)
    run_id = client.create_run(exp).info.run_id
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    small = folder / "small.png"
    from PIL import Image

    Image.fromarray(image).save(small)
    client.log_metric(run_id, "warmup", 0.0)  # first call pays connection set-up
    n_metrics, n_images = args.metrics, args.images
    results = {
        "log_metric": timed(n_metrics, lambda i: client.log_metric(run_id, "loss", 1 / (i + 1), i)),
        "log_image": timed(n_images, lambda i: client.log_image(run_id, image, key="k", step=i)),
        "log_artifact": timed(n_images, lambda i: client.log_artifact(run_id, str(small), f"f{i}")),
    }
    client.set_terminated(run_id)
    return results


def per_writer() -> int:
    """Records one writer logs: a param, two metrics per epoch, its images."""
    return 1 + 2 * WRITER_EPOCHS + sum(images_in(e) for e in range(1, WRITER_EPOCHS + 1))


def found_records(uri: str, exp: str) -> int:
    """Records of experiment ``exp`` in the store: params, metric steps, PNG images."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    total = 0
    for run in client.search_runs([exp], max_results=1000):
        run_id = run.info.run_id
        total += len(run.data.params)
        total += sum(len(client.get_metric_history(run_id, k)) for k in run.data.metrics)
        images = client.list_artifacts(run_id, "images")
        total += sum(1 for f in images if f.path.endswith(".png"))
    return total


def load(uri: str, writers: int) -> tuple[float, int, int]:
    """(seconds, records written, records lost) of ``writers`` processes at once."""
    from mlflow import MlflowClient

    exp = MlflowClient(uri).create_experiment(f"load-{time.time_ns()}")
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(writers) as pool:
        jobs = [pool.apply_async(write_run, (uri, exp, w)) for w in range(writers)]
        for job in jobs:
            job.get(timeout=900)
    seconds = time.perf_counter() - start
    expected = writers * per_writer()
    return seconds, expected, expected - found_records(uri, exp)


@contextlib.contextmanager
def logged_in(cert: Path | None = None):
    """This process (and the writers it forks) logged in as the admin, trusting ``cert``."""
    saved = dict(os.environ)
    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
    if cert is not None:
        os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(cert)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metrics", type=int, default=100)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--writers", type=int, default=16)
    args = parser.parse_args()
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow  # noqa: F401  (imported once, before the writers fork)

    rows: dict[str, dict[str, np.ndarray]] = {}
    loads: dict[str, tuple[float, int, int]] = {}
    auth_env = server_env(CONVSCOPE_SERVER_ADMIN_PASSWORD=ADMIN_PASSWORD)
    with tempfile.TemporaryDirectory() as tmp, postgres() as pg:
        folder = Path(tmp)
        key, cert = self_signed_certificate(folder)
        sqlite = f"sqlite:///{folder / 'mlflow.db'}"
        rows["local SQLite"] = measure(sqlite, (folder / "local-art").as_uri(), args, folder)
        with mlflow_server(pg.url, str(folder / "art-plain")) as server:
            rows[PLAIN] = measure(server.uri, None, args, folder)
            loads[PLAIN] = load(server.uri, args.writers)
        auth = ["--auth"]
        with mlflow_server(pg.url, str(folder / "art-auth"), env=auth_env, args=auth) as server:
            with logged_in():
                rows["server + auth"] = measure(server.uri, None, args, folder)
                loads["server + auth"] = load(server.uri, args.writers)
        no_cache = ["--auth", "--auth-cache-seconds", "0"]
        with mlflow_server(pg.url, str(folder / "art-nc"), env=auth_env, args=no_cache) as server:
            with logged_in():
                rows["server + auth, no cache"] = measure(server.uri, None, args, folder)
        tls = ["--auth", "--ssl-keyfile", str(key), "--ssl-certfile", str(cert)]
        with mlflow_server(
            pg.url, str(folder / "art-tls"), env=auth_env, args=tls, cafile=str(cert)
        ) as server:
            with logged_in(cert):
                rows["server + auth + TLS"] = measure(server.uri, None, args, folder)

    print(f"\n{'store':<26}{'record':<14}{'median ms':>10}{'p95 ms':>10}{'x server':>10}{'n':>6}")
    for store, results in rows.items():
        for record, ms in results.items():
            median, p95 = np.percentile(ms, [50, 95])
            ratio = median / np.median(rows[PLAIN][record])
            print(f"{store:<26}{record:<14}{median:>10.1f}{p95:>10.1f}{ratio:>10.2f}{len(ms):>6}")
    print(f"\n{args.writers} writers x {WRITER_EPOCHS} epochs at once:")
    for store, (seconds, records, lost) in loads.items():
        print(
            f"  {store:<24}{seconds:>6.1f} s  {records} records ({records / seconds:.0f}/s), "
            f"{lost} lost"
        )


if __name__ == "__main__":
    main()

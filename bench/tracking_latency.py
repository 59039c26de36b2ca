"""Per-record logging latency: the team server (PostgreSQL, proxied artifacts) vs local SQLite.

    .venv/bin/python bench/tracking_latency.py [--metrics 200] [--images 40] [--writers 16]

Starts a throw-away PostgreSQL and ``convscope.tracking.server`` on it (tests/services.py,
all on 127.0.0.1), then times, one call at a time, ``log_metric`` (one value at a step),
``log_image`` (a 64x64 PNG, time-stepped as a stage logs kernels) and ``log_artifact`` (a
small file) against the server and against a local SQLite store in a temporary folder, and
prints median and 95th percentile milliseconds per record. Then ``--writers`` processes log
a short training each (tests/test_team_load.py's writer) into the server at once, and the
wall time and records per second are printed. PostgreSQL runs with fsync off (as in tests).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# tests/ holds the service starters; this script runs from bench/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.services import mlflow_server, postgres  # noqa: E402
from tests.test_team_load import EPOCHS, images_in, write_run  # noqa: E402


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


def load(uri: str, writers: int) -> tuple[float, int]:
    from mlflow import MlflowClient

    exp = MlflowClient(uri).create_experiment(f"load-{time.time_ns()}")
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(writers) as pool:
        jobs = [pool.apply_async(write_run, (uri, exp, w)) for w in range(writers)]
        for job in jobs:
            job.get(timeout=600)
    seconds = time.perf_counter() - start
    per_writer = 1 + 2 * EPOCHS + sum(images_in(e) for e in range(1, EPOCHS + 1))
    return seconds, writers * per_writer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metrics", type=int, default=200)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--writers", type=int, default=16)
    args = parser.parse_args()
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow  # noqa: F401  (imported once, before the writers fork)

    with tempfile.TemporaryDirectory() as tmp, postgres() as pg:
        folder = Path(tmp)
        with mlflow_server(pg.url, str(folder / "server-artifacts")) as server:
            rows = {"server (PostgreSQL)": measure(server.uri, None, args, folder)}
            sqlite = f"sqlite:///{folder / 'mlflow.db'}"
            rows["local SQLite"] = measure(sqlite, (folder / "local-art").as_uri(), args, folder)
            seconds, records = load(server.uri, args.writers)

    print(f"\n{'store':<22}{'record':<14}{'median ms':>10}{'p95 ms':>10}{'n':>6}")
    for store, results in rows.items():
        for record, ms in results.items():
            median, p95 = np.percentile(ms, [50, 95])
            print(f"{store:<22}{record:<14}{median:>10.1f}{p95:>10.1f}{len(ms):>6}")
    print(
        f"\n{args.writers} writers x {EPOCHS} epochs into the server: {seconds:.1f} s, "
        f"{records} records ({records / seconds:.0f} records/s)"
    )


if __name__ == "__main__":
    main()

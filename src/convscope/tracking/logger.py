"""What a stage logs into its open run: metrics by epoch, kernels, images, datasets, models.

Kernels go to the MLflow UI's image slider as one card image per layer and epoch, drawn by
:mod:`convscope.viz.kernel_cards` (shaped and summarised so MLflow's image card shows them
whole and readable), with each layer's whole filters x channels grid kept as artifacts under
``kernels/grid/``. One colour scale per layer for the whole run needs every epoch's kernels,
so the images are logged when the run ends (:meth:`StageRun.log_kernel_images`); the ``.npy``
arrays are logged as each epoch ends.
"""

from __future__ import annotations

import contextlib
import http
import importlib.metadata
import math
import os
import re
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from convscope.tracking.store import (
    ArraySpec,
    TrackingError,
    flatten_params,
    sanitize_key,
    truncate,
)
from convscope.viz.kernel_cards import card_scale, kernel_card, kernel_grid_image


def _number(key: str, value: Any) -> float | None:
    """A metric value as float; None and NaN mean 'not measured' and are skipped."""
    if value is None:
        return None
    try:
        number = float(value)  # Python and NumPy scalars, 0-d arrays, framework tensors
    except (TypeError, ValueError):
        raise ValueError(f"metrics[{key!r}]={value!r} is not allowed: expected a number") from None
    return None if math.isnan(number) else number


# mlflow's error codes for a server that did not answer (refused, timed out, 5xx after retries)
_UNREACHABLE_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE"}
# urllib3's words for a status mlflow's client retried until it gave up: the server answered
_RETRIED_STATUS = re.compile(r"too many (\d{3}) error responses")
_REQUEST = re.compile(r"API request to (?:endpoint )?(\S+?)(?: failed|$)")


def _answered_status(err: BaseException) -> int | None:
    """The HTTP 5xx status a server answered with, when ``err`` is mlflow's client giving up
    on it (the answer's body is dropped by its retries)."""
    found = _RETRIED_STATUS.search(str(err))
    return int(found.group(1)) if found else None


def _request_path(err: BaseException) -> str:
    """The path of the request ``err`` is about, from mlflow's message (may be empty)."""
    found = _REQUEST.search(str(getattr(err, "message", None) or err))
    if not found:
        return ""
    return urllib.parse.urlsplit(found.group(1)).path or found.group(1)


def lost_server(uri: str, err: BaseException) -> bool:
    """Whether ``err`` from a call to ``uri`` means the server stopped answering (as opposed
    to refusing the record, which a retry would not fix, or answering HTTP 5xx:
    :func:`server_failure`)."""
    if not uri.startswith(("http://", "https://")) or _answered_status(err) is not None:
        return False
    if isinstance(err, MlflowException):
        return err.error_code in _UNREACHABLE_CODES
    import requests

    return isinstance(err, OSError | requests.exceptions.RequestException)


def server_failure(uri: str, err: BaseException) -> str | None:
    """One line for a server at ``uri`` that answered a request with HTTP 5xx (it is up and
    failing, not gone: its log says why); None for any other error."""
    status = _answered_status(err) if uri.startswith(("http://", "https://")) else None
    if status is None:
        return None
    phrase = http.HTTPStatus(status).phrase if 100 <= status < 600 else ""
    path = _request_path(err)
    return (
        f"the MLflow server at {uri} answered with an error (HTTP {status} {phrase}"
        + (f" to {path}" if path else "")
        + "; its log says why)"
    )


def refusal(uri: str, err: BaseException) -> str | None:
    """One line for a login (401) or permission (403) the server at ``uri`` refused, naming
    the user; None for any other error."""
    if not isinstance(err, MlflowException) or not uri.startswith(("http://", "https://")):
        return None
    status = err.get_http_status_code()
    if status not in (401, 403):
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or None
    who = f"user {user!r}" if user else "this client (no MLFLOW_TRACKING_USERNAME)"
    path = _request_path(err)
    what = "the login of" if status == 401 else "a request of"
    return (
        f"the MLflow server at {uri} refused {what} {who} (HTTP {status}"
        + (f" to {path}" if path else "")
        + ")"
        + (
            ": check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            if status == 401
            else ": the user needs EDIT on the experiment (`convscope server users grant`)"
        )
    )


@dataclass
class StageRun:
    """What one open run records; the tracking process runs these for its stage
    (:class:`~convscope.tracking.service.Service`), ``convscope sync`` for an outbox.

    Calls name this run's id through ``MlflowClient``, so they land here even if other code
    changes mlflow's active run, and they are synchronous: when a call returns, the data is in
    the store. Steps are epochs: 0 before training, 1..N after each epoch. ``timestamp`` (ms)
    is when the stage made the record, so a replayed record keeps its time.
    """

    client: MlflowClient
    run_id: str
    experiment_id: str
    tracking_uri: str
    stage: str
    parent_run_id: str | None = None

    def _batch(self, metrics=(), params=(), tags=()) -> None:
        self.client.log_batch(
            self.run_id, metrics=metrics, params=params, tags=tags, synchronous=True
        )

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params (nested or dotted keys), flattened as the run's config params are."""
        self._batch(params=[Param(k, v) for k, v in flatten_params(params).items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        """``text`` as the artifact ``artifact_file`` (e.g. ``config.yaml``)."""
        with tempfile.TemporaryDirectory(prefix="convscope-text-") as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_text(text, encoding="utf-8")
            self.log_artifact(path, str(Path(artifact_file).parent).strip(".") or None)

    def log_metrics(
        self, metrics: Mapping[str, Any], step: int | None = None, timestamp: int | None = None
    ) -> dict[str, float]:
        """Metrics at ``step`` (default 0); None/NaN values are skipped. Returns what was
        logged. Final metrics use keys distinct from the per-epoch ones (``test_accuracy``)
        so the epoch curves stay clean."""
        stamp = int(timestamp if timestamp is not None else time.time() * 1000)
        clean = {str(k): _number(str(k), v) for k, v in metrics.items()}
        clean = {k: v for k, v in clean.items() if v is not None}
        if clean:
            entries = [Metric(sanitize_key(k), v, stamp, int(step or 0)) for k, v in clean.items()]
            self._batch(metrics=entries)
        return clean

    def log_epoch(
        self, step: int, metrics: Mapping[str, Any], timestamp: int | None = None
    ) -> dict[str, float]:
        """Per-epoch metrics at ``step``, as :meth:`log_metrics`."""
        return self.log_metrics(metrics, int(step), timestamp)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._batch(tags=[RunTag(sanitize_key(str(k)), truncate(str(v))) for k, v in tags.items()])

    def link_inputs(self, root: str | os.PathLike[str], files: Mapping[str, str]) -> dict:
        """Tag this run with the runs that made its input ``files`` (label -> path under
        ``root``), found by the files' md5 (:mod:`convscope.tracking.provenance`)."""
        from convscope.tracking.provenance import INPUT_RUN_PREFIX, producers

        runs = producers(self.client, root, files)
        if runs:
            self.set_tags({INPUT_RUN_PREFIX + label: run_id for label, run_id in runs.items()})
        return runs

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """A file or a whole folder, under ``artifact_path`` in the run."""
        local = Path(path)
        if local.is_dir():
            self.client.log_artifacts(self.run_id, str(local), artifact_path)
        elif local.is_file():
            self.client.log_artifact(self.run_id, str(local), artifact_path)
        else:
            raise FileNotFoundError(f"path={str(local)!r} is not a file or folder to log")

    def log_image(self, image: Any, key: str, step: int, timestamp: int | None = None) -> None:
        """An image (HxW[x3|4] array or PIL image) with a key and step: the UI's slider."""
        stamp = int(timestamp if timestamp is not None else time.time() * 1000)
        self.client.log_image(
            self.run_id, image, key=sanitize_key(key), step=int(step), timestamp=stamp,
            synchronous=True,
        )  # fmt: skip

    def log_kernels(self, step: int, kernels: Mapping[str, Any]) -> None:
        """Kernels (HWIO arrays by layer name) at epoch ``step``, each as
        ``kernels/epoch_XXX/<name>.npy`` (what ``convscope compare`` reads)."""
        if not kernels:
            return
        with tempfile.TemporaryDirectory(prefix="convscope-kernels-") as tmp:
            for name, kernel in kernels.items():
                file = Path(tmp) / f"{sanitize_key(str(name)).replace('/', '_')}.npy"
                np.save(file, np.asarray(kernel))
            self.log_artifact(tmp, f"kernels/epoch_{int(step):03d}")

    def log_kernel_images(self, history: Mapping[str, Mapping[int, Any]]) -> None:
        """Every epoch's kernels (layer -> epoch -> HWIO array) as card images
        ``kernels/<layer>`` at step = epoch, one colour scale per layer for the whole run, and
        each layer with more than one input channel as its whole grid,
        ``kernels/grid/<layer>/epoch_XXX.png`` (see :mod:`convscope.viz.kernel_cards`). The
        runner sends them when the stage completes."""
        jobs = []
        for name, steps in history.items():
            arrays = {int(step): np.asarray(k) for step, k in steps.items()}
            vmax = card_scale(arrays.values())
            grid_vmax = max(float(np.abs(k).max()) for k in arrays.values()) or 1.0
            for step, kernel in sorted(arrays.items()):
                jobs.append((kernel, vmax, grid_vmax, name, step))

        def render(job: tuple[np.ndarray, float, float, str, int]) -> np.ndarray:
            kernel, vmax, _, name, step = job
            return kernel_card(kernel, vmax, name, step)

        # the next images render on another thread while one is logged (MLflow's log_image
        # itself is not safe to call concurrently on one run: it tags the run on each call)
        with ThreadPoolExecutor(1) as pool:
            for job, image in zip(jobs, pool.map(render, jobs), strict=True):
                self.log_image(image, f"kernels/{job[3]}", job[4])
        grids = [job for job in jobs if job[0].shape[2] > 1]
        if grids:
            from PIL import Image

            with tempfile.TemporaryDirectory(prefix="convscope-grids-") as tmp:
                for kernel, _, grid_vmax, name, step in grids:
                    folder = Path(tmp) / sanitize_key(name).replace("/", "_")
                    folder.mkdir(exist_ok=True)
                    image = kernel_grid_image(kernel, grid_vmax, name, step)
                    Image.fromarray(image).save(folder / f"epoch_{step:03d}.png")
                self.log_artifact(tmp, "kernels/grid")

    def log_dataset(
        self,
        name: str,
        digest: str,
        source: str,
        features: np.ndarray | ArraySpec,
        targets: np.ndarray | ArraySpec | None = None,
        context: str = "training",
    ) -> None:
        """The data a run used, through ``mlflow.data`` (the UI's Datasets column). ``digest`` is
        the data's own content hash (MLflow keeps 36 characters; the whole one is a tag); the
        arrays only give MLflow the schema and shapes, so an
        :class:`~convscope.tracking.store.ArraySpec` (shape and dtype) does as well."""
        with warnings.catch_warnings():
            # "" and "file" both map to the local artifact source; mlflow warns it picked one.
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
            dataset = mlflow.data.from_numpy(
                ArraySpec.stand_in(features),
                targets=None if targets is None else ArraySpec.stand_in(targets),
                source=str(source),
                name=name,
                digest=str(digest)[:36],
            )
        with self._fluent_active():
            for attempt in range(3):
                try:
                    mlflow.log_input(dataset, context=context)
                    break
                except MlflowException as err:
                    # MLflow looks a dataset up, then inserts it: runs of one experiment that
                    # record the same data at once race there, and the loser finds it next time
                    if attempt == 2 or "unique" not in str(err).lower():
                        raise
        self.set_tags({f"dataset.{name}.sha256": digest})

    def warm_up(self, flavour: str) -> None:
        """Start importing MLflow's ``flavour`` (``"keras"``) in the background, so a model
        logged when training ends does not wait for TensorFlow to load."""
        if flavour != "keras":
            raise ValueError(f"flavour={flavour!r} is not allowed: expected 'keras'")
        threading.Thread(target=importlib.import_module, args=("mlflow.keras",)).start()

    def log_keras_model(self, path: str | os.PathLike[str], name: str = "model") -> str:
        """The Keras model saved at ``path`` (``.keras``) in MLflow's Keras 3 flavour
        (``mlflow.keras``); returns its model URI.

        Pip requirements are given explicitly: MLflow would otherwise infer them by reloading
        the model in a subprocess, a TensorFlow start-up per run. The signature comes from the
        model's input shape (an example input would be written before the model folder exists).
        """
        import keras
        import mlflow.keras
        from mlflow.models import infer_signature

        model = keras.saving.load_model(os.fspath(path), compile=False)
        versions = ((d, importlib.metadata.version(d)) for d in ("keras", "tensorflow", "numpy"))
        requirements = [f"{dist}=={version}" for dist, version in versions]
        example = np.zeros((1, *model.input_shape[1:]), dtype=np.float32)
        signature = infer_signature(example, np.asarray(model(example)))
        with self._fluent_active():
            info = mlflow.keras.log_model(
                model, name=name, pip_requirements=requirements, signature=signature
            )
        return info.model_uri

    def log_npz_model(self, path: str | os.PathLike[str], artifact_path: str = "model") -> str:
        """The engine's ``.npz`` weights as an artifact; returns its artifact URI."""
        self.log_artifact(path, artifact_path)
        return f"runs:/{self.run_id}/{artifact_path}/{Path(path).name}"

    @contextlib.contextmanager
    def _fluent_active(self) -> Iterator[None]:
        """mlflow's dataset and flavour loggers write into its active run; make sure it is ours."""
        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            raise TrackingError(
                f"run {self.run_id} is not mlflow's active run (active: "
                f"{active.info.run_id if active else None})"
            )
        yield

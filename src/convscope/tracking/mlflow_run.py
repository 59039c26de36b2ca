"""One MLflow run per pipeline stage, and one parent run per Hydra multirun sweep.

Usage from a stage entry point (a Hydra app)::

    from convscope.tracking import find_root, start_stage_run
    from convscope.tracking.hydra_callbacks import hydra_overrides, hydra_sweep_dir

    with start_stage_run(
        cfg.tracking, "train_keras", OmegaConf.to_container(cfg, resolve=True),
        overrides=hydra_overrides(), root=find_root(__file__), sweep_dir=hydra_sweep_dir(),
    ) as run:
        run.log_dataset("mnist", digest, "data/mnist.npz", x_train, y_train)
        for epoch ...:
            run.log_epoch(epoch, {"loss": ..., "val_loss": ...})
            run.log_kernels(epoch, {"conv2d": w1, "conv2d_1": w2})
        run.log_metrics({"test_accuracy": ...})
        run.log_keras_model(model)

Every run of a stage goes to the experiment ``<experiment_prefix>/<stage>`` with the same metric
keys, so the MLflow UI compares runs of one stage side by side. The run always ends: FINISHED
when the block completes, FAILED on an exception, KILLED on Ctrl-C or SIGTERM (a handler turns
SIGTERM into ``RunTerminated``, a ``KeyboardInterrupt``, for the duration of the run).

Sweeps: with ``sweep_dir`` (the Hydra sweep folder, ``hydra_sweep_dir()``), the run becomes a
child of the sweep's single parent run, created by whichever job gets there first (see
``sweep_parent``). A child that ends settles its parent: while any sibling is RUNNING the
parent stays RUNNING, once none is it ends KILLED if any child was killed, FAILED if any
failed, FINISHED otherwise. So the parent is never left RUNNING, whether or not the Hydra
callback (``convscope.tracking.hydra_callbacks.MlflowSweepCallback``) is configured; the
callback adds a fresh sweep id per multirun, the sweep's overrides on the parent, and a final
settle that also fails children whose process died without ending them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import math
import os
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from convscope.tracking import sweeps
from convscope.tracking.images import kernel_mosaic
from convscope.tracking.store import (
    MAX_TAG_VALUE_LENGTH,
    TrackingError,
    apply_http_defaults,
    artifact_location,
    cfg_get,
    check_server,
    file_lock,
    find_root,
    flatten_params,
    git_state,
    sanitize_key,
    sqlite_initialized,
    store_lock_path,
    tracking_uri,
    truncate,
)

TAG_STAGE = "convscope.stage"
TAG_COMMIT = "convscope.git_commit"
TAG_DIRTY = "convscope.git_dirty"
TAG_OVERRIDES = "convscope.overrides"
TAG_ROLE = "convscope.role"  # "stage" for a stage run, "sweep" for a sweep's parent
TAG_SWEEP_ID = "convscope.sweep_id"
TAG_SWEEP_DIR = "convscope.sweep_dir"
TAG_SWEEP_OVERRIDES = "convscope.sweep_overrides"
TAG_PARENT = "mlflow.parentRunId"

TERMINAL = sweeps.TERMINAL
# DVC names the experiment a stage runs in; recording it links `dvc exp show` rows to runs.
DVC_ENV_TAGS = (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"))
_READY_STORES: set[str] = set()


class RunTerminated(KeyboardInterrupt):
    """SIGTERM arrived during a stage run. A KeyboardInterrupt so Ctrl-C handling covers it."""


# ---------------------------------------------------------------------------------------------
# store and experiments


def connect(cfg_tracking: Any, root: str | os.PathLike[str] | None = None) -> str:
    """Resolve the tracking URI, check a server answers, point mlflow at it; returns the URI.

    A fresh SQLite store creates its tables on first use; two processes doing that at once
    (parallel sweep jobs) collide, so the first touch of each store happens under a lock.
    """
    uri = tracking_uri(cfg_tracking, root)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        apply_http_defaults()
    mlflow.set_tracking_uri(uri)
    if uri not in _READY_STORES:
        if uri.startswith("sqlite:") and not sqlite_initialized(uri):
            with file_lock(store_lock_path(uri)):
                MlflowClient(uri).search_experiments(max_results=1)
        _READY_STORES.add(uri)
    return uri


def experiment_name(cfg_tracking: Any, stage: str) -> str:
    prefix = cfg_get(cfg_tracking, "experiment_prefix", "convscope")
    return f"{prefix}/{stage}" if prefix else stage


def ensure_experiment(client: MlflowClient, name: str, artifact_uri: str | None = None) -> str:
    """Id of experiment ``name``, created (artifacts at ``artifact_uri``) or restored if needed.

    Creation races between parallel jobs are expected: the loser reads the winner's experiment.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_uri)
        except MlflowException:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _stage_experiment(cfg_tracking: Any, stage: str, root: Path) -> tuple[str, MlflowClient, str]:
    if not isinstance(stage, str) or not stage.strip():
        raise ValueError(f"stage={stage!r} is not allowed: expected a non-empty stage name")
    uri = connect(cfg_tracking, root)
    client = MlflowClient(uri)
    exp_id = ensure_experiment(client, experiment_name(cfg_tracking, stage), artifact_location(uri))
    return uri, client, exp_id


# ---------------------------------------------------------------------------------------------
# sweeps


def _children_statuses(client: MlflowClient, exp_id: str, parent_id: str) -> list[tuple[str, str]]:
    runs = client.search_runs(
        [exp_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_id}'", max_results=5000
    )
    return [(r.info.run_id, r.info.status) for r in runs]


def _settle_parent(
    client: MlflowClient, exp_id: str, parent_id: str, orphans_failed: bool = False
) -> str:
    """End the parent with its children's combined status unless a child still runs.

    ``orphans_failed``: the sweep is over, so a child still RUNNING lost its process (killed
    hard); it is ended FAILED first. Returns the parent's status afterwards.
    """
    children = _children_statuses(client, exp_id, parent_id)
    statuses = []
    for run_id, status in children:
        if status not in TERMINAL and orphans_failed:
            client.set_terminated(run_id, "FAILED")
            status = "FAILED"
        statuses.append(status)
    if any(s not in TERMINAL for s in statuses):
        return "RUNNING"
    if "KILLED" in statuses:
        final = "KILLED"
    elif "FAILED" in statuses or not statuses:
        final = "FAILED"
    else:
        final = "FINISHED"
    client.set_terminated(parent_id, final)
    return final


def _parent_entry(
    client: MlflowClient,
    uri: str,
    exp_id: str,
    stage: str,
    sweep_dir: Path,
    code_dir: Path,
    state: dict[str, Any],
) -> dict[str, Any]:
    """Get or create the sweep's parent run for ``stage``; returns its entry in ``state``.

    The caller holds the sweep lock and writes ``state`` back. The entry also counts the
    children still open (``open``) and the parent's last settled ``status``, so the Hydra
    callback can tell without mlflow whether anything is left to settle.
    """
    sweep_id = sweeps.sweep_id_of(state, sweep_dir)
    state["sweep_id"] = sweep_id
    parents = state.setdefault("parents", {})
    entry = parents.get(stage)
    if entry and entry.get("tracking_uri") == uri and entry.get("sweep_id") == sweep_id:
        try:
            if client.get_run(entry["run_id"]).info.lifecycle_stage == "active":
                return entry
        except MlflowException:
            pass
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}' and tags.`{TAG_ROLE}` = 'sweep'",
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
    else:
        commit, dirty = git_state(code_dir)
        tags = {
            TAG_ROLE: "sweep",
            TAG_STAGE: stage,
            TAG_SWEEP_ID: sweep_id,
            TAG_SWEEP_DIR: str(sweep_dir),
            TAG_SWEEP_OVERRIDES: truncate(" ".join(state.get("overrides", [])), 8000),
            TAG_COMMIT: commit,
            TAG_DIRTY: dirty,
        }
        if commit != "unknown":
            tags["mlflow.source.git.commit"] = commit
        name = f"{stage} sweep {sweep_dir.parent.name}/{sweep_dir.name}"
        run_id = client.create_run(exp_id, run_name=name[:250], tags=tags).info.run_id
    entry = {
        "run_id": run_id,
        "experiment_id": exp_id,
        "tracking_uri": uri,
        "sweep_id": sweep_id,
        "open": 0,
        "status": "RUNNING",
    }
    parents[stage] = entry
    return entry


def sweep_parent(
    cfg_tracking: Any,
    stage: str,
    sweep_dir: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
) -> str:
    """The id of the one parent run of this sweep and stage, created by the first caller.

    Safe from parallel jobs: the lookup-or-create runs under an ``flock`` on the sweep folder,
    and the id is kept in the sweep's state file (also findable later through the tags
    ``convscope.role=sweep`` and ``convscope.sweep_id``). ``start_stage_run(sweep_dir=...)``
    calls this itself; call it directly only to attach runs by hand (``parent_run_id=``).
    """
    root_path = Path(root).resolve() if root is not None else find_root()
    uri, client, exp_id = _stage_experiment(cfg_tracking, stage, root_path)
    folder = sweeps.resolve_sweep_dir(sweep_dir)
    with sweeps.sweep_lock(folder):
        state = sweeps.read_state(folder)
        entry = _parent_entry(client, uri, exp_id, stage, folder, root_path, state)
        sweeps.write_state(folder, state)
        return entry["run_id"]


def settle_sweep(sweep_dir: str | os.PathLike[str], orphans_failed: bool = True) -> dict[str, str]:
    """End every parent run recorded in ``sweep_dir`` from its children's statuses.

    Called by the Hydra callback when the multirun is over; returns {stage: parent status}.
    """
    folder = sweeps.resolve_sweep_dir(sweep_dir)
    result = {}
    with sweeps.sweep_lock(folder):
        state = sweeps.read_state(folder)
        for stage, entry in state.get("parents", {}).items():
            client = MlflowClient(entry["tracking_uri"])
            result[stage] = _settle_parent(
                client, entry["experiment_id"], entry["run_id"], orphans_failed=orphans_failed
            )
            entry["status"] = result[stage]
            if result[stage] in TERMINAL:
                entry["open"] = 0
        sweeps.write_state(folder, state)
    return result


# ---------------------------------------------------------------------------------------------
# signals


class _SignalGuard:
    """SIGTERM raises ``RunTerminated`` while a run is open; both signals wait while it ends.

    Ending a run is a couple of store writes; a second Ctrl-C or SIGTERM in the middle would
    leave the run RUNNING, so the signals are blocked (``pthread_sigmask``) for that moment and
    delivered right after, with the handlers the process had before the run.
    Signal handlers can only be set from the main thread; elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self.previous: Any = None
        self.mask: set[int] | None = None

    @staticmethod
    def _on_sigterm(signum: int, frame: Any) -> None:
        raise RunTerminated(f"received signal {signum} (SIGTERM)")

    def __enter__(self) -> _SignalGuard:
        if self.active:
            self.previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def hold(self) -> None:
        """Block SIGINT/SIGTERM (they stay pending) while a run is created or ended."""
        if self.active and hasattr(signal, "pthread_sigmask") and self.mask is None:
            self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})

    def release(self) -> None:
        """Unblock; a signal that arrived meanwhile is raised now, by the run's handlers."""
        if self.mask is not None:
            mask, self.mask = self.mask, None
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def __exit__(self, *exc: Any) -> None:
        if not self.active:
            return
        previous = self.previous if self.previous is not None else signal.SIG_DFL
        signal.signal(signal.SIGTERM, previous)
        if self.mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)


# ---------------------------------------------------------------------------------------------
# the stage run


def _number(key: str, value: Any) -> float | None:
    """A metric value as float; None and NaN mean 'not measured' and are skipped."""
    if value is None:
        return None
    try:
        number = float(value)  # Python and NumPy scalars, 0-d arrays, framework tensors
    except (TypeError, ValueError):
        raise ValueError(f"metrics[{key!r}]={value!r} is not allowed: expected a number") from None
    return None if math.isnan(number) else number


class StageRun:
    """What a stage logs into its open run. Get one from ``start_stage_run``.

    Calls go through ``MlflowClient`` with this run's id, so they land in the right run even if
    other code changes mlflow's fluent 'active run'. All logging is synchronous: when a call
    returns, the data is in the store.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        experiment_id: str,
        tracking_uri: str,
        stage: str,
        cfg_tracking: Any,
        parent_run_id: str | None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri
        self.stage = stage
        self.cfg = cfg_tracking
        self.parent_run_id = parent_run_id

    def __repr__(self) -> str:
        return f"StageRun(stage={self.stage!r}, run_id={self.run_id!r}, uri={self.tracking_uri!r})"

    @property
    def artifact_uri(self) -> str:
        return self.client.get_run(self.run_id).info.artifact_uri

    # metrics ---------------------------------------------------------------------------------

    def _log_metric_dict(self, metrics: Mapping[str, Any], step: int | None) -> dict[str, float]:
        stamp = int(time.time() * 1000)
        clean = {k: v for k, v in ((str(k), _number(str(k), v)) for k, v in metrics.items())}
        clean = {k: v for k, v in clean.items() if v is not None}
        if clean:
            entries = [Metric(sanitize_key(k), v, stamp, int(step or 0)) for k, v in clean.items()]
            self.client.log_batch(self.run_id, metrics=entries, synchronous=True)
        return clean

    def log_epoch(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Per-epoch metrics at ``step``; None/NaN values are skipped. Returns what was logged."""
        return self._log_metric_dict(metrics, int(step))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> dict[str, float]:
        """Final metrics (step 0 unless given). Use keys distinct from the per-epoch ones
        (``test_accuracy``) or pass the last epoch as ``step``, so the epoch curves stay clean."""
        return self._log_metric_dict(metrics, step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        entries = [
            RunTag(sanitize_key(str(k)), truncate(str(v), MAX_TAG_VALUE_LENGTH))
            for k, v in tags.items()
        ]
        self.client.log_batch(self.run_id, tags=entries, synchronous=True)

    # artifacts -------------------------------------------------------------------------------

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """A file or a whole folder, under ``artifact_path`` in the run."""
        local = Path(path)
        if local.is_dir():
            self.client.log_artifacts(self.run_id, str(local), artifact_path)
        elif local.is_file():
            self.client.log_artifact(self.run_id, str(local), artifact_path)
        else:
            raise FileNotFoundError(f"path={str(local)!r} is not a file or folder to log")

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """A dict as a JSON (``.json``) or YAML (``.yaml``) artifact."""
        self.client.log_dict(self.run_id, dict(data), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_image(self, image: Any, key: str, step: int) -> None:
        """An image (HxW[x3|4] array or PIL image) with a key and step for the UI's slider."""
        self.client.log_image(
            self.run_id, image, key=sanitize_key(key), step=int(step), synchronous=True
        )

    def log_figure_file(
        self,
        path: str | os.PathLike[str],
        artifact_path: str = "figures",
        key: str | None = None,
        step: int | None = None,
    ) -> None:
        """A rendered figure file as an artifact; with ``key`` also as a stepped image."""
        self.log_artifact(path, artifact_path)
        if key is not None:
            from PIL import Image

            with Image.open(path) as img:
                self.log_image(img.convert("RGB"), key, 0 if step is None else step)

    def log_kernels(self, step: int, kernels: Mapping[str, Any]) -> None:
        """Kernels (HWIO arrays by layer name) after epoch ``step``.

        Each goes to ``kernels/epoch_XXX/<name>.npy``; with ``log_kernel_images`` also as an
        image keyed ``kernels/<name>`` at ``step`` (see ``images.kernel_mosaic``), which the
        MLflow UI shows with a slider over the epochs.
        """
        if not kernels:
            return
        folder = f"kernels/epoch_{int(step):03d}"
        with tempfile.TemporaryDirectory(prefix="convscope-kernels-") as tmp:
            for name, kernel in kernels.items():
                np.save(
                    Path(tmp) / f"{sanitize_key(str(name)).replace('/', '_')}.npy",
                    np.asarray(kernel),
                )
            self.client.log_artifacts(self.run_id, tmp, folder)
        if cfg_get(self.cfg, "log_kernel_images", True):
            for name, kernel in kernels.items():
                self.log_image(kernel_mosaic(np.asarray(kernel)), f"kernels/{name}", step)

    def log_dataset(
        self,
        name: str,
        digest: str,
        source: str,
        features: np.ndarray,
        targets: np.ndarray | None = None,
        context: str = "training",
    ) -> None:
        """The data a run used, through ``mlflow.data`` (shows in the UI's Datasets column).

        ``digest`` is the data's own content hash (no hashing here); the arrays only give MLflow
        the schema and shapes, so full arrays are fine.
        """
        with warnings.catch_warnings():
            # "" and "file" both map to the local artifact source; mlflow warns it picked one.
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
            dataset = mlflow.data.from_numpy(
                np.asarray(features),
                targets=None if targets is None else np.asarray(targets),
                source=str(source),
                name=name,
                digest=str(digest),
            )
        from mlflow.entities import DatasetInput, InputTag

        tag = InputTag(key="mlflow.data.context", value=context)
        inputs = [DatasetInput(dataset=dataset._to_mlflow_entity(), tags=[tag])]
        self.client.log_inputs(self.run_id, datasets=inputs)

    # models ----------------------------------------------------------------------------------

    def log_keras_model(
        self, model: Any, name: str = "model", input_example: Any = None
    ) -> str | None:
        """The Keras model in MLflow's Keras 3 flavour (``mlflow.keras``); returns its model URI.

        Pip requirements are given explicitly: MLflow would otherwise infer them by reloading
        the model in a subprocess, seconds of TensorFlow start-up per run.
        Skipped (None) when ``tracking.log_models`` is false.
        """
        if not cfg_get(self.cfg, "log_models", True):
            return None
        import mlflow.keras

        requirements = []
        for dist in ("keras", "tensorflow", "numpy"):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                requirements.append(f"{dist}=={importlib.metadata.version(dist)}")
        signature = None
        if input_example is not None:
            # A signature, not the example itself: mlflow 3.17's Keras flavour writes the
            # example before creating the model folder and fails (FileNotFoundError).
            from mlflow.models import infer_signature

            example = np.asarray(input_example)
            signature = infer_signature(example, np.asarray(model(example)))
        with self._fluent_active(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*without specifying model signature.*")
            info = mlflow.keras.log_model(
                model, name=name, pip_requirements=requirements, signature=signature
            )
        return info.model_uri

    def log_npz_model(
        self, path: str | os.PathLike[str], artifact_path: str = "model"
    ) -> str | None:
        """The engine's ``.npz`` weights as an artifact; returns its artifact URI (None when
        ``tracking.log_models`` is false)."""
        if not cfg_get(self.cfg, "log_models", True):
            return None
        self.log_artifact(path, artifact_path)
        return f"runs:/{self.run_id}/{artifact_path}/{Path(path).name}"

    @contextlib.contextmanager
    def _fluent_active(self) -> Iterator[None]:
        """Flavour ``log_model`` functions log into mlflow's active run; make sure it is ours."""
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            yield
            return
        raise TrackingError(
            f"run {self.run_id} is not mlflow's active run (active: "
            f"{active.info.run_id if active else None}); log models inside start_stage_run"
        )


def _plain_container(config: Any) -> dict[str, Any]:
    """Accept a plain dict, a DictConfig or a dataclass instance; return plain containers."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(config, Mapping):
        return dict(config)
    raise ValueError(
        f"config_container={type(config).__name__} is not allowed: expected a dict "
        "(OmegaConf.to_container(cfg, resolve=True))"
    )


def _config_yaml(container: Mapping[str, Any]) -> str:
    import yaml

    try:
        return yaml.safe_dump(container, sort_keys=False, default_flow_style=None)
    except yaml.YAMLError:
        import json

        return json.dumps(container, indent=2, default=str)


def _end_run(client: MlflowClient, run_id: str, status: str) -> None:
    """End ``run_id`` (and any run user code left open inside it) with ``status``."""
    while (active := mlflow.active_run()) is not None:
        mlflow.end_run(status)
        if active.info.run_id == run_id:
            return
    client.set_terminated(run_id, status)


@contextlib.contextmanager
def start_stage_run(
    cfg_tracking: Any,
    stage: str,
    config_container: Mapping[str, Any],
    overrides: Sequence[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    sweep_dir: str | os.PathLike[str] | None = None,
    code_dir: str | os.PathLike[str] | None = None,
) -> Iterator[StageRun]:
    """Open the MLflow run of one stage; yields a ``StageRun``. See the module docstring.

    Args:
        cfg_tracking: the ``tracking`` config (TrackingConfig, DictConfig or dict).
        stage: stage name (the DVC stage); experiment ``<experiment_prefix>/<stage>``.
        config_container: the resolved composed config (``OmegaConf.to_container(cfg,
            resolve=True)``); flattened into params and saved as ``config.yaml``.
        overrides: the Hydra overrides of this run (tag ``convscope.overrides``, run name).
        root: repository root (store location); default ``find_root()``.
        parent_run_id: make the run a child of this run.
        run_name: default ``"<stage> <overrides>"``.
        tags: extra tags.
        sweep_dir: the Hydra sweep folder when in a multirun: attach to the sweep's parent run
            and settle the parent when this run ends. Ignored when ``parent_run_id`` is given.
        code_dir: where to read the git commit/dirty state (default ``root``); differs from the
            root for DVC's queued experiments, which run in a temporary checkout.
    """
    root_path = Path(root).expanduser().resolve() if root is not None else find_root()
    container = _plain_container(config_container)
    params = flatten_params(container)  # bad input fails before the store is touched
    override_list = [str(o) for o in (overrides or [])]
    uri, client, exp_id = _stage_experiment(cfg_tracking, stage, root_path)

    commit, dirty = git_state(code_dir if code_dir is not None else root_path)
    run_tags: dict[str, str] = {
        TAG_ROLE: "stage",
        TAG_STAGE: stage,
        TAG_COMMIT: commit,
        TAG_DIRTY: dirty,
        TAG_OVERRIDES: truncate(" ".join(override_list), MAX_TAG_VALUE_LENGTH),
    }
    if commit != "unknown":
        run_tags["mlflow.source.git.commit"] = commit
    for env, tag in DVC_ENV_TAGS:
        if os.environ.get(env):
            run_tags[tag] = os.environ[env]
    run_tags.update(
        {
            sanitize_key(str(k)): truncate(str(v), MAX_TAG_VALUE_LENGTH)
            for k, v in (tags or {}).items()
        }
    )
    name = run_name or " ".join([stage, *override_list])
    name = truncate(name, 250)

    folder = None
    if sweep_dir is not None and parent_run_id is None:
        folder = sweeps.resolve_sweep_dir(sweep_dir)

    with _SignalGuard() as guard:
        # Blocked while the run is created: a signal in the middle of start_run would leave a
        # run that nobody knows the id of, hence nobody ends.
        guard.hold()
        try:
            if folder is not None:
                with sweeps.sweep_lock(folder):
                    state = sweeps.read_state(folder)
                    entry = _parent_entry(client, uri, exp_id, stage, folder, root_path, state)
                    parent_run_id = entry["run_id"]
                    run_tags[TAG_SWEEP_ID] = entry["sweep_id"]
                    if client.get_run(parent_run_id).info.status != "RUNNING":
                        client.update_run(parent_run_id, status="RUNNING")  # a later job reopens
                    entry["open"] = int(entry.get("open", 0)) + 1
                    entry["status"] = "RUNNING"
                    sweeps.write_state(folder, state)
                    active = mlflow.start_run(
                        experiment_id=exp_id,
                        run_name=name,
                        parent_run_id=parent_run_id,
                        tags=run_tags,
                    )
            else:
                active = mlflow.start_run(
                    experiment_id=exp_id, run_name=name, parent_run_id=parent_run_id, tags=run_tags
                )
        except BaseException:
            guard.release()
            raise
        run_id = active.info.run_id
        status = "FINISHED"
        try:
            guard.release()  # a signal held during start-up is raised here, inside the run
            client.log_batch(
                run_id, params=[Param(k, v) for k, v in params.items()], synchronous=True
            )
            client.log_text(run_id, _config_yaml(container), "config.yaml")
            yield StageRun(client, run_id, exp_id, uri, stage, cfg_tracking, parent_run_id)
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except SystemExit as exc:
            status = "FINISHED" if exc.code in (None, 0) else "FAILED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            guard.hold()
            try:
                _end_run(client, run_id, status)
                if folder is not None:
                    with sweeps.sweep_lock(folder):
                        settled = _settle_parent(client, exp_id, parent_run_id)
                        state = sweeps.read_state(folder)
                        entry = state.get("parents", {}).get(stage)
                        if entry and entry.get("run_id") == parent_run_id:
                            entry["open"] = max(0, int(entry.get("open", 1)) - 1)
                            entry["status"] = settled
                            sweeps.write_state(folder, state)
            except Exception as err:
                message = f"could not end MLflow run {run_id} as {status}: {err}"
                if status == "FINISHED":
                    raise TrackingError(" ".join(message.split())) from err
                warnings.warn(message, stacklevel=2)

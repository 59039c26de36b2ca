"""Run one pipeline stage as a Hydra app: check, track, compute, write outputs all or nothing.

``pipelines/<stage>.py`` calls :func:`main` with its stage name; a person (``python
pipelines/<stage>.py [overrides]``), DVC (``--config-dir . --config-name params``) and a
Hydra sweep (``-m``) then get the same life cycle:

1. *Before Hydra starts* (:func:`check_command_line`): the overrides (every point of a sweep)
   are composed and validated; a bad value prints ``convscope: error: <key>=<value> is not
   allowed: expected ...`` and exits 2, before any run folder, output or MLflow run exists.
2. *Inside the job* (:func:`run_stage`): the config is validated again (a sweep's job), the
   output locations are checked writable and cleared of staged files of killed processes
   (:func:`check_outputs`), the MLflow run starts, and the stage's
   ``run(cfg, ctx)`` writes every output to a staged path (:meth:`StageContext.out`).
3. *On success*: ``metrics/<stage>.json`` and ``plots/<stage>.csv`` are staged too, every
   staged file is renamed onto its target, and the MLflow run ends FINISHED.
4. *On a user error* (bad config, missing or corrupt input, unreachable tracking server, a
   diverged loss, a full disk or read-only output): the
   staged files are deleted, the run ends FAILED, one line goes to stderr, exit 1. Ctrl-C or
   SIGTERM: the same, the run ends KILLED, exit 130. Any other exception is a bug and keeps
   its traceback.

Inputs are read from the project (:func:`convscope.paths.project_root`). Only DVC's
``--config-name params`` run writes the pipeline's files there; a by-hand run or a sweep's job
writes under its own Hydra folder (:func:`_run_folder`). MLflow records go to
:func:`convscope.paths.tracking_root`.
"""

from __future__ import annotations

import csv
import errno
import importlib
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convscope.config import Config, ConfigError, register, validate, validate_overrides
from convscope.files import DataError, Staging, atomic_write_text, remove_stale_staged
from convscope.paths import conf_dir, project_root, tracking_root
from convscope.search.trial import TRIAL_ENV, job_trial
from convscope.tracking.client import NullRun, RemoteRun, TrackingProcess
from convscope.tracking.store import TAG_STUDY, TAG_TRIAL, TAG_TRIAL_STATE, TAG_TRIAL_STOPPED
from convscope.validation import ValidationError, error_line

__all__ = ["StageContext", "check_command_line", "main", "run_stage"]

log = logging.getLogger("convscope.runner")

EXIT_USAGE = 2  # a command line that cannot run (argparse's convention)
EXIT_FAILURE = 1  # a run that started and failed for a reason the user can fix
EXIT_INTERRUPTED = 130  # the shell's code for a run stopped by a signal (128 + SIGINT)

#: Columns of plots/<stage>.csv for training stages, in this order, where they apply.
PLOT_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


class TrialFailed(Exception):
    """A trial's stage failed (its one line is on stderr); the study records it FAIL."""


StageFn = Callable[[Config, "StageContext"], Mapping[str, Any] | None]


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    """Print ``convscope: error: <message>`` as one line on stderr and exit ``code``."""
    print(f"convscope: error: {error_line(message)}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def main(stage: str) -> None:
    """Run ``stage`` (a module of :mod:`convscope.stages`) as a Hydra app on conf/.

    The stage's tracking process starts first, so MLflow's import and the store check run
    on the other core while Hydra composes the config, the stage reads its data and imports
    TensorFlow. A sweep's jobs start theirs each; a command that runs no job starts none.
    """
    early = [TrackingProcess.spawn()] if _runs_one_job(sys.argv[1:]) else []
    import hydra

    check_command_line(stage=stage)
    module = importlib.import_module(f"convscope.stages.{stage}")

    def task(cfg: Any) -> dict[str, Any]:
        try:
            return run_stage(stage, cfg, module.run, process=early.pop() if early else None)
        except SystemExit as exc:
            # A trial of an Optuna sweep that failed is a failed trial, not a failed sweep:
            # an Exception is what Hydra's launchers record as the job's failure.
            if os.environ.get(TRIAL_ENV) and exc.code not in (None, 0, EXIT_INTERRUPTED):
                raise TrialFailed(f"{stage} exited {exc.code}") from None
            raise

    # Hydra names the job, and so its run and sweep folders, after the task's module.
    task.__module__ = module.__name__
    hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(task)()


# --------------------------------------------------------------------------- before Hydra


#: command-line words after which a stage runs no single tracked job
_NO_SINGLE_JOB = {"-m", "--multirun", "hydra.mode=MULTIRUN", "--help", "-h", "--hydra-help",
                  "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                  "tracking=none", "tracking.backend=none"}  # fmt: skip


def _runs_one_job(argv: Sequence[str]) -> bool:
    return not _NO_SINGLE_JOB.intersection(argv)


def check_command_line(argv: Sequence[str] | None = None, stage: str | None = None) -> None:
    """Validate a stage's command line before Hydra runs; exit 2 with one line if bad.

    Hydra's own flags (``--help``, ``--cfg``, ``--info``, completion) are left to Hydra. For
    ``-m`` every point of the sweep is validated, so a bad third job stops the first; an
    Optuna sweep (``hydra/sweeper=optuna``) has its search space and settings checked
    instead (:func:`convscope.search.check.check_study`), before its parent run or any trial.
    """
    from hydra._internal.utils import get_args_parser

    register()  # the schemas, for `--config-name schema/config --cfg job`
    try:
        args = get_args_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit:
        return  # Hydra's parser reports the same usage error in its own words
    flags = ("help", "hydra_help", "cfg", "info", "shell_completion", "experimental_rerun")
    if any(getattr(args, flag, None) for flag in flags):
        return
    overrides = [o.replace(" ", "") for o in args.overrides]
    multirun = args.multirun or "hydra.mode=MULTIRUN" in overrides
    try:
        if multirun and "hydra/sweeper=optuna" in overrides:
            from convscope.search.check import check_study

            name = args.config_name or "config"
            check_study(stage, args.overrides, config_name=name, config_dir=args.config_dir)
            return
        for point in _sweep_points(args.overrides) if multirun else [args.overrides]:
            validate_overrides(
                point, config_name=args.config_name or "config", extra_search_dir=args.config_dir
            )
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def _sweep_points(overrides: Sequence[str]) -> list[list[str]]:
    """Every job's override list of a basic sweep (``a=1,2 b=x,y`` -> 4 lists)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
        batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    except HydraException as exc:
        raise ConfigError(f"cannot parse the sweep {' '.join(overrides)!r}: {exc}") from exc
    return [list(job) for batch in batches for job in batch] or [list(overrides)]


# --------------------------------------------------------------------------- the stage context


@dataclass
class StageContext:
    """What a stage's ``run(cfg, ctx)`` uses to read inputs, write outputs and record its run.

    A stage never writes a final path: :meth:`out` hands it a staged one, and the runner
    renames every staged file onto its target only once the whole stage succeeded. ``run`` is
    the stage's MLflow run (:class:`convscope.tracking.client.RemoteRun`, or a
    :class:`~convscope.tracking.client.NullRun` with ``tracking=none``); a stage calls its
    methods directly, and the helpers below for what also goes into the stage's files.
    """

    stage: str
    cfg: Config
    raw: Any  # the resolved config as plain containers (what MLflow records)
    root: Path = field(default_factory=project_root)  # inputs are read from here
    out_root: Path | None = None  # outputs go here (default: root; else the run's Hydra folder)
    run: RemoteRun | NullRun = field(default_factory=NullRun)
    history: list[dict[str, float]] = field(default_factory=list)
    plot_rows: list[dict[str, Any]] | None = None
    kernels: dict[str, dict[int, Any]] = field(default_factory=dict)  # layer -> epoch -> HWIO
    staging: Staging = field(default_factory=Staging)
    trial: Any = None  # the Optuna trial this run is (convscope.search.trial.TrialReporter)
    _swept: set[Path] = field(default_factory=set)

    def path(self, rel: str | os.PathLike[str]) -> Path:
        return self.root / rel

    def input(self, rel: str | os.PathLike[str], made_by: str | None = None) -> Path:
        """An input file an earlier stage wrote; a clear error naming that stage if missing."""
        p = self.path(rel)
        if not p.exists():
            hint = f" (run `dvc repro {made_by}` or `python pipelines/{made_by}.py`)"
            raise FileNotFoundError(2, f"input {rel} not found{hint if made_by else ''}", str(p))
        return p

    def out_path(self, rel: str | os.PathLike[str]) -> Path:
        """Where output ``rel`` ends up once the stage succeeds."""
        return (self.out_root or self.root) / rel

    def out(self, rel: str | os.PathLike[str]) -> Path:
        """The staged path to write output ``rel`` to (see :class:`convscope.files.Staging`).

        The first output in a folder also clears that folder of what killed runs left staged.
        """
        target = self.out_path(rel)
        if target.parent not in self._swept:
            self._swept.add(target.parent)
            remove_stale_staged(target.parent)
        return self.staging.path(target)

    def commit(self) -> list[Path]:
        return self.staging.commit()

    def discard(self) -> None:
        self.staging.discard()

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """One finished epoch (1-based): a plots row and MLflow metrics at that step."""
        row = {"epoch": int(epoch)}
        row.update({k: float(metrics[k]) for k in PLOT_COLUMNS[1:] if metrics.get(k) is not None})
        self.history.append(row)
        self.run.log_epoch(int(epoch), metrics)

    def log_kernels(self, kernels: Mapping[str, Any], step: int) -> None:
        """Kernels (layer name -> HWIO array) after ``step`` epochs: MLflow arrays now, and
        kept for the run's kernel images, drawn on one scale per layer when the stage ends."""
        import numpy as np

        for name, kernel in kernels.items():
            self.kernels.setdefault(str(name), {})[int(step)] = np.array(kernel)
        self.run.log_kernels(int(step), kernels)

    def log_input(self, rel: str, meta: Mapping[str, Any], differ: Mapping[str, Any]) -> None:
        """Record what input ``rel`` was made with, from its own metadata, not from the config.

        A stage that reads a prepared dataset logs that file's recorded settings and digest
        as tags ``param.data.<dataset>.<key>`` (``param.data.mnist.limit_train``,
        ``param.data.mnist.sha256``), the names the producing stage records its config under,
        with the values the file really has. When they differ from this run's config
        (``differ``: key -> (file's, config's)), tag ``convscope.warning`` says so.
        """
        from convscope.tracking.store import param_tags

        name = str(meta.get("dataset") or Path(rel).stem)
        scalars = (str, int, float, bool, type(None))
        settings = {k: v for k, v in meta.items() if k != "dataset" and isinstance(v, scalars)}
        self.run.set_tags(param_tags({f"data.{name}.{k}": v for k, v in settings.items()}))
        if differ:
            what = ", ".join(f"{k}={old!r} (config: {new!r})" for k, (old, new) in differ.items())
            self.run.set_tags({"convscope.warning": f"{rel} was made with {what}"})

    def log_output(self, rel: str, artifact_path: str | None = None, as_model: bool = False):
        """Log output ``rel`` (already written to its staged path) under its final name."""
        if not self.run.recording:
            return
        with tempfile.TemporaryDirectory(prefix="convscope-artifact-") as tmp:
            named = Path(tmp) / Path(rel).name
            shutil.copy2(self.out(rel), named)
            if as_model:
                self.run.log_npz_model(named, artifact_path or "model")
            else:
                self.run.log_artifact(named, artifact_path)


# --------------------------------------------------------------------------- inside the job


PIPELINE_CONFIG = "params"  # DVC's `--config-name params`: the one path that writes pipeline files


def _run_folder() -> Path | None:
    """Where this run's outputs go: None for the pipeline's own files, else the Hydra folder.

    Only DVC (``--config-dir . --config-name params``, one job) writes the files DVC tracks;
    a by-hand run (``python pipelines/<stage>.py [overrides]``) and every job of a sweep write
    under their own Hydra folder (``outputs/<stage>/<time>/``, ``outputs/multirun/...``), so
    the workspace only ever holds what ``dvc repro`` made. Inputs still come from the project.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN and hydra_cfg.job.config_name == PIPELINE_CONFIG:
        return None
    return Path(hydra_cfg.runtime.output_dir).resolve()


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the user can fix this': one line, no traceback."""
    from convscope.recording import TrainingDiverged
    from convscope.tracking import TrackingError

    return (
        ConfigError,
        DataError,
        ValidationError,
        FileNotFoundError,
        TrackingError,
        TrainingDiverged,
    )


def run_stage(
    stage: str, cfg: Any, run_fn: StageFn, process: TrackingProcess | None = None
) -> dict[str, Any]:
    """The body of every stage's Hydra task: validate, track, run, write all or nothing.

    ``process`` is a tracking process started earlier for this run (see :func:`main`).
    Outputs are written once the stage's work is done and the store has made its run;
    from then on a tracking failure costs no output (its records wait in the outbox).
    Returns the stage's metrics (a sweeper reads its objective there). A trial that the
    study prunes (:class:`~convscope.recording.TrainingStopped`) writes no output, keeps its
    epochs in MLflow, and returns ``{"pruned_epoch": N}``.
    """
    from omegaconf import OmegaConf

    from convscope import tracking
    from convscope.recording import TrainingStopped
    from convscope.tracking.hydra_callbacks import (
        hydra_overrides,
        hydra_sweep_dir,
        job_run_name,
        swept_keys,
    )

    started = time.perf_counter()
    try:
        config = validate(cfg)
        params = _stage_params(stage, cfg, hydra_overrides())
    except ConfigError as exc:
        if process is not None:
            process.stop()
        fail(str(exc), EXIT_USAGE)
    raw = OmegaConf.to_container(cfg, resolve=True)
    ctx = StageContext(stage=stage, cfg=config, raw=raw, out_root=_run_folder())
    result: dict[str, Any] = {}
    try:
        ctx.trial = job_trial(cfg)  # None outside an Optuna sweep
        check_outputs(ctx)
        overrides, sweep_dir = hydra_overrides(), hydra_sweep_dir()
        name = job_run_name(stage, overrides, swept_keys(sweep_dir))
        with tracking.start_run(
            config.tracking,
            stage,
            raw,
            overrides=overrides,
            root=tracking_root(),
            sweep_dir=sweep_dir,
            code_dir=project_root(),
            params=params,
            run_name=" · ".join(filter(None, [os.environ.get("DVC_EXP_NAME"), name])),
            source=_entry_point(),
            process=process,
        ) as run:
            ctx.run = run
            if ctx.trial is not None:
                run.set_tags({TAG_TRIAL: str(ctx.trial.number), TAG_STUDY: ctx.trial.study})
            try:
                result = _finish(ctx, dict(run_fn(config, ctx) or {}))
            except TrainingStopped as stop:
                ctx.discard()
                run.set_tags({TAG_TRIAL_STATE: "PRUNED", TAG_TRIAL_STOPPED: str(stop.epoch)})
                run.confirm()
                print(f"{stage}: {stop}; no output written" + _run_note(run), flush=True)
                return {"pruned_epoch": stop.epoch}
            if ctx.trial is not None:
                run.set_tags({TAG_TRIAL_STATE: "COMPLETE"})
            run.confirm()  # a run the store refused fails here, before any output lands
            written = ctx.commit()
            if ctx.out_root is None:  # the pipeline's files: link them to this run by md5
                from convscope.tracking.provenance import output_tags

                run.set_tags(output_tags(ctx.root, written))
            if ctx.kernels and config.tracking.log_kernel_images:
                run.log_kernel_images(ctx.kernels)
    except _user_errors() as exc:
        ctx.discard()
        fail(f"{stage}: {_one_line(exc)}", EXIT_FAILURE)
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            ctx.discard()
            raise
        targets = ctx.staging.targets  # the last one staged is the one being written
        ctx.discard()
        where = f" {exc.filename or (targets[-1] if targets else '')}".rstrip()
        fail(f"{stage}: cannot write{where}: {exc.strerror or exc}; no output written")
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM turned into one by the tracking guard
        ctx.discard()
        notes = "".join(f"; {n}" for n in getattr(exc, "__notes__", []))
        fail(f"{stage}: interrupted; no output written{notes}", EXIT_INTERRUPTED)
    except BaseException:
        ctx.discard()
        raise
    total = time.perf_counter() - started
    log.info("stage %s done in %.2f s (MLflow %.2f s)", stage, total, ctx.run.seconds)
    where = ctx.out_root or ctx.root
    shown = where.relative_to(ctx.root) if where.is_relative_to(ctx.root) else where
    print(
        f"{stage}: outputs in {shown if str(shown) != '.' else 'the pipeline (dvc.yaml outs)'}"
        + _run_note(ctx.run),
        flush=True,
    )
    return result


def _entry_point() -> str:
    """The script that ran (``pipelines/<stage>.py``), relative to the project when inside."""
    main = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else Path(sys.executable)
    root = project_root()
    return main.relative_to(root).as_posix() if main.is_relative_to(root) else str(main)


def _run_note(run: RemoteRun | NullRun) -> str:
    """``; MLflow run <id>``, with the run's page when the store is a server."""
    run_id = run.run_id
    if not run_id:
        return ""
    uri = str(run.tracking_uri or "")
    if not uri.startswith(("http://", "https://")):
        return f"; MLflow run {run_id}"
    from convscope.tracking.store import ui_page

    return f"; MLflow run {run_id} ({ui_page(uri, run.experiment_id, run_id)})"


def _stage_params(stage: str, cfg: Any, overrides: Sequence[str]) -> dict[str, Any] | None:
    """The resolved config keys ``stage`` reads; an override it does not read is a
    :class:`ConfigError` (:func:`convscope.stage_keys.params_read`)."""
    from convscope.stage_keys import params_read

    return params_read(stage, cfg, overrides)


#: errnos of a write the user can fix: a full disk, a quota, a file size limit, a read-only
#: file system (a read-only folder is found before any work, by :func:`check_outputs`)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def declared_outputs(stage: str) -> list[str]:
    """The stage's outs, metrics and plots as dvc.yaml declares them (relative paths)."""
    from convscope.stage_keys import dvc_outputs

    return dvc_outputs(project_root(), stage) or [f"metrics/{stage}.json"]


def check_outputs(ctx: StageContext) -> None:
    """Before any work: every output location can be written, and holds no staged files of
    killed runs.

    A read-only folder, or a file where a folder should be, would otherwise be found only
    when the outputs are written, after the whole training.
    """
    for rel in declared_outputs(ctx.stage):
        target = ctx.out_path(rel)
        folder = target.parent
        existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
        if not existing.is_dir():
            raise DataError(f"cannot write {rel}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise DataError(f"cannot write {rel}: {existing} is read-only")
        if folder.is_dir() and folder not in ctx._swept:
            ctx._swept.add(folder)
            remove_stale_staged(folder)


def _one_line(exc: BaseException) -> str:
    """The error as one line, with its notes (what tracking could not record) after it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return "; ".join([text, *(" ".join(n.split()) for n in getattr(exc, "__notes__", []))])


def _finish(ctx: StageContext, metrics: dict[str, Any]) -> dict[str, Any]:
    """Stage metrics/<stage>.json and plots/<stage>.csv; log the final metrics to MLflow.

    Returns the metrics, JSON-safe. Durations (``seconds``, ``*_seconds``) go to MLflow only:
    the committed metrics file is what any rerun writes. Per-epoch keys are in MLflow already,
    with their steps; logging them again at step 0 would fold a point back into the curves.
    """
    finite = {k: _finite(v) for k, v in metrics.items()}
    kept = {k: v for k, v in finite.items() if k.rpartition("_")[2] != "seconds"}
    atomic_write_text(
        ctx.out(f"metrics/{ctx.stage}.json"), json.dumps(kept, indent=2, sort_keys=True) + "\n"
    )
    rows = ctx.plot_rows if ctx.plot_rows is not None else ctx.history
    if rows:
        atomic_write_text(ctx.out(f"plots/{ctx.stage}.csv"), plot_text(rows))
    per_epoch = {k for row in ctx.history for k in row}
    numeric = {
        k: float(v)
        for k, v in finite.items()
        if k not in per_epoch and isinstance(v, int | float) and not isinstance(v, bool)
    }
    ctx.run.log_metrics(numeric)
    return finite


def _finite(value: Any) -> Any:
    """A JSON-safe metric: NaN and inf become null, NumPy numbers plain floats."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    return float(value) if math.isfinite(float(value)) else None


def plot_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """plots/<stage>.csv: the training columns first, then any other key, in first-seen order."""
    columns = [c for c in PLOT_COLUMNS if any(c in r for r in rows)]
    columns += dict.fromkeys(k for r in rows for k in r if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return buf.getvalue()


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return "" if value is None else value

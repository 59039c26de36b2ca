"""Run one pipeline stage as a Hydra app: check, track, compute, write outputs all or nothing.

Every script in pipelines/ is a Hydra app whose task calls :func:`run_stage`; the script's
``__main__`` block calls :func:`check_command_line` first. Together they give each stage the
same life cycle, whether a person runs it, DVC runs it (``--config-dir . --config-name
params``), or a Hydra sweep runs it (``-m``, basic or joblib launcher):

1. *Before Hydra starts* (:func:`check_command_line`): the command line's overrides are
   composed with Hydra's compose API and validated against the schemas (every point of a
   sweep, for ``-m``). A wrong type, an out-of-range value or an unknown key prints one line,
   ``convscope: error: <key>=<value> is not allowed: expected ...``, and exits 2: no run
   folder, no output, no MLflow run.
2. *Inside the job* (:func:`run_stage`): the config is validated again (a sweep's job, or a
   config that reached Hydra another way), the MLflow stage run starts, the stage's
   ``run(cfg, ctx)`` computes, and everything it asked to write goes to staged temporary files
   beside their targets (:meth:`StageContext.out`).
3. *On success*: ``metrics/<stage>.json`` and ``plots/<stage>.csv`` are staged too, the final
   metrics and artifacts go to MLflow, then every staged file is renamed onto its target and
   the MLflow run ends FINISHED.
4. *On a user error* (bad config, missing or corrupt input, unreachable tracking server):
   staged files are deleted, so no partial output is left, the MLflow run ends FAILED, one
   line goes to stderr and the process exits 1. Ctrl-C or SIGTERM: the same cleanup, the run
   ends KILLED. Any other exception is a bug and keeps its traceback.

Roots: outputs go to the checkout the running code belongs to (:data:`REPO_ROOT`), except in a
sweep, where each job writes under its own Hydra folder; MLflow records go to the *tracking*
root, which for a queued DVC experiment (run in a temporary copy
under ``.dvc/tmp/exps``) is the original repository (DVC passes it as ``DVC_ROOT``), so
queued runs land in the same store as direct runs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convscope.config import (
    CONF_DIR,
    REPO_ROOT,
    Config,
    ConfigError,
    register,
    validate,
    validate_overrides,
)
from convscope.files import remove_path

__all__ = [
    "CONF_DIR",
    "PLOT_COLUMNS",
    "REPO_ROOT",
    "StageContext",
    "StageFailure",
    "check_command_line",
    "run_stage",
]

log = logging.getLogger("convscope.runner")

EXIT_USAGE = 2  # a command line that cannot run (argparse's convention)
EXIT_FAILURE = 1  # a run that started and failed for a reason the user can fix
EXIT_INTERRUPTED = 130  # the shell's code for a run stopped by a signal (128 + SIGINT)

#: Columns of plots/<stage>.csv for training stages, in this order, where they apply.
PLOT_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")

StageFn = Callable[[Config, "StageContext"], Mapping[str, Any] | None]


class StageFailure(Exception):
    """A stage cannot run for a reason the user can fix; the message is one line."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the user can fix this': one line, no traceback."""
    from convscope.files import DataError

    errors: list[type[BaseException]] = [ConfigError, DataError, StageFailure, FileNotFoundError]
    with contextlib.suppress(ImportError):
        from convscope.tracking.store import TrackingError

        errors.append(TrackingError)
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return text


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    """Print ``convscope: error: <message>`` as one line on stderr and exit ``code``."""
    print(f"convscope: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    raise SystemExit(code)


# --------------------------------------------------------------------------- before Hydra


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Validate a stage's command line before ``hydra.main`` runs; exit 2 with one line if bad.

    Hydra's own flags (``--help``, ``--cfg``, ``--info``, shell completion) are left to Hydra.
    For ``-m`` every point of the sweep is composed and validated, so a bad value in the third
    job stops the sweep before the first one starts.
    """
    from hydra._internal.utils import get_args_parser

    register()  # the schemas, for `--config-name schema/config --cfg job`
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        return  # Hydra's parser will report the same usage error in its own words
    if (
        args.help
        or args.hydra_help
        or args.cfg
        or args.info
        or args.shell_completion
        or getattr(args, "experimental_rerun", None)
    ):
        return
    overrides = list(args.overrides)
    config_name = args.config_name or "config"
    multirun = args.multirun or any(o.replace(" ", "") == "hydra.mode=MULTIRUN" for o in overrides)
    try:
        for point in _sweep_points(overrides) if multirun else [overrides]:
            validate_overrides(
                point,
                config_name=config_name,
                config_dir=CONF_DIR,
                extra_search_dir=args.config_dir,
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
    """What a stage's ``run(cfg, ctx)`` uses to read inputs, write outputs and report progress.

    A stage never writes a final path itself: :meth:`out` hands it a staged path, and the
    runner renames every staged file onto its target only once the whole stage succeeded.
    """

    stage: str
    cfg: Config
    raw: Any  # the resolved config as plain containers (what MLflow records)
    root: Path = REPO_ROOT  # inputs are read from here
    out_root: Path | None = None  # outputs go here (default: root; a sweep job's own folder)
    tracker: Any = None  # the tracking module's StageRun, or None when tracking is off
    history: list[dict[str, float]] = field(default_factory=list)
    plot_rows: list[dict[str, Any]] | None = None
    tracking_seconds: float = 0.0
    _staged: dict[Path, Path] = field(default_factory=dict)

    # -- files ------------------------------------------------------------------------------
    def path(self, rel: str | os.PathLike[str]) -> Path:
        """``rel`` under the repository root (outputs and inputs are root-relative)."""
        return self.root / rel

    def input(self, rel: str | os.PathLike[str], made_by: str | None = None) -> Path:
        """An input file that an earlier stage wrote; a clear error when it is missing."""
        p = self.path(rel)
        if not p.exists():
            hint = (
                f" (run `dvc repro {made_by}` or `python pipelines/{made_by}.py`)"
                if made_by
                else ""
            )
            raise FileNotFoundError(2, f"input {rel} not found{hint}", str(p))
        return p

    def out_path(self, rel: str | os.PathLike[str]) -> Path:
        """Where output ``rel`` ends up once the stage succeeds."""
        return (self.out_root or self.root) / rel

    def out(self, rel: str | os.PathLike[str]) -> Path:
        """A staged path to write output ``rel`` to; renamed onto ``rel`` when the stage ends well.

        The staged name sits in the target's folder (one filesystem, so the final rename is
        atomic) and keeps the target's suffix, which writers such as Keras's ``save`` use to
        choose the format.
        """
        target = self.out_path(rel).resolve()
        if target in self._staged:
            return self._staged[target]
        target.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(target.suffixes[-1:])
        stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
        staged = target.with_name(f".{stem}.staged-{os.getpid()}{suffix}")
        remove_path(staged)
        self._staged[target] = staged
        return staged

    def commit(self) -> list[Path]:
        """Rename every staged output onto its target (after the stage succeeded)."""
        done = []
        for target, staged in self._staged.items():
            if not staged.exists():
                raise RuntimeError(f"stage {self.stage} staged {target} but wrote nothing there")
        for target, staged in self._staged.items():
            os.replace(staged, target)
            done.append(target)
        self._staged.clear()
        return done

    def discard(self) -> None:
        """Delete every staged output (the stage failed: leave no partial output behind)."""
        for staged in self._staged.values():
            remove_path(staged)
        self._staged.clear()

    # -- tracking ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.tracking_seconds += time.perf_counter() - start

    def track(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``tracker.<method>(...)`` if tracking is on, timing it (MLflow's share)."""
        if self.tracker is None:
            return None
        with self._timed():
            return getattr(self.tracker, method)(*args, **kwargs)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Record one finished epoch (1-based): a plots row and MLflow metrics with step."""
        row = {"epoch": int(epoch)}
        for key in PLOT_COLUMNS[1:]:
            if key in metrics and metrics[key] is not None:
                row[key] = float(metrics[key])
        self.history.append(row)
        self.track("log_epoch", int(epoch), {k: float(v) for k, v in metrics.items()})

    def log_kernels(self, kernels: Mapping[str, Any], step: int) -> None:
        """Kernels (layer name -> HWIO array) after ``step`` epochs, for the evolution views."""
        self.track("log_kernels", int(step), dict(kernels))

    def log_dataset(
        self, name: str, digest: str, source: str, x: Any, y: Any = None, context: str = "training"
    ) -> None:
        """The data this run used (``mlflow.data``: name, source, digest, schema).

        MLflow caps a dataset digest at 36 characters, so the dataset entry carries the
        SHA-256's first 36 hex digits and the full digest goes into a tag beside it.
        """
        self.track("log_dataset", name, digest[:36], str(source), x, y, context=context)
        self.track("set_tags", {f"dataset.{name}.sha256": digest})

    def log_output(
        self, rel: str, artifact_path: str | None = None, as_model: bool = False
    ) -> None:
        """Log output ``rel`` (already written to its staged path) under its final file name."""
        if self.tracker is None:
            return
        staged = self.out(rel)
        with tempfile.TemporaryDirectory(prefix="convscope-artifact-") as tmp:
            named = Path(tmp) / Path(rel).name
            try:
                os.link(staged, named)
            except OSError:
                import shutil

                shutil.copy2(staged, named)
            if as_model:
                self.track("log_npz_model", named, artifact_path or "model")
            else:
                self.track("log_artifact", named, artifact_path)


# --------------------------------------------------------------------------- metrics and plots


def _json_number(value: Any) -> Any:
    if isinstance(value, bool | int | str) or value is None:
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def metrics_text(metrics: Mapping[str, Any]) -> str:
    """metrics/<stage>.json: sorted keys, finite numbers (NaN/inf become null), newline-ended."""
    return (
        json.dumps({k: _json_number(v) for k, v in metrics.items()}, indent=2, sort_keys=True)
        + "\n"
    )


def plot_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """plots/<stage>.csv: a header and one row per record; columns absent everywhere dropped."""
    if columns is None:
        columns = [c for c in PLOT_COLUMNS if any(c in r for r in rows)]
        extra = [k for r in rows for k in r if k not in columns]
        columns = [*columns, *dict.fromkeys(extra)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return buf.getvalue()


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return "" if value is None else value


# --------------------------------------------------------------------------- inside the job


def tracking_root() -> Path:
    """Where the MLflow store lives: ``CONVSCOPE_ROOT``, else ``DVC_ROOT``, else this checkout.

    For a queued DVC experiment the code runs in a temporary copy under ``.dvc/tmp/exps`` while
    ``DVC_ROOT`` names the original repository, so its runs join the main ``mlflow.db``.
    """
    from convscope import paths

    return paths.tracking_root()


def _sweep_job_dir() -> Path | None:
    """A multirun job's own Hydra folder, where its outputs go; None outside a sweep.

    A sweep explores: its jobs must neither overwrite each other's models nor the outputs DVC
    tracks in the workspace, so each job writes data/, models/, metrics/, plots/ under
    ``outputs/multirun/<stage>/<time>/<job number>/``. Inputs still come from the repository.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(hydra_cfg.runtime.output_dir).resolve()


def run_stage(stage: str, cfg: Any, run_fn: StageFn) -> None:
    """The body of every stage's Hydra task: validate, track, run, write all or nothing."""
    from omegaconf import OmegaConf

    started = time.perf_counter()
    try:
        config = validate(cfg)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    container = OmegaConf.to_container(cfg, resolve=True)
    ctx = StageContext(stage=stage, cfg=config, raw=container, root=REPO_ROOT)
    ctx.out_root = _sweep_job_dir()
    user_errors = _user_errors()
    try:
        with ctx._timed():
            from convscope import tracking
            from convscope.tracking.hydra_callbacks import hydra_overrides, hydra_sweep_dir

            run_cm = tracking.start_stage_run(
                config.tracking,
                stage,
                container,
                overrides=hydra_overrides(),
                root=tracking_root(),
                sweep_dir=hydra_sweep_dir(),
                code_dir=REPO_ROOT,
            )
            ctx.tracker = run_cm.__enter__()
        try:
            metrics = dict(run_fn(config, ctx) or {})
            _finish(ctx, metrics)
            ctx.commit()
        except BaseException:
            with ctx._timed():
                if not run_cm.__exit__(*sys.exc_info()):
                    raise
        else:
            with ctx._timed():
                run_cm.__exit__(None, None, None)
    except user_errors as exc:
        ctx.discard()
        fail(f"{stage}: {_one_line(exc)}", EXIT_FAILURE)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM turned into one by the tracking guard
        ctx.discard()
        fail(f"{stage}: interrupted; no output written", EXIT_INTERRUPTED)
    except BaseException:
        ctx.discard()
        raise
    total = time.perf_counter() - started
    share = ctx.tracking_seconds / total if total > 0 else 0.0
    log.info(
        "stage %s done in %.2f s (MLflow %.2f s, %.1f%%)",
        stage,
        total,
        ctx.tracking_seconds,
        100 * share,
    )


def _finish(ctx: StageContext, metrics: dict[str, Any]) -> None:
    """Stage metrics/<stage>.json and plots/<stage>.csv, and log the final metrics."""
    from convscope.files import atomic_write_text

    rows = ctx.plot_rows if ctx.plot_rows is not None else ctx.history
    atomic_write_text(ctx.out(f"metrics/{ctx.stage}.json"), metrics_text(metrics))
    if rows:
        atomic_write_text(ctx.out(f"plots/{ctx.stage}.csv"), plot_text(rows))
    # Per-epoch keys are already in MLflow with their steps (the run's table shows the last
    # epoch's value); logging them again at step 0 would fold a point back into the curves.
    per_epoch = {k for row in ctx.history for k in row}
    numeric = {
        k: float(v)
        for k, v in metrics.items()
        if k not in per_epoch
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(float(v))
    }
    ctx.track("log_metrics", numeric)

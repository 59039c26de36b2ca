"""The job's side of a study: report the objective after each epoch, stop when pruned.

The sweeper asks the study for a trial and hands its job, through ``hydra.job.env_set``, the
variable :data:`TRIAL_ENV` (the storage, study, trial id and objective; environment, because a
launcher's jobs may run in worker processes or on other machines, and Hydra sets it in the job
wherever it runs). The runner makes a :class:`TrialReporter` from it and the stages' one epoch
hook (:func:`convscope.stages._common.epoch_logger`) calls :meth:`TrialReporter.report`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from convscope.recording import TrainingStopped

__all__ = ["TRIAL_ENV", "TrialReporter", "decode", "encode", "job_trial"]

TRIAL_ENV = "CONVSCOPE_OPTUNA_TRIAL"


def encode(spec: Mapping[str, Any]) -> str:
    """A spec as one token of Hydra's override grammar (URL-safe base64 of its JSON)."""
    return base64.urlsafe_b64encode(json.dumps(dict(spec)).encode()).decode().rstrip("=")


def decode(token: str) -> dict[str, Any]:
    padded = token + "=" * (-len(token) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode()))


def job_trial(cfg: Any = None) -> TrialReporter | None:
    """This job's trial (from :data:`TRIAL_ENV`), or None outside an Optuna sweep."""
    token = os.environ.get(TRIAL_ENV)
    return TrialReporter(decode(token), cfg) if token else None


class TrialReporter:
    """Reports a trial's epochs to its study; raises :class:`TrainingStopped` when pruned."""

    def __init__(self, spec: Mapping[str, Any], cfg: Any = None) -> None:
        import optuna

        from convscope.search.study import make_pruner, make_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec = dict(spec)
        self.objective = str(spec["objective"])
        self.number = int(spec["number"])
        self.study = str(spec["study"])
        study = optuna.load_study(
            study_name=spec["study"],
            storage=make_storage(spec["storage"]),
            pruner=make_pruner(spec["pruner"]),
        )
        # Optuna's public API hands out a running trial only to the process that asked for
        # it; a trial of another process is reached by its id, as its own Trial does.
        self.trial = optuna.Trial(study, int(spec["trial_id"]))
        key = spec.get("epochs_key")
        if key and cfg is not None:
            from omegaconf import OmegaConf

            planned = OmegaConf.select(cfg, key, default=None)
            if planned is not None:
                self.trial.set_user_attr("epochs_planned", int(planned))

    def report(self, epoch: int, logs: Mapping[str, float]) -> None:
        """Epoch ``epoch`` (1-based) ended with ``logs``: report the objective; stop the
        training (:class:`TrainingStopped`) when the study's pruner says so."""
        value = logs.get(self.objective)
        if value is None or epoch < 1:
            return
        with _signals_deferred():
            self.trial.report(float(value), int(epoch))
            pruned = self.trial.should_prune()
        if pruned:
            raise TrainingStopped(int(epoch), f"pruned by the study at epoch {epoch}")


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait for the block's end, then act as they would have.

    A report is a write to the study's database. Interrupted half way (the stage's SIGTERM
    handler raises in the main thread at any line, SQLAlchemy's cleanup included), the job's
    connection can keep its transaction open while the exception travels up to the sweeper,
    whose own connection then waits on that lock to tell the study the trial FAILed, and the
    trial stays RUNNING. Held here, the signal is raised again once the write has ended.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in caught:
            signal.raise_signal(s)

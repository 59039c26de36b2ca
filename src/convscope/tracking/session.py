"""The life of one stage run, wherever its store calls execute: opened with signals held,
ended with the status the block exited with. Importing this module does not import mlflow.

:func:`run_block` is shared by :func:`convscope.tracking.lifecycle.start_stage_run` (the store
calls in this process) and :func:`convscope.tracking.agent.start_hosted_run` (the store calls
in the tracking agent), so both end a run the same way: FINISHED when the block completes,
FAILED on an exception, KILLED on Ctrl-C or SIGTERM (a handler turns SIGTERM into
:class:`RunTerminated`, a ``KeyboardInterrupt``, while the run is open).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from convscope.tracking.store import PARENT_ENV, PARENT_FILE, process_tags

R = TypeVar("R")

# DVC names the experiment a stage runs in; recording it links `dvc exp show` rows to runs.
DVC_ENV_TAGS = (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"))


class RunTerminated(KeyboardInterrupt):
    """SIGTERM arrived during a stage run. A KeyboardInterrupt so Ctrl-C handling covers it."""


def _raise_run_terminated(signum: int, frame: Any) -> None:
    raise RunTerminated(f"received signal {signum} (SIGTERM)")


class SignalGuard:
    """SIGTERM raises ``RunTerminated`` while a run is open; both signals wait while it starts
    or ends.

    Starting or ending a run is a few store writes; a signal in the middle would leave a run
    RUNNING that nobody ends, so SIGINT and SIGTERM are blocked (``pthread_sigmask``) for that
    moment and delivered right after. Handlers can only be set from the main thread;
    elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self.previous: Any = None
        self.mask: set[int] | None = None

    def __enter__(self) -> SignalGuard:
        if self.active:
            self.previous = signal.signal(signal.SIGTERM, _raise_run_terminated)
        return self

    def hold(self) -> None:
        if self.active and self.mask is None:
            self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})

    def release(self) -> None:
        """Unblock; a signal that arrived meanwhile is raised now."""
        if self.mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
            self.mask = None

    def __exit__(self, *exc: Any) -> None:
        if self.active:
            signal.signal(signal.SIGTERM, self.previous or signal.SIG_DFL)
            self.release()


def find_parent(sweep_dir: str | os.PathLike[str] | None) -> str | None:
    """The parent run of the sweep in ``sweep_dir``; None when no sweep callback opened one."""
    if sweep_dir is None:
        return None
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    try:
        return str(json.loads((Path(sweep_dir) / PARENT_FILE).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def origin_tags() -> dict[str, str]:
    """Tags only the stage's own process knows: its host and pid (to end its run if it dies)
    and the DVC experiment it runs in."""
    return {
        **process_tags(),
        **{tag: os.environ[env] for env, tag in DVC_ENV_TAGS if os.environ.get(env)},
    }


@contextlib.contextmanager
def run_block(
    open_run: Callable[[], R], close_run: Callable[[R, str], Sequence[str]]
) -> Iterator[R]:
    """``open_run()`` with signals held, yield the run, then ``close_run(run, status)``.

    ``close_run`` returns warnings (one line each) for a run that ended other than FINISHED
    and could not be fully recorded; it raises when a FINISHED run could not be.
    """
    with SignalGuard() as guard:
        guard.hold()
        try:
            run = open_run()
        finally:
            guard.release()  # a signal held during start-up is raised here
        status = "FINISHED"
        try:
            yield run
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
            guard.hold()  # released by the guard's exit, after the old handler is back
            for message in close_run(run, status):
                warnings.warn(message, stacklevel=3)

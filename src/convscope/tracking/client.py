"""A stage's side of its tracking process: started by the stage, fed over an inherited pipe,
gone with it. Importing this module does not import mlflow.

Every stage run is recorded by a process of its own (:mod:`convscope.tracking.service`), like
Weights & Biases' service process: the stage starts it at its very start
(:meth:`TrackingProcess.spawn`), with the stage's interpreter, ``sys.path`` (so the stage's own
``src/``), environment and user, and talks to it over one end of a socket pair that no other
process holds. MLflow's import and the store check then run on the second core while the stage
composes its config, reads its data and imports TensorFlow. Nothing outlives the stage for
long: when the stage's end of the pipe closes (it ended, or died of any signal), the process
ends an open run KILLED and exits. Nothing is named in a shared folder.

:class:`RemoteRun` is the stage's run: each method sends one request and returns at once, or,
for a call whose result the stage reads or that names a file, when the request is done. The
process works through requests in order and acknowledges each one; a request it refuses (a
bad value: a bug) fails the stage's next call. The first request opens the run; a stage that
trains waits for it before the first epoch (:meth:`RemoteRun.confirm`), so a store that
refuses the run stops the stage before any training.

If the tracking side goes away mid-run (the process killed, the SQLite store removed or
replaced, the server gone), no work is lost: every request not yet acknowledged, and every
later one, goes to the run's outbox (:mod:`convscope.tracking.outbox`), the stage finishes and
writes its outputs, and the run's end raises :class:`TrackingLost` (one line: the cause and
``convscope sync``). A run left open in a store that can still be written is ended FAILED by a
fresh tracking process, so no run stays RUNNING after its stage exits.

:class:`NullRun` has the same methods and records nothing (``tracking=none``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from convscope.tracking.outbox import RUN_METHODS, Outbox, Request
from convscope.tracking.store import (
    PARENT_ENV,
    PARENT_FILE,
    ArraySpec,
    TrackingError,
    cfg_get,
    check_server,
    check_sqlite_store,
    experiment_name,
    process_tags,
    sqlite_path,
    tracking_uri,
)

#: how long a stage waits for its tracking process to finish the run's last requests
CLOSE_TIMEOUT = 600.0
#: how long a stage that found its tracking process gone reads what the process sent last
READ_DRAIN = 10.0

# DVC names the experiment a stage runs in; recording it links `dvc exp show` rows to runs.
DVC_ENV_TAGS = (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"))


class TrackingLost(TrackingError):
    """The tracking side went away during the run; its records wait in the outbox."""


class RunTerminated(KeyboardInterrupt):
    """SIGTERM arrived during a stage run. A KeyboardInterrupt so Ctrl-C handling covers it."""


# --------------------------------------------------------------------------- the process


def now_ms() -> int:
    return int(time.time() * 1000)


class TrackingProcess:
    """``python -m convscope.tracking.service``, this process's own tracking process.

    Its stderr goes to an unnamed temporary file (MLflow's warnings; the line it exits with),
    read back only to say why it stopped.
    """

    def __init__(self, process: subprocess.Popen, sock: socket.socket, log: Any) -> None:
        self.process, self.sock, self.log = process, sock, log
        self.conn = Connection(os.dup(sock.fileno()))

    @classmethod
    def spawn(cls) -> TrackingProcess:
        """Start it now; it imports mlflow while the caller goes on."""
        ours, theirs = socket.socketpair()
        log = tempfile.TemporaryFile()
        # the stage's own code first: a checkout's src/, a queued DVC experiment's copy
        path = os.pathsep.join(p for p in sys.path if p)
        env = {**os.environ, "PYTHONPATH": path}
        with theirs:
            process = subprocess.Popen(
                [sys.executable, "-P", "-m", "convscope.tracking.service", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # its own session: a signal to the stage's process group (Ctrl-C, a killed
                # sweep) reaches the stage, whose end it then sees as the pipe's end
                start_new_session=True,
            )
        return cls(process, ours, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def why_gone(self) -> str:
        """One line: how the process ended (waits a moment for it to be gone)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        code = self.process.returncode
        if code is None:
            return "the tracking process stopped answering"
        if code < 0:
            name = signal.Signals(-code).name
            verb = "was killed" if -code == signal.SIGKILL else "was stopped"
            return f"the tracking process {verb} ({name})"
        last = self.last_line()
        return f"the tracking process exited with code {code}" + (f": {last}" if last else "")

    def last_line(self) -> str:
        self.log.seek(0)
        lines = [ln.strip() for ln in self.log.read().decode(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        return lines[-1].removeprefix("convscope: error: ") if lines else ""

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """End the pipe (the process ends any open run KILLED and exits) and wait for it.

        The write side is shut down first, so a thread reading replies sees the process's own
        end close rather than a file descriptor closed under it.
        """
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def release(self) -> None:
        """Close this side's descriptors (once no thread reads them)."""
        self.conn.close()
        self.sock.close()
        self.log.close()

    def stop(self) -> None:
        """:meth:`close` and :meth:`release`, for a process no thread reads from."""
        self.close()
        self.release()


# --------------------------------------------------------------------------- the stage's run


class NullRun:
    """The run of a stage with ``tracking=none``: every method records nothing."""

    run_id: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None
    parent_run_id: str | None = None
    seconds = 0.0
    recording = False

    def confirm(self) -> None:
        """Nothing to wait for."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_") or name not in RUN_METHODS:
            raise AttributeError(name)
        return _nothing


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


class RemoteRun:
    """A stage's run, recorded by its :class:`TrackingProcess` (see the module docstring).

    ``seconds`` is the time the stage spent on tracking (sending, waiting): MLflow's share.
    """

    recording = True

    def __init__(
        self, process: TrackingProcess, options: Mapping[str, Any], root: str | os.PathLike[str]
    ) -> None:
        self._process = process
        self._root = Path(root)
        self._seq = itertools.count(1)
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._pending: dict[int, Request] = {}  # sent, not yet acknowledged
        self._replies: dict[int, tuple[str, Any]] = {}  # for the requests a caller waits on
        self._waiting: set[int] = set()
        self._refused: BaseException | None = None
        self._lost: str | None = None
        self._process_died = False  # the loss is the process's death: the store is still there
        self._outbox: Outbox | None = None
        self._unkept, self._unkept_why = 0, ""  # requests the outbox could not take
        self._info: dict[str, Any] | None = None
        self.seconds = 0.0
        self._reader = threading.Thread(target=self._read, name="convscope-tracking", daemon=True)
        self._reader.start()
        self._open_seq = self._request("open", "", (dict(options),), {}, wait=False)

    # ------------------------------------------------------------ what a stage records

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._cast("log_params", dict(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._cast("set_tags", {str(k): str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self._cast("log_metrics", _floats(metrics), step, timestamp=now_ms())

    def log_epoch(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._cast("log_epoch", int(step), _floats(metrics), timestamp=now_ms())

    def log_kernels(self, step: int, kernels: Mapping[str, Any]) -> None:
        import numpy as np

        self._cast("log_kernels", int(step), {k: np.array(v) for k, v in kernels.items()})

    def log_kernel_images(self, history: Mapping[str, Mapping[int, Any]]) -> None:
        """Every epoch's kernels by layer, drawn as images on one scale per layer."""
        self._cast("log_kernel_images", {k: dict(v) for k, v in history.items()})

    def log_image(self, image: Any, key: str, step: int) -> None:
        import numpy as np

        self._cast("log_image", np.asarray(image), str(key), int(step), timestamp=now_ms())

    def log_dataset(
        self,
        name: str,
        digest: str,
        source: str,
        features: Any,
        targets: Any = None,
        context: str = "training",
    ) -> None:
        """Only the arrays' shapes and dtypes travel: all MLflow's record needs of them."""
        spec = None if targets is None else ArraySpec.of(targets)
        self._cast(
            "log_dataset", name, digest, str(source), ArraySpec.of(features), spec, context=context
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        self._cast("log_text", str(text), str(artifact_file))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None):
        self._call("log_artifact", Path(path), artifact_path)

    def log_keras_model(self, path: str | os.PathLike[str], name: str = "model") -> Any:
        """The saved ``.keras`` file: the tracking process loads it."""
        return self._call("log_keras_model", Path(path), name)

    def log_npz_model(self, path: str | os.PathLike[str], artifact_path: str = "model") -> Any:
        return self._call("log_npz_model", Path(path), artifact_path)

    def link_inputs(self, root: str | os.PathLike[str], files: Mapping[str, str]) -> Any:
        return self._call("link_inputs", str(root), dict(files))

    def warm_up(self, flavour: str) -> None:
        self._cast("warm_up", str(flavour))

    # ------------------------------------------------------------ the run itself

    @property
    def run_id(self) -> str | None:
        """The run's id once the store made it (None if it did not, or the tracking side went
        away first)."""
        return self._opened("run_id")

    @property
    def experiment_id(self) -> str | None:
        return self._opened("experiment_id")

    @property
    def tracking_uri(self) -> str | None:
        return self._opened("tracking_uri")

    @property
    def parent_run_id(self) -> str | None:
        """The sweep's parent run this run is a child of (None outside a sweep)."""
        return self._opened("parent_run_id")

    def _opened(self, key: str) -> str | None:
        with contextlib.suppress(Exception):
            self._wait(self._open_seq, refusals=False)
        value = (self._info or {}).get(key)
        return None if value is None else str(value)

    def confirm(self) -> None:
        """Wait until the store has made the run; raise if it refused it or any record sent
        so far (a stage that trains calls this before its first epoch, and the runner before
        any output is written)."""
        with self._timed():
            self._wait(self._open_seq)
            self._raise_refused()

    def close(self, status: str) -> list[str]:
        """End the run with ``status`` and wait for the process to finish its requests.

        A refused request makes a run that would have FINISHED end FAILED. Returns warnings
        (one line each) for a run that ended other than FINISHED and could not be recorded
        whole; raises for a FINISHED one: the refusal, or :class:`TrackingLost` when its
        records wait in the outbox.
        """
        with self._timed():
            refused = self._refused
            final = "FAILED" if refused is not None and status == "FINISHED" else status
            problem: BaseException | None = None
            if self._info is not None or self._lost is not None or refused is None:
                try:
                    end = {"end_time": now_ms()}
                    self._request("close", "", (final,), end, wait=True, refusals=False)
                except Exception as err:  # noqa: BLE001 - reported below
                    problem = err
            self._process.close()
            self._reader.join(timeout=10)
            self._process.release()
            if self._lost is not None:
                problem = TrackingLost(self._lost_line(final))
            if status == "FINISHED":
                problem = self._refused or problem
        if problem is None:
            return []
        if status == "FINISHED":
            raise problem
        return [" ".join(str(problem).split())]

    # ------------------------------------------------------------ the pipe

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def _cast(self, name: str, *args: Any, **kwargs: Any) -> None:
        with self._timed():
            self._request("call", name, args, kwargs, wait=False)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        # a call naming a file waits: the file may change once the call returns
        with self._timed():
            return self._request("call", name, args, kwargs, wait=True)

    def _request(
        self,
        op: str,
        name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        wait: bool,
        refusals: bool = True,
    ) -> Any:
        """Send one request; with ``wait``, return its result (or raise its refusal).
        ``refusals``: an earlier request's refusal is raised first."""
        with self._cond:
            if refusals:
                self._raise_refused()
            request = Request(next(self._seq), op, name, tuple(args), dict(kwargs), wait)
            if self._lost is not None:
                self._spool(request)
                return None
            self._pending[request.seq] = request
            if wait:
                self._waiting.add(request.seq)
        try:
            with self._send_lock:
                self._process.conn.send(request)
        except OSError:
            # the process is gone; what it said before it went (a "lost" naming why) is read
            # first, so a stage stopped meanwhile does not name an exit code instead
            self._reader.join(timeout=READ_DRAIN)
            self._mark_lost(self._process.why_gone(), process_died=True)
        return self._wait(request.seq, refusals) if wait else request.seq

    def _wait(self, seq: int, refusals: bool = True) -> Any:
        with self._cond:
            while seq in self._pending and self._lost is None:
                if refusals and self._refused is not None:
                    break
                self._cond.wait(1.0)
            self._waiting.discard(seq)
            kind, value = self._replies.pop(seq, ("ok", None))
            if kind == "error":
                raise value
            if refusals:
                self._raise_refused()
            return value

    def _raise_refused(self) -> None:
        if self._refused is not None:
            raise self._refused

    def _read(self) -> None:
        """The reader thread: acknowledgements, refusals, and the process's end."""
        conn = self._process.conn
        while True:
            try:
                kind, seq, value = conn.recv()
            except (EOFError, OSError):
                if self._lost is None and self._pending:
                    self._mark_lost(self._process.why_gone(), process_died=True)
                return
            with self._cond:
                if kind == "lost":  # the store or server went away: requests from seq on
                    self._mark_lost(str(value))
                    continue
                self._pending.pop(seq, None)
                if seq == self._open_seq and kind == "ok":
                    self._info = value
                if seq in self._waiting:
                    self._replies[seq] = (kind, value)
                elif kind == "error" and self._refused is None:
                    self._refused = value  # raised at the stage's next request
                if kind == "error" and seq == self._open_seq:
                    self._refused = value  # no run: every later request fails with this
                self._cond.notify_all()

    def _mark_lost(self, reason: str, process_died: bool = False) -> None:
        """From now on, requests go to the outbox: the unacknowledged ones first, in order."""
        with self._cond:
            if self._lost is not None:
                return
            self._lost, self._process_died = reason, process_died
            for seq in sorted(self._pending):
                self._spool(self._pending[seq])
            self._pending.clear()
            self._cond.notify_all()

    def _spool(self, request: Request) -> None:
        try:
            if self._outbox is None:
                info = self._info or {}
                key = str(info.get("run_id") or f"unopened-{uuid.uuid4().hex}")
                uri = info.get("tracking_uri")
                self._outbox = Outbox.create(self._root, key, info.get("run_id"), uri)
            self._outbox.append(request)
        except OSError as err:  # a full disk, say: said in the run's one line
            self._unkept += 1
            self._unkept_why = self._unkept_why or f"{err.strerror or err}"

    def _lost_line(self, status: str) -> str:
        """One line for a run whose tracking went away; ends it FAILED where it still can."""
        run_id = None if self._info is None else str(self._info["run_id"])
        if run_id is not None and self._process_died:
            with contextlib.suppress(Exception):
                abandon(run_id, self._info or {}, "FAILED" if status == "FINISHED" else status)
        count = self._outbox.count() if self._outbox is not None else 0
        where = self._outbox.folder if self._outbox is not None else "the outbox"
        which = f"run {run_id}" if run_id else "the run (not yet created)"
        lost = f"; {self._unkept} could not be kept ({self._unkept_why})" if self._unkept else ""
        return (
            f"{self._lost} during the run; {count} records of {which} (its end included) are "
            f"kept in {where}{lost}: run `convscope sync` once the store can be written"
        )


def _floats(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metric values as Python numbers where they are numbers (NumPy scalars pickle heavily)."""
    out = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            out[str(key)] = value  # refused by the tracking process, in its own words
    return out


def abandon(run_id: str, info: Mapping[str, Any], status: str) -> None:
    """End ``run_id`` with ``status`` through a fresh tracking process: its own died."""
    process = TrackingProcess.spawn()
    try:
        request = Request(1, "abandon", "", (run_id, dict(info), status), {})
        process.conn.send(request)
        kind, _, value = process.conn.recv()
        if kind != "ok":
            raise value
    finally:
        process.close(timeout=60)
        process.release()


# --------------------------------------------------------------------------- signals


def _raise_run_terminated(signum: int, frame: Any) -> None:
    raise RunTerminated(f"received signal {signum} (SIGTERM)")


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises :class:`RunTerminated` in the main thread while a run is open, so the
    stage unwinds like on Ctrl-C (its outputs discarded, its run KILLED). Whatever else stops
    the stage, its tracking process ends the run when the stage's pipe closes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_run_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)


# --------------------------------------------------------------------------- a stage run


def find_parent(sweep_dir: str | os.PathLike[str] | None) -> str | None:
    """The parent run of the sweep in ``sweep_dir``; None when no sweep callback opened one."""
    import json

    if sweep_dir is None:
        return None
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    try:
        return str(json.loads((Path(sweep_dir) / PARENT_FILE).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def origin_tags(source: str | None = None) -> dict[str, str]:
    """Tags only the stage's own process knows: its host and pid (to end its run if both it
    and its tracking process died), the entry point that ran, and the DVC experiment."""
    tags = {**process_tags(), **{t: os.environ[e] for e, t in DVC_ENV_TAGS if os.environ.get(e)}}
    if source:
        tags.update({"mlflow.source.name": source, "mlflow.source.type": "LOCAL"})
    return tags


def _plain(cfg: Any) -> Any:
    """A tracking config as a plain dict (a dataclass or DictConfig does not travel)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, Mapping) or cfg is None:
        return dict(cfg or {})
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


@contextlib.contextmanager
def start_run(
    cfg_tracking: Any,
    stage: str,
    config_container: Mapping[str, Any],
    overrides: Sequence[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    run_name: str | None = None,
    sweep_dir: str | os.PathLike[str] | None = None,
    code_dir: str | os.PathLike[str] | None = None,
    params: Mapping[str, Any] | None = None,
    source: str | None = None,
    process: TrackingProcess | None = None,
) -> Iterator[RemoteRun | NullRun]:
    """The MLflow run of one stage, recorded by its own tracking process; yields the run.

    It ends FINISHED when the block completes, FAILED on an exception, KILLED on Ctrl-C or
    SIGTERM (a handler turns SIGTERM into :class:`RunTerminated` while the run is open). An
    unreachable server, a refused login or permission, or a damaged SQLite store fails here, in
    one line, before any work.
    ``process`` is one :meth:`TrackingProcess.spawn` started earlier (it warms up meanwhile);
    it is closed either way. The arguments are
    :func:`convscope.tracking.lifecycle.open_stage_run`'s; ``source`` is the entry point that
    ran (``mlflow.source.name``).
    """
    from convscope.paths import tracking_root

    if cfg_get(cfg_tracking, "backend", "local") == "none":
        if process is not None:
            process.stop()
        yield NullRun()
        return
    root = Path(root) if root is not None else tracking_root()
    try:
        uri = tracking_uri(cfg_tracking, root)
        # the login and this user's permission on the stage's experiment too: a refusal is
        # one line here, before the stage reads its data or trains
        check_server(uri, experiment=experiment_name(cfg_tracking, stage))
        db = sqlite_path(uri)
        if db is not None:
            check_sqlite_store(db)  # a damaged store is refused here, in its own words
    except BaseException:
        if process is not None:
            process.stop()
        raise
    options = {
        "cfg_tracking": _plain(cfg_tracking),
        "stage": stage,
        "config_container": config_container,
        "overrides": list(overrides or []),
        "root": str(root),
        "parent_run_id": find_parent(sweep_dir),
        "run_name": run_name,
        "code_dir": str(code_dir) if code_dir is not None else None,
        "params": params,
        "origin": origin_tags(source),
    }
    run = RemoteRun(process or TrackingProcess.spawn(), options, root)
    with _sigterm_interrupts():
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
            messages = run.close(status)
            error = sys.exc_info()[1]
            for message in messages:  # the run failed: its error carries what tracking lost
                if error is not None:
                    error.add_note(message)
                else:
                    warnings.warn(message, stacklevel=3)

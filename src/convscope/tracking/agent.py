"""The tracking agent: one warm process per tracking store that runs the stages' MLflow calls.

Importing mlflow and opening its SQLAlchemy store (the schema check) costs a stage process
about 2.5 s, most of a small stage. The agent pays it once: the first stage that needs a
store starts ``python -m convscope.tracking.agent`` for it, detached, and later stages (the
next ones of a ``dvc repro``, the jobs of a sweep) connect to the running one. A stage never
imports mlflow: :func:`start_hosted_run` opens the run in the agent and yields a
:class:`HostedRun` whose methods are :class:`~convscope.tracking.logger.StageRun`'s, executed
there by the same code as an in-process run (:func:`~convscope.tracking.lifecycle.open_stage_run`,
:func:`~convscope.tracking.lifecycle.close_stage_run`). Calls that carry their data whole
(metrics, kernels, images, tags: ``CASTS``) are sent without waiting, so the agent logs while
the stage computes; the others, and the run's end, wait for the agent, which works through a
stage's requests in order: when the stage's run has ended, everything it logged is in the
store, as in-process. A failed cast fails the stage's next call.

Transport: :mod:`multiprocessing.connection` over a Unix socket in a per-user folder of the
temp directory (``convscope-<uid>/``, mode 0700), authenticated by a random key beside it
(0600); one connection per stage run, one thread per connection, store calls one at a time.
The agent keys on the store URI and the MLflow/AWS variables of the environment (the
credentials it will use). It exits when no run has been open for ``IDLE_SECONDS``, or at
once when its SQLite store's folder is gone. A stage whose connection breaks (the stage was
killed) has its run ended KILLED by the agent right away. Anything the agent prints goes to
``<socket>.log``; if it fails to start (a damaged store, say), its one-line error is the
stage's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from convscope.tracking.session import find_parent, origin_tags, run_block
from convscope.tracking.store import (
    TrackingError,
    check_server,
    check_sqlite_store,
    sqlite_path,
    tracking_uri,
)

#: the agent exits after this long with no run open (``CONVSCOPE_AGENT_IDLE_S`` overrides it)
IDLE_SECONDS = 120.0
IDLE_ENV = "CONVSCOPE_AGENT_IDLE_S"
#: how long a stage waits for a new agent to answer (its start imports mlflow, checks the store)
START_TIMEOUT = 120.0
_ENV_PREFIXES = ("MLFLOW_", "AWS_")
#: what connecting to an agent that is gone (or was replaced, with a new key) raises
_NOT_THERE = (OSError, EOFError, AuthenticationError)


# --------------------------------------------------------------------------- where it lives


def agent_folder() -> Path:
    """This user's folder of agent sockets, keys and logs (mode 0700)."""
    folder = Path(tempfile.gettempdir()) / f"convscope-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise TrackingError(f"{folder} must be a folder of this user only (mode 0700)")
    return folder


def agent_address(uri: str, environ: Mapping[str, str] | None = None) -> Path:
    """The socket of the agent for ``uri`` with this environment's MLflow/AWS settings."""
    env = os.environ if environ is None else environ
    settings = sorted((k, v) for k, v in env.items() if k.startswith(_ENV_PREFIXES))
    key = repr((uri, settings)).encode()
    return agent_folder() / f"agent-{hashlib.sha1(key).hexdigest()[:16]}.sock"


def _key_file(address: Path) -> Path:
    return address.with_suffix(".key")


def log_file(address: Path) -> Path:
    """What the agent at ``address`` printed: MLflow's warnings, its one-line start error."""
    return address.with_suffix(".log")


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


# --------------------------------------------------------------------------- the stage's side


def connect(uri: str, root: str | os.PathLike[str]) -> AgentLink:
    """A link to the agent of ``uri``, started (and waited for) if none answers.

    Parallel jobs race to start it: a file lock lets one start it and the others connect.
    """
    from filelock import FileLock, Timeout

    address = agent_address(uri)
    with contextlib.suppress(*_NOT_THERE):
        return AgentLink(_client(address), address)
    lock = address.with_suffix(".lock")
    try:
        with FileLock(str(lock), timeout=START_TIMEOUT):
            with contextlib.suppress(*_NOT_THERE):
                return AgentLink(_client(address), address)
            return AgentLink(_start(uri, root, address), address)
    except Timeout:
        raise TrackingError(f"timed out waiting for the tracking agent's lock {lock}") from None


def _client(address: Path) -> Connection:
    return Client(str(address), "AF_UNIX", authkey=_key_file(address).read_bytes())


def _start(uri: str, root: str | os.PathLike[str], address: Path) -> Connection:
    """Start the agent for ``uri`` at ``address`` and connect once it listens."""
    key = _key_file(address)
    key.unlink(missing_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(os.urandom(32))
    address.unlink(missing_ok=True)  # the socket of an agent that was killed
    log = log_file(address)
    # the agent runs the stage's own convscope (a checkout's src/ may not be the installed one)
    import convscope

    src = str(Path(convscope.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
    }
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "convscope.tracking.agent", uri, str(root), str(address)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,  # not in the stage's process group: it outlives the stage
            close_fds=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            line = _last_line(log) or f"exit code {process.returncode}"
            raise TrackingError(line.removeprefix("convscope: error: "))
        if address.exists():
            with contextlib.suppress(*_NOT_THERE):
                return _client(address)
        time.sleep(0.05)
    process.kill()
    raise TrackingError(f"the MLflow tracking agent did not start in {START_TIMEOUT:.0f} s: {log}")


class AgentLink:
    """One stage's connection to the agent at ``address``."""

    def __init__(self, conn: Connection, address: Path) -> None:
        self.conn, self.address = conn, address

    def request(self, *message: Any) -> Any:
        """Send one request, return its result or raise its error (one line)."""
        try:
            self.conn.send(message)
            kind, value = self.conn.recv()
        except (OSError, EOFError) as err:
            raise self._lost(err) from None
        if kind == "error":
            raise value
        return value

    def cast(self, *message: Any) -> None:
        """Send one request without waiting for it: its error comes with the next reply."""
        try:
            self.conn.send(message)
        except OSError as err:
            raise self._lost(err) from None

    def _lost(self, err: BaseException) -> TrackingError:
        return TrackingError(
            f"the MLflow tracking agent stopped answering ({type(err).__name__}); "
            f"what it printed is in {log_file(self.address)}"
        )

    def close(self) -> None:
        self.conn.close()


#: StageRun methods whose arguments travel whole (no temporary file) and whose result no stage
#: reads: sent without waiting, so the agent logs an epoch while the stage trains the next
CASTS = frozenset(
    {"log_epoch", "log_metrics", "log_kernels", "log_image", "set_tags", "log_params", "warm_up"}
)


class HostedRun:
    """A run open in the agent: ``run_id``, ``experiment_id``, ``tracking_uri``, ``stage``, and
    every public :class:`~convscope.tracking.logger.StageRun` method, executed there."""

    def __init__(self, link: AgentLink, info: Mapping[str, Any]) -> None:
        self._link = link
        self.run_id = str(info["run_id"])
        self.experiment_id = str(info["experiment_id"])
        self.tracking_uri = str(info["tracking_uri"])
        self.stage = str(info["stage"])
        self.parent_run_id = info.get("parent_run_id")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in CASTS:
            return lambda *args, **kwargs: self._link.cast("cast", name, args, kwargs)
        return lambda *args, **kwargs: self._link.request("call", name, args, kwargs)


def start_hosted_run(
    cfg_tracking: Any,
    stage: str,
    config_container: Mapping[str, Any],
    overrides: Sequence[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    run_name: str | None = None,
    sweep_dir: str | os.PathLike[str] | None = None,
    code_dir: str | os.PathLike[str] | None = None,
    params: Mapping[str, Any] | None = None,
) -> contextlib.AbstractContextManager[HostedRun]:
    """:func:`~convscope.tracking.lifecycle.start_stage_run`, its store calls in the agent.

    What only this process knows travels with the request: its pid and host, the DVC
    experiment, and the sweep's parent run (from the environment or the sweep folder). An
    unreachable server fails here in one line, before any agent starts.
    """
    from convscope.paths import tracking_root

    root = Path(root) if root is not None else tracking_root()
    uri = tracking_uri(cfg_tracking, root)
    check_server(uri)
    db = sqlite_path(uri)
    if db is not None:
        check_sqlite_store(db)  # a damaged store is refused here, in its own words
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
        "origin": origin_tags(),
    }
    link = connect(uri, root)

    def open_run() -> HostedRun:
        return HostedRun(link, link.request("open", options))

    def close_run(run: HostedRun, status: str) -> list[str]:
        try:
            return link.request("close", status)
        finally:
            link.close()

    return run_block(open_run, close_run)


def _plain(cfg: Any) -> dict[str, Any]:
    """The tracking config as a plain dict (a dataclass or DictConfig does not travel)."""
    import dataclasses

    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


# --------------------------------------------------------------------------- the agent's side


class _Agent:
    """The agent's state: open connections, the time the last one closed, one store lock."""

    def __init__(self, uri: str) -> None:
        self.db = sqlite_path(uri)
        self.identity = _identity(self.db) if self.db is not None else None
        self.lock = threading.Lock()  # MLflow's store calls, one at a time
        self.open = 0
        self.idle_since = time.monotonic()
        self.count_lock = threading.Lock()
        self.idle_seconds = float(os.environ.get(IDLE_ENV) or IDLE_SECONDS)

    def serve(self, conn: Connection) -> None:
        """One stage's requests, in order. A ``cast`` gets no reply: its error, if any, is the
        reply to the stage's next request (``close`` then ends the run FAILED first)."""
        with self.count_lock:
            self.open += 1
        run, failed = None, None
        try:
            while True:
                try:
                    op, *args = conn.recv()
                except (EOFError, OSError):
                    break
                if op == "cast":
                    if failed is None:  # after a failure the run is failing: skip the rest
                        try:
                            with self.lock:
                                self._dispatch(run, "call", args)
                        except BaseException as err:  # noqa: BLE001 - reported on the next request
                            failed = _portable(err)
                    continue
                try:
                    if failed is not None and op != "close":
                        raise failed
                    # a failed cast fails a run that would have FINISHED; a run failing already
                    # keeps its own error, the cast's becomes a warning
                    finishing = failed is not None and args[0] == "FINISHED"
                    with self.lock:
                        result, run = self._dispatch(run, op, ["FAILED"] if finishing else args)
                    if finishing:
                        raise failed
                    if failed is not None:
                        result = [*result, " ".join(str(failed).split())]
                    reply = ("ok", result)
                except BaseException as err:  # noqa: BLE001 - every error goes back to the stage
                    reply = ("error", _portable(err))
                    if op == "open":
                        run = None
                failed = None
                try:
                    conn.send(reply)
                except (OSError, EOFError):
                    break
                if op == "close":
                    run = None
        finally:
            if run is not None:  # the stage went away with its run open: it was killed
                from convscope.tracking.lifecycle import close_stage_run

                with self.lock, contextlib.suppress(Exception):
                    close_stage_run(run, "KILLED")
            conn.close()
            with self.count_lock:
                self.open -= 1
                self.idle_since = time.monotonic()

    def _dispatch(self, run: Any, op: str, args: list[Any]) -> tuple[Any, Any]:
        from convscope.tracking import lifecycle

        if op == "open":
            if self.store_changed():  # the agent exits within a moment; the next stage starts anew
                raise TrackingError(f"MLflow store {self.db} was replaced while in use; run again")
            new = lifecycle.open_stage_run(**args[0])
            info = {
                "run_id": new.run_id,
                "experiment_id": new.experiment_id,
                "tracking_uri": new.tracking_uri,
                "stage": new.stage,
                "parent_run_id": new.parent_run_id,
            }
            return info, new
        if run is None:
            raise TrackingError(f"no run is open for {op!r}")
        if op == "close":
            return lifecycle.close_stage_run(run, args[0]), run
        if op == "call":
            name, call_args, call_kwargs = args
            if name.startswith("_") or not callable(getattr(run, name, None)):
                raise AttributeError(f"StageRun has no method {name!r}")
            return getattr(run, name)(*call_args, **call_kwargs), run
        raise TrackingError(f"unknown request {op!r}")

    def done(self) -> bool:
        """Idle too long, or its SQLite store is gone or was replaced."""
        with self.count_lock:
            quiet = self.open == 0 and time.monotonic() - self.idle_since > self.idle_seconds
        return quiet or self.store_changed()

    def store_changed(self) -> bool:
        return self.db is not None and _identity(self.db) != self.identity


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _portable(err: BaseException) -> BaseException:
    """``err`` as the stage can unpickle it without mlflow: Python's own exceptions and
    convscope's pass; any other (MLflow's, SQLAlchemy's) becomes a one-line TrackingError."""
    module = type(err).__module__
    if module == "builtins" or module.startswith("convscope."):
        try:
            import pickle

            pickle.loads(pickle.dumps(err))
            return err
        except Exception:  # noqa: BLE001 - fall through to the one-line form
            pass
    text = " ".join(str(err).split()) or type(err).__name__
    return TrackingError(f"{type(err).__name__}: {text}"[:500])


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m convscope.tracking.agent URI ROOT SOCKET``: open the store, then serve.

    ROOT, the tracking root of the stage that started it, is not read: it names the project
    in a process listing (a server URI does not)."""
    uri, _root, address = (list(sys.argv[1:]) if argv is None else list(argv))[:3]
    try:
        from convscope.tracking import lifecycle

        lifecycle.connect_uri(uri)
    except TrackingError as err:
        print(f"convscope: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    sock = Path(address)
    listener = Listener(str(sock), "AF_UNIX", backlog=64, authkey=_key_file(sock).read_bytes())
    agent = _Agent(uri)

    def shut_down(*_: Any) -> None:
        for path in (sock, _key_file(sock)):
            path.unlink(missing_ok=True)
        os._exit(0)

    def watch() -> None:
        while not agent.done():
            time.sleep(0.2)
        shut_down()

    signal.signal(signal.SIGTERM, shut_down)
    threading.Thread(target=watch, daemon=True).start()
    while True:
        try:
            conn = listener.accept()
        except Exception:  # noqa: BLE001 - a client that failed authentication or went away
            continue
        threading.Thread(target=agent.serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()

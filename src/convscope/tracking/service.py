"""The tracking process of one stage run, and the requests it serves.

``python -m convscope.tracking.service FD`` is started by a stage
(:meth:`convscope.tracking.client.TrackingProcess.spawn`) with the stage's interpreter,
``sys.path`` and environment, and reads the stage's requests from the inherited socket ``FD``.
It imports mlflow at once, while the stage starts, then serves requests in order, answering
each: ``("ok", seq, result)``, ``("error", seq, exception)`` for a request it refused, or
``("lost", seq, reason)`` when the store or server went away (the requests from ``seq`` on were
not done; the stage keeps them in the outbox) and it exits.

It lives as long as the stage's run: it exits after the run's end, and when the stage's end of
the pipe closes (the stage ended or died, whatever the signal) it ends an open run KILLED
first. It runs in a session of its own, so signals to the stage's process group (Ctrl-C, a
sweep killed with its workers) reach the stage only; SIGINT is ignored all the same. A
SIGTERM sent to it gives the stage a moment to end the run; if it does not, the run is ended
FAILED and the stage is told the tracking side is gone.

:class:`Service` does the work for a live run and for ``convscope sync``'s replay of an
outbox (:func:`sync`) alike, through :mod:`convscope.tracking.lifecycle` and
:class:`~convscope.tracking.logger.StageRun`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from convscope.files import atomic_write_text
from convscope.tracking.outbox import RUN_METHODS, SENT_FILE, Outbox, Request, outboxes
from convscope.tracking.store import TrackingError, sqlite_path

#: how long a SIGTERMed tracking process waits for its stage to end the run
TERM_GRACE = 3.0
#: requests read ahead of the one being served
INBOX = 128


class StoreLost(TrackingError):
    """The store or server went away: what is left of the run goes to the outbox."""


class Service:
    """Runs a stage's requests against its store (a live run here, an outbox in ``sync``)."""

    def __init__(self) -> None:
        self.run: Any = None  # the open StageRun
        self.run_id: str | None = None
        self.refusal: BaseException | None = None  # a request of the run's it refused
        self.db: Path | None = None
        self.identity: tuple[int, int] | None = None

    def handle(self, request: Request) -> Any:
        from convscope.tracking import lifecycle

        if request.op == "open":
            try:
                self.run = lifecycle.open_stage_run(**request.args[0])
            except Exception as err:
                # no run to keep records for: the stage stops before it trains, in one line
                uri = _uri_of(request.args[0])
                line = _refused_line(uri, err)
                if line is not None:
                    raise TrackingError(line) from None
                raise
            self.run_id = self.run.run_id
            self._watch(self.run.tracking_uri)
            return {
                "run_id": self.run.run_id,
                "experiment_id": self.run.experiment_id,
                "tracking_uri": self.run.tracking_uri,
                "parent_run_id": self.run.parent_run_id,
            }
        if request.op == "abandon":
            run_id, info, status = request.args
            lifecycle.abandon_run(str(info["tracking_uri"]), str(run_id), str(status))
            return None
        if self.run is None:
            raise TrackingError(f"no run is open for {request.name or request.op!r}")
        self._check_store()
        uri = self.run.tracking_uri
        try:
            if request.op == "close":
                return self._close(*request.args, **request.kwargs)
            if request.op == "call" and request.name in RUN_METHODS:
                return getattr(self.run, request.name)(*request.args, **request.kwargs)
            raise TrackingError(f"unknown request {request.op} {request.name!r}")
        except Exception as err:
            from convscope.tracking.logger import lost_server, refusal, server_failure

            if lost_server(uri, err):
                raise StoreLost(f"the MLflow server at {uri} stopped answering ({err})") from err
            failure = server_failure(uri, err)
            if failure is not None:  # up, but failing: the rest waits in the outbox
                self._end_failed()
                raise StoreLost(f"{failure}; the run was ended FAILED") from err
            self._check_store()  # removed or replaced mid-request: SQLite refuses the write
            refused = refusal(uri, err)
            err = TrackingError(refused) if refused is not None else err
            if not request.awaited:  # nobody waits for its answer: it fails the run
                self.refusal = self.refusal or err
            raise err from None

    def _end_failed(self) -> None:
        """End the open run FAILED, marked as waiting for its outbox, so it does not stay
        RUNNING while its records wait (``convscope sync`` ends it as its stage did)."""
        from convscope.tracking import lifecycle

        run, self.run = self.run, None
        if run is not None:
            with contextlib.suppress(Exception):
                lifecycle.abandon_run(run.tracking_uri, run.run_id, "FAILED")

    def _close(self, status: str, end_time: int | None = None) -> list[str]:
        """End the run; one whose request was refused ends FAILED, with that refusal."""
        from convscope.tracking import lifecycle

        run, self.run = self.run, None
        refused = self.refusal is not None and status == "FINISHED"
        messages = lifecycle.close_stage_run(run, "FAILED" if refused else status, end_time)
        if refused:
            raise self.refusal
        return messages

    def tidy(self) -> None:
        """Housekeeping once a run is open, while its stage works: end this host's runs whose
        stage and tracking process both died (see
        :func:`~convscope.tracking.settle.reap_dead_runs`)."""
        from convscope.tracking.settle import reap_dead_runs

        if self.run is not None:
            try:
                reap_dead_runs(self.run.client)
            except Exception:  # noqa: BLE001 - housekeeping must not fail the run
                pass

    def resume(self, run_id: str, uri: str) -> None:
        """Make ``run_id`` (in the store at ``uri``) the run that requests go to (a replay)."""
        from convscope.tracking import lifecycle

        self.run = lifecycle.resume_stage_run(uri, run_id)
        self.run_id = run_id
        self._watch(uri)

    def settle(self, status: str) -> None:
        """End a run still open (its stage went away without ending it) with ``status``."""
        from convscope.tracking import lifecycle

        if self.run is not None:
            run, self.run = self.run, None
            lifecycle.close_stage_run(run, status)

    def _watch(self, uri: str) -> None:
        self.db = sqlite_path(uri)
        self.identity = _identity(self.db) if self.db is not None else None

    def _check_store(self) -> None:
        """An SQLite store removed or replaced under the run: its records cannot go there (MLflow
        would keep writing to the removed file, or fail on a run the new file lacks)."""
        if self.db is None:
            return
        now = _identity(self.db)
        if now != self.identity:
            self.run = None
            raise StoreLost(f"{self.db.name} was {'removed' if now is None else 'replaced'}")


def _uri_of(options: dict[str, Any]) -> str:
    """The tracking URI a run's ``open`` options name ("" when they name none that resolves)."""
    from convscope.tracking.store import tracking_uri

    try:
        return tracking_uri(options.get("cfg_tracking"), options.get("root"))
    except TrackingError:
        return ""


def _refused_line(uri: str, err: BaseException) -> str | None:
    """One line for a run the server refused to make: a login or permission it refused, or
    an HTTP 5xx it answered; None for any other error."""
    from convscope.tracking.logger import refusal, server_failure

    return refusal(uri, err) or server_failure(uri, err)


# --------------------------------------------------------------------------- replaying outboxes


@dataclass
class Replayed:
    """What :func:`replay` did with one outbox."""

    run_id: str | None
    sent: int
    damaged: int  # lines that could not be read (a crash mid-write): not sent
    run_file_damaged: bool = False  # run.json unreadable: the run was found by the folder


def replay(box: Outbox) -> Replayed:
    """Send ``box``'s unsent requests in order, then delete it.

    A store that cannot take them raises :class:`TrackingError` (one line); what was sent so
    far is counted, so the next replay resumes after it. Damaged lines cannot be sent: the
    intact ones are, and the result counts the others.
    """
    from convscope.tracking.query import default_uri

    requests, damaged = box.read()
    run_file_damaged = box.run_file_damaged()
    run_id, uri, done = box.run_id(), box.tracking_uri(), box.sent()
    if run_id is None and not box.folder.name.startswith("unopened-"):
        run_id = box.folder.name  # run.json damaged: the folder is named after the run
    uri = uri or default_uri(box.folder.parents[2])
    if run_id is None and (not requests or requests[0].op != "open"):
        raise TrackingError(
            f"outbox {box.folder} names no run and does not open one ({len(requests)} intact "
            f"requests, {damaged} damaged lines): nothing can be sent"
        )
    service = Service()
    if run_id is not None:
        service.resume(run_id, uri)
    sent_now = 0
    try:
        for index in range(done, len(requests)):
            try:
                service.handle(requests[index])
            except Exception as err:
                raise TrackingError(
                    f"run {run_id or '(not yet made)'}: request {index + 1} of {len(requests)} "
                    f"({requests[index].name or requests[index].op}) not sent: "
                    + " ".join(str(err).split())
                ) from err
            if requests[index].op == "open":
                run_id = service.run_id
                box.set_run(run_id, service.run.tracking_uri)
            atomic_write_text(box.folder / SENT_FILE, str(index + 1))
            sent_now += 1
    finally:
        service.settle("KILLED")  # a replay that stopped, or an outbox with no end
    shutil.rmtree(box.folder)
    return Replayed(run_id, sent_now, damaged, run_file_damaged)


def sync(root: str | os.PathLike[str] | None = None) -> list[Replayed]:
    """Replay every outbox under ``root`` (the tracking root by default). Stops at the first
    run whose store still does not take its requests."""
    return [replay(box) for box in outboxes(root)]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def portable(err: BaseException) -> BaseException:
    """``err`` as the stage can unpickle it without mlflow: Python's own exceptions and
    convscope's pass; any other (MLflow's, SQLAlchemy's) becomes a one-line TrackingError."""
    module = type(err).__module__
    if module == "builtins" or module.startswith("convscope."):
        try:
            pickle.loads(pickle.dumps(err))
            return err
        except Exception:  # noqa: BLE001 - fall through to the one-line form
            pass
    text = " ".join(str(err).split()) or type(err).__name__
    return TrackingError(f"{type(err).__name__}: {text}"[:500])


def main(argv: Sequence[str] | None = None) -> None:
    """Serve one stage run over the inherited socket named by ``argv[0]``."""
    fd = int((list(sys.argv[1:]) if argv is None else list(argv))[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stage handles Ctrl-C and ends the run
    stopped: list[float] = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(time.monotonic()))
    conn = Connection(fd)
    # bounded: a stage that records faster than the store takes it waits (the pipe fills),
    # so what is left to record when the stage goes away stays small
    inbox: queue.Queue[Request | None] = queue.Queue(maxsize=INBOX)
    received = threading.Event()

    def read() -> None:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                if not received.is_set():
                    os._exit(0)  # a process started early and never used: leave at once
                inbox.put(None)
                return
            received.set()
            inbox.put(request)

    threading.Thread(target=read, name="requests", daemon=True).start()
    try:
        from convscope.tracking import lifecycle  # mlflow, while the stage starts
    except Exception as err:  # noqa: BLE001 - a broken install: one line for the stage
        print(f"convscope: error: cannot import mlflow: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    lifecycle.warm_up(_default_uri())
    service = Service()
    while True:
        if stopped and (service.run is None or time.monotonic() - stopped[0] > TERM_GRACE):
            _stopped(conn, service)
        try:
            request = inbox.get(timeout=0.5)
        except queue.Empty:
            continue
        if request is None:  # the stage ended or died with its run open
            service.settle("KILLED")
            return
        try:
            reply: tuple[str, int, Any] = ("ok", request.seq, service.handle(request))
        except StoreLost as err:
            _send(conn, ("lost", request.seq, str(err)))
            # the stage keeps the rest; leave without mlflow's exit handler, which would end
            # the run FINISHED (or retry a gone server for minutes)
            sys.stderr.flush()
            os._exit(0)
        except BaseException as err:  # noqa: BLE001 - every refusal goes back to the stage
            reply = ("error", request.seq, portable(err))
        _send(conn, reply)
        if request.op in ("close", "abandon"):
            # every record is in the store (each call is synchronous): skip the interpreter's
            # slow teardown of mlflow's modules and exit handlers
            sys.stderr.flush()
            os._exit(0)
        if request.op == "open":
            service.tidy()


def _default_uri() -> str | None:
    """The store a stage records to unless its config says otherwise."""
    from convscope.tracking.store import tracking_uri

    try:
        return os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri({"backend": "local"})
    except TrackingError:
        return None


def _stopped(conn: Connection, service: Service) -> None:
    """SIGTERM and no end from the stage: end the run FAILED, tell the stage, exit."""
    if service.run is not None:
        try:
            service.settle("FAILED")
        except Exception:  # noqa: BLE001 - the stage still keeps the records
            pass
    _send(conn, ("lost", 0, "the tracking process was stopped (SIGTERM)"))
    os._exit(143)


def _send(conn: Connection, message: Any) -> None:
    try:
        conn.send(message)
    except OSError:
        pass  # the stage is gone; its run is ended on EOF


if __name__ == "__main__":
    main()

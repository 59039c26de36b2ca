"""The outbox: a run's requests that its tracking side could not take, kept on disk and replayed.

A stage's outputs do not depend on tracking, so a tracking process killed mid-run, an SQLite
store removed or replaced, or a server gone must not cost the work. From the first request
that was not done, a run's requests (:class:`Request`, exactly what the stage sent its tracking
process, with the times it sent them) go to its outbox,
``<tracking_root>/.convscope/outbox/<run id>/``: ``run.json`` (the run, if the store made it),
``records.jsonl`` (one request a line, appended whole and flushed) and ``files/`` (arrays and
files the requests carry). ``convscope sync`` (:func:`convscope.tracking.service.sync`)
replays each outbox through the same :class:`~convscope.tracking.service.Service` that
records a live run, counts what it sent in ``sent`` after every request (a replay that fails
half way resumes where it stopped), and deletes the outbox once everything is sent.

A line cut short by a crash mid-write, or a damaged ``run.json``, is reported in one line with
the count of requests that can still be sent; the intact ones are sent.

Writing an outbox needs no mlflow; replaying it does.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convscope.files import atomic_write_text
from convscope.paths import tracking_root
from convscope.tracking.store import ArraySpec

OUTBOX_DIR = Path(".convscope") / "outbox"
RECORDS_FILE = "records.jsonl"
RUN_FILE = "run.json"
SENT_FILE = "sent"


@dataclass(frozen=True)
class Request:
    """One request of a stage to its tracking process: ``op`` is ``open``, ``call`` (``name``
    the :class:`~convscope.tracking.logger.StageRun` method), ``close`` or ``abandon``. A
    ``Path`` among the arguments is a file the request carries. ``awaited``: the stage waits
    for the result, and gets the error itself if it fails."""

    seq: int
    op: str
    name: str = ""
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    awaited: bool = False


#: what a stage records: the :class:`~convscope.tracking.logger.StageRun` methods that
#: :class:`~convscope.tracking.client.RemoteRun` mirrors, the only ones a ``call`` may name
RUN_METHODS = frozenset(
    {
        "log_params",
        "set_tags",
        "log_metrics",
        "log_epoch",
        "log_kernels",
        "log_kernel_images",
        "log_image",
        "log_dataset",
        "log_artifact",
        "log_text",
        "log_keras_model",
        "log_npz_model",
        "link_inputs",
        "warm_up",
    }
)


def outbox_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of every run's outbox under the tracking root."""
    return Path(root if root is not None else tracking_root()) / OUTBOX_DIR


@dataclass
class Outbox:
    """One run's outbox."""

    folder: Path

    @classmethod
    def create(
        cls, root: str | os.PathLike[str], key: str, run_id: str | None, uri: str | None
    ) -> Outbox:
        """A new outbox named ``key`` (the run id, or a name for a run not yet made)."""
        folder = outbox_root(root) / key
        (folder / "files").mkdir(parents=True, exist_ok=True)
        box = cls(folder)
        box.set_run(run_id, uri)
        return box

    # ------------------------------------------------------------------ the run
    def _run_file(self) -> dict[str, Any]:
        try:
            record = json.loads((self.folder / RUN_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def run_id(self) -> str | None:
        """The run's id (None: the store has not made it yet, or ``run.json`` is damaged)."""
        value = self._run_file().get("run_id")
        return None if value is None else str(value)

    def tracking_uri(self) -> str | None:
        value = self._run_file().get("tracking_uri")
        return None if value is None else str(value)

    def set_run(self, run_id: str | None, uri: str | None) -> None:
        record = {"run_id": run_id, "tracking_uri": uri}
        atomic_write_text(self.folder / RUN_FILE, json.dumps(record) + "\n")

    # ------------------------------------------------------------------ requests
    def file(self, name: str) -> Path:
        """A fresh path under ``files/`` for a payload, named ``<n>/<name>``."""
        n = sum(1 for _ in (self.folder / "files").iterdir())
        path = self.folder / "files" / f"{n:05d}" / name
        path.parent.mkdir(parents=True)
        return path

    def append(self, request: Request) -> None:
        """Add one request: a whole line, flushed to disk; payloads first, under files/."""
        record = {
            "seq": request.seq,
            "op": request.op,
            "name": request.name,
            "args": self._encode(list(request.args)),
            "kwargs": self._encode(dict(request.kwargs)),
            "awaited": request.awaited,
        }
        line = json.dumps(record) + "\n"
        with open(self.folder / RECORDS_FILE, "a", encoding="utf-8") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())

    def _encode(self, value: Any) -> Any:
        import numpy as np

        if isinstance(value, Path):
            kept = self.file(value.name)
            (shutil.copytree if value.is_dir() else shutil.copy2)(value, kept)
            return {"$file": str(kept.relative_to(self.folder))}
        if isinstance(value, np.ndarray):
            kept = self.file("array.npy")
            np.save(kept, value, allow_pickle=False)
            return {"$array": str(kept.relative_to(self.folder))}
        if isinstance(value, ArraySpec):
            return {"$spec": [list(value.shape), value.dtype]}
        if isinstance(value, Mapping):
            items = [[self._encode(k), self._encode(v)] for k, v in value.items()]
            if all(isinstance(k, str) for k in value):
                return {k: v for k, v in items}
            return {"$items": items}
        if isinstance(value, list | tuple):
            return [self._encode(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        return value

    def _decode(self, value: Any) -> Any:
        import numpy as np

        if isinstance(value, list):
            return [self._decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "$file" in value:
            return self.folder / value["$file"]
        if "$array" in value:
            return np.load(self.folder / value["$array"], allow_pickle=False)
        if "$spec" in value:
            shape, dtype = value["$spec"]
            return ArraySpec(tuple(shape), dtype)
        if "$items" in value:
            return {self._decode(k): self._decode(v) for k, v in value["$items"]}
        return {k: self._decode(v) for k, v in value.items()}

    def read(self) -> tuple[list[Request], int]:
        """The intact requests in order, and how many lines were damaged (a torn last line)."""
        path = self.folder / RECORDS_FILE
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return [], 0
        requests, damaged = [], 0
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                requests.append(
                    Request(
                        int(record["seq"]),
                        str(record["op"]),
                        str(record.get("name", "")),
                        tuple(self._decode(record.get("args", []))),
                        dict(self._decode(record.get("kwargs", {}))),
                        bool(record.get("awaited", False)),
                    )
                )
            except (ValueError, KeyError, TypeError, OSError):
                damaged += 1
        return requests, damaged

    def count(self) -> int:
        """How many requests the outbox holds (damaged lines included)."""
        try:
            with open(self.folder / RECORDS_FILE, encoding="utf-8", errors="replace") as f:
                return sum(1 for line in f if line.strip())
        except FileNotFoundError:
            return 0

    def tally(self) -> tuple[int, int]:
        """(intact, damaged) lines of ``records.jsonl``: whole JSON records, and lines a crash
        cut short. Payloads are not read, so counting a large outbox is quick."""
        intact = damaged = 0
        try:
            with open(self.folder / RECORDS_FILE, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        whole = isinstance(json.loads(line), dict)
                    except ValueError:
                        whole = False
                    intact, damaged = intact + whole, damaged + (not whole)
        except OSError:
            pass
        return intact, damaged

    def run_file_damaged(self) -> bool:
        """Whether ``run.json`` is missing, empty or cut short (the run is then found by the
        folder's name, when the store had made it)."""
        try:
            record = json.loads((self.folder / RUN_FILE).read_text())
        except (OSError, ValueError):
            return True
        return not isinstance(record, dict)

    def sent(self) -> int:
        try:
            return int((self.folder / SENT_FILE).read_text())
        except (OSError, ValueError):
            return 0

    def pending(self) -> int:
        return max(0, self.count() - self.sent())


def outboxes(root: str | os.PathLike[str] | None = None) -> Iterator[Outbox]:
    folder = outbox_root(root)
    if folder.is_dir():
        for sub in sorted(folder.iterdir()):
            if sub.is_dir() and (sub / RECORDS_FILE).is_file():
                yield Outbox(sub)


def pending_records(root: str | os.PathLike[str] | None = None) -> dict[str, int]:
    """Outbox name -> requests not yet sent, for every outbox under ``root``; never raises on
    a damaged outbox (it counts its lines)."""
    return {box.folder.name: box.pending() for box in outboxes(root)}


@dataclass
class Waiting:
    """What one outbox holds for ``convscope info``."""

    name: str
    sendable: int  # intact records not yet sent
    damaged: int  # lines a crash cut short: they cannot be sent
    run_file_damaged: bool


def waiting(root: str | os.PathLike[str] | None = None) -> list[Waiting]:
    """Every outbox under ``root`` and what it can still send; never raises on a damaged one."""
    found = []
    for box in outboxes(root):
        intact, damaged = box.tally()
        sendable = max(0, intact - box.sent())
        found.append(Waiting(box.folder.name, sendable, damaged, box.run_file_damaged()))
    return found


def waiting_line(boxes: list[Waiting]) -> str:
    """One line on what the outboxes hold: the records ``convscope sync`` can send, and any
    damage a crash mid-write left."""
    sendable = sum(b.sendable for b in boxes)
    damaged = sum(b.damaged for b in boxes)
    run_files = [b.name for b in boxes if b.run_file_damaged]
    line = f"{sendable} records of {len(boxes)} run(s) can be sent: `convscope sync` sends them"
    if damaged:
        line += f"; {damaged} damaged line(s) (a crash mid-write) cannot be"
    if run_files:
        line += f"; run.json damaged in {', '.join(run_files)} (the folder names the run)"
    return line

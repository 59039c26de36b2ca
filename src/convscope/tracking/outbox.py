"""The outbox: what a run could not send to its tracking server, kept on disk and replayed.

A stage's outputs do not depend on tracking, so a server that stops answering mid-run must
not cost the work. From the first record that fails to send, a run's records go to its
outbox, ``<tracking_root>/.convscope/outbox/<run_id>/``: ``run.json`` (run id, tracking URI,
stage), ``records.jsonl`` (one record a line, in the order the stage made them) and ``files/``
(artifacts, images and models the records name). Records keep their original steps and
timestamps. ``convscope sync`` (:func:`sync`) replays each outbox with MLflow's public client
(``log_batch``, ``log_artifact(s)``, ``log_image``, ``log_inputs``, ``set_terminated``), counts
what it sent in ``sent`` after every record, so a replay that fails half way resumes where it
stopped, and deletes the outbox once everything is sent.

Writing an outbox needs no mlflow; replaying it does.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convscope.files import atomic_write_text
from convscope.paths import tracking_root
from convscope.tracking.store import TrackingError

OUTBOX_DIR = Path(".convscope") / "outbox"
RECORDS = "records.jsonl"
RUN_FILE = "run.json"
SENT_FILE = "sent"


def outbox_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of every run's outbox under the tracking root."""
    return Path(root if root is not None else tracking_root()) / OUTBOX_DIR


@dataclass
class Outbox:
    """One run's outbox; created on the first record that could not be sent."""

    folder: Path

    @classmethod
    def open(
        cls, run_id: str, tracking_uri: str, stage: str, root: str | os.PathLike[str] | None = None
    ) -> Outbox:
        folder = outbox_root(root) / run_id
        (folder / "files").mkdir(parents=True, exist_ok=True)
        if not (folder / RUN_FILE).exists():
            record = {"run_id": run_id, "tracking_uri": tracking_uri, "stage": stage}
            atomic_write_text(folder / RUN_FILE, json.dumps(record) + "\n")
        return cls(folder)

    @property
    def run(self) -> dict[str, str]:
        return json.loads((self.folder / RUN_FILE).read_text())

    def file(self, name: str) -> Path:
        """A fresh path under ``files/`` for a record's payload, named ``<n>/<name>``."""
        n = sum(1 for _ in (self.folder / "files").iterdir())
        path = self.folder / "files" / f"{n:05d}" / name
        path.parent.mkdir(parents=True)
        return path

    def append(self, op: str, **fields: Any) -> None:
        """Add one record; payload paths are stored relative to the outbox."""
        for key, value in fields.items():
            if isinstance(value, Path):
                fields[key] = str(value.relative_to(self.folder))
        line = json.dumps({"op": op, **fields}, default=float)
        with open(self.folder / RECORDS, "a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())

    def records(self) -> list[dict[str, Any]]:
        path = self.folder / RECORDS
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def sent(self) -> int:
        try:
            return int((self.folder / SENT_FILE).read_text())
        except (OSError, ValueError):
            return 0

    def pending(self) -> int:
        return len(self.records()) - self.sent()


def outboxes(root: str | os.PathLike[str] | None = None) -> Iterator[Outbox]:
    folder = outbox_root(root)
    if folder.is_dir():
        for sub in sorted(folder.iterdir()):
            if (sub / RUN_FILE).is_file():
                yield Outbox(sub)


def pending_records(root: str | os.PathLike[str] | None = None) -> dict[str, int]:
    """Run id -> records not yet sent, for every outbox under ``root``."""
    return {box.run["run_id"]: box.pending() for box in outboxes(root)}


def _replay(client: Any, run_id: str, box: Outbox, record: Mapping[str, Any]) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    op = record["op"]
    if op == "batch":
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, ts, step) for k, v, ts, step in record.get("metrics", [])],
            params=[Param(k, v) for k, v in record.get("params", [])],
            tags=[RunTag(k, v) for k, v in record.get("tags", [])],
            synchronous=True,
        )
    elif op == "artifact":
        local = box.folder / record["file"]
        if local.is_dir():
            client.log_artifacts(run_id, str(local), record.get("artifact_path"))
        else:
            client.log_artifact(run_id, str(local), record.get("artifact_path"))
    elif op == "image":
        from PIL import Image

        with Image.open(box.folder / record["file"]) as image:
            client.log_image(
                run_id,
                image.copy(),
                key=record["key"],
                step=record["step"],
                timestamp=record["timestamp"],
                synchronous=True,
            )
    elif op == "dataset":
        tags = [InputTag("mlflow.data.context", record["context"])]
        client.log_inputs(run_id, [DatasetInput(Dataset(**record["dataset"]), tags)])
    elif op == "end":
        client.set_terminated(run_id, record["status"], record["end_time"])
    else:
        raise TrackingError(f"outbox {box.folder}: unknown record op={op!r}")


def replay(box: Outbox) -> int:
    """Send ``box``'s unsent records in order; delete it when all are sent. Returns how many
    were sent now. A server still down raises :class:`TrackingError` (one line); what was
    sent so far is counted, so the next replay resumes after it."""
    from mlflow import MlflowClient

    from convscope.tracking.store import apply_http_defaults, check_server

    run = box.run
    uri, run_id = run["tracking_uri"], run["run_id"]
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        apply_http_defaults()
    client = MlflowClient(uri)
    records, done = box.records(), box.sent()
    for index in range(done, len(records)):
        try:
            _replay(client, run_id, box, records[index])
        except TrackingError:
            raise
        except Exception as err:
            raise TrackingError(
                f"run {run_id}: record {index + 1} of {len(records)} "
                f"({records[index]['op']}) not sent to {uri}: {err}"
            ) from err
        atomic_write_text(box.folder / SENT_FILE, str(index + 1))
    shutil.rmtree(box.folder)
    return len(records) - done


def sync(root: str | os.PathLike[str] | None = None) -> list[tuple[str, int]]:
    """Replay every outbox under ``root`` (the tracking root by default); returns (run id,
    records sent) per run. Stops at the first run whose server still does not answer."""
    return [(box.run["run_id"], replay(box)) for box in outboxes(root)]


def now_ms() -> int:
    return int(time.time() * 1000)

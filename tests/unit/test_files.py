"""Atomic writes, .npz array files with JSON metadata, and array digests."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from convscope.files import (
    METADATA_KEY,
    DataError,
    Staging,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    load_arrays,
    read_npz,
    save_arrays,
    sha256_arrays,
)


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("compress", [True, False])
def test_save_load_round_trip_keeps_values_dtypes_and_metadata(tmp_path, compress):
    rng = np.random.default_rng(0)
    data = {
        "images": rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8),
        "weights": rng.standard_normal((3, 3, 1, 4)).astype(np.float32),
        "labels": np.arange(5, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "scalar": np.float64(2.5),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    meta = {"source": "bundled", "n": np.int64(5), "lr": np.float32(0.5), "where": tmp_path}
    path = save_arrays(tmp_path / "out.npz", data, meta, compress=compress)
    assert path == tmp_path / "out.npz"

    loaded, loaded_meta = load_arrays(path)
    assert sorted(loaded) == sorted(data)
    for name, value in data.items():
        assert loaded[name].dtype == np.asarray(value).dtype, name
        np.testing.assert_array_equal(loaded[name], value)
    assert loaded_meta == {"source": "bundled", "n": 5, "lr": 0.5, "where": str(tmp_path)}


def test_file_is_a_plain_npz_readable_without_pickle(tmp_path):
    path = save_arrays(tmp_path / "plain.npz", {"a": np.ones(3)}, {"k": [1, 2]})
    with np.load(path, allow_pickle=False) as f:
        assert sorted(f.files) == sorted(["a", METADATA_KEY])
        raw = f[METADATA_KEY]
        assert raw.ndim == 0 and raw.dtype.kind == "U"
        assert json.loads(str(raw)) == {"k": [1, 2]}


def test_save_writes_exactly_the_given_name(tmp_path):
    # np.savez appends ".npz" to names without it; save_arrays must not.
    save_arrays(tmp_path / "weights.bin", {"a": np.zeros(2)}, {})
    assert _leftovers(tmp_path, set()) == ["weights.bin"]
    arrays, _ = load_arrays(tmp_path / "weights.bin")
    np.testing.assert_array_equal(arrays["a"], np.zeros(2))


def test_save_creates_parent_directories_and_replaces_old_file(tmp_path):
    path = tmp_path / "deep" / "er" / "x.npz"
    save_arrays(path, {"a": np.zeros(2)}, {"v": 1})
    save_arrays(path, {"b": np.ones(3)}, {"v": 2})
    arrays, meta = load_arrays(path)
    assert list(arrays) == ["b"] and meta == {"v": 2}
    assert _leftovers(path.parent, set()) == ["x.npz"]


def test_load_required_names(tmp_path):
    path = save_arrays(tmp_path / "r.npz", {"a": np.zeros(1)}, {})
    load_arrays(path, required=["a"])
    with pytest.raises(DataError, match=r"r\.npz.*missing arrays \['b'\]"):
        load_arrays(path, required=["a", "b"])


# --------------------------------------------------------------------------- bad input on save


@pytest.mark.parametrize("name", ["", "__metadata__", "__x", "a/b"])
def test_save_rejects_reserved_or_bad_names(tmp_path, name):
    with pytest.raises(ValueError, match="not allowed"):
        save_arrays(tmp_path / "x.npz", {name: np.zeros(1)}, {})
    assert not (tmp_path / "x.npz").exists()


def test_save_rejects_object_arrays_and_bad_metadata(tmp_path):
    with pytest.raises(ValueError, match=r"'objs'.*object"):
        save_arrays(tmp_path / "x.npz", {"objs": np.array([{}, 1], dtype=object)}, {})
    with pytest.raises(ValueError, match="not JSON serialisable"):
        save_arrays(tmp_path / "x.npz", {"a": np.zeros(1)}, {"f": object()})
    with pytest.raises(ValueError, match="not JSON serialisable"):
        save_arrays(tmp_path / "x.npz", {"a": np.zeros(1)}, {"nan": float("nan")})
    with pytest.raises(ValueError, match="non-empty mapping"):
        save_arrays(tmp_path / "x.npz", {}, {})
    assert _leftovers(tmp_path, set()) == []


# --------------------------------------------------------------------------- bad files on load


def test_missing_file_is_file_not_found_naming_the_path(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz") as info:
        load_arrays(missing)
    assert info.value.filename == str(missing)


def test_truncated_file_is_data_error_naming_the_file(tmp_path):
    rng = np.random.default_rng(1)
    path = save_arrays(tmp_path / "cut.npz", {"a": rng.standard_normal(5000)}, {"x": 1})
    blob = path.read_bytes()
    for keep in (len(blob) // 2, len(blob) - 30, 10):
        path.write_bytes(blob[:keep])
        with pytest.raises(DataError, match="cut.npz"):
            load_arrays(path)


def test_corrupt_member_data_is_data_error(tmp_path):
    path = tmp_path / "crc.npz"
    save_arrays(path, {"a": np.arange(4000, dtype=np.int64)}, {}, compress=False)
    blob = bytearray(path.read_bytes())
    # Flip bytes in the middle of the stored array: the zip CRC check must catch it.
    middle = len(blob) // 2
    blob[middle : middle + 8] = bytes(255 - b for b in blob[middle : middle + 8])
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"crc\.npz.*truncated or corrupt"):
        load_arrays(path)


def test_garbage_npy_and_directory_are_data_errors(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(DataError, match="garbage.npz"):
        load_arrays(garbage)

    npy = tmp_path / "single.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(DataError, match=r"single\.npy.*single \.npy array"):
        load_arrays(npy)

    with pytest.raises(DataError, match="is a directory"):
        load_arrays(tmp_path)


def test_missing_or_bad_metadata_is_data_error(tmp_path):
    no_meta = tmp_path / "nometa.npz"
    np.savez(no_meta, a=np.zeros(2))
    with pytest.raises(DataError, match=r"nometa\.npz.*__metadata__"):
        load_arrays(no_meta)
    # read_npz itself does not require metadata (it also reads Keras's mnist.npz).
    assert list(read_npz(no_meta)) == ["a"]

    bad_json = tmp_path / "badjson.npz"
    np.savez(bad_json, a=np.zeros(2), __metadata__=np.array("{not json"))
    with pytest.raises(DataError, match=r"badjson\.npz.*not valid JSON"):
        load_arrays(bad_json)

    not_object = tmp_path / "list.npz"
    np.savez(not_object, a=np.zeros(2), __metadata__=np.array("[1, 2]"))
    with pytest.raises(DataError, match=r"list\.npz.*JSON object"):
        load_arrays(not_object)

    not_string = tmp_path / "num.npz"
    np.savez(not_string, a=np.zeros(2), __metadata__=np.zeros(3))
    with pytest.raises(DataError, match=r"num\.npz.*0-d unicode"):
        load_arrays(not_string)


def test_pickled_objects_are_refused_not_unpickled(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, objs=np.array([{"a": 1}, None], dtype=object), __metadata__=np.array("{}"))
    with pytest.raises(DataError, match="pickled.npz"):
        load_arrays(path)


# --------------------------------------------------------------------------- atomicity


class Boom(RuntimeError):
    pass


def test_atomic_path_keeps_suffix_and_directory(tmp_path):
    target = tmp_path / "model.keras"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.suffix == ".keras"
        assert tmp != target
        assert not tmp.exists()  # the writer creates it
        tmp.write_bytes(b"model")
    assert target.read_bytes() == b"model"
    assert _leftovers(tmp_path, set()) == ["model.keras"]


def test_writer_failing_midway_leaves_no_file_and_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write('{"partial": ')
            raise Boom
    assert _leftovers(tmp_path, set()) == []


def test_writer_failing_keeps_the_previous_content(tmp_path):
    target = atomic_write_text(tmp_path / "plot.csv", "epoch,loss\n1,0.5\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("epoch,lo")
            raise KeyboardInterrupt
    assert target.read_text() == "epoch,loss\n1,0.5\n"
    assert _leftovers(tmp_path, set()) == ["plot.csv"]


def test_save_arrays_failing_midway_keeps_old_file(tmp_path, monkeypatch):
    path = save_arrays(tmp_path / "data.npz", {"a": np.arange(3)}, {"version": 1})

    def half_written(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise Boom("disk full")

    monkeypatch.setattr(np, "savez_compressed", half_written)
    with pytest.raises(Boom):
        save_arrays(path, {"a": np.arange(10)}, {"version": 2})
    arrays, meta = load_arrays(path)
    np.testing.assert_array_equal(arrays["a"], np.arange(3))
    assert meta == {"version": 1}
    assert _leftovers(tmp_path, set()) == ["data.npz"]


def test_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="produced no file"):
        with atomic_path(tmp_path / "out.png"):
            pass
    assert _leftovers(tmp_path, set()) == []


def test_output_gets_normal_permissions_not_mkstemp_0600(tmp_path):
    reference = tmp_path / "reference.txt"
    reference.write_text("x")
    out = atomic_write_text(tmp_path / "out.txt", "x")
    assert stat.S_IMODE(os.stat(out).st_mode) == stat.S_IMODE(os.stat(reference).st_mode)


def test_atomic_write_text_and_bytes(tmp_path):
    text = "a,b\r\nc\nü\n"
    atomic_write_text(tmp_path / "t.csv", text)
    assert (tmp_path / "t.csv").read_bytes() == text.encode("utf-8")  # newlines untouched
    atomic_write_bytes(tmp_path / "sub" / "b.bin", b"\x00\x01\xff")
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01\xff"


def test_atomic_path_removes_a_partial_directory_output(tmp_path):
    with pytest.raises(Boom):
        with atomic_path(tmp_path / "saved_model") as tmp:
            tmp.mkdir()
            (tmp / "variables").write_text("half")
            raise Boom
    assert _leftovers(tmp_path, set()) == []


# --------------------------------------------------------------------------- staging


def test_staging_writes_each_file_once_and_commits_all_together(tmp_path, monkeypatch):
    old = atomic_write_text(tmp_path / "metrics.json", "old\n")
    staging = Staging()
    metrics, model = staging.path(old), staging.path(tmp_path / "models" / "m.keras")
    assert staging.path(old) == metrics and metrics.parent == tmp_path
    assert metrics.name.startswith(".metrics.staged-") and model.suffix == ".keras"
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: renames.append(b) or real_replace(a, b))
    atomic_write_text(metrics, "new\n")  # in place: no second temp file and rename
    save_arrays(model, {"w": np.ones(2)})
    assert renames == [] and old.read_text() == "old\n"
    assert sorted(staging.commit()) == sorted([old.absolute(), model.parent / "m.keras"])
    assert old.read_text() == "new\n" and len(renames) == 2
    assert _leftovers(tmp_path, {"metrics.json", "models"}) == []
    assert os.listdir(tmp_path / "models") == ["m.keras"]


def test_staging_discard_and_a_staged_file_never_written(tmp_path):
    staging = Staging()
    atomic_write_text(staging.path(tmp_path / "a.txt"), "a")
    staging.discard()
    assert _leftovers(tmp_path, set()) == []
    staging = Staging()
    atomic_write_text(staging.path(tmp_path / "a.txt"), "a")
    staging.path(tmp_path / "b.txt")
    with pytest.raises(RuntimeError, match="b.txt was staged but nothing was written"):
        staging.commit()
    assert not (tmp_path / "a.txt").exists()  # all or nothing


def test_plain_npz_loads_with_empty_metadata_when_allowed(tmp_path):
    np.savez(tmp_path / "plain.npz", a=np.arange(3))
    arrays, meta = load_arrays(tmp_path / "plain.npz", plain_ok=True)
    assert meta == {} and list(arrays) == ["a"]
    with pytest.raises(DataError, match="__metadata__"):
        load_arrays(tmp_path / "plain.npz")


# --------------------------------------------------------------------------- digests


def _reference_digest(*arrays: np.ndarray) -> str:
    """The documented format, spelled out independently: header then little-endian C bytes."""
    h = hashlib.sha256()
    for a in arrays:
        little = a.astype(a.dtype.newbyteorder("<"))
        h.update(f"{little.dtype.str}|{a.shape}|".encode())
        h.update(little.tobytes(order="C"))
    return h.hexdigest()


def test_sha256_matches_the_documented_format():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    b = rng.standard_normal((3, 5)).astype(np.float32)
    assert sha256_arrays(a, b) == _reference_digest(a, b)


def test_sha256_depends_on_values_shape_dtype_and_order_only():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, size=(6, 4), dtype=np.uint8)
    b = np.arange(5, dtype=np.int32)
    base = sha256_arrays(a, b)

    # Same values, different memory layout or byte order: same digest.
    assert sha256_arrays(np.asfortranarray(a), b) == base
    assert sha256_arrays(a, b.astype(">i4")) == base
    assert sha256_arrays(a[:, ::-1][:, ::-1], b) == base

    # Anything about the values changes it.
    assert sha256_arrays(a.reshape(4, 6), b) != base
    assert sha256_arrays(a.view(np.int8), b) != base
    assert sha256_arrays(b, a) != base
    changed = a.copy()
    changed[2, 3] ^= 1
    assert sha256_arrays(changed, b) != base
    assert sha256_arrays(a) != base
    assert sha256_arrays(np.zeros((0, 4), np.uint8)) != sha256_arrays(np.zeros((4, 0), np.uint8))

    with pytest.raises(ValueError, match="object"):
        sha256_arrays(np.array([None]))

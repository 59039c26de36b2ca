"""The seed's Keras CNN built from config: architecture, feature maps, training, save/load.

Training runs on a few hundred bundled MNIST images for 1-2 epochs.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from convscope.config.schema import KerasConfig  # noqa: E402
from convscope.keras_cnn import (  # noqa: E402
    ModelFileError,
    ModelFileNotFoundError,
    activation_model,
    build_model,
    conv_kernels,
    feature_maps,
    load_model,
    save_model,
    seed_everything,
    train,
)

pytestmark = pytest.mark.tf

SEED_SHAPES = {"conv1": (26, 26, 16), "pool1": (13, 13, 16), "conv2": (11, 11, 32)}


def bundled_mnist(n_train: int, n_test: int):
    """Real digits, offline: the bundled MNIST subset, scaled as the stages scale it."""
    from convscope.data import mnist

    (xtr, ytr), (xte, yte) = mnist.load(source="bundled")
    xtr, ytr = mnist.prepare(xtr[:n_train], ytr[:n_train])
    xte, yte = mnist.prepare(xte[:n_test], yte[:n_test])
    return (xtr, ytr), (xte, yte)


# --------------------------------------------------------------------------- architecture


def test_default_config_is_exactly_the_seed_model():
    model = build_model(KerasConfig())
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "MaxPooling2D", "Conv2D", "Flatten", "Dense"]
    assert [layer.name for layer in model.layers] == ["conv1", "pool1", "conv2", "flatten", "dense"]
    shapes = [tuple(layer.output.shape[1:]) for layer in model.layers]
    assert shapes == [(26, 26, 16), (13, 13, 16), (11, 11, 32), (3872,), (10,)]
    assert [layer.count_params() for layer in model.layers] == [160, 0, 4640, 0, 38730]
    assert model.count_params() == 160 + 4640 + 38730

    conv1, pool1, conv2, _, dense = model.layers
    for conv in (conv1, conv2):
        assert conv.kernel_size == (3, 3) and conv.strides == (1, 1)
        assert conv.padding == "valid" and conv.activation.__name__ == "relu"
    assert pool1.pool_size == (2, 2) and pool1.strides == (2, 2)
    assert dense.activation.__name__ == "softmax"
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.001)
    assert model.loss == "sparse_categorical_crossentropy"


# Expected shapes worked out by hand from valid/same conv and 2x2 pool arithmetic.
VARIANTS = {
    "deeper": (
        {"conv_layers": 3},
        {
            "conv1": (26, 26, 16),
            "pool1": (13, 13, 16),
            "conv2": (11, 11, 32),
            "pool2": (5, 5, 32),
            "conv3": (3, 3, 64),
        },
    ),
    "wide": (
        {"filters": 32},
        {"conv1": (26, 26, 32), "pool1": (13, 13, 32), "conv2": (11, 11, 64)},
    ),
    "kernel5": (
        {"kernel_size": 5},
        {"conv1": (24, 24, 16), "pool1": (12, 12, 16), "conv2": (8, 8, 32)},
    ),
    "sigmoid": ({"activation": "sigmoid"}, SEED_SHAPES),
    "tanh": ({"activation": "tanh"}, SEED_SHAPES),
    "sgd": ({"optimizer": "sgd", "learning_rate": 0.01, "momentum": 0.9}, SEED_SHAPES),
    "same_stride2": (
        {"padding": "same", "stride": 2},
        {"conv1": (14, 14, 16), "pool1": (7, 7, 16), "conv2": (4, 4, 32)},
    ),
    "pool_last_only": (
        {"pool_after": [False, True]},
        {"conv1": (26, 26, 16), "conv2": (24, 24, 32), "pool2": (12, 12, 32)},
    ),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_exercise_variants_build_with_expected_shapes(name):
    overrides, expected = VARIANTS[name]
    cfg = KerasConfig(**overrides)
    model = build_model(cfg)
    got = {
        layer.name: tuple(layer.output.shape[1:])
        for layer in model.layers
        if layer.name.startswith(("conv", "pool"))
    }
    assert got == expected
    # The schema's own shape arithmetic agrees with Keras.
    assert [shape for _, shape in cfg.layer_shapes()] == list(expected.values())
    h, w, c = list(expected.values())[-1]
    assert model.get_layer("flatten").output.shape[1:] == (h * w * c,)
    assert model.outputs[0].shape[1:] == (10,)

    activation = overrides.get("activation", "relu")
    for layer in model.layers:
        if layer.name.startswith("conv"):
            assert layer.activation.__name__ == activation
            assert layer.kernel_size == (cfg.kernel_size,) * 2
    if name == "sgd":
        assert isinstance(model.optimizer, keras.optimizers.SGD)
        assert float(model.optimizer.learning_rate) == pytest.approx(0.01)
        assert float(model.optimizer.momentum) == pytest.approx(0.9)
    else:
        assert isinstance(model.optimizer, keras.optimizers.Adam)


# --------------------------------------------------------------------------- feature maps


def test_activation_model_exposes_every_conv_and_pool_output():
    seed_everything(3)
    model = build_model(KerasConfig(conv_layers=3))
    act = activation_model(model)
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    outputs = act.predict(x, verbose=0)
    assert [o.shape[1:] for o in outputs] == list(VARIANTS["deeper"][1].values())

    maps = feature_maps(model, x)
    assert list(maps) == ["conv1", "pool1", "conv2", "pool2", "conv3"]
    for got, want in zip(maps.values(), outputs, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # The last feature map feeds the classifier: running the rest of the model on it gives the
    # model's own prediction.
    rest = model.get_layer("dense")(model.get_layer("flatten")(maps["conv3"]))
    np.testing.assert_allclose(np.asarray(rest), model.predict(x, verbose=0), rtol=1e-5)


def test_feature_maps_match_a_numpy_conv_relu_and_pool():
    seed_everything(1)
    model = build_model(KerasConfig())
    x = np.random.default_rng(1).random((2, 28, 28, 1), dtype=np.float32)
    maps = feature_maps(model, x)
    kernel, bias = model.get_layer("conv1").get_weights()
    # Cross-correlation, valid padding, stride 1, as 3x3 windows times the HWIO kernel.
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))  # n,26,26,c,3,3
    conv = np.einsum("nhwcij,ijco->nhwo", windows, kernel) + bias
    np.testing.assert_allclose(maps["conv1"], np.maximum(conv, 0), rtol=1e-5, atol=1e-6)
    pooled = maps["conv1"].reshape(2, 13, 2, 13, 2, 16).max(axis=(2, 4))
    np.testing.assert_array_equal(maps["pool1"], pooled)


def test_feature_maps_reject_a_wrong_shape():
    model = build_model(KerasConfig())
    with pytest.raises(ValueError, match=r"\(2, 28, 28\)"):
        feature_maps(model, np.zeros((2, 28, 28), np.float32))


def test_conv_kernels_are_hwio_copies():
    model = build_model(KerasConfig(kernel_size=5))
    kernels = conv_kernels(model)
    assert {k: v.shape for k, v in kernels.items()} == {
        "conv1": (5, 5, 1, 16),
        "conv2": (5, 5, 16, 32),
    }
    before = model.get_layer("conv1").kernel.numpy().copy()
    kernels["conv1"][...] = 123.0
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(), before)


# --------------------------------------------------------------------------- training

SMALL = KerasConfig(epochs=2, batch_size=32, seed=7)


@pytest.fixture(scope="module")
def data():
    return bundled_mnist(n_train=640, n_test=200)


@pytest.fixture(scope="module")
def trained(data):
    (xtr, ytr), (xte, yte) = data
    calls = []

    def on_epoch(epoch, logs, kernels):
        calls.append((epoch, dict(logs), {k: v.copy() for k, v in kernels.items()}))

    result = train(SMALL, xtr, ytr, xte, yte, on_epoch=on_epoch, verbose=0)
    return result, calls


def test_training_records_history_kernels_and_times(trained):
    result, _ = trained
    assert set(result.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == SMALL.epochs for v in result.history.values())
    # The recorder's metrics are exactly what Keras's own History callback kept.
    for key, values in result.model.history.history.items():
        np.testing.assert_allclose(result.history[key], values, rtol=0, atol=0)

    assert set(result.kernels) == {"conv1", "conv2"}
    shapes = {"conv1": (3, 3, 1, 16), "conv2": (3, 3, 16, 32)}
    for name, snaps in result.kernels.items():
        assert len(snaps) == SMALL.epochs + 1
        assert all(s.shape == shapes[name] for s in snaps)
        assert not np.array_equal(snaps[0], snaps[1])  # training moved the kernels
        np.testing.assert_array_equal(snaps[-1], result.model.get_layer(name).kernel.numpy())

    # Snapshot 0 is the untrained model: the same seed rebuilds the same initial kernels.
    seed_everything(SMALL.seed)
    fresh = build_model(SMALL)
    for name, kernel in conv_kernels(fresh).items():
        np.testing.assert_array_equal(result.kernels[name][0], kernel)

    assert len(result.epoch_seconds) == SMALL.epochs
    assert all(s > 0 for s in result.epoch_seconds)


def test_training_learns_real_digits(trained):
    result, _ = trained
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert np.isfinite(result.test_loss)
    assert result.test_accuracy > 0.5  # chance is 0.1; 2 epochs of 576 images reach ~0.8


def test_user_on_epoch_hook_sees_every_epoch(trained):
    result, calls = trained
    assert [c[0] for c in calls] == [0, 1, 2]
    assert calls[0][1] == {}
    for epoch, logs, kernels in calls[1:]:
        for key, values in result.history.items():
            assert logs[key] == values[epoch - 1]
        assert logs["epoch_seconds"] > 0
        for name, kernel in kernels.items():
            np.testing.assert_array_equal(kernel, result.kernels[name][epoch])
    np.testing.assert_array_equal(calls[0][2]["conv1"], result.kernels["conv1"][0])


def test_same_config_gives_identical_numbers(data, trained):
    first, _ = trained
    (xtr, ytr), (xte, yte) = data
    second = train(SMALL, xtr, ytr, xte, yte, verbose=0)
    assert second.history == first.history
    assert (second.test_loss, second.test_accuracy) == (first.test_loss, first.test_accuracy)
    for name in first.kernels:
        for a, b in zip(first.kernels[name], second.kernels[name], strict=True):
            np.testing.assert_array_equal(a, b)


def test_another_seed_gives_other_numbers(data, trained):
    first, _ = trained
    (xtr, ytr), _ = data
    cfg = KerasConfig(epochs=1, batch_size=32, seed=SMALL.seed + 1, validation_split=0.0)
    other = train(cfg, xtr[:128], ytr[:128], verbose=0)
    assert set(other.history) == {"loss", "accuracy"}  # no validation split, no val metrics
    assert not np.array_equal(other.kernels["conv1"][0], first.kernels["conv1"][0])


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (np.zeros((4, 28, 28), np.float32), np.zeros(4, int), r"x_train has shape \(4, 28, 28\)"),
        (np.zeros((4, 28, 28, 1), np.uint8), np.zeros(4, int), "x_train has dtype uint8"),
        (np.zeros((4, 28, 28, 1), np.float32), np.zeros(3, int), r"y_train has shape \(3,\)"),
        (np.zeros((4, 28, 28, 1), np.float32), np.array([0, 1, 2, 10]), r"labels in \[0, 10\]"),
    ],
)
def test_train_rejects_bad_input(x, y, match):
    with pytest.raises(ValueError, match=match):
        train(KerasConfig(epochs=1), x, y, verbose=0)


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip_gives_identical_predictions(trained, data, tmp_path):
    result, _ = trained
    (_, _), (xte, _) = data
    path = save_model(result.model, tmp_path / "models" / "cnn.keras")
    assert path == tmp_path / "models" / "cnn.keras" and path.is_file()
    assert os.listdir(path.parent) == ["cnn.keras"]  # no temporary file left behind
    loaded = load_model(path)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in result.model.layers]
    np.testing.assert_array_equal(
        loaded.predict(xte[:32], verbose=0), result.model.predict(xte[:32], verbose=0)
    )
    # Saving again replaces the file in place.
    save_model(loaded, path)
    assert os.listdir(path.parent) == ["cnn.keras"]


def test_saved_model_bytes_depend_on_the_weights_only(trained, tmp_path, monkeypatch):
    import time
    import zipfile

    result, _ = trained
    first = save_model(result.model, tmp_path / "a.keras").read_bytes()
    # Keras dates the archive to the second: move the clock, as a later run would.
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    monkeypatch.setattr(time, "localtime", lambda *a: __import__("time").gmtime(real() + 3600))
    second = save_model(result.model, tmp_path / "b.keras").read_bytes()
    assert first == second
    # Keras numbers shared objects by their memory address: two equal models, other objects
    # (a fresh Keras session, as in a new process: the same layer and optimizer names)
    import keras

    keras.backend.clear_session()
    one = build_model(KerasConfig())
    third = save_model(one, tmp_path / "c.keras").read_bytes()
    keras.backend.clear_session()
    two = build_model(KerasConfig())
    two.set_weights(one.get_weights())
    assert save_model(two, tmp_path / "d.keras").read_bytes() == third
    with zipfile.ZipFile(tmp_path / "b.keras") as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert "date_saved" not in z.read("metadata.json").decode()


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    model = build_model(KerasConfig())
    target = tmp_path / "cnn.keras"
    target.write_bytes(b"previous model")

    def broken_save(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, target)
    assert os.listdir(tmp_path) == ["cnn.keras"]
    assert target.read_bytes() == b"previous model"

    fresh = tmp_path / "new.keras"
    with pytest.raises(OSError, match="disk full"):
        save_model(model, fresh)
    assert not fresh.exists()
    assert os.listdir(tmp_path) == ["cnn.keras"]


def test_corrupt_model_file_gives_one_clear_line(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(ModelFileError) as info:
        load_model(bad)
    message = str(info.value)
    assert str(bad) in message and "\n" not in message

    truncated = tmp_path / "truncated.keras"
    save_model(build_model(KerasConfig()), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ModelFileError, match="truncated.keras"):
        load_model(truncated)


def test_missing_or_misnamed_model_file(tmp_path):
    missing = tmp_path / "nope.keras"
    with pytest.raises(ModelFileNotFoundError, match="nope.keras") as info:
        load_model(missing)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ModelFileError, match=r"\.keras"):
        save_model(build_model(KerasConfig()), tmp_path / "model.h5")
    assert os.listdir(tmp_path) == []

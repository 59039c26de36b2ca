"""The engine's MNIST CNN: the same architecture as the Keras one, and Keras-style training.

Training runs on a few hundred bundled MNIST images for one epoch, so the file takes seconds.
The architecture comparison with ``keras_cnn.build_model`` needs TensorFlow (marked ``tf``);
everything else is NumPy only.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from convscope.config.schema import KerasConfig, ScratchCNNConfig
from convscope.data import mnist
from convscope.engine_train import build_mnist, split_validation, train_mnist
from convscope.scratch import Conv2D, Dense, Flatten, MaxPool2D, Sequential
from convscope.scratch.optimizers import SGD, Adam

VARIANTS = {
    "seed": {},
    "deeper": {"conv_layers": 3},
    "wide": {"filters": 32},
    "kernel5": {"kernel_size": 5},
    "sigmoid": {"activation": "sigmoid"},
    "tanh": {"activation": "tanh"},
    "same_stride2": {"padding": "same", "stride": 2, "pool_after": [True, True]},
}


@pytest.fixture(scope="module")
def digits():
    (xtr, ytr), (xte, yte) = mnist.load(source="bundled")
    xtr, ytr = mnist.prepare(xtr, ytr)
    xte, yte = mnist.prepare(xte, yte)
    return xtr[:600], ytr[:600], xte[:300], yte[:300]


def small_cfg(**kw) -> ScratchCNNConfig:
    base = {"epochs": 1, "batch_size": 32, "validation_split": 0.1}
    return ScratchCNNConfig(**{**base, **kw})


# --------------------------------------------------------------------------- architecture
@pytest.mark.tf
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_build_matches_the_keras_model(variant):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    keras_cnn = pytest.importorskip("convscope.keras_cnn")
    overrides = VARIANTS[variant]
    engine = build_mnist(ScratchCNNConfig(**overrides))
    keras_model = keras_cnn.build_model(KerasConfig(**overrides))
    assert [la.name for la in engine.layers] == [la.name for la in keras_model.layers]
    for ours, theirs in zip(engine.layers, keras_model.layers, strict=True):
        assert ours.output_shape == tuple(theirs.output.shape[1:]), ours.name
        assert ours.count_params() == theirs.count_params(), ours.name
        assert getattr(ours, "activation", None) == theirs.get_config().get("activation")
    assert engine.count_params() == keras_model.count_params()
    assert [p.shape for p in engine.params()] == [tuple(w.shape) for w in keras_model.weights]


def test_seed_architecture_in_detail():
    model = build_mnist(ScratchCNNConfig())
    assert isinstance(model, Sequential)
    assert [type(la) for la in model.layers] == [Conv2D, MaxPool2D, Conv2D, Flatten, Dense]
    assert [la.name for la in model.layers] == ["conv1", "pool1", "conv2", "flatten", "dense"]
    assert [la.output_shape for la in model.layers] == [
        (26, 26, 16),
        (13, 13, 16),
        (11, 11, 32),
        (3872,),
        (10,),
    ]
    # 3*3*1*16+16 + 3*3*16*32+32 + 3872*10+10, as in the seed notebook's summary
    assert model.count_params() == 160 + 4640 + 38730
    assert model.dtype == np.float32 and all(p.dtype == np.float32 for p in model.params())


def test_build_initialises_glorot_uniform_from_the_seed():
    a = build_mnist(ScratchCNNConfig(seed=3))
    b = build_mnist(ScratchCNNConfig(seed=3))
    c = build_mnist(ScratchCNNConfig(seed=4))
    for pa, pb in zip(a.params(), b.params(), strict=True):
        np.testing.assert_array_equal(pa, pb)
    assert not np.array_equal(a.params()[0], c.params()[0])
    for layer in a.layers:
        if layer.param_names:
            k = layer.kernel
            fan_in, fan_out = int(np.prod(k.shape[:-1])), k.shape[-1]
            if k.ndim == 4:
                fan_out *= k.shape[0] * k.shape[1]
            limit = math.sqrt(6 / (fan_in + fan_out))
            assert np.abs(k).max() <= limit
            assert np.abs(k).max() > 0.9 * limit  # uses the whole range (large kernels)
            assert np.all(layer.bias == 0)


def test_train_rejects_bad_data(digits):
    """The data is checked where it enters the trainer; the config was checked by its schema."""
    xtr, ytr, _, _ = digits
    with pytest.raises(ValueError, match="x_train has shape"):
        train_mnist(small_cfg(), xtr[..., 0], ytr, progress=False)
    with pytest.raises(ValueError, match="dtype uint8"):
        train_mnist(small_cfg(), (xtr * 255).astype(np.uint8), ytr, progress=False)
    with pytest.raises(ValueError, match="labels in"):
        train_mnist(small_cfg(), xtr, ytr + 5, progress=False)
    with pytest.raises(ValueError, match="y_train has shape"):
        train_mnist(small_cfg(), xtr, ytr[:-1], progress=False)
    with pytest.raises(ValueError, match="together"):
        train_mnist(small_cfg(), xtr, ytr, xtr, progress=False)
    with pytest.raises(ValueError, match="workers"):
        train_mnist(small_cfg(), xtr, ytr, progress=False, workers=0)


# --------------------------------------------------------------------------- validation split
@pytest.mark.parametrize(("n", "split"), [(600, 0.1), (501, 0.1), (100, 0.3), (7, 0.5)])
def test_validation_split_is_keras_tail_split(n, split):
    x = np.arange(n, dtype=np.float32)
    y = np.arange(n)
    (xf, yf), (xv, yv) = split_validation(x, y, split)
    split_at = int(math.floor(n * (1 - split)))  # keras' array_slicing.train_validation_split
    np.testing.assert_array_equal(xf, x[:split_at])
    np.testing.assert_array_equal(xv, x[split_at:])
    np.testing.assert_array_equal(yv, y[split_at:])
    assert split_validation(x, y, 0.0)[1] is None
    with pytest.raises(ValueError, match="validation_split"):
        split_validation(x, y, 1.0)


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(digits):
    xtr, ytr, xte, yte = digits
    calls = []

    def hook(epoch, logs, kernels):
        calls.append((epoch, dict(logs), {k: v.copy() for k, v in kernels.items()}))

    result = train_mnist(small_cfg(), xtr, ytr, xte, yte, on_epoch=hook, progress=False)
    return result, calls


def test_one_epoch_on_540_digits_learns_well_above_chance(trained):
    result, _ = trained
    # seeds 0-3 reach 0.65-0.74 test accuracy here; chance is 0.1
    assert result.test_accuracy > 0.5
    assert result.history["val_accuracy"][0] > 0.5
    assert result.test_loss < 1.8  # ln 10 = 2.30 at chance


def test_history_kernels_and_times_have_keras_shape(trained):
    result, _ = trained
    assert set(result.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 1 and np.isfinite(v[0]) for v in result.history.values())
    assert set(result.kernels) == {"conv1", "conv2"}
    assert [k.shape for k in result.kernels["conv1"]] == [(3, 3, 1, 16)] * 2
    assert not np.array_equal(result.kernels["conv1"][0], result.kernels["conv1"][1])
    np.testing.assert_array_equal(result.kernels["conv2"][1], result.model.layers[2].kernel)
    assert len(result.epoch_seconds) == 1 and result.epoch_seconds[0] > 0
    assert isinstance(result.optimizer, Adam) and result.optimizer.iterations == 17  # 540 / 32


def test_hook_called_like_the_keras_recorder(trained):
    result, calls = trained
    assert [c[0] for c in calls] == [0, 1]
    assert calls[0][1] == {}
    np.testing.assert_array_equal(calls[0][2]["conv1"], result.kernels["conv1"][0])
    logs = calls[1][1]
    assert set(logs) == {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"}
    assert logs["loss"] == result.history["loss"][0]
    assert logs["epoch_seconds"] == result.epoch_seconds[0]
    np.testing.assert_array_equal(calls[1][2]["conv2"], result.kernels["conv2"][1])


def test_training_is_deterministic_for_a_seed(digits, trained):
    xtr, ytr, xte, yte = digits
    first, _ = trained
    again = train_mnist(small_cfg(), xtr, ytr, xte, yte, progress=False)
    assert again.history == first.history
    assert again.test_accuracy == first.test_accuracy
    for a, b in zip(again.model.params(), first.model.params(), strict=True):
        np.testing.assert_array_equal(a, b)
    other = train_mnist(small_cfg(seed=1), xtr, ytr, progress=False)
    assert other.history["loss"] != first.history["loss"]


def test_validation_images_are_never_trained_on(digits):
    """Poisoning the validation tail must not change the trained weights at all."""
    xtr, ytr, _, _ = digits
    x, y = xtr[:200].copy(), ytr[:200].copy()
    cfg = small_cfg(validation_split=0.25)
    clean = train_mnist(cfg, x, y, progress=False)
    x[150:] = 1.0 - x[150:]
    y[150:] = (y[150:] + 1) % 10
    poisoned = train_mnist(cfg, x, y, progress=False)
    for a, b in zip(clean.model.params(), poisoned.model.params(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert clean.history["val_loss"] != poisoned.history["val_loss"]


def test_sgd_config_and_no_validation(digits):
    xtr, ytr, _, _ = digits
    cfg = small_cfg(optimizer="sgd", learning_rate=0.05, momentum=0.9, validation_split=0.0)
    result = train_mnist(cfg, xtr[:256], ytr[:256], progress=False)
    assert isinstance(result.optimizer, SGD) and result.optimizer.momentum == 0.9
    assert set(result.history) == {"loss", "accuracy"}
    assert result.test_accuracy is None and result.test_loss is None


def test_hook_exception_stops_training(digits):
    xtr, ytr, _, _ = digits

    def hook(epoch, logs, kernels):
        if epoch == 1:
            raise RuntimeError("tracker down")

    with pytest.raises(RuntimeError, match="tracker down"):
        train_mnist(small_cfg(epochs=3), xtr[:64], ytr[:64], on_epoch=hook, progress=False)

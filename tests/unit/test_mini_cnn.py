"""The seed's mini-CNN on the engine: architecture, training to the seed's result, gradients."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from convscope.data.lines import clean_pair, make_dataset
from convscope.scratch import mini_cnn
from convscope.scratch.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sigmoid
from convscope.scratch.model import Sequential
from tests.support.gradcheck import numeric_grad, rel_error

ROOT = Path(__file__).resolve().parents[2]


def _seed_style():
    """bench/seed_style.py: the seed's loop implementation, the behavioural reference."""
    spec = importlib.util.spec_from_file_location("seed_style", ROOT / "bench" / "seed_style.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SeedStyleMiniCNN


@pytest.fixture(scope="module")
def seed_data():
    return make_dataset(100)


@pytest.fixture(scope="module")
def seed_run(seed_data):
    """The seed's settings: 100 samples, 50 epochs, lr 0.01, one sample per step, in order."""
    x, y = seed_data
    return mini_cnn.train(x, y, epochs=50, lr=0.01, batch_size=1, seed=0)


def clean_predictions(model) -> tuple[float, float]:
    """``(p_vertical, p_horizontal)`` on the seed's clean test lines (1 and 0 wanted)."""
    p = model.forward(clean_pair(model.input_shape[0])[0], training=False)[:, 0]
    return float(p[0]), float(p[1])


# ------------------------------------------------------------------------------ build
def test_build_is_the_seeds_architecture():
    model = mini_cnn.build()
    assert [type(la) for la in model.layers] == [Conv2D, ReLU, MaxPool2D, Flatten, Dense, Sigmoid]
    assert [p.shape for p in model.params()] == [(3, 3, 1, 1), (4, 1), (1,)]
    assert model.output_shape == (1,)
    assert model.layers[2].stride == (1, 1)
    assert model.count_params() == 14
    assert all(p.dtype == np.float32 for p in model.params())
    big = mini_cnn.build(size=8)
    assert [p.shape for p in big.params()] == [(3, 3, 1, 1), (25, 1), (1,)]


def test_build_inits():
    k = mini_cnn.build(seed=3).layers[0].kernel
    assert abs(float(k.sum())) < 1e-6  # centred: the kernel sums to zero
    assert np.ptp(k) > 0.3
    glorot = mini_cnn.build(seed=3, init="glorot").layers[0].kernel
    assert np.abs(glorot).max() <= math.sqrt(6 / 18)
    np.testing.assert_allclose(k, glorot - glorot.mean(), rtol=1e-6)
    seed_like = mini_cnn.build(seed=3, init="notebook")
    assert seed_like.layers[4].bias[0] != 0  # the seed draws the dense bias too
    assert np.abs(seed_like.layers[0].kernel).max() < 0.6  # N(0, 1) * 0.1
    same = mini_cnn.build(seed=3, init="notebook")
    for a, b in zip(seed_like.params(), same.params(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(mini_cnn.build(seed=4).layers[0].kernel, k)


@pytest.mark.parametrize(
    "kwargs, word", [({"size": 3}, "size"), ({"size": 2.0}, "size"), ({"init": "he"}, "init")]
)
def test_build_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        mini_cnn.build(**kwargs)


# ------------------------------------------------------------------------------ training
def test_seed_settings_classify_clean_lines(seed_run):
    model, _ = seed_run
    p_vertical, p_horizontal = clean_predictions(model)
    assert p_vertical > 0.95
    assert p_horizontal < 0.05
    x, _ = clean_pair()
    probs = model.forward(x)
    assert probs.shape == (2, 1)
    np.testing.assert_allclose(probs[:, 0], [p_vertical, p_horizontal], rtol=1e-6)


def test_seed_settings_loss_falls_like_the_seed(seed_run):
    _, record = seed_run
    losses = record.history["loss"]
    assert len(losses) == 50 and len(record.history["accuracy"]) == 50
    # the seed prints every 10th epoch: 0.2841, 0.0348, 0.0111, 0.0060, 0.0039 (ln 2 at start)
    tenth = losses[9::10]
    assert all(a > b for a, b in zip(tenth, tenth[1:], strict=False))
    assert losses[0] < math.log(2) + 0.05
    assert tenth[-1] < 0.05 and tenth[-1] < losses[0] / 10
    assert record.history["accuracy"][-1] == 1.0
    assert len(record.epoch_seconds) == 50 and min(record.epoch_seconds) > 0


def test_kernels_are_recorded_every_epoch(seed_run):
    model, record = seed_run
    history = np.stack(record.kernels["conv"])
    assert history.shape == (51, 3, 3, 1, 1)  # HWIO, index 0 before training
    np.testing.assert_array_equal(history[0], mini_cnn.build(seed=0).layers[0].kernel)
    np.testing.assert_array_equal(history[-1], model.layers[0].kernel)
    assert abs(float(history[0].sum())) < 1e-6
    assert np.abs(history[-1] - history[0]).max() > 0.3  # it learned something
    # a copy per epoch, not 50 references to the live kernel
    assert not np.array_equal(history[1], history[-1])


@pytest.mark.parametrize("seed", range(1, 10))
def test_trains_for_other_seeds(seed_data, seed):
    """Robustness of the default init: the seed's settings work for model seeds 0..9."""
    x, y = seed_data
    p_vertical, p_horizontal = clean_predictions(mini_cnn.train(x, y, seed=seed)[0])
    assert p_vertical > 0.95 and p_horizontal < 0.05


def test_random_position_lines_learn_too():
    x, y = make_dataset(200, size=7, position="random", seed=1)
    history = mini_cnn.train(x, y, epochs=20, lr=0.05, batch_size=4, seed=0)[1].history
    assert history["loss"][-1] < history["loss"][0]
    assert history["accuracy"][-1] > 0.8


# ------------------------------------------------------------------------------ references
def test_matches_the_seed_style_loops_step_for_step():
    """Same start, same data order: the engine (float64) retraces the seed's own algorithm."""
    SeedStyleMiniCNN = _seed_style()
    x, y = make_dataset(20, seed=2)
    model = mini_cnn.build(seed=5, init="notebook", dtype=np.float64)
    kernel, dense_w, dense_b = (p.copy() for p in model.params())
    loops = SeedStyleMiniCNN(
        learning_rate=0.05,
        kernel=kernel[:, :, 0, 0],
        dense_weights=dense_w,
        dense_bias=dense_b,
    )
    loop_losses = loops.train(x[..., 0].astype(np.float64), y.astype(np.float64), epochs=3)
    _, record = mini_cnn.train(x, y, epochs=3, lr=0.05, model=model)
    np.testing.assert_allclose(record.history["loss"], loop_losses, rtol=1e-9)
    np.testing.assert_allclose(model.layers[0].kernel[:, :, 0, 0], loops.kernel, rtol=1e-9)
    np.testing.assert_allclose(model.layers[4].kernel, loops.dense_weights, rtol=1e-9)
    np.testing.assert_allclose(model.layers[4].bias, loops.dense_bias[0], rtol=1e-9)


@pytest.mark.parametrize("batch_size", [3, 8])
def test_mini_batches_average_the_seed_style_gradients(batch_size):
    """batch_size > 1: one SGD step per batch on the mean of the per-image loop gradients."""
    SeedStyleMiniCNN = _seed_style()
    x, y = make_dataset(20, seed=4)  # 20 is not a multiple of 3 or 8: short last batches
    model = mini_cnn.build(seed=6, dtype=np.float64)
    kernel, dense_w, dense_b = (p.copy() for p in model.params())
    loops = SeedStyleMiniCNN(
        learning_rate=0.1, kernel=kernel[:, :, 0, 0], dense_weights=dense_w, dense_bias=dense_b
    )
    images, labels = x[..., 0].astype(np.float64), y.astype(np.float64)
    for _ in range(2):
        for start in range(0, len(x), batch_size):
            grads = []
            batch = slice(start, start + batch_size)
            for image, label in zip(images[batch], labels[batch], strict=True):
                loops.backward(label, loops.forward(image)[1])
                grads.append((loops.grad_kernel, loops.grad_dense_weights, loops.grad_dense_bias))
            loops.grad_kernel, loops.grad_dense_weights, loops.grad_dense_bias = (
                np.mean(g, axis=0) for g in zip(*grads, strict=True)
            )
            loops.step()
    _, record = mini_cnn.train(x, y, epochs=2, lr=0.1, batch_size=batch_size, model=model)
    assert record.epochs == 2
    np.testing.assert_allclose(model.layers[0].kernel[:, :, 0, 0], loops.kernel, rtol=1e-9)
    np.testing.assert_allclose(model.layers[4].kernel, loops.dense_weights, rtol=1e-9)
    np.testing.assert_allclose(model.layers[4].bias, loops.dense_bias[0], rtol=1e-9)


def test_shuffle_reorders_the_steps_reproducibly():
    x, y = make_dataset(30, seed=3)
    runs = [
        mini_cnn.train(x, y, epochs=3, lr=0.05, seed=4, shuffle=shuffle)
        for shuffle in (True, True, False)
    ]
    assert runs[0][1].history == runs[1][1].history
    for a, b in zip(runs[0][0].params(), runs[1][0].params(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert runs[0][1].history != runs[2][1].history


def _loss64(model, x, y):
    p = model.forward(x, training=False)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


def test_gradients_match_finite_differences_in_float64():
    x, y = make_dataset(6, noise=0.5, seed=7)
    x, y = x.astype(np.float64), y.astype(np.float64)
    model = mini_cnn.build(seed=1, dtype=np.float64)
    # make sure the check sees live ReLUs for both classes
    model.layers[4].kernel[...] = np.array([[0.7], [-0.4], [0.5], [-0.9]])
    loss, grads = mini_cnn.gradients(model, x, y)
    assert loss == pytest.approx(_loss64(model, x, y), rel=1e-12)
    assert any(np.abs(g).max() > 1e-3 for g in grads)
    for param, grad in zip(model.params(), grads, strict=True):
        assert grad.shape == param.shape
        numeric = numeric_grad(lambda _: _loss64(model, x, y), param)
        assert rel_error(grad, numeric) <= 1e-7


# ------------------------------------------------------------------------------ interface
def test_on_epoch_callback_and_zero_epochs(seed_data):
    x, y = seed_data
    calls = []
    model, record = mini_cnn.train(
        x[:10], y[:10], epochs=3, on_epoch=lambda *args: calls.append(args)
    )
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    assert calls[0][1] == {}
    assert all(set(c[1]) == {"loss", "accuracy", "epoch_seconds"} for c in calls[1:])
    np.testing.assert_array_equal(calls[-1][2]["conv"], model.layers[0].kernel)
    calls[-1][2]["conv"][0, 0] = 99.0  # a copy, not the live kernel
    assert model.layers[0].kernel[0, 0, 0, 0] != 99.0
    untrained, record = mini_cnn.train(x, y, epochs=0)
    assert record.history == {} and len(record.kernels["conv"]) == 1
    np.testing.assert_array_equal(record.kernels["conv"][0], untrained.layers[0].kernel)


def test_progress_bar_is_silent_off_a_terminal(capsys, seed_data):
    from convscope.config.schema import MiniCNNConfig
    from convscope.engine_train import train_lines

    x, y = seed_data
    model, record = train_lines(x[:10], y[:10], MiniCNNConfig(epochs=2))
    assert capsys.readouterr().err == ""
    assert record.epochs == 2 and model.layers[0].name == "conv"


@pytest.mark.parametrize(
    "change, word",
    [
        ({"x": np.zeros((4, 5, 5))}, r"x has shape \(4, 5, 5\)"),
        ({"x": np.zeros((4, 5, 6, 1))}, r"x has shape \(4, 5, 6, 1\)"),
        ({"x": np.zeros((4, 3, 3, 1))}, "size=3"),
        ({"y": np.zeros((3, 1))}, "y.shape"),
        ({"y": np.full((4, 1), 2.0)}, "0 or 1"),
        ({"x": np.full((4, 5, 5, 1), np.nan)}, "NaN or inf"),
        ({"epochs": -1}, "epochs"),
        ({"lr": 0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"model": mini_cnn.build(size=6)}, r"expected \(batch, \*\(6, 6, 1\)\)"),
        ({"model": Sequential([Flatten(), Dense(1)], input_shape=(5, 5, 1))}, "mini-CNN"),
    ],
)
def test_bad_input(change, word):
    args = {"x": np.zeros((4, 5, 5, 1)), "y": np.array([[1], [0], [1], [0]])}
    args.update(change)
    with pytest.raises(ValueError, match=word):
        mini_cnn.train(**args)

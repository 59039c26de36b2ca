"""Losses (values, gradients, stability), SGD/Adam update rules and state, and the fit loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from convscope.scratch import (
    SGD,
    Adam,
    Conv2D,
    Dense,
    Flatten,
    MaxPool2D,
    Sequential,
    evaluate,
    fit,
)
from convscope.scratch import losses as L
from convscope.scratch import optimizers as O
from convscope.scratch.training import SHARD_SIZE, shards
from tests.support.gradcheck import numeric_grad, rel_error
from tests.support.models import digits, digits_cnn

TOL = 1e-7


# --------------------------------------------------------------------------- loss values
def test_binary_crossentropy_known_values():
    p = np.array([[0.8], [0.3], [0.5]])
    t = np.array([[1.0], [0.0], [1.0]])
    expected = -(math.log(0.8) + math.log(0.7) + math.log(0.5)) / 3
    assert L.binary_crossentropy(t, p)[0] == pytest.approx(expected, rel=1e-12)
    logits = np.log(p / (1 - p))
    assert L.binary_crossentropy(t, logits, from_logits=True)[0] == pytest.approx(
        expected, rel=1e-12
    )
    # (n,) targets for (n, 1) outputs, as Keras accepts
    assert L.binary_crossentropy(t.ravel(), p)[0] == pytest.approx(expected, rel=1e-12)


def test_sparse_categorical_crossentropy_known_values():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    y = np.array([0, 1])
    expected = -(math.log(0.7) + math.log(0.1)) / 2
    assert L.sparse_categorical_crossentropy(y, p)[0] == pytest.approx(expected, rel=1e-12)
    assert L.sparse_categorical_crossentropy(y[:, None], p)[0] == pytest.approx(expected, rel=1e-12)
    logits = np.log(p) + 3.0  # a constant shift leaves the softmax unchanged
    assert L.sparse_categorical_crossentropy(y, logits, from_logits=True)[0] == pytest.approx(
        expected, rel=1e-12
    )


@pytest.mark.parametrize("from_logits", [False, True])
def test_binary_crossentropy_gradient(from_logits):
    rng = np.random.default_rng(0)
    y_pred = rng.normal(size=(5, 3)) if from_logits else rng.uniform(0.05, 0.95, size=(5, 3))
    t = rng.integers(0, 2, size=(5, 3)).astype(np.float64)
    _, g = L.binary_crossentropy(t, y_pred, from_logits=from_logits)
    num = numeric_grad(lambda p: L.binary_crossentropy(t, p, from_logits=from_logits)[0], y_pred)
    assert rel_error(g, num) <= TOL


@pytest.mark.parametrize("from_logits", [False, True])
def test_sparse_categorical_crossentropy_gradient(from_logits):
    rng = np.random.default_rng(1)
    if from_logits:
        y_pred = rng.normal(size=(4, 5))
    else:  # rows that do not sum to one exercise Keras's renormalisation
        y_pred = rng.uniform(0.05, 0.9, size=(4, 5))
    y = np.array([0, 4, 2, 2])
    _, g = L.sparse_categorical_crossentropy(y, y_pred, from_logits=from_logits)
    num = numeric_grad(
        lambda p: L.sparse_categorical_crossentropy(y, p, from_logits=from_logits)[0], y_pred
    )
    assert rel_error(g, num) <= TOL


def test_extreme_logits_are_stable():
    z = np.array([[1e4], [-1e4], [800.0], [-800.0], [0.0]])
    t = np.array([[0.0], [1.0], [1.0], [0.0], [1.0]])
    # no overflow, no division by zero, no invalid operation (underflow to 0 is harmless)
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        value, g = L.binary_crossentropy(t, z, from_logits=True)
        # the two wrong extreme answers cost |z| each, the right ones ~0, z=0 costs log 2
        assert value == pytest.approx((1e4 + 1e4 + math.log(2)) / 5, rel=1e-12)
        np.testing.assert_allclose(g.ravel(), np.array([1, -1, 0, 0, -0.5]) / 5, atol=1e-15)

        logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, 1e4], [0.0, 0.0, 0.0]])
        y = np.array([1, 2, 0])
        value, g = L.sparse_categorical_crossentropy(y, logits, from_logits=True)
        assert value == pytest.approx((1e4 + 0.0 + math.log(3)) / 3, rel=1e-12)
        assert np.all(np.isfinite(g))
    f32 = L.sparse_categorical_crossentropy(y, logits.astype(np.float32), from_logits=True)
    assert np.isfinite(f32[0]) and f32[1].dtype == np.float32


def test_saturated_probabilities_are_clipped_like_keras():
    p = np.array([[0.0], [1.0], [1.0], [0.0]])
    t = np.array([[1.0], [0.0], [1.0], [0.0]])
    value, g = L.binary_crossentropy(t, p)
    clipped = -math.log(1e-7)  # log of epsilon, not of zero
    assert value == pytest.approx(2 * clipped / 4, rel=1e-6)
    np.testing.assert_array_equal(g, 0)  # clip is flat outside [eps, 1 - eps]
    value, g = L.sparse_categorical_crossentropy(np.array([1]), np.array([[1.0, 0.0]]))
    assert np.isfinite(value) and value > 15
    assert np.all(np.isfinite(g))


def test_bad_labels_and_shapes():
    p = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 3\)"):
        L.sparse_categorical_crossentropy(np.array([0, 3]), p)
    with pytest.raises(ValueError, match="integer class ids"):
        L.sparse_categorical_crossentropy(np.array([0.5, 1.0]), p)
    with pytest.raises(ValueError, match=r"y_true.shape=\(3,\)"):
        L.sparse_categorical_crossentropy(np.array([0, 1, 2]), p)
    with pytest.raises(ValueError, match=r"y_true.shape=\(2, 3\) must equal y_pred.shape=\(2, 1\)"):
        L.binary_crossentropy(np.zeros((2, 3)), np.full((2, 1), 0.5))
    with pytest.raises(ValueError, match="non-finite"):
        L.binary_crossentropy(np.zeros((1, 1)), np.array([[np.nan]]))
    with pytest.raises(ValueError, match="not supported"):
        L.get("mse")


def test_accuracy_helpers():
    assert (
        L.binary_accuracy(np.array([[1], [0], [1], [0]]), np.array([[0.9], [0.2], [0.4], [0.6]]))
        == 0.5
    )
    assert L.sparse_categorical_accuracy(
        np.array([2, 0, 1]), np.eye(3)[[2, 0, 0]]
    ) == pytest.approx(2 / 3)
    bce = L.BinaryCrossentropy(from_logits=True)
    assert bce.accuracy(np.array([[1], [0]]), np.array([[0.1], [-0.1]])) == 1.0


# --------------------------------------------------------------------------- optimizers
def _params_grads(seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=(3, 2)), rng.normal(size=(2,))]
    grads = [[rng.normal(size=p.shape) for p in params] for _ in range(4)]
    return params, grads


def test_sgd_plain_and_momentum_by_hand():
    p = np.array([1.0, -2.0])
    g1, g2 = np.array([0.5, 1.0]), np.array([-1.0, 2.0])
    opt = SGD(0.1)
    opt.step([p], [g1])
    np.testing.assert_allclose(p, [0.95, -2.1], rtol=1e-15)

    p = np.array([1.0, -2.0])
    opt = SGD(0.1, momentum=0.9)
    opt.step([p], [g1])  # m1 = -0.1 g1
    opt.step([p], [g2])  # m2 = 0.9 m1 - 0.1 g2
    m1 = -0.1 * g1
    m2 = 0.9 * m1 - 0.1 * g2
    np.testing.assert_allclose(p, np.array([1.0, -2.0]) + m1 + m2, rtol=1e-15)

    p = np.array([1.0, -2.0])
    opt = SGD(0.1, momentum=0.9, nesterov=True)
    opt.step([p], [g1])
    opt.step([p], [g2])
    step1 = 0.9 * m1 - 0.1 * g1
    step2 = 0.9 * m2 - 0.1 * g2
    np.testing.assert_allclose(p, np.array([1.0, -2.0]) + step1 + step2, rtol=1e-15)
    assert opt.iterations == 2


def test_adam_first_step_moves_by_the_learning_rate():
    # With m and v starting at zero and bias correction, step 1 is lr * g / (|g| + eps'):
    # every coordinate moves by almost exactly lr against its gradient's sign.
    params, grads = _params_grads()
    before = [p.copy() for p in params]
    Adam(0.01).step(params, grads[0])
    for b, p, g in zip(before, params, grads[0], strict=True):
        np.testing.assert_allclose(p - b, -0.01 * np.sign(g), rtol=1e-4)


def test_adam_matches_textbook_adam():
    # Keras's form is the textbook algorithm (Kingma & Ba, bias-corrected m_hat and v_hat)
    # with the textbook's epsilon replaced by eps / sqrt(1 - beta_2^t); written here that way.
    params, grads = _params_grads(1)
    mine = [p.copy() for p in params]
    lr, b1, b2, eps = 0.003, 0.8, 0.99, 1e-7
    opt = Adam(lr, beta_1=b1, beta_2=b2, epsilon=eps)
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, gs in enumerate(grads, start=1):
        opt.step(mine, gs)
        for i, g in enumerate(gs):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            params[i] -= lr * m_hat / (np.sqrt(v_hat) + eps / math.sqrt(1 - b2**t))
    for a, b in zip(mine, params, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize(
    "make", [lambda: Adam(0.01), lambda: SGD(0.05, momentum=0.9, nesterov=True), lambda: SGD(0.1)]
)
def test_optimizer_state_round_trip(make):
    params, grads = _params_grads(2)
    straight = [p.copy() for p in params]
    opt = make()
    for gs in grads:
        opt.step(straight, gs)

    resumed = [p.copy() for p in params]
    first = make()
    for gs in grads[:2]:
        first.step(resumed, gs)
    second = O.optimizer_from_config(first.get_config())
    second.set_state(first.get_state())
    for gs in grads[2:]:
        second.step(resumed, gs)
    assert second.iterations == 4
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "make", [lambda: Adam(0.01), lambda: SGD(0.05, momentum=0.9, nesterov=True), lambda: SGD(0.1)]
)
def test_a_flat_step_is_the_step_of_each_parameter(make):
    # the params end to end in one float32 vector: step_flat updates the vector, step each
    # view; the numbers are the same bit for bit, and the slots stay per parameter, so the
    # two mix and the state round-trips through a checkpoint in the middle
    params, grads = _params_grads(3)
    params = [p.astype(np.float32) for p in params]
    grads = [[g.astype(np.float32) for g in gs] for gs in grads]
    apart = [p.copy() for p in params]
    by_param = make()
    for gs in grads:
        by_param.step(apart, gs)

    flat = np.concatenate([p.ravel() for p in params])
    views = np.split(flat, [params[0].size])
    views = [v.reshape(p.shape) for v, p in zip(views, params, strict=True)]
    first = make()
    first.step(views, grads[0])  # per-parameter slots first, then carried into vectors
    for gs in grads[1:3]:
        first.step_flat(flat, np.concatenate([g.ravel() for g in gs]), views)
    state = first.get_state()
    assert {k: v.shape for k, v in state.items() if k != "iterations"} == {
        f"{name}.{i}": p.shape for name in first.slot_names for i, p in enumerate(params)
    }
    second = O.optimizer_from_config(first.get_config())
    second.set_state(state)
    second.step_flat(flat, np.concatenate([g.ravel() for g in grads[3]]), views)
    assert second.iterations == 4
    for a, b in zip(apart, views, strict=True):
        np.testing.assert_array_equal(a, b)
    for key, value in by_param.get_state().items():
        np.testing.assert_array_equal(value, second.get_state()[key])


def test_a_flat_step_refuses_vectors_that_are_not_its_params():
    p = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]
    flat, grad = np.zeros(9, np.float32), np.ones(9, np.float32)
    with pytest.raises(ValueError, match="do not cover the 9 of flat"):
        Adam().step_flat(flat, grad, p[:1])
    with pytest.raises(ValueError, match="1-D vectors of one shape and dtype"):
        Adam().step_flat(flat, grad.astype(np.float64), p)
    opt = Adam()
    opt.step(p, [np.ones((2, 3), np.float32), np.ones(3, np.float32)])
    with pytest.raises(ValueError, match="new optimizer"):
        opt.step_flat(flat, grad, [np.zeros((3, 3), np.float32)])


def test_optimizer_argument_checks():
    with pytest.raises(ValueError, match="learning_rate"):
        Adam(0)
    with pytest.raises(ValueError, match="momentum"):
        SGD(0.1, momentum=1.5)
    with pytest.raises(ValueError, match="beta_1"):
        Adam(beta_1=1.0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        O.get("rmsprop")
    opt = Adam()
    p = np.zeros(3)
    with pytest.raises(ValueError, match=r"grads\[0\].shape=\(2,\)"):
        opt.step([p], [np.zeros(2)])
    with pytest.raises(ValueError, match="1 params but 2 grads"):
        opt.step([p], [np.zeros(3), np.zeros(3)])
    opt.step([p], [np.ones(3)])
    with pytest.raises(ValueError, match="new optimizer"):
        opt.step([np.zeros(4)], [np.ones(4)])


def test_float32_params_stay_float32():
    p = np.ones(4, np.float32)
    Adam(0.1).step([p], [np.full(4, 0.5)])  # float64 gradient cast to the param's dtype
    SGD(0.1, momentum=0.5).step([p], [np.full(4, 0.5)])
    assert p.dtype == np.float32


# --------------------------------------------------------------------------- fit
def _lines(n=24, seed=0):
    """Vertical (1) / horizontal (0) lines with noise: a tiny separable problem."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 5, 5, 1)) * 0.2
    y = np.zeros((n, 1))
    x[0::2, :, 2, 0] += 1
    y[0::2] = 1
    x[1::2, 2, :, 0] += 1
    return x.astype(np.float32), y


def _mini_cnn(seed=0):
    return Sequential(
        [Conv2D(2, 3, activation="relu"), MaxPool2D(2, stride=1), Flatten(), Dense(1, "sigmoid")],
        input_shape=(5, 5, 1),
        seed=seed,
    )


def test_fit_learns_a_separable_problem():
    x, y = _lines()
    model = _mini_cnn()
    first_loss, _ = evaluate(model, x, y, "binary_crossentropy")
    seen = []
    record = fit(
        model,
        x,
        y,
        "binary_crossentropy",
        SGD(0.2),
        epochs=30,
        batch_size=4,
        seed=0,
        validation_data=_lines(8, seed=1),
        on_epoch=lambda epoch, logs, kernels: seen.append((epoch, logs, kernels)),
    )
    hist = record.history
    assert set(hist) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert record.epochs == 30 and len(hist["val_accuracy"]) == 30
    # the one epoch hook: 0 before training (no metrics), then 1..N with the epoch's time
    assert [e for e, _, _ in seen] == list(range(31)) and seen[0][1] == {}
    assert [logs["loss"] for _, logs, _ in seen[1:]] == hist["loss"]
    assert all(logs["epoch_seconds"] >= 0 for _, logs, _ in seen[1:])
    np.testing.assert_array_equal(seen[-1][2]["conv2d"], model.layers[0].kernel)
    assert len(record.kernels["conv2d"]) == 31
    assert hist["loss"][-1] < 0.25 * first_loss
    assert hist["accuracy"][-1] == 1.0 and hist["val_accuracy"][-1] == 1.0
    final_loss, final_acc = evaluate(model, x, y, "binary_crossentropy")
    assert final_loss < 0.25 * first_loss and final_acc == 1.0


def test_fit_multiclass_with_adam():
    rng = np.random.default_rng(0)
    x, _ = _lines(30)
    y = np.arange(30) % 3  # class 2: empty image with noise
    x[y == 2] = rng.random(((y == 2).sum(), 5, 5, 1)).astype(np.float32) * 0.2
    x[y == 1] = _lines(20)[0][1::2]
    x[y == 0] = _lines(20)[0][0::2]
    model = Sequential(
        [Conv2D(3, 3, activation="relu"), Flatten(), Dense(3, activation="softmax")],
        input_shape=(5, 5, 1),
    )
    hist = fit(
        model,
        x,
        y,
        "sparse_categorical_crossentropy",
        Adam(0.05),
        epochs=15,
        batch_size=5,
    )
    assert hist.history["loss"][-1] < 0.3 * hist.history["loss"][0]
    assert hist.history["accuracy"][-1] == 1.0


def test_fit_is_deterministic_for_a_seed():
    x, y = _lines()

    def run(seed):
        model = _mini_cnn(seed=1)
        hist = fit(
            model,
            x,
            y,
            "binary_crossentropy",
            Adam(0.01),
            epochs=3,
            batch_size=5,
            seed=seed,
        )
        return hist.history["loss"], model.get_weights()

    (loss_a, w_a), (loss_b, w_b), (loss_c, _) = run(4), run(4), run(5)
    assert loss_a == loss_b
    for a, b in zip(w_a, w_b, strict=True):
        np.testing.assert_array_equal(a, b)
    assert loss_a != loss_c  # another shuffling seed, other batches


def test_fit_logits_route_gives_the_same_gradient_as_the_output_route():
    # The loop takes a sigmoid output's loss from its logits (like Keras); away from
    # saturation both routes are the same function, so one step must agree to rounding.
    x, y = _lines(8)
    a, b = _mini_cnn(seed=2), _mini_cnn(seed=2)
    fit(
        a,
        x,
        y,
        "binary_crossentropy",
        SGD(0.1),
        epochs=1,
        batch_size=8,
        shuffle=False,
    )
    b.forward(x)
    _, dy = L.binary_crossentropy(y, b.layers[-1].output)
    b.backward(dy)
    SGD(0.1).step(b.params(), b.grads())
    for pa, pb in zip(a.params(), b.params(), strict=True):
        np.testing.assert_allclose(pa, pb, rtol=1e-5, atol=1e-7)


def test_fit_argument_checks():
    x, y = _lines(4)
    model = _mini_cnn()
    with pytest.raises(ValueError, match="batch_size"):
        fit(model, x, y, "binary_crossentropy", "sgd", batch_size=0)
    with pytest.raises(ValueError, match="same number of samples"):
        fit(model, x, y[:3], "binary_crossentropy", "sgd")
    with pytest.raises(ValueError, match="epochs"):
        fit(model, x, y, "binary_crossentropy", "sgd", epochs=-1)


# --------------------------------------------------------------------------- shards
def test_shards_cut_a_batch_evenly_into_at_most_shard_size():
    def sizes(n):
        parts = shards(n)
        assert parts[0].start == 0 and parts[-1].stop == n
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:], strict=False))
        return [p.stop - p.start for p in parts]

    assert SHARD_SIZE == 16
    assert sizes(1) == [1] and sizes(16) == [16]
    assert sizes(17) == [8, 9] and sizes(32) == [16, 16] and sizes(33) == [11, 11, 11]
    assert sizes(256) == [16] * 16


def test_a_sharded_step_is_one_step_on_the_whole_batch_gradient():
    # 40 images: shards of 13, 13 and 14, each gradient scaled by its share of the batch
    x, y = digits(40)
    a, b = digits_cnn(np.float64, seed=2), digits_cnn(np.float64, seed=2)
    loss = "sparse_categorical_crossentropy"
    fit(a, x, y, loss, SGD(0.5), epochs=1, batch_size=40, shuffle=False)
    b.forward(x)
    _, dz = L.sparse_categorical_crossentropy(y, b.logits, from_logits=True)
    b.backward_from_logits(dz)
    SGD(0.5).step(b.params(), b.grads())
    for pa, pb in zip(a.params(), b.params(), strict=True):
        np.testing.assert_allclose(pa, pb, rtol=1e-12, atol=1e-14)

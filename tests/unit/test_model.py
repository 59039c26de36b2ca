"""Sequential: whole-model gradient checks, Keras weight order, inference helpers, .npz files."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from convscope.scratch import (
    SGD,
    Adam,
    Conv2D,
    Dense,
    Flatten,
    MaxPool2D,
    ReLU,
    Sequential,
    Softmax,
    load_checkpoint,
    ops,
)
from convscope.scratch.losses import binary_crossentropy, sparse_categorical_crossentropy
from tests.support.gradcheck import numeric_grad, rel_error
from tests.support.models import pooled_cnn

TOL = 1e-7


def cnn(dtype=np.float64, seed=0, separate_softmax=False):
    """conv+relu -> maxpool -> conv(same, stride 2)+tanh -> flatten -> dense -> softmax."""
    head = [Dense(4), Softmax()] if separate_softmax else [Dense(4, activation="softmax")]
    return Sequential(
        [
            Conv2D(3, 3, activation="relu"),
            MaxPool2D(2),
            Conv2D(2, 2, stride=2, padding="same", activation="tanh"),
            Flatten(),
            *head,
        ],
        input_shape=(8, 7, 2),
        seed=seed,
        dtype=dtype,
    )


def binary_cnn(dtype=np.float64):
    """conv -> relu layer -> maxpool (stride 1) -> flatten -> dense + sigmoid, like the mini-CNN."""
    return Sequential(
        [Conv2D(2, 3), ReLU(), MaxPool2D(2, stride=1), Flatten(), Dense(1, activation="sigmoid")],
        input_shape=(5, 5, 1),
        seed=3,
        dtype=dtype,
    )


def _perturb_biases(model, rng):
    for name, p in zip(model.param_names(), model.params(), strict=True):
        if name.endswith("bias"):
            p += rng.normal(scale=0.1, size=p.shape)


def _check_model(model, x, y, loss_fn, use_logits):
    """Analytic gradients of loss(model(x)) (via the output or via the logits) vs numeric."""
    out = model.forward(x)
    if use_logits:
        _, dz = loss_fn(y, model.logits, from_logits=True)
        dx = model.backward_from_logits(dz)
    else:
        _, dy = loss_fn(y, out)
        dx = model.backward(dy)
    grads = model.grads()

    def f(_):
        return loss_fn(y, model.forward(x, training=False))[0]

    assert rel_error(dx, numeric_grad(f, x)) <= TOL
    for name, p, g in zip(model.param_names(), model.params(), grads, strict=True):
        err = rel_error(g, numeric_grad(f, p))
        assert err <= TOL, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("use_logits", [False, True])
@pytest.mark.parametrize("separate_softmax", [False, True])
def test_softmax_cnn_gradients(use_logits, separate_softmax):
    rng = np.random.default_rng(0)
    model = cnn(separate_softmax=separate_softmax)
    _perturb_biases(model, rng)
    x = rng.normal(size=(2, 8, 7, 2))
    y = np.array([0, 3])
    _check_model(model, x, y, sparse_categorical_crossentropy, use_logits)


@pytest.mark.parametrize("use_logits", [False, True])
def test_sigmoid_cnn_gradients(use_logits):
    rng = np.random.default_rng(1)
    model = binary_cnn()
    _perturb_biases(model, rng)
    x = rng.normal(size=(4, 5, 5, 1))
    y = np.array([[1.0], [0.0], [1.0], [0.0]])
    _check_model(model, x, y, binary_crossentropy, use_logits)


@pytest.mark.parametrize(
    ("second", "use_bias"), [("linear", True), ("relu", True), ("relu", False)]
)
def test_pooled_convs_gradients(second, use_bias):
    rng = np.random.default_rng(6)
    model = pooled_cnn(second, use_bias=use_bias)
    _perturb_biases(model, rng)
    x = rng.normal(size=(3, 10, 10, 1))
    model.forward(x)
    assert [layer.tiled_by for layer in model.layers[1:4:2]] == model.layers[0:3:2]
    _check_model(model, x, np.array([0, 3, 1]), sparse_categorical_crossentropy, True)


def test_a_pooled_forward_leaves_both_layers_as_their_own_forwards():
    model = pooled_cnn("relu")
    rng = np.random.default_rng(7)
    _perturb_biases(model, rng)
    x = rng.normal(size=(2, 10, 10, 1))
    model.forward(x)
    conv, pool = model.layers[:2]
    assert pool.tiled_by is conv
    z = ops.conv2d(x, conv.kernel, conv.bias)
    np.testing.assert_allclose(conv.preactivation, z, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(conv.output, np.maximum(z, 0), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(pool.output, ops.max_pool2d(np.maximum(z, 0), 2), rtol=1e-13)
    inference = model.layers[0].forward(x, training=False)  # a plain forward replaces it all
    assert pool.tiled_by is conv and conv.output is inference
    np.testing.assert_allclose(conv.preactivation, z, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(
    ("layers", "why"),
    [
        ([Conv2D(2, 3, activation="relu"), MaxPool2D(2)], "9x9 output: a row and a column left"),
        ([Conv2D(2, 3, activation="relu"), MaxPool2D(2, padding="same")], "9x9, padded"),
        ([Conv2D(2, 3, activation="relu"), MaxPool2D(3, stride=2)], "overlapping windows"),
        ([Conv2D(2, 2, activation="tanh"), MaxPool2D(2)], "tanh's mask is not the pooled one"),
    ],
)
def test_a_conv_runs_apart_from_a_pool_that_does_not_tile_it(layers, why):
    model = Sequential([*layers, Flatten(), Dense(2)], input_shape=(11, 11, 1), dtype=np.float64)
    x = np.random.default_rng(8).normal(size=(2, 11, 11, 1))
    model.forward(x)
    assert model.layers[1].tiled_by is None, why
    assert "windows" in model.layers[1]._cache


def test_pooled_backward_routes_ties_as_the_layers_one_by_one():
    """Integer weights and inputs: windows with several equal maxima, and windows whose max
    is <= 0 after the ReLU (all ties at 0). The pair's backward masks on the pooled grid and
    takes the first maximum of the pre-activation; the layers' own backwards take the first
    maximum of the ReLU's output, then its mask: the same gradients."""
    model = pooled_cnn("relu")
    rng = np.random.default_rng(9)
    for p in model.params()[:4]:
        p[...] = rng.integers(-2, 3, size=p.shape)
    x = rng.integers(-1, 2, size=(4, 10, 10, 1)).astype(np.float64)
    out = model.forward(x)
    relu = model.layers[0].output
    windows = relu.reshape(4, 4, 2, 4, 2, 4).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
    top = windows.max(axis=1, keepdims=True)
    tied = (windows == top).sum(axis=1) > 1
    assert tied[top[:, 0] > 0].sum() > 10 and (top == 0).sum() > 10
    dy = rng.normal(size=out.shape)
    model.backward(dy)
    fused = [g.copy() for g in model.grads()]
    model.forward(x)
    d = dy
    for layer in reversed(model.layers):
        d = layer.backward(d)
    for a, b in zip(fused, model.grads(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_logits_and_output_activation():
    model = cnn()
    x = np.random.default_rng(2).normal(size=(2, 8, 7, 2))
    out = model.forward(x)
    assert model.output_activation == "softmax"
    e = np.exp(model.logits - model.logits.max(-1, keepdims=True))
    np.testing.assert_allclose(out, e / e.sum(-1, keepdims=True), rtol=1e-12)
    separate = cnn(separate_softmax=True)
    separate.forward(x)
    assert separate.output_activation == "softmax"
    np.testing.assert_array_equal(separate.logits, separate.layers[-2].output)


def test_params_are_in_keras_order():
    model = cnn(dtype=np.float32)
    assert model.param_names() == [
        "conv2d/kernel",
        "conv2d/bias",
        "conv2d_1/kernel",
        "conv2d_1/bias",
        "dense/kernel",
        "dense/bias",
    ]
    shapes = [p.shape for p in model.params()]
    # 8x7 -valid 3x3-> 6x5 -pool 2-> 3x2 -same, stride 2-> 2x1 with 2 channels -> 4 features
    assert shapes == [(3, 3, 2, 3), (3,), (2, 2, 3, 2), (2,), (4, 4), (4,)]
    assert all(p.dtype == np.float32 for p in model.params())
    assert model.count_params() == sum(int(np.prod(s)) for s in shapes)
    assert [layer.name for layer in model.layers] == [
        "conv2d",
        "max_pooling2d",
        "conv2d_1",
        "flatten",
        "dense",
    ]


def test_optimizer_updates_live_params():
    model = cnn(dtype=np.float32)
    before = model.get_weights()
    x = np.random.default_rng(0).normal(size=(2, 8, 7, 2))
    model.forward(x)
    model.backward(np.ones((2, 4), np.float32))
    SGD(0.1).step(model.params(), model.grads())
    after = model.params()
    for b, a, g in zip(before, after, model.grads(), strict=True):
        np.testing.assert_allclose(a, b - np.float32(0.1) * g, rtol=1e-6, atol=1e-7)


def test_shared_weights_are_the_models_weights():
    model = cnn(seed=1)
    x = np.random.default_rng(0).random((2, *model.input_shape))
    before = model.forward(x, training=False).copy()
    shared = [np.empty_like(p) for p in model.params()]
    for s, p in zip(shared, model.params(), strict=True):
        s[...] = p
    model.share_weights(shared)
    assert all(p is s for p, s in zip(model.params(), shared, strict=True))
    np.testing.assert_array_equal(model.forward(x, training=False), before)
    shared[0] *= 2  # written from outside (another process, in training): the model sees it
    assert not np.array_equal(model.forward(x, training=False), before)
    with pytest.raises(ValueError, match="share_weights: expected arrays of"):
        model.share_weights([s.astype(np.float32) for s in shared])
    with pytest.raises(ValueError, match="share_weights"):
        model.share_weights(shared[:-1])


def test_same_seed_same_weights():
    a, b, c = cnn(seed=7), cnn(seed=7), cnn(seed=8)
    for pa, pb in zip(a.params(), b.params(), strict=True):
        np.testing.assert_array_equal(pa, pb)
    assert not np.array_equal(a.params()[0], c.params()[0])


def test_lazy_build_on_first_forward():
    model = Sequential([Conv2D(2, 3), Flatten(), Dense(3)], seed=1)
    assert not model.built
    y = model.forward(np.zeros((2, 5, 5, 1), np.float32))
    assert model.built and model.input_shape == (5, 5, 1) and y.shape == (2, 3)
    eager = Sequential([Conv2D(2, 3), Flatten(), Dense(3)], seed=1, input_shape=(5, 5, 1))
    for p, q in zip(model.params(), eager.params(), strict=True):
        np.testing.assert_array_equal(p, q)


def test_activations_predict_and_summary():
    model = cnn(dtype=np.float32)
    x = np.random.default_rng(0).normal(size=(5, 8, 7, 2)).astype(np.float32)
    acts = model.activations(x[:2])
    assert [name for name, _ in acts] == [layer.name for layer in model.layers]
    assert [a.shape[1:] for _, a in acts] == [layer.output_shape for layer in model.layers]
    np.testing.assert_array_equal(acts[0][1], np.maximum(acts[0][1], 0))  # after the ReLU
    full = model.forward(x, training=False)
    np.testing.assert_allclose(model.predict(x, batch_size=2), full, rtol=1e-6, atol=1e-7)
    assert model.predict(x[:0]).shape == (0, 4)
    text = model.summary()
    for layer in model.layers:
        assert layer.name in text
    assert f"Total params: {model.count_params():,}" in text
    assert "(None, 3, 2, 3)" in text


def test_bad_inputs():
    model = cnn(dtype=np.float32)
    with pytest.raises(ValueError, match=r"\(2, 8, 8, 2\).*\(8, 7, 2\)"):
        model.forward(np.zeros((2, 8, 8, 2)))
    with pytest.raises(ValueError, match="6 weight arrays"):
        model.set_weights(model.get_weights()[:-1])
    with pytest.raises(ValueError, match="duplicate layer name"):
        Sequential([Dense(2, name="d"), Dense(2, name="d")])
    with pytest.raises(ValueError, match="input shape"):
        model.build((9, 9, 2))
    with pytest.raises(ValueError, match="larger than the padded input"):
        Sequential([Conv2D(2, 5)], input_shape=(3, 3, 1))


# --------------------------------------------------------------------------- files
def test_model_input_is_checked_once_for_every_layer():
    model = cnn()
    x = np.random.default_rng(0).normal(size=(2, 8, 7, 2))
    x[1, 3, 4, 0] = np.nan
    with pytest.raises(ValueError, match=r"x contains NaN or inf \(shape \(2, 8, 7, 2\)\)"):
        model.forward(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        model.predict(x)
    # a layer on its own checks shapes, not values: the NaN propagates, as in TensorFlow
    assert np.isnan(model.layers[0].forward(x)[1]).any()


def test_built_layers_accept_another_image_size_like_the_ops():
    # Layers call the ops, which resolve padding and output size for each input's size.
    rng = np.random.default_rng(1)
    conv = Conv2D(2, 3, stride=2, padding="same")
    conv.build((8, 8, 1), rng=rng, dtype=np.float64)
    pool = MaxPool2D(2, padding="same")
    for shape in ((1, 8, 8, 1), (2, 11, 7, 1)):
        x = rng.normal(size=shape)
        z = conv.forward(x)
        np.testing.assert_allclose(
            z, ops.conv2d(x, conv.kernel, conv.bias, stride=2, padding="same"), rtol=1e-12
        )
        dz = rng.normal(size=z.shape)
        for a, e in zip(
            (conv.backward(dz), *conv.grads()),
            ops.conv2d_backward(dz, x, conv.kernel, stride=2, padding="same"),
            strict=True,
        ):
            np.testing.assert_allclose(a, e, rtol=1e-12)
        y = pool.forward(z)
        np.testing.assert_array_equal(y, ops.max_pool2d(z, 2, padding="same"))
        dy = rng.normal(size=y.shape)
        np.testing.assert_allclose(
            pool.backward(dy), ops.max_pool2d_backward(dy, z, 2, padding="same"), rtol=1e-12
        )
    built = Conv2D(1, 3, name="small")
    built.build((6, 6, 1))
    with pytest.raises(ValueError, match=r"larger than the padded input \(2, 2\).*\(1, 2, 2, 1\)"):
        built.forward(np.zeros((1, 2, 2, 1)))


def test_save_load_round_trip_is_exact(tmp_path):
    model = cnn(dtype=np.float32, seed=11)
    for p in model.params():  # weights no initialiser would produce, biases included
        p += np.random.default_rng(0).normal(size=p.shape).astype(np.float32)
    path = tmp_path / "sub" / "model.npz"
    model.save(path)
    assert sorted(os.listdir(path.parent)) == ["model.npz"]  # no temp file left behind
    loaded = Sequential.load(path)
    assert loaded.get_config() == model.get_config()
    assert loaded.param_names() == model.param_names()
    for p, q in zip(model.params(), loaded.params(), strict=True):
        assert q.dtype == p.dtype
        np.testing.assert_array_equal(p, q)
    x = np.random.default_rng(1).normal(size=(3, 8, 7, 2))
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


def test_saved_file_is_plain_arrays_and_json(tmp_path):
    path = tmp_path / "m.npz"
    cnn(dtype=np.float32).save(path)
    with np.load(path, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
        meta = json.loads(str(data["__metadata__"]))
    assert meta["format"] == "convscope.scratch.Sequential/2"
    assert [spec["class_name"] for spec in meta["model"]["layers"]] == [
        "Conv2D",
        "MaxPool2D",
        "Conv2D",
        "Flatten",
        "Dense",
    ]


def test_checkpoint_with_optimizer_state(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 8, 7, 2)), np.array([0, 1, 2, 3])
    model, opt = cnn(dtype=np.float32), Adam(0.01)

    def step(m, o):
        out = m.forward(x)
        _, dy = sparse_categorical_crossentropy(y, out)
        m.backward(dy)
        o.step(m.params(), m.grads())

    step(model, opt)
    model.save(tmp_path / "ckpt.npz", optimizer=opt)
    model2, opt2 = load_checkpoint(tmp_path / "ckpt.npz")
    assert isinstance(opt2, Adam) and opt2.iterations == 1
    assert opt2.get_config() == opt.get_config()
    step(model, opt)
    step(model2, opt2)
    for p, q in zip(model.params(), model2.params(), strict=True):
        np.testing.assert_array_equal(p, q)
    assert load_checkpoint(tmp_path / "ckpt.npz")[1] is not None
    model.save(tmp_path / "plain.npz")
    assert load_checkpoint(tmp_path / "plain.npz")[1] is None


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        Sequential.load(tmp_path / "nope.npz")


def test_truncated_file(tmp_path):
    path = tmp_path / "m.npz"
    cnn(dtype=np.float32).save(path)
    blob = path.read_bytes()
    for cut in (len(blob) // 2, len(blob) - 10, 30):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(blob[:cut])
        with pytest.raises(ValueError, match=f"cut{cut}.npz"):
            Sequential.load(bad)


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage" * 50, b"\x80\x04\x95 pickled?"],
    ids=["empty", "garbage", "pickle-like"],
)
def test_garbage_file(tmp_path, content):
    path = tmp_path / "junk.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="junk.npz"):
        Sequential.load(path)


def test_foreign_npz_and_object_arrays(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, a=np.arange(3))
    with pytest.raises(ValueError, match="other.npz.*not written by convscope"):
        Sequential.load(other)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, format=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled.npz"):
        Sequential.load(pickled)
    single = tmp_path / "single.npy"
    np.save(single, np.arange(3))
    with pytest.raises(ValueError, match="single.npy"):
        Sequential.load(single)


def test_tampered_weights_are_rejected(tmp_path):
    path = tmp_path / "m.npz"
    cnn(dtype=np.float32).save(path)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["param_0000"] = arrays["param_0000"][..., :2]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match=r"bad.npz.*conv2d/kernel.*\(3, 3, 2, 2\)"):
        Sequential.load(bad)
    # and a zip member whose bytes were flipped fails the CRC check with the file's name
    flipped = tmp_path / "flipped.npz"
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("param_0002.npy")
    raw[info.header_offset + 30 + len(info.filename) + 100] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="flipped.npz"):
        Sequential.load(flipped)


@pytest.mark.parametrize("make", [cnn, binary_cnn, pooled_cnn])
def test_model_backward_equals_the_layers_one_by_one(make):
    # The model applies a ReLU's mask on the pooled grid when a max pool follows it (and skips
    # the ReLU's own backward); calling each layer's backward in turn must give the same.
    model = make()
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, *model.input_shape))
    out = model.forward(x)
    dy = rng.normal(size=out.shape)
    dx = model.backward(dy)
    fused = [g.copy() for g in model.grads()]
    model.forward(x)
    d = dy
    for layer in reversed(model.layers):
        d = layer.backward(d)
    np.testing.assert_allclose(dx, d, rtol=1e-12, atol=1e-15)
    for a, b in zip(fused, model.grads(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)

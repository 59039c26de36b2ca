"""convscope.interpret: each explanation checked against a reference.

* saliency and Grad-CAM on the engine against float64 central differences (every output
  head: fused softmax, separate Softmax layer, linear logits);
* engine against Keras (TensorFlow's GradientTape is the reference) on 10 random float64
  architectures converted with ``to_keras``: saliency, Grad-CAM and activation maximisation;
* CKA against the HSIC formula, and its invariances;
* activation maximisation raises its objective and repeats per seed;
* every bad argument gives one ValueError naming it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from convscope.interpret import (
    activation_maximisation,
    cka,
    grad_cam,
    layer_similarity,
    saliency,
    upsample,
)
from convscope.scratch import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, Softmax
from tests.support.gradcheck import numeric_grad, rel_error

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def randomise(model: Sequential, rng: np.random.Generator, scale: float = 0.6) -> Sequential:
    """Random kernels and biases (biases non-zero, so ReLUs switch inside the image)."""
    model.set_weights([rng.normal(scale=scale, size=w.shape) for w in model.get_weights()])
    return model


def tiny_model(head: str = "fused", seed: int = 0) -> Sequential:
    """(8, 8, 2) -> conv relu -> pool -> conv tanh -> flatten -> 3 logits, in float64."""
    out = {
        "fused": [Dense(3, activation="softmax", name="out")],
        "layer": [Dense(3, name="out"), Softmax(name="probs")],
        "linear": [Dense(3, name="out")],
    }[head]
    layers = [
        Conv2D(3, 3, padding="same", activation="relu", name="conv1"),
        MaxPool2D(2, name="pool1"),
        Conv2D(4, 2, activation="tanh", name="conv2"),
        Flatten(name="flatten"),
        *out,
    ]
    model = Sequential(layers, input_shape=(8, 8, 2), dtype=np.float64)
    return randomise(model, np.random.default_rng(seed))


def logits_of(model: Sequential, x: np.ndarray) -> np.ndarray:
    model.forward(x, training=False)
    return model.logits


def images(shape=(2, 8, 8, 2), seed=1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


# --------------------------------------------------------------------------- finite differences
@pytest.mark.parametrize("head", ["fused", "layer", "linear"])
def test_saliency_matches_finite_differences(head):
    model, x, target = tiny_model(head), images(), np.array([0, 2])

    def score(xx):
        return logits_of(model, xx)[np.arange(len(xx)), target].sum()

    expected = np.abs(numeric_grad(score, x.copy())).max(axis=-1)
    got = saliency(model, x, target)
    assert got.shape == (2, 8, 8)
    assert rel_error(got, expected) < 1e-7


@pytest.mark.parametrize("head", ["fused", "layer", "linear"])
@pytest.mark.parametrize("layer", ["pool1", "conv2"])
def test_grad_cam_matches_finite_differences(head, layer):
    model, x, target = tiny_model(head, seed=3), images(seed=4), 1
    k = [la.name for la in model.layers].index(layer)
    model.forward(x, training=False)
    maps = model.layers[k].output.copy()

    def score(a):
        for upper in model.layers[k + 1 :]:
            a = upper.forward(a, training=False)
        return model.logits[:, target].sum()  # the layers above wrote their outputs

    grad = numeric_grad(score, maps.copy())
    expected = np.maximum(np.einsum("nhwc,nc->nhw", maps, grad.mean(axis=(1, 2))), 0)
    got = grad_cam(model, x, target, layer)
    assert got.shape == maps.shape[:3]
    assert np.any(got > 0)
    assert rel_error(got, expected) < 1e-7


# --------------------------------------------------------------------------- CKA
def hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA written as in Kornblith et al.: HSIC of the linear Gram matrices, centred by H."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def test_cka_agrees_with_the_hsic_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12))
    y = x[:, :5] @ rng.normal(size=(5, 7)) + 0.5 * rng.normal(size=(40, 7))
    assert cka(x, y) == pytest.approx(hsic_cka(x, y), rel=1e-12)
    wide = rng.normal(size=(40, 300))  # more features than samples: the Gram-matrix route
    assert cka(x, wide) == pytest.approx(hsic_cka(x, wide), rel=1e-12)


def test_cka_invariances():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 10))
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    assert cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert cka(x, 3.5 * x @ q + 2.0) == pytest.approx(1.0, abs=1e-12)
    assert cka(x, rng.normal(size=(200, 10))) < 0.1
    assert cka(x, np.hstack([x, x])) == pytest.approx(1.0, abs=1e-12)


def test_layer_similarity_of_a_model_with_itself_and_with_another():
    x = images((30, 8, 8, 2))
    a, b = tiny_model(seed=0), tiny_model(seed=5)
    assert layer_similarity(a, a, x, "conv2") == pytest.approx(1.0, abs=1e-12)
    assert layer_similarity(a, b, x, ("conv1", "conv2")) < 0.99


# --------------------------------------------------------------------------- maximisation
def mean_activation(model: Sequential, image: np.ndarray, layer: str, f: int) -> float:
    model.forward(image[None], training=False)
    return float(model.get_layer(layer).output[..., f].mean())


def test_activation_maximisation_raises_the_objective_and_repeats():
    model = tiny_model()
    trace = [
        mean_activation(model, activation_maximisation(model, "conv1", 2, steps=s), "conv1", 2)
        for s in range(0, 25, 4)
    ]
    assert (np.diff(trace) > 0).mean() >= 0.8
    assert trace[-1] > 3 * trace[0] > 0
    tanh_map = activation_maximisation(model, "conv2", 1, steps=24)
    assert mean_activation(model, tanh_map, "conv2", 1) > 0.99  # tanh's ceiling is 1
    again = activation_maximisation(model, "conv1", 2, steps=24)
    np.testing.assert_array_equal(again, activation_maximisation(model, "conv1", 2, steps=24))
    assert not np.allclose(again, activation_maximisation(model, "conv1", 2, steps=24, seed=1))


def test_batched_maximisation_is_each_filter_alone():
    """A list of filters is one batch per step; each image is what that filter gets alone."""
    model = tiny_model()
    batch = activation_maximisation(model, "conv1", [2, 0, 2], steps=12)
    assert batch.shape == (3, 8, 8, 2)
    for image, f in zip(batch, [2, 0, 2], strict=True):
        alone = activation_maximisation(model, "conv1", f, steps=12)
        np.testing.assert_allclose(image, alone, rtol=1e-9, atol=1e-12)
    dense = activation_maximisation(model, "out", [0, 1], steps=4)  # a Dense unit's value
    np.testing.assert_allclose(dense[1], activation_maximisation(model, "out", 1, steps=4))
    for bad, argument in (([0, 3], r"filter\[1\]"), ([], "filter")):
        with pytest.raises(ValueError, match=argument):
            activation_maximisation(model, "conv1", bad)


def test_orientation_selectivity_of_line_detectors():
    from convscope.interpret.orientation import line_responses, orientation_selectivity

    vertical = np.array([[-1.0, 2.0, -1.0]] * 3)  # the centre column up, the sides down
    blur = np.ones((3, 3))
    kernel = np.stack([vertical, vertical.T, -vertical, blur], axis=-1)[:, :, None, :]
    r_v, r_h = line_responses(kernel)
    # a centred 3-pixel line under the kernel's centre column: 3 * 2 = 6
    assert r_v[0] == pytest.approx(6.0) and r_h[1] == pytest.approx(6.0)
    s = orientation_selectivity(kernel)
    # the sign-flipped detector still prefers vertical lines: one beside its centre column
    # gives +3, while any horizontal line sums a row of it to 0; the peak is what a ReLU and
    # a max-pool pass on
    np.testing.assert_allclose(s, [1.0, -1.0, 1.0, 0.0], atol=1e-12)
    # a vertical preference that is not exclusive lands strictly inside (0, 1)
    mixed = orientation_selectivity(vertical + 0.5 * vertical.T, size=7)
    assert 0 < mixed[0] < 1
    assert orientation_selectivity(np.zeros((3, 3))).tolist() == [0.0]
    with pytest.raises(ValueError, match="size"):
        orientation_selectivity(np.ones((5, 5)), size=4)


def test_upsample_keeps_constants_and_sizes():
    maps = np.full((2, 3, 4), 0.7)
    up = upsample(maps, (9, 8))
    assert up.shape == (2, 9, 8)
    np.testing.assert_allclose(up, 0.7)


# --------------------------------------------------------------------------- bad input
BAD = {
    "model": lambda m, x: saliency("not a model", x, 0),
    "model ": lambda m, x: saliency(Sequential([Conv2D(2, 3)], input_shape=(8, 8, 2)), x, 0),
    "images": lambda m, x: saliency(m, x[:, :5], 0),
    "images ": lambda m, x: saliency(m, np.where(x > 1, np.nan, x), 0),
    "target": lambda m, x: saliency(m, x, 3),
    "target ": lambda m, x: saliency(m, x, [0, 1, 2]),
    "layer": lambda m, x: grad_cam(m, x, 0, "nope"),
    "layer ": lambda m, x: grad_cam(m, x, 0, "flatten"),
    "filter": lambda m, x: activation_maximisation(m, "conv2", 4, steps=1),
    "steps": lambda m, x: activation_maximisation(m, "conv2", 0, steps=-1),
    "lr": lambda m, x: activation_maximisation(m, "conv2", 0, lr=0),
    "acts_a": lambda m, x: cka(np.ones((5, 2)), np.eye(5)),
    "size": lambda m, x: upsample(np.ones((1, 2, 2)), (0, 3)),
}


@pytest.mark.parametrize("argument", list(BAD))
def test_bad_input_names_the_argument(argument):
    with pytest.raises(ValueError, match=argument.strip()) as info:
        BAD[argument](tiny_model(), images())
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- engine vs Keras
def random_model(index: int) -> Sequential:
    """A small random float64 architecture: 1-3 convs (kernels 1-3, strides 1-2, both
    paddings, every activation), optional pools and ReLU layers, and one of the three heads."""
    rng = np.random.default_rng(100 + index)
    acts = ["relu", "tanh", "sigmoid", "linear"]
    layers = []
    for i in range(1 + index % 3):
        layers.append(
            Conv2D(
                int(rng.integers(1, 5)),
                int(rng.integers(1, 4)),
                stride=1 + (index + i) % 2,
                padding=("same", "valid")[(index + i) % 2],
                activation=acts[(index + i) % 4],
                name=f"conv{i}",
            )
        )
        if (index + i) % 3 == 0:
            layers.append(MaxPool2D(2, stride=1 + i % 2, padding="same", name=f"pool{i}"))
        if (index + i) % 4 == 3:
            layers.append(ReLU(name=f"relu{i}"))
    head = ("fused", "layer", "linear")[index % 3]
    classes = int(rng.integers(2, 5))
    layers += [Flatten(name="flatten"), Dense(classes, name="out")]
    if head == "fused":
        layers[-1] = Dense(classes, activation="softmax", name="out")
    elif head == "layer":
        layers.append(Softmax(name="probs"))
    shape = (int(rng.integers(7, 11)), int(rng.integers(7, 11)), int(rng.integers(1, 4)))
    model = Sequential(layers, input_shape=shape, dtype=np.float64, name=f"random{index}")
    return randomise(model, rng)


def rel_max_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref|: error on the map's own scale."""
    scale = np.abs(ref).max()
    return float(np.abs(ours - ref).max() / scale) if scale else float(np.abs(ours).max())


@pytest.mark.tf
@pytest.mark.parametrize("index", range(10))
def test_engine_and_keras_explanations_agree(index):
    pytest.importorskip("tensorflow")
    from convscope.scratch import to_keras

    engine = random_model(index)
    keras_model = to_keras(engine)
    x = np.random.default_rng(index).normal(size=(3, *engine.input_shape))
    target = np.arange(3) % engine.layers[-1].output_shape[-1]
    maps = [la.name for la in engine.layers if len(la.output_shape) == 3]
    explanations = [lambda m: saliency(m, x, target)]
    explanations += [lambda m, la=la: grad_cam(m, x, target, la) for la in maps]
    explanations.append(lambda m: activation_maximisation(m, maps[-1], 0, steps=8))
    cams = []
    for explain in explanations:
        ours, ref = explain(engine), explain(keras_model)
        assert ours.shape == ref.shape
        # float64 on both sides: only the order of summation differs (measured ~1e-15)
        assert rel_max_diff(ours, ref) <= 1e-9
        cams.append(ref.ravel())
    assert np.count_nonzero(np.concatenate(cams[1:-1])) > 0  # some Grad-CAM map is not blank
    assert layer_similarity(engine, keras_model, x, maps[-1]) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.tf
def test_upsample_is_tensorflows_bilinear_resize():
    tf = pytest.importorskip("tensorflow")
    maps = np.random.default_rng(0).random((2, 3, 5))
    for size in [(7, 12), (3, 5), (2, 9)]:
        ref = tf.image.resize(maps[..., None], size, method="bilinear").numpy()[..., 0]
        np.testing.assert_allclose(upsample(maps, size), ref, atol=1e-6)


@pytest.mark.tf
@pytest.mark.parametrize("functional", [False, True])
def test_a_keras_built_float32_cnn_explains_like_its_engine_twin(functional, tmp_path):
    """The seed's kind of model, built in Keras (explicit Input, softmax Dense), float32."""
    keras = pytest.importorskip("keras")
    from convscope.scratch import from_keras

    layers = [
        keras.layers.Conv2D(4, 3, activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(name="pool1"),
        keras.layers.Conv2D(5, 3, activation="relu", name="conv2"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(3, activation="softmax", name="out"),
    ]
    inp = keras.Input((12, 12, 1))
    if functional:
        out = inp
        for layer in layers:
            out = layer(out)
        keras_model = keras.Model(inp, out, name="functional")
    else:
        keras_model = keras.Sequential([inp, *layers])
    rng = np.random.default_rng(7)
    keras_model.set_weights([rng.normal(scale=0.4, size=w.shape) for w in keras_model.weights])
    engine = from_keras(keras_model)
    x = rng.random((4, 12, 12, 1)).astype(np.float32)
    for explain in (
        lambda m: saliency(m, x, [0, 1, 2, 0]),
        lambda m: grad_cam(m, x, [0, 2, 0, 2], "conv2"),
        lambda m: activation_maximisation(m, "conv2", 3, steps=8),
    ):
        ours, ref = explain(engine), explain(keras_model)
        assert ours.dtype == ref.dtype == np.float32
        assert np.any(ref > 0)
        # float32 rounding, a few hundred products per value: measured <= 5e-7 of the map's scale
        assert rel_max_diff(ours, ref) <= 1e-5
    # A model read back from a .keras file has called its layers again while rebuilding;
    # explanations must follow the graph of its output, not the layers' first calls.
    path = tmp_path / "model.keras"
    keras_model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    np.testing.assert_allclose(
        grad_cam(loaded, x, [0, 2, 0, 2], "conv2"),
        grad_cam(engine, x, [0, 2, 0, 2], "conv2"),
        rtol=1e-4,
        atol=1e-6,
    )
    for call, argument in (
        (lambda: grad_cam(keras_model, x, 0, "dense"), "layer"),
        (lambda: grad_cam(keras_model, x, 0, "flatten"), "layer"),
        (lambda: saliency(keras_model, x[..., :0], 0), "images"),
        (lambda: saliency(keras_model, x, 3), "target"),
        (lambda: activation_maximisation(keras_model, "conv1", 4), "filter"),
        (lambda: activation_maximisation(keras_model, "conv1", [0, 4]), "filter"),
    ):
        with pytest.raises(ValueError, match=argument):
            call()


@pytest.mark.tf
def test_activation_maximisation_with_a_huge_lr_names_lr_and_the_step_on_both_networks():
    """float32 networks: a step of 1e37 overflows the image; the engine and Keras both say
    so in one line naming ``lr`` and the step, rather than returning inf or failing later on
    an argument the caller never passed."""
    from convscope.scratch import to_keras

    engine = randomise(
        Sequential(
            [
                Conv2D(3, 3, padding="same", activation="relu", name="conv1"),
                Flatten(name="flatten"),
                Dense(3, activation="softmax", name="out"),
            ],
            input_shape=(8, 8, 1),
            dtype=np.float32,
        ),
        np.random.default_rng(0),
    )
    for net in (engine, to_keras(engine)):
        with pytest.raises(ValueError) as err:
            activation_maximisation(net, "conv1", 2, steps=10, lr=1e37)
        (line,) = str(err.value).splitlines()
        assert line.startswith("lr=1e+37 is too large") and "at step 1 of 10" in line, line
        assert np.isfinite(activation_maximisation(net, "conv1", 2, steps=3, lr=1e3)).all()

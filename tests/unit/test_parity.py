"""Number-for-number parity of the NumPy engine with TensorFlow/Keras on random architectures.

Each case is a small random network (1 to 3 conv layers with valid/same padding, strides 1
and 2, kernels 1 to 5, 1 to 8 channels; max pooling with pool sizes 1 to 3 and strides
1 to 3, overlapping included; activation layers; one or two dense layers; every activation),
with random weights and inputs. The Keras model is built once per case, converted with
``from_keras``, and then:

* every layer's output agrees within 1e-5 (float32);
* the gradients of a loss (sparse cross-entropy on a softmax output, else a sum of squares)
  with respect to every weight and the input agree with ``tf.GradientTape`` within 1e-4;
* one Adam step of each framework from the same (fresh) state gives the same weights within
  1e-6, both fed the same gradients and each fed its own (there, elements whose gradient is
  rounding noise, under 1e-3 of the array's largest and not exactly 0 in both, are left out:
  about 1% of them; Adam's first step is ~lr * sign(g), so their direction is noise);
* max-pool ties are present: "ReLU-dead" cases set strongly negative biases so whole regions
  are exactly 0, and "exact" cases use dyadic inputs and weights (multiples of 1/4) before every
  pool, so the conv arithmetic is exact in float32 and windows hold truly equal values whose
  gradient is non-zero: the engine must route it to the same (first) maximum as TensorFlow.

"Within r" means ``|ours - ref| <= r * (|ref| + max|ref|)`` element-wise: relative to the
element, with the array's largest magnitude as the floor, so elements that cancel to ~0 are
judged on the array's scale instead of failing on rounding noise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from convscope.scratch import Adam, from_keras, to_keras  # noqa: E402
from convscope.scratch import losses as L  # noqa: E402

pytestmark = pytest.mark.tf

ACTIVATIONS = ("relu", "sigmoid", "tanh", "softmax", "linear")
N_CASES = 25
BATCH = 3


# --------------------------------------------------------------------------- random cases
@dataclass
class Case:
    """One random architecture and how to fill it."""

    index: int
    input_shape: tuple[int, int, int]
    layers: list[tuple[str, dict]] = field(default_factory=list)
    ties: str = "none"  # "none", "dead" (negative ReLU biases) or "exact" (dyadic arithmetic)

    def __str__(self) -> str:
        parts = [
            f"{kind}({', '.join(f'{k}={v}' for k, v in kw.items())})" for kind, kw in self.layers
        ]
        return f"case {self.index} {self.input_shape} ties={self.ties}: " + " -> ".join(parts)


def _conv_out(n: int, k: int, s: int, padding: str) -> int:
    return -(-n // s) if padding == "same" else (n - k) // s + 1


def make_case(index: int) -> Case:
    """A random architecture; the structural choices rotate with ``index`` so that 25 cases
    cover every option (checked by test_cases_cover_every_option), the rest is random."""
    rng = np.random.default_rng(1000 + index)
    ties = ("none", "dead", "exact", "none", "dead")[index % 5]
    h, w = (int(v) for v in rng.integers(7, 13, size=2))
    c = int(rng.integers(1, 4))
    case = Case(index, (h, w, c), ties=ties)
    n_conv = 1 + index % 3
    for i in range(n_conv):
        k = 1 + (index + 2 * i) % 5
        stride = 1 + (index // 3 + i) % 2
        padding = ("valid", "same")[(index // 2 + i) % 2]
        if padding == "valid" and k > min(h, w):
            padding = "same"
        if ties == "exact":
            act = ("relu", "linear")[(index + i) % 2]  # exact arithmetic up to the last pool
        elif ties == "dead":
            act = "relu"
        else:
            act = ACTIVATIONS[(index + i) % 5]
        filters = int(rng.integers(1, 9)) if i else 1 + index % 8
        case.layers.append(
            (
                "conv",
                {
                    "filters": filters,
                    "kernel_size": k,
                    "strides": stride,
                    "padding": padding,
                    "activation": act,
                    "use_bias": bool(index % 7 or i),
                },
            )
        )
        h, w = _conv_out(h, k, stride, padding), _conv_out(w, k, stride, padding)
        if (index + i) % 4 != 3 or ties != "none":
            pool = int(rng.integers(1, 4)) if ties == "none" else 2 + (index + i) % 2
            pool = min(pool, h, w)
            pool_stride = [None, 1, 2, 3][(index + 3 * i) % 4]
            pool_padding = ("valid", "same")[(index + i) % 3 == 0]
            case.layers.append(
                ("pool", {"pool_size": pool, "strides": pool_stride, "padding": pool_padding})
            )
            s = pool if pool_stride is None else pool_stride
            h, w = _conv_out(h, pool, s, pool_padding), _conv_out(w, pool, s, pool_padding)
        if index % 6 == 1 and i == 0:
            case.layers.append(("relu_layer", {}))
        if index % 6 == 4 and i == 0 and ties != "exact":
            case.layers.append(("activation", {"activation": ACTIVATIONS[index % 5]}))
    case.layers.append(("flatten", {}))
    if index % 2:
        case.layers.append(("dense", {"units": int(rng.integers(2, 7)), "activation": "tanh"}))
    out_act = ACTIVATIONS[(index // 2) % 5]
    units = int(rng.integers(2, 6))
    if index % 8 == 5:  # softmax as a separate layer
        case.layers.append(("dense", {"units": units, "activation": "linear"}))
        case.layers.append(("softmax_layer", {}))
    else:
        case.layers.append(("dense", {"units": units, "activation": out_act}))
    return case


CASES = [make_case(i) for i in range(N_CASES)]


def keras_model(case: Case) -> keras.Sequential:
    layers = [keras.Input(case.input_shape)]
    counts: dict[str, int] = {}
    for kind, kw in case.layers:
        counts[kind] = counts.get(kind, 0) + 1
        name = f"{kind}{counts[kind]}"
        if kind == "conv":
            layers.append(keras.layers.Conv2D(**kw, name=name))
        elif kind == "pool":
            layers.append(keras.layers.MaxPooling2D(**kw, name=name))
        elif kind == "relu_layer":
            layers.append(keras.layers.ReLU(name=name))
        elif kind == "activation":
            layers.append(keras.layers.Activation(kw["activation"], name=name))
        elif kind == "softmax_layer":
            layers.append(keras.layers.Softmax(name=name))
        elif kind == "flatten":
            layers.append(keras.layers.Flatten(name=name))
        elif kind == "dense":
            layers.append(keras.layers.Dense(**kw, name=name))
    return keras.Sequential(layers, name=f"case{case.index}")


def fill(model: keras.Sequential, case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Random weights (in place) and a random input batch; returns (x, integer labels)."""
    rng = np.random.default_rng(case.index)
    exact = case.ties == "exact"
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kernel = weights[0]
        fan_in = int(np.prod(kernel.shape[:-1]))
        is_conv = isinstance(layer, keras.layers.Conv2D)
        if exact and is_conv:
            # multiples of 1/4: with dyadic inputs every conv sum is exact in float32
            new = [rng.integers(-4, 5, size=a.shape) / 4 for a in weights]
        else:
            new = [rng.normal(scale=1.5 / np.sqrt(fan_in), size=kernel.shape)]
            if len(weights) > 1:
                bias = rng.normal(scale=0.3, size=weights[1].shape)
                if case.ties == "dead" and is_conv:
                    bias[::2] = -50.0  # every other filter is 0 everywhere after the ReLU
                new.append(bias)
        layer.set_weights([a.astype(np.float32) for a in new])
    shape = (BATCH, *case.input_shape)
    if exact:
        x = rng.integers(0, 3, size=shape) / 2  # values 0, 0.5, 1: equal values in windows
    else:
        x = rng.uniform(-1, 1, size=shape)
    labels = rng.integers(0, model.output_shape[-1], size=BATCH)
    return x.astype(np.float32), labels


# --------------------------------------------------------------------------- comparisons
def assert_close(ours, ref, rel: float, what: str) -> None:
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = np.abs(ours.astype(np.float64) - ref)
    bound = rel * (np.abs(ref) + scale)
    worst = int(np.argmax(err - bound)) if err.size else 0
    assert np.all(err <= bound), (
        f"{what}: max error {err.max():.3g} over the bound (at flat index {worst}: ours "
        f"{ours.flat[worst]!r}, ref {ref.flat[worst]!r}); array scale {scale:.3g}"
    )


def tf_reference(model: keras.Sequential, x: np.ndarray, labels: np.ndarray, softmax_out: bool):
    """Every layer's output, the loss, and its gradients w.r.t. the weights and the input,
    layer by layer in eager mode (so the intermediate tensors are the ones Keras computes)."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = xt
        outputs = []
        for layer in model.layers:
            y = layer(y)
            outputs.append(y)
        if softmax_out:
            loss = keras.losses.SparseCategoricalCrossentropy()(labels, y)
        else:
            loss = tf.reduce_sum(tf.square(y))
    grads = tape.gradient(loss, [*model.trainable_variables, xt])
    return [o.numpy() for o in outputs], float(loss), [g.numpy() for g in grads]


def engine_gradients(engine, x: np.ndarray, labels: np.ndarray, softmax_out: bool):
    out = engine.forward(x, training=True)
    if softmax_out:
        # The route training takes (and Keras's: its loss finds the logits behind a softmax).
        loss, dz = L.sparse_categorical_crossentropy(labels, engine.logits, from_logits=True)
        dx = engine.backward_from_logits(dz)
    else:
        loss = float(np.sum(np.square(out, dtype=np.float64)))
        dx = engine.backward(2 * out)
    return loss, [*engine.grads(), dx]


def _ids(case: Case) -> str:
    return f"case{case.index}-{case.ties}"


@pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1")  # 1-filter softmax
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_forward_gradients_and_adam_step_match_tensorflow(case):
    model = keras_model(case)
    x, labels = fill(model, case)
    engine = from_keras(model)
    softmax_out = model.layers[-1].get_config().get("activation", "softmax") == "softmax"

    # forward: every intermediate layer output, not just the last
    ref_outputs, ref_loss, ref_grads = tf_reference(model, x, labels, softmax_out)
    loss, grads = engine_gradients(engine, x, labels, softmax_out)
    assert [la.name for la in engine.layers] == [la.name for la in model.layers]
    for layer, ref in zip(engine.layers, ref_outputs, strict=True):
        assert layer.output.dtype == np.float32
        assert_close(layer.output, ref, 1e-5, f"{case}\n  output of {layer.name}")

    # gradients of the loss w.r.t. every weight and the input
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    names = [*engine.param_names(), "input"]
    for name, g, r in zip(names, grads, ref_grads, strict=True):
        assert_close(g, r, 1e-4, f"{case}\n  d loss / d {name}")

    # One Adam step from the same state. (a) Fed the same gradients (TensorFlow's), the two
    # optimizers must agree to float32 rounding. (b) Each fed its own gradients, the weights
    # agree wherever the gradient is above rounding noise: Adam's first step is about
    # lr * sign(g), so for a gradient that cancels to ~1e-8 (which the two frameworks round
    # differently) the *direction* is noise in both, and no tolerance on g can fix that.
    start = engine.get_weights()
    shared = [g.copy() for g in ref_grads[:-1]]
    Adam(learning_rate=1e-3).step(engine.params(), shared)
    keras.optimizers.Adam(learning_rate=1e-3).apply(ref_grads[:-1], model.trainable_variables)
    after_keras = [v.numpy() for v in model.trainable_variables]
    for name, p, k in zip(names[:-1], engine.params(), after_keras, strict=True):
        np.testing.assert_allclose(p, k, rtol=0, atol=1e-6, err_msg=f"{case}: Adam, {name}")
    engine.set_weights(start)
    Adam(learning_rate=1e-3).step(engine.params(), grads[:-1])
    pairs = zip(names[:-1], engine.params(), after_keras, grads, ref_grads, strict=False)
    for name, p, k, g, r in pairs:
        # exact zeros in both (dead units) must not move either; the rest above the noise
        clear = (np.abs(r) >= 1e-3 * np.abs(r).max()) | ((g == 0) & (r == 0))
        np.testing.assert_allclose(
            p[clear], k[clear], rtol=0, atol=1e-6, err_msg=f"{case}: Adam on own grads, {name}"
        )


def test_cases_cover_every_option():
    """The parity claims above hold for every option the issue lists, not just some."""
    convs = [kw for c in CASES for kind, kw in c.layers if kind == "conv"]
    pools = [kw for c in CASES for kind, kw in c.layers if kind == "pool"]
    acts = {kw["activation"] for c in CASES for kind, kw in c.layers if "activation" in kw}
    assert {len([k for k, _ in c.layers if k == "conv"]) for c in CASES} == {1, 2, 3}
    assert {kw["padding"] for kw in convs} == {"valid", "same"}
    assert {kw["strides"] for kw in convs} == {1, 2}
    assert {kw["kernel_size"] for kw in convs} == {1, 2, 3, 4, 5}
    assert {kw["filters"] for kw in convs} == set(range(1, 9))
    assert {c.input_shape[-1] for c in CASES} == {1, 2, 3}
    assert {kw["activation"] for kw in convs} == set(ACTIVATIONS)
    assert acts == set(ACTIVATIONS)
    assert False in {kw["use_bias"] for kw in convs}
    assert {kw["pool_size"] for kw in pools} >= {1, 2, 3}
    assert {kw["padding"] for kw in pools} == {"valid", "same"}
    overlapping = [kw for kw in pools if (kw["strides"] or kw["pool_size"]) < kw["pool_size"]]
    assert overlapping, "no overlapping pooling window"
    assert {kw["strides"] for kw in pools} == {None, 1, 2, 3}
    assert {c.ties for c in CASES} == {"none", "dead", "exact"}
    kinds = {kind for c in CASES for kind, _ in c.layers}
    assert {"relu_layer", "activation", "softmax_layer"} <= kinds


def test_exact_cases_really_have_ties_with_gradient():
    """The 'exact' cases must exercise tie routing: some pool window holds its max twice and
    still passes a non-zero gradient, so routing it to the wrong copy would show up."""
    found = 0
    for case in CASES:
        if case.ties != "exact":
            continue
        model = keras_model(case)
        x, labels = fill(model, case)
        engine = from_keras(model)
        engine.forward(x)
        for i, layer in enumerate(engine.layers):
            if type(layer).__name__ != "MaxPool2D":
                continue
            src = engine.layers[i - 1].output if i else x
            ph, pw = np.broadcast_to(layer.pool_size, 2)
            sh, sw = np.broadcast_to(layer.stride, 2)
            # the windows the pool really uses (the unpadded ones are enough to find ties)
            win = np.lib.stride_tricks.sliding_window_view(src, (ph, pw), axis=(1, 2))
            win = win[:, ::sh, ::sw]
            flat = win.reshape(*win.shape[:4], -1)
            top = flat.max(axis=-1)
            tied = (flat == top[..., None]).sum(axis=-1) > 1
            found += int(np.sum(tied & (top > 0)))  # > 0: the ReLU passes its gradient
    assert found > 10


def test_max_pool_ties_route_to_the_first_maximum_like_tensorflow():
    """A direct tie test: pooling the input itself (no conv before it), with overlapping and
    'same' windows, on an image of few distinct values; the input gradient shows the routing."""
    rng = np.random.default_rng(7)
    x = (rng.integers(0, 2, size=(2, 7, 7, 2)) * 1.0).astype(np.float32)
    for pool, stride, padding in [
        (2, None, "valid"),
        (3, 2, "same"),
        (3, 1, "valid"),
        (2, 1, "same"),
    ]:
        model = keras.Sequential(
            [
                keras.Input((7, 7, 2)),
                keras.layers.MaxPooling2D(pool, strides=stride, padding=padding, name="pool"),
                keras.layers.Flatten(name="flatten"),
                keras.layers.Dense(3, name="dense"),
            ]
        )
        engine = from_keras(model)
        _, _, ref = tf_reference(model, x, None, softmax_out=False)
        _, grads = engine_gradients(engine, x, None, softmax_out=False)
        np.testing.assert_allclose(grads[-1], ref[-1], rtol=1e-5, atol=1e-6)
        # each window hands its gradient to one pixel only, although many windows hold ties
        windows = engine.layers[0].output.size
        assert 0 < np.count_nonzero(ref[-1]) <= windows
        ties = np.sum(x == engine.layers[0].output.max())  # many equal maxima (1.0)
        assert ties > windows // 2


def test_round_trip_through_keras_gives_identical_outputs():
    for case in CASES[:6]:
        model = keras_model(case)
        x, _ = fill(model, case)
        again = to_keras(from_keras(model))
        assert [la.name for la in again.layers] == [la.name for la in model.layers]
        np.testing.assert_array_equal(again(x).numpy(), model(x).numpy())

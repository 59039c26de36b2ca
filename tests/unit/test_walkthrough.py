"""The seed's part 1 walkthrough: the seed's exact numbers, agreement with loop code, rendering."""

import dataclasses

import numpy as np
import pytest

import convscope.scratch
from convscope.scratch import ops
from convscope.scratch.layer_walkthrough import Walkthrough, seed_example, walkthrough
from convscope.scratch.reference import conv2d_loop, max_pool2d_loop

SEED_FEATURE_MAP = [
    [-20, 0, 20, 20, 0],
    [-30, 0, 30, 30, 0],
    [-20, 0, 10, 10, 10],
    [-10, 0, -10, -10, 20],
    [0, 0, -20, -20, 20],
]
SEED_POOLED = [[0, 30], [0, 10]]


def seed_style_forward(image, kernel, stride, padding, pool_size, pool_stride):
    """The seed's CapaConvolucionalManual.forward_pass, transcribed: np.pad, then loops."""
    padded = np.pad(image, padding, mode="constant") if padding else image
    kh, kw = kernel.shape
    oh = (padded.shape[0] - kh) // stride + 1
    ow = (padded.shape[1] - kw) // stride + 1
    fmap = np.zeros((oh, ow))
    for y in range(oh):
        for x in range(ow):
            region = padded[y * stride : y * stride + kh, x * stride : x * stride + kw]
            fmap[y, x] = np.sum(kernel * region)
    act = np.maximum(0, fmap)
    ph = (act.shape[0] - pool_size) // pool_stride + 1
    pw = (act.shape[1] - pool_size) // pool_stride + 1
    pooled = np.zeros((ph, pw))
    for y in range(ph):
        for x in range(pw):
            y0, x0 = y * pool_stride, x * pool_stride
            pooled[y, x] = np.max(act[y0 : y0 + pool_size, x0 : x0 + pool_size])
    return padded, fmap, act, pooled


def test_seed_example_gives_the_seeds_numbers_exactly():
    image, kernel = seed_example()
    w = walkthrough(image, kernel, stride=1, padding=1, pool_size=2, pool_stride=2)
    np.testing.assert_array_equal(w.feature_map, SEED_FEATURE_MAP)
    np.testing.assert_array_equal(w.pooled, SEED_POOLED)
    assert w.padded.shape == (7, 7)
    np.testing.assert_array_equal(w.padded[1:-1, 1:-1], image)
    assert w.padded[0].sum() == w.padded[-1].sum() == w.padded[:, 0].sum() == 0
    np.testing.assert_array_equal(w.activated, np.maximum(SEED_FEATURE_MAP, 0))
    assert w.feature_map.dtype == np.float64


def test_package_exports_the_function():
    assert convscope.scratch.walkthrough is walkthrough


def _random_case(rng):
    # Draw until the kernel fits the padded image and the pool window fits the feature map.
    while True:
        h, w = rng.integers(3, 10, size=2)
        kh, kw = rng.integers(1, 5, size=2)
        stride = int(rng.integers(1, 4))
        padding = int(rng.integers(0, 3))
        pool, pool_stride = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        oh = (h + 2 * padding - kh) // stride + 1
        ow = (w + 2 * padding - kw) // stride + 1
        if kh <= h + 2 * padding and kw <= w + 2 * padding and pool <= min(oh, ow):
            image = rng.normal(size=(h, w))
            kernel = rng.normal(size=(kh, kw))
            return image, kernel, stride, padding, pool, pool_stride


def test_equals_the_seed_style_loops_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(60):
        image, kernel, stride, padding, pool, pool_stride = _random_case(rng)
        w = walkthrough(image, kernel, stride, padding, pool, pool_stride)
        expected = seed_style_forward(image, kernel, stride, padding, pool, pool_stride)
        for got, want in zip(
            (w.padded, w.feature_map, w.activated, w.pooled), expected, strict=True
        ):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_equals_the_reference_loops_on_random_cases():
    rng = np.random.default_rng(1)
    for _ in range(50):
        image, kernel, stride, padding, pool, pool_stride = _random_case(rng)
        w = walkthrough(image, kernel, stride, padding, pool, pool_stride)
        x = image[None, :, :, None]
        fmap = conv2d_loop(x, kernel[:, :, None, None], stride=stride, padding=padding)
        pooled = max_pool2d_loop(np.maximum(fmap, 0), pool, pool_stride)
        np.testing.assert_allclose(w.feature_map, fmap[0, :, :, 0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(w.pooled, pooled[0, :, :, 0], rtol=1e-12, atol=1e-12)


def test_same_padding_and_pairs_follow_the_engine():
    rng = np.random.default_rng(2)
    image, kernel = rng.normal(size=(7, 7)), rng.normal(size=(2, 3))
    w = walkthrough(
        image, kernel, stride=(2, 1), padding="same", pool_size=(1, 2), pool_stride=None
    )
    fmap = ops.conv2d(
        image[None, :, :, None], kernel[:, :, None, None], stride=(2, 1), padding="same"
    )
    np.testing.assert_allclose(w.feature_map, fmap[0, :, :, 0], rtol=1e-12)
    assert w.feature_map.shape == (4, 7)  # ceil(7/2), ceil(7/1)
    assert w.pads == ((0, 1), (1, 1))  # TensorFlow puts the odd pad row at the bottom
    assert w.pooled.shape == (4, 3)  # pool_stride None -> pool_size (1, 2)


def test_dtypes_float32_kept_integers_become_float64():
    img32 = np.ones((4, 4), np.float32)
    assert walkthrough(img32, np.ones((2, 2), np.float32)).pooled.dtype == np.float32
    assert walkthrough(np.ones((4, 4), int), np.ones((2, 2), int)).pooled.dtype == np.float64


def test_result_is_frozen_and_read_only():
    w = walkthrough(*seed_example(), padding=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.pooled = None
    with pytest.raises(ValueError):
        w.feature_map[0, 0] = 1.0
    image, kernel = seed_example()
    w2 = walkthrough(image, kernel, padding=1)
    image[0, 0] = 999  # the result keeps its own copy
    assert w2.image[0, 0] == 10


def test_render_lists_every_step_with_its_numbers_in_order():
    w = walkthrough(*seed_example(), padding=1)
    text = w.render()
    assert str(w) == text
    headings = [
        "Kernel",
        "Stride: 1, Padding: 1",
        "Pool size: 2, Pool stride: 2",
        "1. Padding",
        "2. Convolution",
        "3. ReLU",
        "4. Max pooling",
    ]
    positions = [text.index(h) for h in headings]
    assert positions == sorted(positions)
    # the numbers printed after each heading are the arrays themselves
    assert "[[-20   0  20  20   0]" in text
    assert "[[ 0 30]\n [ 0 10]]" in text
    assert text.index("[[-20   0  20") > text.index("2. Convolution")
    assert text.index("[[ 0 30]") > text.index("4. Max pooling")


def test_to_arrays_round_trips_through_npz_without_pickle(tmp_path):
    w = walkthrough(*seed_example(), stride=1, padding=1, pool_size=2, pool_stride=2)
    np.savez(tmp_path / "w.npz", **w.to_arrays())
    with np.load(tmp_path / "w.npz", allow_pickle=False) as f:
        np.testing.assert_array_equal(f["feature_map"], SEED_FEATURE_MAP)
        np.testing.assert_array_equal(f["pooled"], SEED_POOLED)
        np.testing.assert_array_equal(f["pads"], [[1, 1], [1, 1]])
        np.testing.assert_array_equal(f["pool_stride"], [2, 2])
        assert set(f.files) >= {"image", "kernel", "padded", "activated", "stride", "pool_size"}


@pytest.mark.parametrize(
    "image, kernel, kwargs, words",
    [
        (np.ones((1, 5, 5)), np.ones((3, 3)), {}, ["image", "(1, 5, 5)"]),
        (np.ones((5, 5)), np.ones(3), {}, ["kernel", "(3,)"]),
        (np.ones((2, 2)), np.ones((3, 3)), {}, ["larger", "(3, 3)", "(2, 2)"]),
        (np.ones((5, 5)), np.ones((3, 3)), {"stride": 0}, ["stride", "0"]),
        (np.ones((5, 5)), np.ones((3, 3)), {"padding": -1}, ["padding", "-1"]),
        (np.ones((5, 5)), np.ones((3, 3)), {"pool_size": 4}, ["pool", "4"]),
        (np.ones((5, 5)), np.ones((3, 3)), {"pool_size": 0}, ["pool_size", "0"]),
        (np.full((5, 5), np.nan), np.ones((3, 3)), {}, ["NaN or inf", "(5, 5)"]),
    ],
)
def test_bad_input_raises_value_error_naming_it(image, kernel, kwargs, words):
    with pytest.raises(ValueError) as err:
        walkthrough(image, kernel, **kwargs)
    for word in words:
        assert word in str(err.value)


def test_walkthrough_class_is_exported():
    assert isinstance(walkthrough(np.eye(3), np.eye(2), pool_size=1), Walkthrough)

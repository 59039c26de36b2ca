"""The synthetic lines dataset: layout, labels, the line itself, noise, seeding, bad input."""

import numpy as np
import pytest

from convscope.data.lines import clean_pair, make_dataset


def _line_mask(x, noise):
    """Pixels that carry the line: the only ones >= 1 when noise < 1."""
    assert noise < 1
    return x[..., 0] >= 1.0


@pytest.mark.parametrize("n, size", [(1, 3), (7, 5), (100, 5), (10, 8)])
def test_shapes_dtypes_and_alternating_labels(n, size):
    x, y = make_dataset(n, size=size)
    assert x.shape == (n, size, size, 1) and x.dtype == np.float32
    assert y.shape == (n, 1) and y.dtype == np.float32
    expected = [1.0 if i % 2 == 0 else 0.0 for i in range(n)]
    assert y[:, 0].tolist() == expected


def test_centre_line_is_middle_column_or_row_like_the_seed():
    size = 7
    x, y = make_dataset(6, size=size, noise=0.2, seed=1)
    mask = _line_mask(x, 0.2)
    for img, label in zip(mask, y[:, 0], strict=True):
        expected = np.zeros((size, size), bool)
        if label == 1:
            expected[:, size // 2] = True
        else:
            expected[size // 2, :] = True
        np.testing.assert_array_equal(img, expected)


def test_noise_is_uniform_in_zero_to_noise():
    noise = 0.3
    x, _ = make_dataset(400, noise=noise, seed=2)
    line = _line_mask(x, noise)
    residual = np.where(line, x[..., 0] - 1.0, x[..., 0])
    assert residual.min() >= 0.0 and residual.max() < noise
    # uniform[0, 0.3): mean 0.15, and it fills the interval
    assert abs(residual.mean() - noise / 2) < 0.01
    assert residual.max() > 0.99 * noise and residual.min() < 0.01 * noise


def test_zero_noise_gives_exact_binary_images():
    x, _ = make_dataset(10, noise=0.0)
    assert set(np.unique(x).tolist()) == {0.0, 1.0}
    # one line of `size` pixels per image
    np.testing.assert_array_equal(x.sum(axis=(1, 2, 3)), np.full(10, 5.0))


def test_random_position_puts_one_full_line_at_varied_places():
    size = 6
    x, y = make_dataset(200, size=size, noise=0.1, position="random", seed=4)
    mask = _line_mask(x, 0.1)
    cols, rows = [], []
    for img, label in zip(mask, y[:, 0], strict=True):
        assert img.sum() == size
        if label == 1:
            (col,) = np.flatnonzero(img.all(axis=0))
            cols.append(col)
        else:
            (row,) = np.flatnonzero(img.all(axis=1))
            rows.append(row)
    # every row and every column is used somewhere
    assert sorted(set(cols)) == list(range(size))
    assert sorted(set(rows)) == list(range(size))


def test_same_seed_same_data_and_different_seed_different_data():
    a = make_dataset(20, seed=5)
    b = make_dataset(20, seed=5)
    c = make_dataset(20, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    r1 = make_dataset(20, position="random", seed=5)
    r2 = make_dataset(20, position="random", seed=5)
    np.testing.assert_array_equal(r1[0], r2[0])


def test_centre_and_random_share_noise_for_one_seed():
    xc, _ = make_dataset(30, seed=8)
    xr, _ = make_dataset(30, position="random", seed=8)
    off_line = ~(_line_mask(xc, 0.2) | _line_mask(xr, 0.2))
    np.testing.assert_array_equal(xc[..., 0][off_line], xr[..., 0][off_line])


def test_center_spelling_is_accepted():
    np.testing.assert_array_equal(
        make_dataset(4, position="center")[0], make_dataset(4, position="centre")[0]
    )


def test_clean_pair_is_the_seeds_test_images():
    x, y = clean_pair()
    vertical = np.zeros((5, 5), np.float32)
    vertical[:, 2] = 1
    horizontal = np.zeros((5, 5), np.float32)
    horizontal[2, :] = 1
    assert x.shape == (2, 5, 5, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0, ..., 0], vertical)
    np.testing.assert_array_equal(x[1, ..., 0], horizontal)
    np.testing.assert_array_equal(y, [[1.0], [0.0]])
    assert clean_pair(9)[0].shape == (2, 9, 9, 1)


@pytest.mark.parametrize(
    "kwargs, name, shown",
    [
        ({"n_samples": 0}, "n_samples", "0"),
        ({"n_samples": -3}, "n_samples", "-3"),
        ({"n_samples": 2.5}, "n_samples", "2.5"),
        ({"n_samples": True}, "n_samples", "True"),
        ({"size": 2}, "size", "2"),
        ({"size": "5"}, "size", "'5'"),
        ({"noise": -0.1}, "noise", "-0.1"),
        ({"noise": float("nan")}, "noise", "nan"),
        ({"noise": float("inf")}, "noise", "inf"),
        ({"position": "diagonal"}, "position", "'diagonal'"),
        ({"position": None}, "position", "None"),
    ],
)
def test_bad_input_names_argument_and_value(kwargs, name, shown):
    args = {"n_samples": 4, **kwargs}
    with pytest.raises(ValueError, match=name) as err:
        make_dataset(**args)
    assert shown in str(err.value)

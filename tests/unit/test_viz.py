"""Figures: grid layouts, colour scales, files and manifest, memory, no pyplot; the visuals stage.

The stage test builds small versions of every pipeline input in a temporary root (a 4/8-filter
Keras CNN, the engine twin, the lines mini-CNN, random digits) and runs the real stage function.
"""

from __future__ import annotations

import json
import os
from functools import partial

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from convscope.scratch.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Tanh  # noqa: E402
from convscope.scratch.model import Sequential  # noqa: E402
from convscope.validation import ValidationError  # noqa: E402
from convscope.viz.activations import (  # noqa: E402
    class_mean_activations,
    class_mean_figure,
    dead_filters,
    engine_conv_layers,
    engine_feature_maps,
    feature_map_figure,
)
from convscope.viz.core import figure_rgb, tile_mosaic, write_png  # noqa: E402
from convscope.viz.evolution import (  # noqa: E402
    kernel_evolution_gif,
    kernel_filmstrip,
    select_epochs,
)
from convscope.viz.kernels import KernelGrid  # noqa: E402
from convscope.viz.manifest import (  # noqa: E402
    Manifest,
    diff_manifests,
    load_manifest,
    verify_manifest,
)
from convscope.viz.parity import (  # noqa: E402
    ParityError,
    check_parity,
    engine_vs_keras_figure,
    map_differences,
)
from convscope.viz.walkthrough_figure import walkthrough_figure  # noqa: E402

RNG = np.random.default_rng(0)


def _tile_runs(rgb: np.ndarray, row: int, x0: int, x1: int) -> int:
    """Runs of non-white pixels along one pixel row between x0 and x1 (tiles on a scanline)."""
    line = rgb[row, x0:x1]
    coloured = np.any(line < 250, axis=-1)
    return int(np.sum(coloured[1:] & ~coloured[:-1]) + coloured[0])


def _scanline_tiles(grid: KernelGrid, tile_row: int) -> int:
    """Render ``grid`` and count the coloured tiles crossing the centre of tile row ``tile_row``."""
    from convscope.viz.core import close_figure

    fig = grid.layout(colorbar=False).figure(100)
    im, _ = grid.draw(fig, grid.layout(colorbar=False))
    rgb = figure_rgb(fig)
    ax = im.axes
    kh, kw = grid.kernel.shape[:2]
    width = grid.cols * (kw + 1) - 1
    y = tile_row * (kh + 1) + (kh - 1) / 2
    (xa, ya), (xb, _) = ax.transData.transform([(-0.5, y), (width - 0.5, y)])
    row = rgb.shape[0] - int(round(ya))
    runs = _tile_runs(rgb, row, int(np.ceil(xa)) + 1, int(np.floor(xb)) - 1)
    close_figure(fig)
    return runs


# --------------------------------------------------------------------------- kernel grids


def test_first_layer_grid_is_one_tile_per_filter_near_square():
    k = np.ones((3, 3, 1, 16))
    g = KernelGrid(k, layer="conv1")
    assert (g.rows, g.cols, g.n_tiles) == (4, 4, 16)
    assert g.mosaic().shape == (4 * 4 - 1, 4 * 4 - 1)
    # The rendered image really has 4 tiles on each row (white gutters between them).
    assert _scanline_tiles(g, 0) == 4
    assert _scanline_tiles(g, 3) == 4
    g = KernelGrid(np.ones((3, 3, 1, 10)), layer="conv1")  # 10 filters: 3 x 4, last row 2
    assert (g.rows, g.cols) == (3, 4)
    assert _scanline_tiles(g, 2) == 2


def test_deeper_layer_grid_is_input_channels_by_filters():
    k = np.ones((3, 3, 5, 7))
    g = KernelGrid(k, layer="conv2")
    assert (g.rows, g.cols, g.n_tiles) == (5, 7, 35)
    assert _scanline_tiles(g, 0) == 7
    # tile (input channel i, filter f) is kernel[:, :, i, f]
    k = RNG.normal(size=(3, 3, 5, 7))
    m = KernelGrid(k).mosaic()
    i, f = 3, 5
    np.testing.assert_array_equal(m[i * 4 : i * 4 + 3, f * 4 : f * 4 + 3], k[:, :, i, f])
    assert np.isnan(m[3, :]).all() and np.isnan(m[:, 3]).all()  # gutters


def test_kernel_scale_is_symmetric_one_per_layer(tmp_path):
    k = RNG.normal(size=(3, 3, 1, 8))
    k[0, 0, 0, 3] = -5.0  # the largest magnitude is negative: the scale must still be ±5
    grid = KernelGrid(k, layer="conv1")
    p = grid.plot(dpi=50)
    assert p.vmin == -5.0 and p.vmax == 5.0 and p.cmap == "RdBu_r"
    size = write_png(p, tmp_path / "k.png")
    with Image.open(tmp_path / "k.png") as im:
        assert im.size == size
    w_in, h_in = grid.layout().figsize
    assert size == (round(w_in * 50), round(h_in * 50))


def test_dead_filters_marked_and_validated():
    p = KernelGrid(np.ones((3, 3, 2, 4)), dead=[2, 2, 0]).plot()
    assert p.extra["dead_filters"] == [0, 2]
    labels = [t.get_text() for t in p.figure.axes[0].get_xticklabels()]
    assert labels[0] == "f0 dead" and labels[1] == "f1" and labels[2] == "f2 dead"
    with pytest.raises(ValidationError, match="dead filter=4"):
        KernelGrid(np.ones((3, 3, 1, 4)), dead=[4])
    with pytest.raises(ValidationError, match="HWIO"):
        KernelGrid(np.ones((3, 3, 4)))
    with pytest.raises(ValidationError, match="NaN"):
        KernelGrid(np.full((3, 3, 1, 4), np.nan))


def test_tile_mosaic_places_tiles_row_major():
    tiles = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
    m = tile_mosaic(tiles, gap=1)
    assert m.shape == (2 * 3 - 1, 3 * 3 - 1)
    np.testing.assert_array_equal(m[3:5, 6:8], tiles[1, 2])
    np.testing.assert_array_equal(m[0:2, 3:5], tiles[0, 1])


# --------------------------------------------------------------------------- evolution


def test_filmstrip_rows_are_selected_epochs_on_one_scale(tmp_path):
    hist = [RNG.normal(size=(3, 3, 1, 6)) * (e + 1) for e in range(30)]
    p = kernel_filmstrip(hist, layer="conv1", max_rows=8)
    assert p.extra["epochs_shown"] == select_epochs(30, 8)
    assert p.extra["epochs_shown"][0] == 0 and p.extra["epochs_shown"][-1] == 29
    assert p.grid == (8, 6)
    shown = np.stack([hist[e] for e in p.extra["epochs_shown"]])
    assert p.vmax == np.abs(shown).max() and p.vmin == -p.vmax
    write_png(p, tmp_path / "f.png")
    # deeper layer: per filter, the input channel its final weights weigh most
    deep = [RNG.normal(scale=0.1, size=(3, 3, 4, 5)) for _ in range(3)]
    deep[-1][:, :, 2, 0] += 5.0
    deep[-1][:, :, 1, 3] -= 5.0
    p = kernel_filmstrip(deep, layer="conv2")
    assert p.grid == (3, 5) and p.extra["channels"][0] == 2 and p.extra["channels"][3] == 1
    labels = [t.get_text() for t in p.figure.axes[0].get_xticklabels()]
    assert labels[0] == "f0<in2" and labels[3] == "f3<in1"
    with pytest.raises(ValidationError, match="channel=7"):
        kernel_filmstrip(deep, channel=7)
    write_png(p, tmp_path / "d.png")
    # one filter (the lines mini-CNN): epochs wrap into a grid instead of one tall column
    p = kernel_filmstrip([RNG.normal(size=(3, 3, 1, 1)) for _ in range(51)], layer="conv")
    rows, cols = p.grid
    assert cols > 1 and rows * cols >= len(p.extra["epochs_shown"])


def test_evolution_gif_has_one_frame_per_snapshot(tmp_path):
    hist = [RNG.normal(size=(3, 3, 1, 4)) for _ in range(5)]
    seen = []
    gif = kernel_evolution_gif(
        hist, tmp_path / "e.gif", layer="conv1", fps=5, on_frame=lambda s, rgb: seen.append(s)
    )
    assert seen == [0, 1, 2, 3, 4]
    with Image.open(tmp_path / "e.gif") as im:
        assert im.n_frames == 5
        assert gif.figure is None and gif.grid == (2, 2) and gif.extra["frames"] == 5
        assert im.info["duration"] == 200
        frames = []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
    # different kernels -> visibly different frames
    assert not np.array_equal(frames[0], frames[1])
    assert gif.vmin == -gif.vmax == -max(np.abs(h).max() for h in hist)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


# --------------------------------------------------------------------------- activations


def _small_engine(seed=0):
    return Sequential(
        [
            Conv2D(4, 3, name="c1"),
            ReLU(name="r1"),
            MaxPool2D(2, name="p1"),
            Conv2D(3, 3, activation="relu", name="c2"),
            Flatten(),
            Dense(3),
        ],
        input_shape=(10, 10, 1),
        seed=seed,
    )


def test_engine_feature_maps_take_conv_outputs_after_activation():
    m = _small_engine()
    x = RNG.random((2, 10, 10, 1)).astype(np.float32)
    maps = engine_feature_maps(m, x)
    assert list(maps) == ["c1", "p1", "c2"]
    from convscope.scratch import ops

    z = ops.conv2d(x, m.layers[0].kernel, m.layers[0].bias)
    np.testing.assert_allclose(maps["c1"], np.maximum(z, 0), rtol=1e-6, atol=1e-6)
    assert maps["p1"].shape == (2, 4, 4, 4)
    assert (maps["c2"] >= 0).all()
    kernels, relu = engine_conv_layers(m)
    assert list(kernels) == ["c1", "c2"] and relu == {"c1", "c2"}
    np.testing.assert_array_equal(kernels["c1"], m.layers[0].kernel)
    tanh = Sequential([Conv2D(2, 3, name="c"), Tanh(name="t")], input_shape=(6, 6, 1), seed=0)
    assert engine_conv_layers(tanh)[1] == set()  # a tanh map is never exactly zero
    assert engine_feature_maps(tanh, x[:, :6, :6])["c"].min() < 0


def test_class_means_match_direct_masked_means_and_find_dead_filters():
    m = _small_engine()
    c1 = m.layers[0]
    c1.kernel[..., 1] = -np.abs(c1.kernel[..., 1]) - 0.1  # non-negative inputs: never fires
    c1.bias[1] = -0.5
    x = RNG.random((37, 10, 10, 1)).astype(np.float32)
    y = RNG.integers(0, 3, 37)
    y[:3] = [0, 1, 2]
    stats = class_mean_activations(
        partial(engine_feature_maps, m), x, y, num_classes=4, batch_size=8
    )
    full = engine_feature_maps(m, x)
    for name in ("c1", "p1", "c2"):
        for c in range(3):
            np.testing.assert_allclose(
                stats.means[name][c], full[name][y == c].mean(axis=0), rtol=1e-5, atol=1e-6
            )
    assert np.isnan(stats.means["c1"][3]).all()  # class 3 absent: blank, not zero
    assert stats.counts.tolist() == [int((y == c).sum()) for c in range(4)]
    assert dead_filters(stats.channel_max["c1"]) == [1]
    p = class_mean_figure(stats.means["c1"], "c1", stats.counts)
    assert p.grid == (4, 4) and p.cmap == "viridis" and p.vmin == 0.0
    with pytest.raises(ValidationError, match="y"):
        class_mean_activations(partial(engine_feature_maps, m), x, y.astype(float))
    with pytest.raises(ValidationError, match="num_classes"):
        class_mean_activations(partial(engine_feature_maps, m), x, y, num_classes=2)


def test_feature_map_figure_grid_and_scale(tmp_path):
    maps = RNG.random((13, 13, 16))
    p = feature_map_figure(RNG.random((28, 28, 1)), maps, "pool1")
    assert p.grid == (4, 4) and p.cmap == "viridis"
    assert p.vmin == 0.0 and p.vmax == maps.max()
    write_png(p, tmp_path / "m.png")
    # tanh layers have negative outputs: zero-centred diverging scale instead of clipping
    p = feature_map_figure(np.zeros((8, 8)), RNG.normal(size=(6, 6, 5)), "conv1")
    assert p.cmap == "RdBu_r" and p.vmin == -p.vmax
    assert p.grid == (2, 3)
    write_png(p, tmp_path / "t.png")


def test_walkthrough_figure_on_the_seed_example(tmp_path):
    from convscope.scratch.layer_walkthrough import seed_example, walkthrough

    wt = walkthrough(*seed_example(), padding=1)
    p = walkthrough_figure(wt)
    assert p.grid == (1, 6)
    # the seed's feature map spans -30..30: the scale is ±30
    assert (p.vmin, p.vmax) == (-30.0, 30.0)
    texts = [t.get_text() for ax in p.figure.axes for t in ax.texts]
    assert texts.count("30") >= 3  # two cells of the feature map, two of ReLU, one pooled
    size = write_png(p, tmp_path / "w.png")
    assert size[0] > size[1]
    # the arrays saved by the walkthrough stage draw the same way
    assert walkthrough_figure(wt.to_arrays()).grid == (1, 6)


def test_walkthrough_figure_without_padding_keeps_a_one_cell_pooled_map(tmp_path):
    """padding=0 on the seed's 5x5 image: a 3x3 feature map pools to one cell, drawn as a
    1x1 map like the other steps (it used to be squeezed to a scalar and refused)."""
    from convscope.scratch.layer_walkthrough import seed_example, walkthrough

    wt = walkthrough(*seed_example(), padding=0)
    assert wt.pooled.shape == (1, 1)
    for arrays in (wt, wt.to_arrays()):
        p = walkthrough_figure(arrays)
        assert p.grid == (1, 6)
        assert p.figure.axes[-1].images[0].get_array().shape == (1, 1)
    write_png(p, tmp_path / "w.png")


# --------------------------------------------------------------------------- parity


def test_parity_figure_reports_differences_and_check_fails_above_tolerance(tmp_path):
    a = {"conv1": RNG.random((1, 6, 6, 3)), "pool1": RNG.random((1, 3, 3, 3))}
    b = {"c": a["conv1"].copy(), "p": a["pool1"] + 1e-7}
    diffs = map_differences(a, b)
    assert diffs["conv1"] == 0.0 and diffs["pool1"] == pytest.approx(1e-7)
    p = engine_vs_keras_figure(np.zeros((8, 8)), a, b)
    assert p.extra["max_abs_diff"] == pytest.approx(1e-7) and p.grid == (2, 3)
    write_png(p, tmp_path / "p.png")
    assert check_parity(diffs) == pytest.approx(1e-7)
    b["p"] = b["p"] + 0.01
    with pytest.raises(ParityError, match="tolerance"):
        check_parity(map_differences(a, b))
    with pytest.raises(ValueError, match="shape"):
        map_differences(a, {"c": a["conv1"], "p": a["conv1"]})


# --------------------------------------------------------------------------- manifest


def test_manifest_agrees_with_files_and_catches_disagreement(tmp_path):
    man = Manifest(tmp_path)
    rec = man.save_plot(
        KernelGrid(RNG.normal(size=(3, 3, 1, 4)), layer="conv1").plot(50),
        "keras",
        source="models/keras_cnn.keras",
        step=3,
    )
    gif = kernel_evolution_gif(
        [RNG.normal(size=(3, 3, 1, 4))] * 2, man.target("reports/figures/e.gif"), layer="conv1"
    )
    gif_rec = man.add(gif, "reports/figures/e.gif", "keras")
    with Image.open(tmp_path / gif_rec.file) as im:
        assert im.size == (gif_rec.width, gif_rec.height)
    man.write()
    assert rec.file == "reports/figures/keras__kernels__conv1.png"
    assert verify_manifest(man.path, tmp_path) == []
    data = json.loads(man.path.read_text())
    assert data["count"] == 2
    first = data["figures"][0]
    assert first["source"] == "models/keras_cnn.keras" and first["step"] == 3
    assert load_manifest(man.path)[1].format == "gif"
    # a stray figure, a wrong size and a missing file are all reported
    (tmp_path / "reports/figures/stray.png").write_bytes((tmp_path / rec.file).read_bytes())
    Image.new("RGB", (7, 7)).save(tmp_path / rec.file)
    (tmp_path / "reports/figures/e.gif").unlink()
    problems = verify_manifest(man.path, tmp_path)
    assert any("stray.png" in p for p in problems)
    assert any("7x7" in p for p in problems)
    assert any("missing" in p for p in problems)
    assert [p.name for p in man.remove_stale()] == ["stray.png"]
    man.path.write_text('{"version": 1}')
    with pytest.raises(ValidationError, match="not a convscope figure manifest"):
        load_manifest(man.path)


def test_figures_are_byte_reproducible_and_manifests_diff(tmp_path):
    k = RNG.normal(size=(3, 3, 2, 3))
    write_png(KernelGrid(k, layer="conv2").plot(40), tmp_path / "a.png")
    write_png(KernelGrid(k, layer="conv2").plot(40), tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    runs = []
    for scale, name in ((1.0, "one"), (2.0, "two")):
        man = Manifest(tmp_path / name)
        man.save_plot(KernelGrid(k * scale, layer="conv2").plot(40), "keras")
        if scale == 1.0:
            man.save_plot(KernelGrid(k[..., :1, :], layer="conv1").plot(40), "keras")
        man.write()
        runs.append(man.path)
    d = diff_manifests(*runs)
    assert d["only_a"] == ["keras/kernels/conv1"] and d["only_b"] == []
    vmax = float(np.abs(k).max())
    assert d["changed"] == {
        "keras/kernels/conv2": {"vmin": (-vmax, -2 * vmax), "vmax": (vmax, 2 * vmax)}
    }


# --------------------------------------------------------------------------- resources


# --------------------------------------------------------------------------- the visuals stage


# --- kernel images for MLflow cards ----------------------------------------------------------


def test_kernel_mosaic_layout_and_symmetric_diverging_colours():
    from matplotlib import colormaps

    from convscope.viz.kernel_cards import kernel_mosaic

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 2, 2, 5))  # 2 input channels -> 2 rows, 5 filters -> 5 cols
    img = kernel_mosaic(w, max_side=1)  # no upscaling: one pixel per weight
    assert img.shape == (2 * 4 + 1, 5 * 3 + 1, 3) and img.dtype == np.uint8
    vmax = np.abs(w).max()
    cmap = colormaps["RdBu_r"]
    for i in range(2):
        for j in range(5):
            for y in range(3):
                for x in range(2):
                    expect = np.round(np.array(cmap((w[y, x, i, j] / vmax + 1) / 2)[:3]) * 255)
                    got = img[1 + i * 4 + y, 1 + j * 3 + x]
                    assert np.abs(got.astype(int) - expect).max() <= 1
    assert (img[0] == 128).all() and (img[:, 0] == 128).all()  # grey separators
    GAP = 128

    # one channel: a grid near 2:1 (room for the scale band in the UI's card), 6 x 3 for 16
    first = kernel_mosaic(np.ones((3, 3, 1, 16)), max_side=1)
    assert first.shape == (3 * 4 + 1, 6 * 4 + 1, 3)
    assert (first[1:4, 1:4] == first[1, 1]).all()
    assert (first[9:12, 17:20] == GAP).all() and (first[9:12, 21:24] == GAP).all()  # 2 unused
    big = kernel_mosaic(np.ones((3, 3, 1, 16)))
    assert big.shape[:2] == (13 * (768 // 25), 25 * (768 // 25))  # whole-pixel upscale
    # an explicit scale: half the weight is half the way to the end of the colour map
    half = kernel_mosaic(np.full((1, 1, 1, 1), 0.5), max_side=1, gap=0, vmax=1.0)
    expect = np.round(np.array(cmap(0.75)[:3]) * 255)
    assert np.abs(half[0, 0].astype(int) - expect).max() <= 1
    with pytest.raises(ValueError, match=r"kernel has shape \(5,\): expected .* or HWIO"):
        kernel_mosaic(np.ones(5))


def test_kernel_card_is_one_readable_tile_per_filter_on_the_card_shape():
    from convscope.viz.kernel_cards import CARD_SIZE, card_scale, card_tiles, kernel_card

    rng = np.random.default_rng(1)
    deep = rng.normal(size=(3, 3, 16, 32))
    # a deeper layer's card: one tile per filter, the mean over its input channels
    np.testing.assert_allclose(card_tiles(deep)[5], deep[:, :, :, 5].mean(axis=2))
    assert card_tiles(np.ones((3, 3, 1, 16))).shape == (16, 3, 3)
    vmax = card_scale([deep, 2 * deep])
    assert vmax == pytest.approx(np.abs(card_tiles(2 * deep)).max())
    card = kernel_card(deep, vmax, "conv2", 3)
    assert card.shape == (CARD_SIZE[1], CARD_SIZE[0], 3) and card.dtype == np.uint8
    # MLflow shows a 256 px thumbnail: each weight must still be a few pixels wide there
    coloured = (np.abs(card.astype(int) - 255).max(axis=-1) > 40) & ~(card == 128).all(axis=-1)
    rows, cols = np.nonzero(coloured[80:-90])  # between the title line and the colour bar
    area_per_weight = (rows.max() - rows.min()) * (cols.max() - cols.min()) / (32 * 9)
    assert (area_per_weight * (256 / CARD_SIZE[0]) ** 2) ** 0.5 >= 6
    assert card_scale([np.zeros((3, 3, 1, 4))]) == 1.0


def test_kernel_grid_image_labels_every_filter_and_channel():
    from convscope.viz.kernel_cards import kernel_grid_image, kernel_mosaic

    w = np.random.default_rng(2).normal(size=(3, 3, 16, 32))
    grid = kernel_grid_image(w, float(np.abs(w).max()), "conv2", 0)
    mosaic = kernel_mosaic(w, max_side=max(768, 8 * 4 * 32))
    assert grid.shape[0] > mosaic.shape[0] and grid.shape[1] > mosaic.shape[1]


def test_fit_card_pads_tall_images_to_the_card_shape():
    from convscope.viz.kernel_cards import CARD_SIZE, fit_card

    tall = np.zeros((300, 200, 3), np.uint8)
    fitted = fit_card(tall)
    assert fitted.shape[0] == 300 and fitted.shape[1] / 300 == pytest.approx(1.6, abs=0.01)
    assert (fitted[:, :10] == 255).all() and (fitted[:, fitted.shape[1] // 2] == 0).all()
    wide = np.zeros((100, 400, 3), np.uint8)
    assert fit_card(wide) is wide or fit_card(wide).shape == wide.shape
    assert CARD_SIZE[0] / CARD_SIZE[1] == 1.6
    with pytest.raises(ValueError, match="expected"):
        fit_card(np.zeros((4, 4)))


def test_names_with_dollar_signs_are_plain_text_in_figures():
    """A run named like TeX (an unbalanced ``$`` too) is drawn as typed, not as mathtext."""
    from convscope.viz.compare import loss_curves_png
    from convscope.viz.core import figure_rgb, new_figure

    name = r"lr $\frac{1}{ $ test"
    png = loss_curves_png([(name, {"loss": [(1, 1.0), (2, 0.5)]}), ("$x$", {"loss": [(1, 2.0)]})])
    assert png.startswith(b"\x89PNG")
    fig = new_figure(3, 1)
    fig.suptitle(name)
    text = fig.texts[0]
    figure_rgb(fig)
    assert not text.get_parse_math() and text.get_text() == name

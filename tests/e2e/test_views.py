"""What a user sees every day: params of a run, the console, `dvc plots show`, the compare report.

The browser checks use Debian's chromium through Playwright (skipped where /usr/bin/chromium is
missing) with every network request blocked, as a machine offline would.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import yaml

from convscope.config import compose
from convscope.paths import project_root
from harness.project import PYTHON, copy_repo, git_init, run, subprocess_env
from tests.support.pipeline import native_log_lines, script

ROOT = project_root()
STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# --- params: exactly the keys a stage reads ---------------------------------------------------


# --- console: no TensorFlow C++ lines --------------------------------------------------------


@pytest.mark.slow
def test_a_tensorflow_stage_prints_no_cpp_line_by_dvc_by_hand_or_in_a_sweep(tmp_path):
    """train_keras (the stage that imports TensorFlow) started the three ways a user starts
    it: `dvc repro`, `python pipelines/train_keras.py`, and a joblib sweep, whose jobs are
    processes of their own. No TensorFlow/absl C++ line of any severity reaches stderr."""
    repo = copy_repo(tmp_path / "repo")
    # tracking=none: what is printed is the subject, not what is recorded (the tracking
    # process's own stderr goes to a file, never to the stage's)
    quiet = ("experiment=smoke", "tracking=none")
    composed = run([PYTHON, "-m", "convscope.cli", "compose", *quiet], cwd=repo)
    assert composed.returncode == 0, composed.stderr
    git_init(repo)
    dvc = str(Path(PYTHON).parent / "dvc")
    started = {
        "dvc": run([dvc, "repro", "train_keras"], cwd=repo),
        "by hand": script(repo, "train_keras", *quiet),
        "sweep": script(repo, "train_keras", "-m", "hydra/launcher=parallel", *quiet, "seed=1,2"),
    }
    for how, done in started.items():
        assert done.returncode == 0, f"{how}: {done.stderr}"
        assert native_log_lines(done.stderr) == [], f"{how}: {done.stderr}"
    assert "Running stage 'train_keras'" in started["dvc"].stdout  # DVC did start it
    assert len(list(repo.glob("outputs/multirun/train_keras/*/*/models/keras_cnn.keras"))) == 2


# --- dvc plots show, offline -----------------------------------------------------------------


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("plots") / "repo")
    shutil.copytree(ROOT / "plots", repo / "plots", dirs_exist_ok=True)
    git_init(repo)
    out = repo / "shown"
    shown = run([str(Path(PYTHON).parent / "dvc"), "plots", "show", "-o", str(out)], cwd=repo)
    assert shown.returncode == 0, shown.stderr
    return out / "index.html"


def test_plots_page_references_no_network_url(plots_page):
    html = plots_page.read_text()
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html)
    assert not [u for u in urls if re.match(r"(https?:)?//", u)]
    assert "cdn.jsdelivr" not in html


# vega-lite's first two category colours (the "tableau10" scheme): the first and second series
SERIES_COLOURS = [[76, 120, 168], [245, 133, 24]]
# how many pixels of a chart's canvas are within a small distance of each colour
SERIES_PIXELS = """([id, colours]) => {
  const c = document.querySelector('#' + id + ' canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  return colours.map(([r, g, b]) => {
    let n = 0;
    for (let i = 0; i < d.length; i += 4)
      if (Math.abs(d[i] - r) + Math.abs(d[i + 1] - g) + Math.abs(d[i + 2] - b) < 30) n++;
    return n;
  });
}"""


@needs_chromium
def test_plots_page_renders_offline_one_chart_per_stage_and_quantity(plots_page):
    from playwright.sync_api import sync_playwright

    top = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    ids = [next(iter(entry)) for entry in top]
    requested = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})

        def block(route):
            requested.append(route.request.url)
            if route.request.url.startswith("file://"):
                route.continue_()
            else:
                route.abort()

        page.route("**/*", block)
        page.goto(plots_page.as_uri())
        # vega-embed draws each chart on a canvas; the 3 stage bar charts come on top
        page.wait_for_function(f"document.querySelectorAll('canvas').length >= {len(ids) + 3}")
        page.wait_for_timeout(500)
        sizes = page.eval_on_selector_all("canvas", "cs => cs.map(c => [c.width, c.height])")
        drawn = {i: page.evaluate(SERIES_PIXELS, [i, SERIES_COLOURS]) for i in ids}
        page.screenshot(path=str(plots_page.parent / "plots.png"), full_page=True)
        browser.close()
    assert [u for u in requested if not u.startswith("file://")] == []
    assert all(w > 100 and h > 100 for w, h in sizes)
    # one colour per series: loss blue, val_loss orange (a line and its points are hundreds
    # of pixels; a legend symbol alone is a few dozen)
    for entry in top:
        plot_id, spec = next(iter(entry.items()))
        (columns,) = spec["y"].values()
        n_series = len(columns) if isinstance(columns, list) else 1
        blue, orange = drawn[plot_id]
        assert blue > 150, (plot_id, drawn[plot_id])
        assert (orange > 150) if n_series == 2 else (orange == 0), (plot_id, drawn[plot_id])
    html = plots_page.read_text()
    for entry in top:
        spec = next(iter(entry.values()))
        assert spec["title"] in html and f'"title": "{spec["y_label"]}"' in html
    # the 50-epoch lines curves and the 3-epoch MNIST curves never share an axis
    assert all(len(next(iter(e.values()))["y"]) == 1 for e in top)


# --- the MLflow run page: kernel image cards -------------------------------------------------

CARD_AND_IMAGE = """key => {
  const card = [...document.querySelectorAll('[data-testid=experiment-view-compare-runs-card]')]
    .find(c => [...c.querySelectorAll('*')].some(e => e.textContent.trim() === key
                                                     && e.childElementCount === 0));
  if (!card) return null;
  const img = card.querySelector('img');
  if (!img) return {loaded: false};
  const r = img.getBoundingClientRect();
  const box = card.getBoundingClientRect();
  // what of the image is on screen: its box cut by every clipping box up to the card
  let [top, bottom, left, right] = [r.top, r.bottom, r.left, r.right];
  for (let e = img.parentElement; e && e !== card.parentElement; e = e.parentElement) {
    const style = getComputedStyle(e);
    if (style.overflowX === 'visible' && style.overflowY === 'visible' && e !== card) continue;
    const c = e.getBoundingClientRect();
    [top, bottom] = [Math.max(top, c.top), Math.min(bottom, c.bottom)];
    [left, right] = [Math.max(left, c.left), Math.min(right, c.right)];
  }
  return {image: [r.width, r.height], shown: [Math.max(0, right - left), Math.max(0, bottom - top)],
          inside: r.top >= box.top && r.bottom <= box.bottom && r.left >= box.left
                  && r.right <= box.right,
          loaded: img.complete && img.naturalHeight > 0, src: img.currentSrc};
}"""

#: what MLflow's run page shows in a 1366, 1600 and 1920 px wide window, fresh profile
VIEWPORTS = [(1366, 768), (1600, 1000), (1920, 1080)]
EPOCHS = 3


@pytest.fixture(scope="module")
def run_page(tmp_path_factory):
    """A train_keras run as the stage logs it (its dvc.yaml config values, epochs, kernels of
    two conv layers, the kernel images at the run's end) and a tall figure by epoch as the
    visuals stage logs its evolution frames, in a local store served by `mlflow server` on
    127.0.0.1; yields each run page's "Model metrics" URL, the server's and a folder."""
    from omegaconf import OmegaConf

    from convscope.runner import _stage_params
    from convscope.tracking import start_run
    from convscope.tracking.lifecycle import stage_experiment
    from convscope.viz.kernel_cards import fit_card
    from harness.services import mlflow_server

    tmp = tmp_path_factory.mktemp("run_page")
    (tmp / "dvc.yaml").write_text("stages: {}\n")
    cfg = compose(["experiment=smoke"])
    rng = np.random.default_rng(0)
    tracking = {"backend": "local", "experiment_prefix": "convscope"}
    config = OmegaConf.to_container(cfg, resolve=True)
    params = _stage_params("train_keras", cfg, [])
    with start_run(tracking, "train_keras", config, root=tmp, params=params) as r:
        history: dict = {}
        for epoch in range(EPOCHS):
            if epoch:
                r.log_epoch(epoch, {"loss": 1 / epoch, "val_loss": 1.1 / epoch})
            kernels = {
                "conv1": rng.normal(size=(3, 3, 1, 16)),
                "conv2": rng.normal(size=(3, 3, 16, 32)),
            }
            r.log_kernels(epoch, kernels)
            for name, kernel in kernels.items():
                history.setdefault(name, {})[epoch] = kernel
        r.log_kernel_images(history)  # as the runner does when a stage completes
    # the visuals stage logs figures by epoch (evolution frames, taller than wide) through
    # fit_card; its run is another page
    with start_run(tracking, "visuals", config, root=tmp, params={}) as v:
        for epoch in range(EPOCHS):
            tall = np.full((420, 300, 3), 60 * epoch, np.uint8)
            v.log_image(fit_card(tall), "evolution/keras/conv1", epoch)
    with mlflow_server(f"sqlite:///{tmp / 'mlflow.db'}", str(tmp / "served"), workers=1) as server:
        # an experiment made through a server, as a team's stage makes it
        _, _, served_id = stage_experiment({"backend": "server", "uri": server.uri}, "served")
        page = f"{server.uri}/#/experiments/{{}}/runs/{{}}/model-metrics"
        yield {
            "served_experiment": served_id,
            "train_keras": page.format(r.experiment_id, r.run_id),
            "visuals": page.format(v.experiment_id, v.run_id),
            "server": server.uri,
            "tmp": tmp,
        }


@contextlib.contextmanager
def _opened(
    url: str, server: str, viewport: tuple[int, int] = (1600, 1000), key: str = "kernels/conv1"
):
    """``url`` in a fresh chromium (so MLflow's default settings), once the image of card
    ``key`` has loaded; every request that is not to ``server`` is blocked."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        page.route(
            "**/*",
            lambda route: (
                route.continue_()
                if route.request.url.startswith((server, "data:", "blob:"))
                else route.abort()
            ),
        )
        page.goto(url)
        page.get_by_text(key, exact=True).wait_for(timeout=30_000)
        page.wait_for_function(f"(({CARD_AND_IMAGE})({key!r}) || {{}}).loaded", timeout=30_000)
        try:
            yield page
        finally:
            browser.close()


def _whole(seen, min_height=100):
    """The image is loaded, inside its card, all on screen (no box of the card cuts it) and
    at least ``min_height`` px tall."""
    (width, height), (shown_w, shown_h) = seen["image"], seen["shown"]
    whole = shown_w >= width - 1 and shown_h >= height - 1
    return seen["loaded"] and seen["inside"] and whole and height >= min_height


@needs_chromium
@pytest.mark.parametrize("viewport", VIEWPORTS, ids=lambda v: f"{v[0]}px")
def test_run_page_shows_every_kernel_card_whole_in_a_fresh_profile(run_page, viewport):
    """A person who opens a run's page in a fresh browser sees the kernel grid of every conv
    layer (and the visuals' evolution frames) whole in its card, and steps through epochs,
    without changing a setting: the run records no MLflow params for the card to list above
    the image, and every image has the card's 1.6:1 shape."""
    server, tmp = run_page["server"], run_page["tmp"]
    pages = {
        "train_keras": ["kernels/conv1", "kernels/conv2"],
        "visuals": ["evolution/keras/conv1"],
    }
    seen, stepped = {}, {}
    for stage, keys in pages.items():
        with _opened(run_page[stage], server, viewport, keys[0]) as page:
            for key in keys:
                page.wait_for_function(f"(({CARD_AND_IMAGE})({key!r}) || {{}}).loaded")
                seen[key] = page.evaluate(CARD_AND_IMAGE, key)
            page.screenshot(path=str(tmp / f"{stage}_{viewport[0]}.png"))
            # the epoch slider's number box: the last epoch shows the image logged then
            key = keys[-1]
            card = page.locator("[data-testid=experiment-view-compare-runs-card]").filter(
                has=page.get_by_text(key, exact=True)
            )
            card.locator("input").last.fill(str(EPOCHS - 1))
            card.locator("input").last.press("Tab")
            page.wait_for_function(
                f"decodeURIComponent((({CARD_AND_IMAGE})({key!r}) || {{src: ''}}).src)"
                f".includes('+step+{EPOCHS - 1}+')",
                timeout=15_000,
            )
            stepped[key] = page.evaluate(CARD_AND_IMAGE, key)
    for key, what in seen.items():
        assert _whole(what), (key, what)
        assert "+step+0+" in unquote(what["src"]), what["src"]
    for key, what in stepped.items():
        assert _whole(what), (key, what)


@needs_chromium
def test_experiments_are_model_training_and_convscope_links_open_their_runs(run_page):
    """Every experiment convscope creates, in a local store or through a server, carries
    MLflow's model-training kind; the page `convscope ui` prints for it opens, in a fresh
    browser, on the experiment's training runs, not on MLflow's GenAI overview."""
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    from convscope.cli import training_pages

    server, tmp = run_page["server"], run_page["tmp"]
    client = MlflowClient(server)
    experiments = {e.name: e for e in client.search_experiments()}
    ours = ["convscope/train_keras", "convscope/visuals", "convscope/served"]
    for name in ours:
        assert experiments[name].tags.get("mlflow.experimentKind") == "custom_model_development"
    pages = dict(training_pages(tmp, server))
    assert set(pages) == {"convscope/train_keras", "convscope/visuals"}  # those with runs
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(pages["convscope/train_keras"])
        # the run's own link in the runs table (the experiment's link may bear its name too)
        run_link = page.get_by_role("link", name="train_keras", exact=True)
        run_link.and_(page.locator('a[href*="/runs/"]')).wait_for(timeout=30_000)
        url = page.url
        switch = page.get_by_text("Model training", exact=True).count()
        genai_panels = page.get_by_text("Token Usage").count() + page.get_by_text("Latency").count()
        page.screenshot(path=str(tmp / "experiment_page.png"))
        browser.close()
    assert "/runs?" in url and "workflowType=machine_learning" in url, url
    assert switch >= 1 and genai_panels == 0


# --- the compare report ----------------------------------------------------------------------


#: for each kernel tile of the compare report's filter grid: [row, column, left, width]
TILE_BOXES = """() => [...document.querySelectorAll('table.filters tr')].flatMap((tr, row) =>
  [...tr.querySelectorAll('td')].map((td, col) => [td.querySelector('img'), row, col])
    .filter(([img]) => img)
    .map(([img, row, col]) => { const r = img.getBoundingClientRect();
                                return [row, col, r.left, r.width]; }))"""
#: words of table cells that the browser broke across lines: [word, cell text]
BROKEN_WORDS = """() => {
  const broken = [];
  for (const cell of document.querySelectorAll('th, td')) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.textContent.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
        if (tops.size > 1) broken.push([m[0], cell.textContent.trim().slice(0, 60)]);
      }
    }
  }
  return broken;
}"""


@pytest.fixture(scope="module")
def compare_report(tmp_path_factory):
    """Three runs of 16, 16 and 48 filters (the last a sweep's job) and their compare report:
    ``(report, the sweep parent's run id)``, one store for every width below."""
    from convscope.compare import compare
    from convscope.tracking import start_run
    from convscope.tracking.hydra_callbacks import open_sweep
    from convscope.tracking.store import PARENT_ENV

    root = tmp_path_factory.mktemp("compare-report")
    (root / "dvc.yaml").write_text("stages: {}\n")
    cfg = {"backend": "local", "experiment_prefix": "t"}
    rng = np.random.default_rng(0)
    config = {"keras": {f"option_{i}": i for i in range(30)}, "seed": 0}
    sweep = root / "sweep"
    sweep.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.delenv(PARENT_ENV, raising=False)  # what open_sweep sets goes with the block
        parent = open_sweep(cfg, "train_keras", sweep, [], root)
        os.environ.pop(PARENT_ENV)  # its job finds it through the sweep folder
        for filters, epochs in ((16, 3), (16, 12), (48, 7)):
            keras = {**config["keras"], "filters": filters, "epochs": epochs, "lr": filters / 1e4}
            with start_run(
                cfg, "train_keras", {**config, "keras": keras}, root=root,
                sweep_dir=sweep if filters == 48 else None,
                run_name=f"keras.filters={filters} keras.epochs={epochs} · train_keras",
            ) as r:  # fmt: skip
                r.log_epoch(1, {"loss": 0.17054321, "val_loss": 1.1, "accuracy": 0.5})
                r.log_kernels(1, {"conv1": rng.normal(size=(3, 3, 1, filters))})
    return compare(experiment="t/train_keras", root=root, out="compare.html"), parent


@needs_chromium
@pytest.mark.parametrize("width", [1600, 1000])
def test_compare_report_lines_up_matched_filters_in_columns_at_any_width(
    compare_report, tmp_path, width
):
    """Three runs of 16, 16 and 48 filters (one a sweep's job): every matched filter sits in
    its reference filter's column in every row, no number or name is broken mid-word, each
    run is named once in the filter grid, and the sweep parent the search found is named."""
    from playwright.sync_api import sync_playwright

    report, parent = compare_report

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": width, "height": 1000})
        page.route(
            "**/*",
            lambda route: (
                route.continue_()
                if route.request.url.startswith(("file://", "data:"))
                else route.abort()
            ),
        )
        page.goto(report.path.as_uri())
        tiles = page.evaluate(TILE_BOXES)
        broken = page.evaluate(BROKEN_WORDS)
        heads = page.locator("table").first.locator("th").all_inner_texts()
        grid_text = page.locator("table.filters").inner_text()
        page_width = page.evaluate("document.documentElement.scrollWidth")
        page.screenshot(path=str(tmp_path / f"compare_{width}.png"), full_page=True)
        browser.close()
    assert page_width <= width  # a wide table scrolls inside its box; the page does not
    assert broken == []
    assert {"keras.filters", "keras.epochs", "keras.lr"} <= set(heads)
    assert not any(h.startswith("keras.option") for h in heads)
    lefts: dict[int, set[float]] = {}
    for _, col, left, tile_width in tiles:
        lefts.setdefault(col, set()).add(round(left))
        assert tile_width >= 66  # 22 px a weight, unscaled
    rows = {row for row, *_ in tiles}
    assert len(rows) == 3 and len(lefts) == 48
    assert all(len(xs) == 1 for xs in lefts.values()), lefts  # one x per column, every row
    assert sum(len([t for t in tiles if t[0] == row]) for row in rows) == 16 + 16 + 48
    for filters, epochs in ((16, 3), (16, 12), (48, 7)):
        assert grid_text.count(f"keras.filters={filters} keras.epochs={epochs}") == 1
    assert f"Left out: sweep parent run train_keras sweep ({parent[:8]})" in report.path.read_text()


os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


# --- DVC experiments in a terminal -------------------------------------------------------------

TOY_STAGE = """\
import json, pathlib, yaml
p = yaml.safe_load(open("params.yaml"))
pathlib.Path("metrics").mkdir(exist_ok=True)
acc = 0.9 + 0.01 * p["keras"]["epochs"]
json.dump({"test_accuracy": acc, "loss": 0.2}, open("metrics/train_keras.json", "w"))
json.dump({"test_accuracy": acc - 0.005}, open("metrics/train_scratch_mnist.json", "w"))
pathlib.Path("data").mkdir(exist_ok=True)
pathlib.Path("data/mnist.npz").write_text(str(p))
"""


@pytest.mark.slow
def test_convscope_exps_fits_120_columns_with_two_experiments(tmp_path):
    """A DVC repository with the project's params layout and two experiments: `convscope
    exps` shows both under their baseline with the params they changed and the test
    accuracies, every line within 120 characters (DVC's own table has a column for every
    param, metric, dependency and output)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / "train.py").write_text(TOY_STAGE)
    stage = {
        "cmd": f"{PYTHON} train.py",
        "deps": ["train.py"],
        "params": ["keras", "seed", "data"],
        "outs": ["data/mnist.npz"],
        "metrics": [
            {f"metrics/{m}.json": {"cache": False}} for m in ("train_keras", "train_scratch_mnist")
        ],
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train_keras": stage}}))
    git_init(repo)
    dvc = str(Path(PYTHON).parent / "dvc")
    for command in (
        [dvc, "init", "-q"],
        [dvc, "repro", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "baseline"],
        [dvc, "exp", "run", "-q", "-n", "longer", "-S", "keras.epochs=5"],
        [dvc, "exp", "run", "-q", "-n", "wider", "-S", "keras.filters=64", "-S", "keras.epochs=2"],
    ):
        done = run(command, cwd=repo)
        assert done.returncode == 0, (command, done.stderr)
    shown = run([PYTHON, "-m", "convscope.cli", "exps"], cwd=repo, COLUMNS="120")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.rstrip("\n").splitlines()
    assert max(map(len, lines)) <= 120, shown.stdout
    head = lines[0].split()
    assert head[:2] == ["Experiment", "Created"] and "keras.epochs" in head
    assert "keras.filters" in head and "test_acc" in head
    longer = next(line for line in lines if "longer" in line)
    wider = next(line for line in lines if "wider" in line)
    assert longer.startswith(("├─ ", "└─ ")) and wider.startswith(("├─ ", "└─ "))
    assert " 5 " in longer and "0.95" in longer and " 64 " in wider and "0.92" in wider
    assert len(lines) == 1 + 4  # workspace, the baseline, two experiments


# --- the command line a person reads ----------------------------------------------------------


@pytest.mark.slow
def test_convscope_ui_prints_training_run_pages_and_no_warning(tmp_path):
    """`convscope ui` on a project with runs: its first lines name each experiment's
    training-runs page, and the server starts without MLflow's registry notice or
    starlette's deprecation warning."""
    import signal

    from convscope.tracking.lifecycle import stage_experiment
    from harness.services import free_port, http_ok, wait_until

    repo = copy_repo(tmp_path / "repo")
    _, client, exp_id = stage_experiment({"backend": "local"}, "train_keras", repo)
    client.create_run(exp_id, run_name="train_keras")
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "convscope.cli", "ui", "--port", str(port)],
        cwd=repo, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), proc, "convscope ui")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
    page = f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    assert out.splitlines()[1].split() == ["convscope/train_keras", page], out
    assert "Registry store URI not provided" not in out
    assert "DeprecationWarning" not in out, out

"""Screenshots of what a person sees, for docs/gallery.md: `make gallery`.

Run after `make run` (the pipeline's figures, plots and MLflow store must be there). In a
fresh headless Chromium (Debian's, driven by Playwright, every request outside this machine
blocked) it takes:

* the MLflow UI, served by `convscope ui`'s command on a free port: the train_keras
  experiment's training runs, the latest train_keras run's kernel cards and the visuals
  run's, each page opened by the link convscope prints;
* the `convscope compare` report of the train_keras experiment;
* the `dvc plots show` page;
* the interpret stage's saliency and Grad-CAM figures and the visuals stage's conv2 grid, as
  the stages wrote them.

Each PNG is reduced to a 256-colour palette so it stays a few hundred KB. The page,
docs/gallery.md, lists them with what each shows. Usage::

    python docs/gallery.py [--root PROJECT] [--out docs/gallery]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1440, "height": 900}
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def mlflow_ui(root: Path) -> Iterator[str]:
    """The project's store served by the command `convscope ui` runs; yields its base URL."""
    from convscope.cli import UI_WARNINGS, ui_command

    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env["PYTHONWARNINGS"] = UI_WARNINGS
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(
        ui_command(root, port), cwd=root, env=env, stdout=log, stderr=log, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _answers(base + "/health"):
            if server.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise SystemExit(f"gallery: the MLflow UI did not start:\n{log.read()[-2000:]}")
            time.sleep(0.3)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, 15)
        server.wait(timeout=30)


def small_png(src: Path | bytes, dest: Path, max_width: int | None = None) -> None:
    """``src`` (a file or PNG bytes) as a 256-colour PNG at most ``max_width`` wide."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as image:
        image = image.convert("RGB")
        if max_width and image.width > max_width:
            height = round(image.height * max_width / image.width)
            image = image.resize((max_width, height), Image.Resampling.LANCZOS)
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(dest, optimize=True)


def latest_run(root: Path, experiment: str) -> tuple[str, str]:
    """(experiment id, run id) of ``experiment``'s latest finished run in the project's store."""
    from convscope.tracking.query import experiments_with_runs, search_runs

    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = search_runs(uri, experiment, "attributes.status = 'FINISHED'")
    if not runs:
        raise SystemExit(f"gallery: no finished run in {experiment}: run `make run` first")
    ids = {name: exp_id for exp_id, name in experiments_with_runs(uri)}
    return ids[experiment], runs[-1].run_id


def shoot(root: Path, out: Path) -> list[tuple[str, str]]:
    """Take every screenshot into ``out``; returns (file name, caption) in page order."""
    from playwright.sync_api import sync_playwright

    from convscope.compare import compare
    from convscope.tracking.store import ui_page

    shots: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="convscope-gallery-") as tmp_name:
        tmp = Path(tmp_name)
        report = compare(experiment="convscope/train_keras", root=root, out=tmp / "compare.html")
        plots = tmp / "plots"
        dvc = Path(sys.executable).with_name("dvc")
        done = subprocess.run(
            [str(dvc), "plots", "show", "-o", str(plots)], cwd=root, capture_output=True
        )
        if done.returncode != 0:
            raise SystemExit(f"gallery: dvc plots show failed: {done.stderr.decode()[-500:]}")

        with mlflow_ui(root) as base, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)

            def page_at(url: str, wait_for: str, name: str, caption: str, full: bool = False):
                page = browser.new_page(viewport=VIEWPORT)  # a fresh profile for each view
                allowed = (base, "file://", "data:", "blob:")
                page.route(
                    "**/*",
                    lambda route: (
                        route.continue_()
                        if route.request.url.startswith(allowed)
                        else route.abort()
                    ),
                )
                page.goto(url)
                found = page.locator(wait_for) if wait_for.startswith("css=") else None
                found = found or page.get_by_text(wait_for, exact=True)
                found.first.wait_for(timeout=60_000)
                page.wait_for_timeout(3000)  # images and charts settle
                png = page.screenshot(full_page=full)
                page.close()
                small_png(png, out / name, max_width=1440)
                shots.append((name, caption))

            exp_id, run_id = latest_run(root, "convscope/train_keras")
            page_at(
                ui_page(base, exp_id),
                "train_keras",
                "mlflow_training_runs.png",
                "An experiment opened from the link `convscope ui` prints: its training runs.",
            )
            page_at(
                ui_page(base, exp_id, run_id),
                "kernels/conv2",
                "mlflow_run_kernels.png",
                "A train_keras run's Model metrics in a fresh browser: every conv layer's "
                "kernels whole in its card, the slider steps through the epochs.",
            )
            vis_exp, vis_run = latest_run(root, "convscope/visuals")
            page_at(
                ui_page(base, vis_exp, vis_run),
                "evolution/keras/conv1",
                "mlflow_run_visuals.png",
                "The visuals run: kernel grids and evolution frames by epoch, whole in cards.",
            )
            page_at(
                report.path.as_uri(),
                "Metrics",
                "compare_report.png",
                "`convscope compare -e convscope/train_keras`: metrics, loss curves, and the "
                "matched filters in columns.",
                full=True,
            )
            page_at(
                (plots / "index.html").as_uri(),
                "css=canvas",
                "dvc_plots.png",
                "`dvc plots show`, offline: one chart per training stage and quantity.",
                full=True,
            )
            browser.close()

    figures = [
        ("reports/interpret", "keras__saliency.png", "interpret_saliency.png",
         "Saliency of the Keras CNN for each image's label, laid over the digit."),
        ("reports/interpret", "keras__grad_cam__*.png", "interpret_grad_cam.png",
         "Grad-CAM of the Keras CNN; a panel with no positive evidence says so, and why."),
        ("reports/figures", "keras__kernels__conv2.png", "figure_kernels_conv2.png",
         "The visuals stage's grid of the Keras CNN's conv2: every filter and input channel."),
    ]  # fmt: skip
    for folder, pattern, name, caption in figures:
        found = sorted((root / folder).glob(pattern))
        if found:
            small_png(found[0], out / name, max_width=1440)
            shots.append((name, caption))
    return shots


def write_page(shots: list[tuple[str, str]], out: Path, page: Path) -> None:
    lines = [
        "# What a person sees",
        "",
        "Screenshots made by `make gallery` (`docs/gallery.py`) from a `make run` workspace,",
        "in a fresh headless Chromium: nothing here is drawn by hand.",
        "",
    ]
    rel = os.path.relpath(out, page.parent)
    for name, caption in shots:
        lines += [
            f"## {Path(name).stem.replace('_', ' ')}",
            "",
            caption,
            "",
            f"![{name}]({rel}/{name})",
            "",
        ]
    page.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(HERE.parent), help="project after `make run`")
    parser.add_argument("--out", default=str(HERE / "gallery"), help="folder of the PNGs")
    args = parser.parse_args(argv)
    root, out = Path(args.root).resolve(), Path(args.out).resolve()
    missing = [p for p in ("mlflow.db", "reports/interpret", "plots") if not (root / p).exists()]
    if missing:
        print(f"gallery: error: {', '.join(missing)} missing under {root}: run `make run` first")
        return 2
    staged = Path(tempfile.mkdtemp(prefix="gallery-", dir=out.parent))
    try:
        shots = shoot(root, staged)
        shutil.rmtree(out, ignore_errors=True)
        staged.rename(out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    write_page(shots, out, HERE / "gallery.md")
    for name, _ in shots:
        print(f"{out / name}  {(out / name).stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

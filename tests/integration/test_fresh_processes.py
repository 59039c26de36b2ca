"""What needs a fresh Python process to see: which modules an import pulls in (the engine core
NumPy only, the engine package without TensorFlow, viz without pyplot, tracking without
mlflow), and how the project treats processes that died (pid liveness, staged leftovers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from convscope.files import (
    remove_stale_staged,
)

CORE = ["ops", "layers", "model", "losses", "optimizers", "training", "layer_walkthrough"]
CORE += ["mini_cnn", "reference"]


NUMPY_ONLY = {"convscope", "convscope.files", "convscope.validation", "convscope.recording"}
NUMPY_ONLY |= {"convscope.native_logs"}  # standard library only: quiets TensorFlow if loaded
SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "MLFLOW_DISABLE_TELEMETRY": "true"}


def test_engine_core_imports_numpy_and_the_standard_library_only():
    """Import every core module in a fresh interpreter; whatever got imported on the way must
    be the standard library, NumPy, or a NumPy-only convscope module."""
    code = (
        "import importlib, json, sys\n"
        "before = set(sys.modules)\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module('convscope.scratch.' + name)\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    imported = json.loads(out.stdout)
    assert "convscope.scratch.ops" in imported
    # multiprocessing names the main module __mp_main__ too
    allowed = NUMPY_ONLY | {"convscope.scratch", "__mp_main__"}
    allowed |= {f"convscope.scratch.{m}" for m in CORE}
    bad = [
        m
        for m in imported
        if m.split(".")[0] not in sys.stdlib_module_names
        and m.split(".")[0] != "numpy"
        and m not in allowed
    ]
    assert bad == [], f"the engine core imports {bad}"
    for heavy in ("tqdm", "threadpoolctl", "tensorflow", "keras", "hydra", "omegaconf", "mlflow"):
        assert heavy not in {m.split(".")[0] for m in imported}


def test_engine_package_imports_without_tensorflow():
    code = (
        "import sys, convscope.scratch as s, convscope.engine_train\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'\n"
        "assert callable(s.Sequential)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_engine_path_does_not_import_tensorflow():
    code = (
        "import sys, numpy as np, convscope.interpret as ci\n"
        "from convscope.scratch import Sequential, Conv2D, Flatten, Dense\n"
        "m = Sequential([Conv2D(2, 3), Flatten(), Dense(2)], input_shape=(5, 5, 1))\n"
        "ci.saliency(m, np.ones((1, 5, 5, 1)), 0)\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_viz_never_imports_pyplot(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import convscope.viz as viz
        from convscope.viz.core import write_png
        from convscope.viz import kernels, activations, evolution, parity, manifest, compare
        p = viz.KernelGrid(np.ones((3, 3, 1, 4))).plot()
        write_png(p, {str(tmp_path / "a.png")!r})
        viz.kernel_evolution_gif([np.ones((3, 3, 1, 2))] * 2, {str(tmp_path / "a.gif")!r})
        from convscope.viz.activations import feature_map_figure, class_mean_figure
        fm = feature_map_figure(np.ones((8, 8)), np.ones((6, 6, 3)), "c")
        write_png(fm, {str(tmp_path / "b.png")!r})
        write_png(class_mean_figure(np.ones((2, 6, 6, 3)), "c"), {str(tmp_path / "c.png")!r})
        from convscope.viz.walkthrough_figure import walkthrough_figure
        from convscope.scratch.layer_walkthrough import seed_example, walkthrough
        wt = walkthrough_figure(walkthrough(*seed_example(), padding=1))
        write_png(wt, {str(tmp_path / "d.png")!r})
        compare.loss_curves_png([("r", {{"loss": [(1, 1.0), (2, 0.5)]}})])
        compare.filter_tile_png(np.ones((3, 3, 2)), 1.0)
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_remove_stale_staged_only_touches_dead_processes_files(tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / "sub" / f".x.staged-{dead.pid}.npz"
    live = tmp_path / f".y.staged-{os.getpid()}.npz"
    other = tmp_path / ".z.staged-notapid.npz"
    for p in (stale, live, other, tmp_path / "x.npz"):
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    assert remove_stale_staged(tmp_path) == [stale]
    assert _leftovers(tmp_path, {"sub"}) == sorted([live.name, other.name, "x.npz"])
    assert remove_stale_staged(tmp_path / "missing") == []


def test_pid_alive_treats_a_zombie_as_dead():
    """A killed process that its parent has not reaped yet no longer runs anything."""
    import subprocess

    from convscope.files import pid_alive

    assert pid_alive(os.getpid())
    child = subprocess.Popen(["sleep", "0"])
    deadline = time.monotonic() + 10
    while pid_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # exited, not reaped: a zombie
    assert not pid_alive(child.pid)
    assert child.poll() == 0  # it was a zombie until now


def test_importing_tracking_and_the_callback_does_not_import_mlflow():
    """Entry points validate config and resolve the store before paying mlflow's import."""
    code = (
        "import sys; import convscope.tracking as t; import convscope.tracking.hydra_callbacks; "
        "t.tracking_uri({'backend': 'local'}, '/tmp'); t.flatten_params({'a': 1}); "
        "assert 'mlflow' not in sys.modules, 'mlflow imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env={**os.environ, "PYTHONPATH": str(SRC), "MLFLOW_DISABLE_TELEMETRY": "true"},
    )


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)

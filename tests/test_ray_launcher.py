"""hydra/launcher=ray_local runs a sweep on a Ray started for it on 127.0.0.1, then stops it.

Every Ray server of the sweep listens on 127.0.0.1 only (see convscope.launchers for why
the launcher config alone does not achieve that).

The tiny app in tests/ray_app takes the launcher configs from the project's conf/ (through
``hydra.searchpath``) and records, per job, where ``convscope`` came from. The sweep runs
from a folder outside the project; its jobs import the convscope that the same Python in
the same environment imports (the installed one, or PYTHONPATH's in a checkout): the plugin
ships no code, and Ray adds only the driver's working directory and script folder to its
workers' ``sys.path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "ray_app" / "app.py"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if env.get("PYTHONPATH"):  # the sweep runs elsewhere: relative entries would dangle
        paths = env["PYTHONPATH"].split(os.pathsep)
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in paths if p)
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def test_ray_sweep_runs_four_jobs_on_a_local_head(tmp_path):
    installed = subprocess.run(
        [sys.executable, "-c", "import convscope; print(convscope.__file__)"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths
    sweep = tmp_path / "sweep"
    # fmt: off
    cmd = [sys.executable, str(APP), "-m", "x=1,2,3,4", "hydra/launcher=ray_local",
           "hydra.launcher.ray.init.num_cpus=2", f"hydra.searchpath=[file://{ROOT / 'conf'}]",
           f"hydra.sweep.dir={sweep}"]
    # fmt: on
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=clean_env(CONVSCOPE_RAY_TMPDIR=ray_tmp),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        out, _ = proc.communicate(timeout=300)
        seconds = time.perf_counter() - start
        assert proc.returncode == 0, out[-3000:]
        print(f"4-job Ray sweep (local head, 2 CPUs): {seconds:.1f} s")
        # Ray's processes carry the session folder in their command line: none may survive.
        left = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if ray_tmp in " ".join(p.info["cmdline"] or [])
        ]
        assert left == []
    finally:
        subprocess.run(["rm", "-rf", ray_tmp], check=False)

    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/job.json"))]
    assert sorted(job["x"] for job in jobs) == [1, 2, 3, 4]
    assert {job["convscope"] for job in jobs} == {installed}
    assert all(str(ROOT) not in job["sys_path"] for job in jobs)
    assert [job["ray_nodes"] for job in jobs] == [["127.0.0.1"]] * 4
    assert {ip for job in jobs for ip in job["ray_listening"]} == {"127.0.0.1"}
    assert proc.pid not in {job["pid"] for job in jobs}  # jobs ran in Ray's workers
    assert "Ray Launcher is launching 4 jobs" in out

"""A tiny Hydra app for launcher tests: each job writes what it ran with to job.json.

It records where ``convscope`` was imported from, the job's working directory and
``sys.path``, so a test can tell whether a launcher's workers import the installed package.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


def ray_nodes() -> list[str] | None:
    """The addresses of the Ray cluster's nodes, as Ray registered them; None outside Ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return sorted(node["NodeManagerAddress"] for node in ray.nodes())


def ray_listening() -> list[str]:
    """Addresses the sweep's Ray processes listen on (found by Ray's folder in their arguments)."""
    import psutil

    folder = os.environ.get("CONVSCOPE_RAY_TMPDIR")
    found = set()
    for proc in psutil.process_iter(["cmdline"]) if folder else ():
        if folder in " ".join(proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                found |= {
                    c.laddr.ip.removeprefix("::ffff:")
                    for c in proc.net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN
                }
    return sorted(found)


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> int:
    import convscope

    record = {
        "x": cfg.x,
        "pid": os.getpid(),
        "convscope": convscope.__file__,
        "cwd": os.getcwd(),
        "sys_path": sys.path,
        "host": socket.gethostname(),
        "ray_nodes": ray_nodes(),
        "ray_listening": ray_listening(),
    }
    out = Path(HydraConfig.get().runtime.output_dir) / "job.json"
    out.write_text(json.dumps(record))
    return int(cfg.x) * 2


if __name__ == "__main__":
    main()

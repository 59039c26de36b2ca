"""Glue for Hydra's sweep launchers that their config files cannot express.

:func:`ray_address` and :func:`check_tracking_reach`: a sweep on a Ray cluster whose nodes are
other machines must record on a tracking server; their jobs cannot reach this machine's
SQLite file. :func:`pass_to_ray_workers` hands a value the launching process learns late (the
sweep's parent run id) to the jobs: workers on a cluster were started before it existed and
do not inherit this process's environment, so it travels in ``ray.init``'s
``runtime_env.env_vars``.

:class:`RayLoopback` (a Hydra callback, set by ``hydra/launcher=ray_local``) keeps the Ray
that a sweep starts on this machine on the loopback interface. ``ray.init`` turns a
``_node_ip_address`` of 127.0.0.1 into the machine's routable address and binds its servers
to all interfaces, unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is 0: then it runs as a
single-node Ray on 127.0.0.1 only (the name is Ray's, the switch works on Linux too). The
variable must be set before Ray is imported, which the launcher does when the sweep starts,
after this callback has run.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf, flag_override
from omegaconf.errors import OmegaConfBaseException

RAY_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: the folder of a sweep's local Ray (``_temp_dir`` in conf/hydra/launcher/ray_local.yaml)
RAY_TMPDIR_ENV = "CONVSCOPE_RAY_TMPDIR"
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def ray_address(config: Any) -> str | None:
    """``hydra.launcher.ray.init.address`` of a Ray launcher's config; None for another
    launcher (or a Ray it starts itself, address unset)."""
    try:
        address = OmegaConf.select(config, "hydra.launcher.ray.init.address", default=None)
    except OmegaConfBaseException:  # ${oc.env:RAY_ADDRESS} without the variable
        return "RAY_ADDRESS (not set)"
    return None if address in (None, "") else str(address)


def is_local_ray(address: str | None) -> bool:
    """Whether a Ray address names this machine only (``local``, or a loopback host)."""
    if address is None or address == "local":
        return True
    host = address.removeprefix("ray://").rpartition(":")[0] or address
    return host in _LOOPBACK


def check_tracking_reach(config: Any) -> str | None:
    """Why this sweep cannot record where it is told to (one line), or None when it can."""
    address = ray_address(config)
    backend = OmegaConf.select(config, "tracking.backend", default="local")
    if backend == "local" and not is_local_ray(address):
        return (
            f"tracking.backend=local is not allowed with the Ray cluster at {address}: its jobs "
            "run on other machines and cannot reach this machine's mlflow.db; use "
            "tracking=server tracking.uri=http://HOST:PORT"
        )
    return None


def pass_to_ray_workers(config: Any, name: str, value: str) -> None:
    """Set environment variable ``name`` in the jobs of a Ray launcher (no-op for another)."""
    if OmegaConf.select(config, "hydra.launcher.ray.init", default=None) is None:
        return
    with flag_override(config.hydra.launcher.ray, ["struct", "readonly"], [False, False]):
        key = f"hydra.launcher.ray.init.runtime_env.env_vars.{name}"
        OmegaConf.update(config, key, value, force_add=True)


class RayLoopback(Callback):
    """Start a sweep's local Ray as a single node bound to 127.0.0.1 (unless the user chose),
    in a folder of its own (unless the user named one in ``CONVSCOPE_RAY_TMPDIR``).

    The folder is made fresh for each sweep inside one that ``mkdtemp`` makes (an
    unpredictable name that only this user may enter), so the sockets, logs and spilled
    objects of two sweeps, checkouts or users on one machine never meet in a shared
    ``/tmp/ray``-like name. Ray opens the folder it is given to everyone (mode 0777, for
    machines whose users share ``/tmp/ray``), hence the private one around it. Both stay,
    with Ray's logs in them, as Ray leaves its own; ``TMPDIR`` says where, as for Ray.
    """

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        os.environ.setdefault(RAY_SINGLE_NODE_ENV, "0")
        if not os.environ.get(RAY_TMPDIR_ENV):
            os.environ[RAY_TMPDIR_ENV] = os.path.join(tempfile.mkdtemp(prefix="ray-"), "ray")

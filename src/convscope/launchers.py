"""Glue for Hydra's sweep launchers that their config files cannot express.

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
from typing import Any

from hydra.experimental.callback import Callback

RAY_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayLoopback(Callback):
    """Start a sweep's local Ray as a single node bound to 127.0.0.1 (unless the user chose)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        os.environ.setdefault(RAY_SINGLE_NODE_ENV, "0")

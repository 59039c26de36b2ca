"""TensorFlow's C++ log lines kept off a stage's console, however the stage was started.

TensorFlow logs from C++ through absl straight to file descriptor 2, below Python's
``sys.stderr``. Two kinds reach a CPU run: lines written while its shared libraries load
(``I0000 ... oneDNN custom operations are on``, absl's ``WARNING: All log messages before
absl::InitializeLog() ...``), which no setting silences because they are written before
TensorFlow reads one; and lines after start-up (``E0000 ... failed call to cuInit`` on a
machine without a GPU), which obey ``TF_CPP_MIN_LOG_LEVEL``.

So :mod:`convscope` sets ``TF_CPP_MIN_LOG_LEVEL`` (default 3: only fatal lines; a failure
that matters raises a Python exception anyway) before anything imports TensorFlow, and
:func:`install` wraps TensorFlow's first import in :func:`quiet_native_logs`, which filters
those load-time lines by the same level. Set ``TF_CPP_MIN_LOG_LEVEL=0`` to see them all.
This lives in the package, not in the Makefile, so DVC, a by-hand run, a sweep's jobs and
Ray workers behave alike.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

__all__ = ["DEFAULT_LEVEL", "install", "is_native_log_line", "quiet_native_logs"]

LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
DEFAULT_LEVEL = "3"
_SEVERITY = "IWEF"  # absl's INFO, WARNING, ERROR, FATAL: levels 0..3
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] ")
_TF_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) \S+:\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"


def _level() -> int:
    try:
        return int(os.environ.get(LEVEL_ENV, DEFAULT_LEVEL))
    except ValueError:
        return int(DEFAULT_LEVEL)


def is_native_log_line(line: str, level: int | None = None) -> bool:
    """Whether ``line`` is a TensorFlow/absl C++ log line below ``level`` (default: the
    ``TF_CPP_MIN_LOG_LEVEL`` in effect)."""
    level = _level() if level is None else level
    if line.startswith(_ABSL_PREAMBLE):
        return level >= 1
    match = _ABSL_LINE.match(line) or _TF_LINE.match(line)
    return bool(match) and _SEVERITY.index(match.group(1)) < level


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Inside the block, file descriptor 2 goes to a temporary file; on exit every line but
    the C++ log lines below ``TF_CPP_MIN_LOG_LEVEL`` is written to the real stderr."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not is_native_log_line(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with quiet_native_logs():
            self.loader.exec_module(module)


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, with a loader that imports it under quiet_native_logs."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Set the default level and quiet TensorFlow's first import (keras imports it too)."""
    os.environ.setdefault(LEVEL_ENV, DEFAULT_LEVEL)
    if "tensorflow" in sys.modules or any(isinstance(f, _TensorFlowFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TensorFlowFinder())

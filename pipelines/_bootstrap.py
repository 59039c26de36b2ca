"""Run a stage script with this checkout's code, in the project's environment.

Imported first by every script in pipelines/. This checkout's ``src/`` goes first on
``sys.path``: a queued DVC experiment runs a copy of the repository under ``.dvc/tmp/exps/``,
and the copy's code (what DVC hashed as the stage's deps) is what must run. If the interpreter
lacks the project's dependencies (DVC stages call ``python`` from ``PATH``), the script
re-executes itself once with the project's ``.venv/bin/python`` (this checkout's, else the
one of the repository in ``DVC_ROOT``); without one, it says so in one line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _project_python() -> Path | None:
    roots = [ROOT]
    if os.environ.get("DVC_ROOT"):
        roots.append(Path(os.environ["DVC_ROOT"]))
    for root in roots:
        candidate = root / ".venv" / "bin" / "python"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


try:
    import hydra  # noqa: F401
    import omegaconf  # noqa: F401
except ImportError as exc:
    python = _project_python()
    if python is not None and not os.environ.get("CONVSCOPE_REEXEC"):
        os.environ["CONVSCOPE_REEXEC"] = "1"  # once: never loop between interpreters
        os.execv(str(python), [str(python), *sys.argv])
    print(
        f"convscope: error: {sys.executable} cannot import {exc.name!r}; run `make run` once, "
        "or activate the project's environment (source .venv/bin/activate)",
        file=sys.stderr,
    )
    raise SystemExit(2) from None

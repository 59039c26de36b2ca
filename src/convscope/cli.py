"""The ``convscope`` command: compose params.yaml, say where outputs are, open the MLflow UI.

Subcommands:

``convscope compose [OVERRIDES...] [--check] [--output PATH]``
    Compose conf/ with Hydra overrides, validate it and write params.yaml atomically (what the
    DVC stages read). ``--check`` writes nothing and exits 1 when params.yaml is out of step.
``convscope info``
    Where each kind of output lives and how to open the MLflow UI.
``convscope ui [--port N]``
    The MLflow UI on 127.0.0.1 over the repository's SQLite store and artifact folder.

Other subcommands (``compare``) are added by their own modules through :data:`SUBCOMMANDS`.
User errors print one line, ``convscope: error: ...``, and exit 2 (1 for a failed check).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from convscope.config import ConfigError
from convscope.paths import project_root

PARAMS_FILE = "params.yaml"

# name -> "module:function" adding a subparser: ``fn(subparsers) -> None``. The function
# registers its parser and sets ``func`` (called with the parsed args, returns an exit code).
# The module must stay light to import (heavy imports inside its command function), since
# the parser is built for every command.
SUBCOMMANDS: dict[str, str] = {
    "compare": "convscope.viz.compare:add_cli",
}


def _error(message: str, code: int = 2) -> int:
    print(f"convscope: error: {message}", file=sys.stderr)
    return code


def repo_root(start: Path | None = None) -> Path:
    """The convscope checkout the command works on: the nearest folder at or above the
    working directory holding conf/config.yaml, else the checkout this package lives in.

    So `convscope compose` in a copy of the repository writes that copy's params.yaml.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "conf" / "config.yaml").is_file():
            return folder
    return project_root()


# --------------------------------------------------------------------------- compose


def cmd_compose(args: argparse.Namespace) -> int:
    from convscope.config import dump_params, params_text, validate_overrides

    root = repo_root()
    conf = root / "conf"
    target = Path(args.output) if args.output else root / PARAMS_FILE
    overrides = list(args.overrides)
    if args.check:
        validate_overrides(overrides, config_dir=conf)
        expected = params_text(overrides, conf)
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current != expected:
            what = "missing" if current is None else "out of step with conf/"
            return _error(f"{target} is {what}: run `convscope compose` to rewrite it", 1)
        print(f"{target} is in step with conf/")
        return 0
    dump_params(target, overrides, conf)
    shown = " ".join(overrides) if overrides else "(defaults)"
    print(f"wrote {target} from {conf} {shown}")
    return 0


# --------------------------------------------------------------------------- info


OUTPUTS = (
    ("data/", "prepared datasets (lines.npz, mnist.npz with source and digest)"),
    ("models/", "trained models (.keras, engine .npz) and per-epoch kernels"),
    ("walkthrough/", "the seed's one-layer walkthrough (text and arrays)"),
    ("metrics/", "final metrics per stage (JSON; `dvc metrics show`)"),
    ("plots/", "per-epoch curves per stage (CSV; `dvc plots show`)"),
    ("reports/figures/", "kernel grids, feature maps, evolution (visuals stage)"),
    ("mlflow.db", "MLflow tracking store (SQLite): every run, its params and metrics"),
    ("mlartifacts/", "MLflow artifacts: models, kernels, configs, figures"),
    ("outputs/", "Hydra run folders: the composed config and log of each run"),
)


def cmd_info(args: argparse.Namespace) -> int:
    root = repo_root()
    print(f"convscope outputs under {root}:")
    width = max(len(name) for name, _ in OUTPUTS)
    for name, what in OUTPUTS:
        mark = "" if (root / name.rstrip("/")).exists() else "  (not yet)"
        print(f"  {name:<{width}}  {what}{mark}")
    print()
    print("MLflow UI: `make ui` (or `convscope ui --port 5000`), then open http://127.0.0.1:5000")
    print("Compare:   `dvc exp show`, `dvc metrics show`, `dvc plots show` (writes dvc_plots/)")
    return 0


# --------------------------------------------------------------------------- ui


def ui_command(root: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """The ``mlflow ui`` command line for the repository's store (absolute paths)."""
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    exe = [mlflow] if mlflow else [sys.executable, "-m", "mlflow"]
    return [
        *exe,
        "ui",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root",
        str(root / "mlartifacts"),
        "--host",
        host,
        "--port",
        str(port),
        # one worker: a local UI needs no more, and it starts in seconds on a small machine
        "--workers",
        "1",
    ]


def cmd_ui(args: argparse.Namespace) -> int:
    root = repo_root()
    cmd = ui_command(root, args.port)
    print(f"MLflow UI on http://127.0.0.1:{args.port} (Ctrl-C to stop)", flush=True)
    try:
        # MLflow's background job runner is for GenAI jobs; the UI does not need it
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        return subprocess.call(cmd, cwd=root, env=env)
    except KeyboardInterrupt:
        return 130


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convscope",
        description="See inside convolutional networks: pipeline helpers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compose", help="write params.yaml from conf/ (+ Hydra overrides)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=smoke")
    p.add_argument("--check", action="store_true", help="only check params.yaml is in step")
    p.add_argument("--output", help=f"file to write (default: <repo>/{PARAMS_FILE})")
    p.set_defaults(func=cmd_compose)

    p = sub.add_parser("info", help="where the outputs are and how to open the MLflow UI")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("CONVSCOPE_UI_PORT", 5000)))
    p.set_defaults(func=cmd_ui)

    for target in SUBCOMMANDS.values():
        module_name, _, fn_name = target.partition(":")
        try:
            add: Callable[[argparse._SubParsersAction], None] = getattr(
                importlib.import_module(module_name), fn_name
            )
        except (ImportError, AttributeError):
            continue  # not built yet
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        return _error(str(exc))
    except (FileNotFoundError, PermissionError) as exc:
        return _error(str(exc))


if __name__ == "__main__":
    sys.exit(main())

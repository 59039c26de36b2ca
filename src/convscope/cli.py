"""The ``convscope`` command: ``compose`` params.yaml from conf/ (what the DVC stages read),
``compare`` MLflow runs in one HTML report, ``exps`` (DVC's experiments as one table that fits
the terminal), ``info`` on where outputs and runs go, ``runs``
(RUNNING runs; ``--clean`` ends those whose process is gone), ``ui`` (the MLflow UI over the
project's store), ``server`` (a team's tracking server) and ``sync`` (send what a run kept
while its server was down). ``convscope COMMAND --help`` describes each.

Building the parser imports nothing heavy; each command imports what it needs. User errors
print one line, ``convscope: error: ...``, and exit 2 (1 for a failed ``compose --check`` or
a UI server that failed; 128 + the signal when ``ui`` is stopped).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from convscope.compare import CompareError
from convscope.config import ConfigError
from convscope.paths import MLFLOW_ARTIFACTS, MLFLOW_DB, is_project, project_root
from convscope.tracking.store import TrackingError
from convscope.validation import redact_credentials

PARAMS_FILE = "params.yaml"
USER_ERRORS = (ConfigError, CompareError, TrackingError, FileNotFoundError, PermissionError)


def _error(message: str, code: int = 2) -> int:
    from convscope.validation import error_line

    print(f"convscope: error: {error_line(message)}", file=sys.stderr)
    return code


def repo_root() -> Path:
    """The project the command works on: the nearest one at or above the working directory,
    so that `convscope compose` in a copy writes that copy's params.yaml; else
    :func:`convscope.paths.project_root`."""
    cwd = Path.cwd().resolve()
    return next((f for f in (cwd, *cwd.parents) if is_project(f)), None) or project_root()


def cmd_compose(args: argparse.Namespace) -> int:
    from convscope.config import dump_params, params_text, validate_overrides

    root = repo_root()
    conf = root / "conf"
    target = Path(args.output) if args.output else root / PARAMS_FILE
    if target.is_dir():
        return _error(f"--output {target} is a folder: expected a file to write")
    overrides = list(args.overrides)
    if args.check:
        validate_overrides(overrides, config_dir=conf)
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current != params_text(overrides, conf):
            what = "missing" if current is None else "out of step with conf/"
            return _error(f"{target} is {what}: run `convscope compose` to rewrite it", 1)
        print(f"{target} is in step with conf/")
        return 0
    dump_params(target, overrides, conf)
    print(f"wrote {target} from {conf} {' '.join(overrides) or '(defaults)'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from convscope.compare import compare
    from convscope.paths import tracking_root

    if (tracking_root() / args.out).is_dir():  # compare() writes -o relative to that root
        return _error(f"-o {args.out} is a folder: expected an .html file to write")
    report = compare(
        run_ids=args.run_ids or None,
        experiment=args.experiment,
        filter_string=args.filter_string,
        parent_run_id=args.parent_run_id,
        out=args.out,
        tracking_uri=args.tracking_uri,
        layer=args.layer,
    )
    matched = sum(m.matched for m in report.matches.values())
    print(f"compared {len(report.runs)} run(s) ({matched} with kernels matched): {report.path}")
    return 0


def cmd_exps(args: argparse.Namespace) -> int:
    from convscope.experiments_table import (
        dvc_experiments,
        experiment_rows,
        render_table,
        terminal_width,
    )

    cwd = Path.cwd().resolve()
    repo = next((f for f in (cwd, *cwd.parents) if (f / ".dvc").is_dir()), repo_root())
    try:
        show = dvc_experiments(repo, ["--all-commits"] if args.all_commits else [])
    except RuntimeError as exc:
        return _error(str(exc))
    print(render_table(experiment_rows(show), width=args.width or terminal_width()))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from convscope.tracking.lifecycle import open_store
    from convscope.tracking.query import default_uri
    from convscope.tracking.settle import clean_runs, running_runs
    from convscope.tracking.store import TAG_HOST, TAG_PID, check_server

    uri = args.tracking_uri or default_uri()
    check_server(uri)  # an unreachable server is one line, not minutes of retries
    if args.clean:
        ended = clean_runs(uri)
        for run_id, status in ended:
            print(f"{run_id}  {status}")
        print(f"ended {len(ended)} run(s) whose process is gone ({uri})")
        return 0
    running = running_runs(open_store(uri))
    for run in running:
        tags = run.data.tags
        where = f"pid {tags.get(TAG_PID, '?')} on {tags.get(TAG_HOST, '?')}"
        print(f"{run.info.run_id}  RUNNING  {run.info.run_name}  ({where})")
    print(
        f"{len(running)} run(s) RUNNING ({uri}); `convscope runs --clean` ends those whose "
        "process is gone"
    )
    return 0


OUTPUTS = (
    ("data/", "prepared datasets (lines.npz, mnist.npz with source and digest)"),
    ("models/", "trained models (.keras, engine .npz) and per-epoch kernels"),
    ("walkthrough/", "the seed's one-layer walkthrough (text and arrays)"),
    ("metrics/", "final metrics per stage (JSON; `dvc metrics show`)"),
    ("plots/", "per-epoch curves per stage (CSV; `dvc plots show`)"),
    ("reports/figures/", "kernel grids, feature maps, evolution (visuals stage)"),
    ("reports/interpret/", "saliency, Grad-CAM, activation maximisation (interpret stage)"),
    ("reports/compare.html", "runs side by side (`convscope compare`)"),
    (MLFLOW_DB, "MLflow tracking store (SQLite): every run, its config and metrics"),
    (f"{MLFLOW_ARTIFACTS}/", "MLflow artifacts: models, kernels, configs, figures"),
    ("outputs/", "Hydra run folders: the composed config and log of each run"),
)


def tracking_store(root: Path) -> str:
    """Where the pipeline's runs go: the tracking section of params.yaml (what DVC's stages
    read), else conf/tracking/local.yaml, resolved as a stage resolves it."""
    import yaml

    from convscope.tracking.store import tracking_uri

    params = root / PARAMS_FILE
    cfg = yaml.safe_load(params.read_text()) if params.is_file() else None
    section = (cfg or {}).get("tracking")
    if not isinstance(section, dict):
        section = yaml.safe_load((root / "conf" / "tracking" / "local.yaml").read_text())
    if section.get("backend") == "none":
        return "nowhere (tracking=none)"
    try:
        uri = tracking_uri(section, root)
    except TrackingError as exc:
        return f"a server, not yet set ({exc})"
    where = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else uri
    kind = "local SQLite" if uri.startswith("sqlite:///") else "server"
    return f"{kind} {where}"


def cmd_adopt(args: argparse.Namespace) -> int:
    """The best trial of an Optuna sweep as a preset, and its model as the champion."""
    from convscope.paths import conf_dir
    from convscope.search.preset import write_preset
    from convscope.tracking.lifecycle import open_store
    from convscope.tracking.query import default_uri
    from convscope.tracking.store import TAG_STAGE, check_server
    from convscope.tracking.study import best_overrides, best_trial_run, register_champion

    uri = args.tracking_uri or default_uri()
    check_server(uri)
    client = open_store(uri)
    parent, child = best_trial_run(client, args.run_id)
    overrides = best_overrides(parent)
    stage = parent.data.tags.get(TAG_STAGE, "")
    value = parent.data.metrics.get("study_best_value")
    note = (
        f"The best trial of the Optuna study {parent.data.tags.get('convscope.study', '')!r} "
        f"({stage}, objective {parent.data.tags.get('convscope.study_objective', '')} = "
        f"{value}), adopted from sweep run {parent.info.run_id} (trial run {child.info.run_id})."
    )
    path = write_preset(conf_dir(), args.name, overrides, note, force=args.force)
    print(f"wrote {path}: `convscope compose experiment={args.name} && dvc repro` rebuilds it")
    if not args.no_register:
        name, version = register_champion(client, child)
        print(f"registered {name} version {version} as @champion (models:/{name}@champion)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from convscope.paths import tracking_root
    from convscope.tracking.outbox import waiting, waiting_line

    root = repo_root()
    print(f"convscope outputs under {root}:")
    width = max(len(name) for name, _ in OUTPUTS)
    for name, what in OUTPUTS:
        mark = "" if (root / name.rstrip("/")).exists() else "  (not yet)"
        print(f"  {name:<{width}}  {what}{mark}")
    print()
    print(f"MLflow runs go to: {redact_credentials(tracking_store(root))}")
    boxes = waiting(tracking_root())
    if boxes:
        print(f"Not yet recorded: {waiting_line(boxes)}")
    print("MLflow UI: `make ui` (or `convscope ui --port 5000`), then open a page it prints")
    print("Compare:   `convscope compare -e convscope/train_keras`, `dvc exp show`,")
    print("           `dvc metrics show`, `dvc plots show` (writes dvc_plots/)")
    return 0


def ui_command(root: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """The ``mlflow ui`` command line for the project's store (absolute paths)."""
    # one worker: a local UI needs no more, and it starts in seconds on a small machine; the
    # registry is the same store (else MLflow says so on every start)
    db = f"sqlite:///{root / MLFLOW_DB}"
    store = ["--backend-store-uri", db, "--registry-store-uri", db]
    artifacts = ["--default-artifact-root", str(root / MLFLOW_ARTIFACTS)]
    where = ["--host", host, "--port", str(port), "--workers", "1"]
    return [sys.executable, "-m", "mlflow", "ui", *store, *artifacts, *where]


#: a warning MLflow's server module raises on import, about its own use of starlette
UI_WARNINGS = "ignore:starlette.middleware.wsgi is deprecated:UserWarning"


def training_pages(root: Path, base: str) -> list[tuple[str, str]]:
    """``(experiment name, page)`` of each experiment in the project's store that has runs,
    its page opened on the training runs (:func:`convscope.tracking.store.ui_page`); [] when
    there is no store yet."""
    if not (root / MLFLOW_DB).is_file():
        return []
    from convscope.tracking.query import experiments_with_runs
    from convscope.tracking.store import ui_page

    found = experiments_with_runs(f"sqlite:///{root / MLFLOW_DB}")
    return [(name, ui_page(base, exp_id)) for exp_id, name in found]


def cmd_ui(args: argparse.Namespace) -> int:
    """Run ``mlflow ui`` in its own process group until it exits or a signal stops both.

    The server runs workers of its own; SIGINT or SIGTERM to this command goes to the whole
    group, so no worker is left holding the port.
    """
    from convscope.tracking.server import port_problem

    root, host = repo_root(), "127.0.0.1"
    problem = port_problem(host, args.port)
    if problem:
        return _error(problem)
    base = f"http://{host}:{args.port}"
    pages = training_pages(root, base)
    print(f"MLflow UI on {base} (Ctrl-C to stop)" + ("; training runs:" if pages else ""))
    width = max((len(name) for name, _ in pages), default=0)
    for name, page in pages:
        print(f"  {name:<{width}}  {page}")
    sys.stdout.flush()
    # MLflow's background job runner serves GenAI jobs, which the UI here does not need
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), UI_WARNINGS]))
    server = subprocess.Popen(
        ui_command(root, args.port, host), cwd=root, env=env, start_new_session=True
    )
    stopped: list[int] = []

    def forward(signum: int, frame: object) -> None:
        stopped.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # workers the server left behind
    if stopped:
        return 128 + stopped[0]
    if code != 0:
        return _error(f"the MLflow UI server exited with status {code} (its error is above)", 1)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from convscope.paths import TRACKING_ROOT_ENV
    from convscope.tracking.outbox import outbox_root
    from convscope.tracking.service import sync

    # the project the command is run in (a clone's own store), unless told otherwise
    root = Path(args.root or os.environ.get(TRACKING_ROOT_ENV) or repo_root()).resolve()
    done = sync(root)
    for one in done:
        print(f"run {one.run_id}: {one.sent} records sent")
        if one.damaged:
            print(
                f"convscope: warning: run {one.run_id}: {one.damaged} damaged record line(s) "
                "(a crash mid-write) could not be sent; every intact record was",
                file=sys.stderr,
            )
        if one.run_file_damaged:
            print(
                f"convscope: warning: run {one.run_id}: its outbox's run.json was damaged (a "
                "crash mid-write); the run was found by the outbox folder's name",
                file=sys.stderr,
            )
    print(f"synced {len(done)} run(s) from {outbox_root(root)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convscope", description="See inside convolutional networks: pipeline helpers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compose", help="write params.yaml from conf/ (+ Hydra overrides)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=smoke")
    p.add_argument("--check", action="store_true", help="only check params.yaml is in step")
    p.add_argument("--output", help=f"file to write (default: <repo>/{PARAMS_FILE})")
    p.set_defaults(func=cmd_compose)

    p = sub.add_parser(
        "compare",
        help="compare MLflow runs in one self-contained HTML report",
        description="A metrics table, the loss curves overlaid and the first conv layer's "
        "kernels matched to the first run's. Select runs by id, or by experiment and/or an "
        "MLflow filter and/or a sweep's parent run.",
    )
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs (first = reference)")
    p.add_argument("-e", "--experiment", help="experiment name or id, e.g. convscope/train_keras")
    p.add_argument(
        "-f",
        "--filter",
        dest="filter_string",
        help="MLflow search filter, e.g. \"params.`keras.filters` = '32'\" (params.<key> is the "
        "config value, which runs record as tag param.<key>)",
    )
    p.add_argument("-p", "--parent", dest="parent_run_id", help="children of this (sweep) run")
    p.add_argument(
        "-o",
        "--out",
        default="reports/compare.html",
        help="HTML file to write, relative to the project (default: %(default)s)",
    )
    p.add_argument("--layer", help="conv layer to show (default: the first)")
    p.add_argument("--tracking-uri", help=f"default: MLFLOW_TRACKING_URI, else <repo>/{MLFLOW_DB}")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "exps",
        help="DVC experiments in one table that fits the terminal",
        description="`dvc exp show --json`, shown as one row per commit and experiment: the "
        "params that differ between them and each stage's test metrics, cut to the width.",
    )
    p.add_argument("--width", type=int, help="characters (default: the terminal's, else 120)")
    p.add_argument("--all-commits", action="store_true", help="every commit, not only HEAD")
    p.set_defaults(func=cmd_exps)

    p = sub.add_parser(
        "adopt",
        help="write an Optuna sweep's best trial as conf/experiment/<name>.yaml; register "
        "its model as convscope-<stage>@champion",
    )
    p.add_argument("run_id", help="the sweep's MLflow parent run (its last line names it)")
    p.add_argument("--name", required=True, help="the preset's name (experiment=<name>)")
    p.add_argument("--force", action="store_true", help="replace an existing preset")
    p.add_argument("--no-register", action="store_true", help="write the preset only")
    p.add_argument("--tracking-uri", help=f"default: MLFLOW_TRACKING_URI, else <repo>/{MLFLOW_DB}")
    p.set_defaults(func=cmd_adopt)

    p = sub.add_parser("info", help="where the outputs are and how to open the MLflow UI")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "runs",
        help="list RUNNING MLflow runs; --clean ends those whose process is gone",
        description="A SIGKILLed stage or sweep cannot end its MLflow run. Every stage start "
        "ends this host's runs whose process is gone (KILLED); --clean does it now and also "
        "settles sweep parent runs whose children have all ended.",
    )
    p.add_argument("--clean", action="store_true", help="end runs whose process is gone")
    p.add_argument("--tracking-uri", help=f"default: MLFLOW_TRACKING_URI, else <repo>/{MLFLOW_DB}")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser(
        "ui",
        help="start the MLflow UI on 127.0.0.1",
        description="Serve the project's MLflow store (mlflow.db) with MLflow's UI and print "
        "each experiment's training-runs page.",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("CONVSCOPE_UI_PORT", 5000)),
        help="port on 127.0.0.1 (default: %(default)s; env CONVSCOPE_UI_PORT)",
    )
    p.set_defaults(func=cmd_ui)

    # Parsed by convscope.tracking.server.main (listed here for `convscope --help`).
    sub.add_parser(
        "server",
        add_help=False,
        help="run a team's MLflow server (PostgreSQL store, proxied artifacts); "
        "`convscope server --help`",
    )

    p = sub.add_parser(
        "sync",
        help="send the records runs kept while their tracking server was down",
        description="Replay every run's outbox (<tracking root>/.convscope/outbox) into its "
        "store with the original steps and timestamps, then end the run as it ended.",
    )
    p.add_argument(
        "--root", help="tracking root (default: CONVSCOPE_ROOT, else the project of the cwd)"
    )
    p.set_defaults(func=cmd_sync)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["server"]:
        from convscope.tracking.server import main as server_main

        return server_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        return _error(str(exc))


if __name__ == "__main__":
    sys.exit(main())

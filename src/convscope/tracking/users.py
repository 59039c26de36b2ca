"""``convscope server users``: users and permissions of a server started with ``--auth``.

Everything goes through MLflow's own user and permission API (its basic-auth app's REST
endpoints, through :class:`mlflow.server.auth.client.AuthServiceClient`), to the server named
by ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``, as the admin whose login is in
``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``:

    convscope server users add alice [--admin]
    convscope server users grant alice convscope/train_keras EDIT

A new user's password is read from a prompt, or from standard input when it is not a terminal
(two lines, the same password twice), never from an argument, which any local user reads with
``ps`` and shells keep in their history. A grant replaces the user's permission on that
experiment. Every failure is one line and exit 1 (2 for a usage error).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import warnings
from collections.abc import Sequence
from typing import IO

from convscope.tracking.store import (
    PASSWORD_ENV,
    USERNAME_ENV,
    TrackingError,
    apply_http_defaults,
    check_server,
)
from convscope.validation import error_line

#: what a grant may give (MLflow's permission names)
GRANTS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")
#: MLflow's rule for passwords
MIN_PASSWORD = 12


def read_password(name: str, stream: IO[str] | None = None) -> str:
    """The new password of user ``name``, typed twice: at a prompt on a terminal, else the
    first two lines of ``stream`` (standard input)."""
    stream = sys.stdin if stream is None else stream
    if stream.isatty():
        first = getpass.getpass(f"password for {name}: ")
        second = getpass.getpass(f"password for {name} (again): ")
    else:
        lines = stream.read().splitlines()
        if len(lines) < 2:
            raise TrackingError(
                f"the password for {name} comes from standard input twice (two lines); "
                f"got {len(lines)} line(s)"
            )
        first, second = lines[0], lines[1]
    if first != second:
        raise TrackingError(f"the two passwords typed for {name} differ: nothing was changed")
    if len(first) < MIN_PASSWORD:
        raise TrackingError(
            f"the password for {name} is too short: MLflow needs at least {MIN_PASSWORD} characters"
        )
    return first


def check_admin(uri: str) -> None:
    """Refuse, in one line, a login that is not an admin's of the server at ``uri`` (plain
    HTTP requests: before anything is typed or mlflow is imported)."""
    me = check_server(uri)
    if me is None:
        raise TrackingError(
            f"the MLflow server at {uri} has no users: it was started without --auth"
        )
    if not me.get("is_admin"):
        raise TrackingError(
            f"user {me.get('username')!r} is not an admin of the MLflow server at {uri}: log in "
            f"as one ({USERNAME_ENV}, {PASSWORD_ENV})"
        )


def admin_client(uri: str):  # noqa: ANN202 - mlflow's AuthServiceClient
    """MLflow's client of the server's user API (:func:`check_admin` first)."""
    apply_http_defaults()
    with warnings.catch_warnings():  # MLflow's server modules warn about their own imports
        warnings.simplefilter("ignore")
        from mlflow.server import get_app_client

        return get_app_client("basic-auth", tracking_uri=uri)


def user_exists(client, name: str) -> bool:  # noqa: ANN001 - mlflow's AuthServiceClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        client.get_user(name)
    except MlflowException as err:
        if err.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return False
        raise
    return True


def add_user(client, uri: str, name: str, password: str, admin: bool = False) -> None:  # noqa: ANN001
    """Create user ``name`` through ``client`` (:func:`admin_client`); one that exists is
    refused (its password is changed through MLflow's UI or API, by the user or an admin)."""
    if user_exists(client, name):
        raise TrackingError(f"user {name!r} exists already on the MLflow server at {uri}")
    client.create_user(name, password)
    if admin:
        client.update_user_admin(name, True)


def experiment_id(uri: str, experiment: str) -> tuple[str, str]:
    """(id, name) of ``experiment``, given by name or id."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None and experiment.isdigit():
        try:
            found = client.get_experiment(experiment)
        except MlflowException:
            found = None
    if found is None:
        raise TrackingError(f"no experiment {experiment!r} on the MLflow server at {uri}")
    return found.experiment_id, found.name


def grant(client, uri: str, name: str, experiment: str, permission: str) -> tuple[str, str]:  # noqa: ANN001
    """Give user ``name`` ``permission`` on ``experiment`` (replacing what they held) through
    ``client`` (:func:`admin_client`); returns the experiment's (id, name)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    exp_id, exp_name = experiment_id(uri, experiment)
    try:
        client.grant_user_permission(name, "experiment", exp_id, permission)
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        client.revoke_user_permission(name, "experiment", exp_id)
        client.grant_user_permission(name, "experiment", exp_id, permission)
    return exp_id, exp_name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="convscope server users",
        description="Users and permissions of a server started with --auth, as the admin in "
        f"{USERNAME_ENV}/{PASSWORD_ENV}.",
    )
    parser.add_argument("--tracking-uri", help="the server (default: MLFLOW_TRACKING_URI)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser(
        "add",
        help="add a user; the password is read from a prompt (or standard input, twice)",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--admin", action="store_true", help="make the user an admin")
    p = sub.add_parser("grant", help="give a user a permission on one experiment")
    p.add_argument("name", metavar="NAME")
    p.add_argument("experiment", metavar="EXPERIMENT", help="its name or id")
    p.add_argument("permission", metavar="PERMISSION", choices=GRANTS, help=", ".join(GRANTS))
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    uri = (args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "").rstrip("/")
    try:
        if not uri.startswith(("http://", "https://")):
            raise TrackingError(
                f"users live on a server: pass --tracking-uri https://HOST:PORT or set "
                f"MLFLOW_TRACKING_URI (got {uri or 'none'!r})"
            )
        check_admin(uri)  # the login first: no password typed for nothing
        if args.action == "add":
            password = read_password(args.name)
            add_user(admin_client(uri), uri, args.name, password, args.admin)
            print(f"user {args.name} added" + (" (admin)" if args.admin else ""))
        else:
            client = admin_client(uri)
            exp_id, exp_name = grant(client, uri, args.name, args.experiment, args.permission)
            print(f"user {args.name}: {args.permission} on experiment {exp_name} (id {exp_id})")
    except Exception as exc:
        if not isinstance(exc, TrackingError):
            from mlflow.exceptions import MlflowException

            if not isinstance(exc, MlflowException):
                raise  # a bug: its traceback
        # mlflow's refusals ("User 'bob' already exists") as the one line it gives
        message = str(getattr(exc, "message", None) or exc)
        print(f"convscope server users: error: {error_line(message)}", file=sys.stderr)
        return 1
    return 0

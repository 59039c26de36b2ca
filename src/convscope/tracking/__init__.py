"""MLflow tracking for convscope: the only package that imports mlflow.

Modules by concern: ``store`` (URI, server check, params and tags; no mlflow), ``client`` (a
stage's run, recorded by its own tracking process; no mlflow), ``service`` (that process),
``outbox`` (what a run could not send, kept on disk), ``lifecycle`` (the store connected, a
run from start to FINISHED/FAILED/KILLED), ``logger`` (what a run records),
``hydra_callbacks`` (one parent run per multirun), ``query`` (runs read back as plain data).
Importing this package does not import mlflow.
"""

from convscope.tracking.client import NullRun, RemoteRun, RunTerminated, TrackingLost, start_run
from convscope.tracking.store import TrackingError, check_server, flatten_params, tracking_uri

__all__ = [
    "NullRun",
    "RemoteRun",
    "RunTerminated",
    "TrackingError",
    "TrackingLost",
    "check_server",
    "flatten_params",
    "start_run",
    "tracking_uri",
]

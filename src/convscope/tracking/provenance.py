"""Which MLflow run made a file: links between DVC outs and runs that keep the outs reproducible.

The rule. A pipeline stage's run, once its outputs are in place, is tagged
``convscope.md5.<path> = <md5>`` for every file it wrote (``path`` relative to the project; the
md5 of the file's bytes, which is the hash dvc.lock records for that out). A stage or a person
holding a file hashes it and asks the store for the run with that tag (:func:`producer_of`):
the same bytes lead to the run that made them, the latest one if several runs made the same
bytes. Nothing of this goes into the files themselves: an out holds no run id, so re-running
the same code on the same params and data writes the same bytes on any machine, and DVC can
share it through a remote.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from convscope.files import md5_file

__all__ = ["INPUT_RUN_PREFIX", "OUTPUT_TAG_PREFIX", "output_tags", "producer_of", "producers"]

OUTPUT_TAG_PREFIX = "convscope.md5."
INPUT_RUN_PREFIX = "convscope.input_run."


def output_tags(root: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]]) -> dict:
    """``{convscope.md5.<path relative to root>: md5}`` for each file (folders are walked)."""
    root = Path(root).resolve()
    tags = {}
    for f in files:
        p = Path(f).resolve()
        for one in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if one.is_file():
                tags[OUTPUT_TAG_PREFIX + one.relative_to(root).as_posix()] = md5_file(one)
    return tags


def producer_of(client, rel: str, md5: str) -> str | None:
    """The id of the latest run tagged as having written ``rel`` with these bytes, or None."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    found = client.search_runs(
        experiments,
        filter_string=f"tags.`{OUTPUT_TAG_PREFIX}{rel}` = '{md5}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


def producers(client, root: str | os.PathLike[str], files: Mapping[str, str]) -> dict[str, str]:
    """``{label: run id}`` of the runs that made ``files`` (label -> path under ``root``)."""
    out = {}
    for label, rel in files.items():
        run_id = producer_of(client, rel, md5_file(Path(root) / rel))
        if run_id is not None:
            out[label] = run_id
    return out

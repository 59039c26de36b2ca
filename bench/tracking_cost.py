"""MLflow's share of each stage on the local SQLite store: the runner's own figure.

    .venv/bin/python bench/tracking_cost.py [--stages lines walkthrough train_scratch_lines]

Runs each stage twice, as DVC runs it (``--config-dir . --config-name params``, the smoke
preset), in a throw-away copy of the repository, and reads the runner's log line
``stage X done in T s (MLflow M s)``; the first run of the first stage also creates the
store. Prints per stage the wall time of the process, the stage's time and MLflow's part of it.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.pipeline_support import copy_repo, pipeline_stage  # noqa: E402

DONE = re.compile(r"stage (\w+) done in ([\d.]+) s \(MLflow ([\d.]+) s\)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--stages", nargs="+", default=["lines", "walkthrough", "train_scratch_lines"]
    )
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = copy_repo(Path(tmp) / "repo")
        for stage in args.stages:
            for attempt in range(1, args.repeat + 1):
                start = time.perf_counter()
                result = pipeline_stage(repo, stage)
                wall = time.perf_counter() - start
                found = DONE.search(result.stdout + result.stderr)
                if result.returncode != 0 or not found:
                    sys.exit(f"{stage} failed: {result.stderr.strip()[-500:]}")
                rows.append((stage, attempt, wall, float(found[2]), float(found[3])))
    print(f"\n{'stage':<22}{'run':>4}{'wall s':>9}{'stage s':>9}{'MLflow s':>10}{'share':>8}")
    for stage, attempt, wall, total, mlflow in rows:
        print(
            f"{stage:<22}{attempt:>4}{wall:>9.2f}{total:>9.2f}{mlflow:>10.2f}{mlflow / total:>8.0%}"
        )


if __name__ == "__main__":
    main()

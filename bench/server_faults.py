"""How long ``convscope server`` takes to fail on each start-up fault, and the line it prints.

    .venv/bin/python bench/server_faults.py

Starts a throw-away PostgreSQL and moto's S3 (harness/services.py, on 127.0.0.1), then runs
``convscope server`` once per fault of harness/team.py's ``start_up_faults`` (an
unknown scheme, a closed, unknown or silent database host, a missing database or user, a wrong
password, an artifacts folder that cannot be written, a missing bucket, ``--auth`` without an
admin password, exposure without ``--auth``, a port in use) and prints a table: the fault, the
seconds to a non-zero exit (the goal is at most 15 s), the exit code and the one line.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

# harness/ (the service starters) sits beside bench/; this script runs from bench/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.services import moto_s3, postgres  # noqa: E402
from harness.team import FAULT_LIMIT, start_server, start_up_faults  # noqa: E402


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, postgres() as pg, moto_s3() as s3:
        for name, args, env, _, _ in start_up_faults(pg, Path(tmp), s3):
            seconds, done = start_server(args, env)
            line = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
            rows.append((name, seconds, done.returncode, line.removeprefix("convscope server: ")))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'fault':<{width}}  {'seconds':>7}  exit  line")
    for name, seconds, code, line in rows:
        print(f"{name:<{width}}  {seconds:>7.1f}  {code:>4}  {line}")
    worst = max(r[1] for r in rows)
    print(f"\nslowest: {worst:.1f} s (goal: at most {FAULT_LIMIT:.0f} s)")


if __name__ == "__main__":
    main()

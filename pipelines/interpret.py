"""Stage `interpret` as a Hydra app (convscope.runner.main)."""

import _bootstrap  # noqa: F401  (first: this checkout's src/, the project's Python)
from convscope.runner import main

if __name__ == "__main__":
    main("interpret")

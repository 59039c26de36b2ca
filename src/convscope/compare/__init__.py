"""``convscope compare``: several MLflow runs side by side in one self-contained HTML report.

The report has a metrics table (final metrics and the params that differ between the runs),
the loss curves of every run overlaid, and each run's first conv layer kernels put in the
order of the reference run (the first) by Hungarian matching on cosine similarity.

Modules: :mod:`~convscope.compare.matching` (filters lined up), :mod:`~.collection` (runs
read from the store through :mod:`convscope.tracking.query`), :mod:`~.report` (the HTML, its
figures from :mod:`convscope.viz.compare`). Importing this package imports neither mlflow nor
matplotlib.
"""

from convscope.compare.collection import CompareError, EmptySelectionError, RunData
from convscope.compare.matching import FilterMatch, match_filters, reorder
from convscope.compare.report import CompareReport, compare

__all__ = [
    "CompareError",
    "CompareReport",
    "EmptySelectionError",
    "FilterMatch",
    "RunData",
    "compare",
    "match_filters",
    "reorder",
]

"""``convscope compare``: MLflow runs side by side in one self-contained HTML report.

By concern: :mod:`~convscope.compare.matching` (filters lined up by Hungarian matching),
:mod:`~convscope.compare.collection` (runs read through :mod:`convscope.tracking.query`),
:mod:`~convscope.compare.report` (the HTML; figures from :mod:`convscope.viz.compare`).
Importing this package imports neither mlflow nor matplotlib.
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

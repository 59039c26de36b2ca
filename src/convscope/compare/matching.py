"""Filters of two runs lined up: Hungarian matching on cosine similarity.

Two trainings that differ only in a seed or a hyper-parameter learn much the same edge
detectors, but in an arbitrary order (filter 3 of one run is filter 11 of the other). Pairing
each run's filters with the reference's by the assignment that maximises the total cosine
similarity (``scipy.optimize.linear_sum_assignment`` on ``1 - cos``) lines up the filters that
do the same job, so the differences that remain are real. Kernels are HWIO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convscope.validation import check_kernel


@dataclass
class FilterMatch:
    """How one run's filters line up with the reference's.

    Attributes:
        order: this run's filter indices in display order. Slot ``i < F_ref`` holds the filter
            matched to reference filter ``i`` (-1 when this run has fewer filters); slots after
            ``F_ref`` hold the unmatched extra filters, most reference-like first.
        similarity: cosine similarity of each slot's filter with its reference filter (NaN for
            blank slots and extras).
        matched: False when the kernels' shapes differ (``order`` is then the identity).
        note: why a run is unmatched or has blank/extra slots, or empty.
    """

    order: np.ndarray
    similarity: np.ndarray
    matched: bool = True
    note: str = ""

    @property
    def mean_similarity(self) -> float:
        sims = self.similarity[np.isfinite(self.similarity)]
        return float(sims.mean()) if sims.size else float("nan")


def _unit_rows(k: np.ndarray) -> np.ndarray:
    """Filters as rows (filters, kh*kw*in) of unit length (all-zero rows stay zero)."""
    flat = k.reshape(-1, k.shape[-1]).T
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 0)


def match_filters(reference: np.ndarray, kernel: np.ndarray) -> FilterMatch:
    """Line ``kernel``'s filters up with ``reference``'s (see :class:`FilterMatch`).

    A copy of the reference with its filters permuted is matched back exactly (similarity 1).
    """
    from scipy.optimize import linear_sum_assignment

    ref, k = check_kernel(reference, "reference"), check_kernel(kernel)
    n_ref, n = ref.shape[-1], k.shape[-1]
    if ref.shape[:3] != k.shape[:3]:
        note = f"kernel shape {k.shape[:3]} differs from the reference's {ref.shape[:3]}"
        return FilterMatch(np.arange(n), np.full(n, np.nan), matched=False, note=note)
    sim = _unit_rows(ref) @ _unit_rows(k).T  # (n_ref, n)
    rows, cols = linear_sum_assignment(1.0 - sim)
    order = np.full(n_ref, -1, dtype=np.int64)
    similarity = np.full(n_ref, np.nan)
    order[rows] = cols
    similarity[rows] = sim[rows, cols]
    extras = np.setdiff1d(np.arange(n), cols)
    extras = extras[np.argsort(-sim[:, extras].max(axis=0), kind="stable")]
    note = ""
    if n != n_ref:
        what = f"{n_ref - n} slot(s) blank" if n < n_ref else f"{n - n_ref} extra at the end"
        note = f"{n} filters vs the reference's {n_ref}: {what}"
    return FilterMatch(
        np.concatenate([order, extras]),
        np.concatenate([similarity, np.full(extras.size, np.nan)]),
        note=note,
    )


def reorder(kernel: np.ndarray, match: FilterMatch) -> np.ndarray:
    """``kernel``'s filters in display order, blank (NaN) where ``order`` is -1."""
    k = check_kernel(kernel)
    out = np.full((*k.shape[:3], len(match.order)), np.nan)
    ok = match.order >= 0
    out[..., ok] = k[..., match.order[ok]]
    return out

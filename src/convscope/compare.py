"""``convscope compare``: several MLflow runs side by side in one self-contained HTML report.

The report has three parts:

1. a metrics table: one row per run with its final metrics and the parameters that differ
   between the runs (what the sweep changed);
2. the loss curves of every run overlaid in one figure (``loss`` solid, ``val_loss`` dashed);
3. the first conv layer's kernels of every run, one strip per run, each run's filters put in
   the order of a reference run (the first) by Hungarian matching on cosine similarity.

Why match filters: two trainings that differ only in a seed or a hyper-parameter learn much
the same edge detectors, but in an arbitrary order (filter 3 of one run is filter 11 of the
other). Matching each run's filters to the reference's, with the assignment that maximises the
total cosine similarity (``scipy.optimize.linear_sum_assignment`` on ``1 - cos``), lines up
the filters that do the same job, so differences that are real stand out. The similarity of
each matched pair is printed under it. Runs whose kernels have another shape (5x5 vs 3x3) are
shown unmatched; with more or fewer filters than the reference, the extra filters follow the
matched ones and missing slots stay blank.

Images are embedded as base64 PNG, styles inline: the file opens anywhere, offline, and can be
mailed or archived as is. Any number of runs works (the MLflow UI's image grid stops at 10).

Runs come from :mod:`convscope.tracking.query` (the only mlflow user); this module imports
neither mlflow nor matplotlib at import time, so building the CLI parser stays cheap.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CompareError",
    "CompareReport",
    "EmptySelectionError",
    "FilterMatch",
    "RunData",
    "add_cli",
    "compare",
    "match_filters",
]

#: metric columns shown first, in this order; the others follow alphabetically
METRIC_ORDER = ("loss", "accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy")
CURVE_KEYS = ("loss", "val_loss")


class CompareError(ValueError):
    """The runs cannot be compared as asked (unknown ids, bad filter, no store). One line."""


class EmptySelectionError(CompareError):
    """The selection matched no run."""


# --------------------------------------------------------------------------- matching


@dataclass
class FilterMatch:
    """How one run's filters line up with the reference's.

    Attributes:
        order: filter indices of this run in display order. Slot ``i < F_ref`` holds the filter
            matched to reference filter ``i`` (-1 when this run has fewer filters); slots after
            ``F_ref`` hold this run's unmatched extra filters. ``kernel[..., order]`` (with the
            -1 slots blank) is the run's kernel in the reference's order.
        similarity: cosine similarity of each slot's filter with its reference filter (NaN for
            blank slots and extras).
        matched: False when the kernels' shapes differ and no matching was possible (``order``
            is then the identity).
        note: why a run is unmatched, or empty.
    """

    order: np.ndarray
    similarity: np.ndarray
    matched: bool = True
    note: str = ""

    @property
    def mean_similarity(self) -> float:
        sims = self.similarity[np.isfinite(self.similarity)]
        return float(sims.mean()) if sims.size else float("nan")


def _as_hwio(kernel: np.ndarray, name: str = "kernel") -> np.ndarray:
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim == 2:  # the lines mini-CNN logs one 3x3 filter
        k = k[:, :, None, None]
    if k.ndim != 4:
        raise ValueError(f"{name} must be HWIO (kh, kw, in, filters), got shape {k.shape}")
    return k


def _unit_rows(k: np.ndarray) -> np.ndarray:
    """Filters as rows (filters, kh*kw*in) scaled to unit length (all-zero rows stay zero)."""
    flat = k.reshape(-1, k.shape[-1]).T
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.divide(flat, norms, out=np.zeros_like(flat), where=norms > 0)


def match_filters(reference: np.ndarray, kernel: np.ndarray) -> FilterMatch:
    """Line ``kernel``'s filters up with ``reference``'s (see :class:`FilterMatch`).

    Both are HWIO. Cost of pairing reference filter i with filter j is ``1 - cos(i, j)`` of the
    flattened filters; the Hungarian algorithm finds the pairing of least total cost. A copy of
    the reference with its filters permuted is matched back exactly (similarities 1).
    """
    from scipy.optimize import linear_sum_assignment

    ref, k = _as_hwio(reference, "reference"), _as_hwio(kernel)
    n_ref, n = ref.shape[-1], k.shape[-1]
    if ref.shape[:3] != k.shape[:3]:
        return FilterMatch(
            order=np.arange(n),
            similarity=np.full(n, np.nan),
            matched=False,
            note=f"kernel shape {k.shape[:3]} differs from the reference's {ref.shape[:3]}",
        )
    sim = _unit_rows(ref) @ _unit_rows(k).T  # (n_ref, n)
    rows, cols = linear_sum_assignment(1.0 - sim)
    order = np.full(n_ref, -1, dtype=np.int64)
    similarity = np.full(n_ref, np.nan)
    order[rows] = cols
    similarity[rows] = sim[rows, cols]
    extras = np.setdiff1d(np.arange(n), cols)
    if extras.size:
        # extra filters: the ones most like some reference filter first
        extras = extras[np.argsort(-sim[:, extras].max(axis=0), kind="stable")]
        order = np.concatenate([order, extras])
        similarity = np.concatenate([similarity, np.full(extras.size, np.nan)])
    note = ""
    if n < n_ref:
        note = f"{n} filters vs the reference's {n_ref}: {n_ref - n} slot(s) blank"
    elif n > n_ref:
        note = f"{n} filters vs the reference's {n_ref}: {n - n_ref} extra at the end"
    return FilterMatch(order=order, similarity=similarity, matched=True, note=note)


def reorder(kernel: np.ndarray, match: FilterMatch) -> np.ndarray:
    """``kernel``'s filters in display order, blank (NaN) slots where ``order`` is -1."""
    k = _as_hwio(kernel)
    out = np.full((*k.shape[:3], len(match.order)), np.nan)
    ok = match.order >= 0
    out[..., ok] = k[..., match.order[ok]]
    return out


# --------------------------------------------------------------------------- collecting runs


@dataclass
class RunData:
    """One run's record, curves and first-layer kernel (None when it logged none)."""

    record: Any  # convscope.tracking.query.RunRecord
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    kernel: np.ndarray | None = None
    layer: str | None = None
    epoch: int | None = None
    note: str = ""


@dataclass
class CompareReport:
    """What :func:`compare` wrote and found."""

    path: Path
    runs: list[RunData]
    matches: dict[str, FilterMatch]
    reference: str | None
    tracking_uri: str


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _first_layer_kernel(uri: str, run_id: str, layer: str | None):
    """(kernel, layer name, epoch, note) of the run's last logged epoch."""
    from convscope.tracking import query

    by_epoch = query.kernel_artifacts(uri, run_id)
    if not by_epoch:
        return None, None, None, "no kernels logged"
    epoch = max(by_epoch)
    names = {Path(p).stem: p for p in by_epoch[epoch]}
    if layer is not None:
        if layer not in names:
            return None, None, epoch, f"no layer {layer!r} (has {', '.join(sorted(names))})"
        chosen = layer
    else:
        # conv1 before conv2 before conv10: the first conv layer of convscope's naming
        chosen = sorted(names, key=_natural_key)[0]
    kernel = query.load_npy(uri, run_id, names[chosen])
    try:
        kernel = _as_hwio(kernel, f"{chosen}.npy")
    except ValueError as e:
        return None, chosen, epoch, str(e)
    return kernel, chosen, epoch, ""


def _select(uri, run_ids, experiment, filter_string, parent_run_id):
    from convscope.tracking import query

    selection = experiment is not None or filter_string or parent_run_id is not None
    if run_ids and selection:
        raise CompareError("give run ids or a selection (--experiment/--filter/--parent), not both")
    if run_ids:
        return query.get_runs(uri, list(run_ids))
    if not selection:
        raise CompareError("nothing to compare: give run ids, --experiment, --filter or --parent")
    runs = query.search_runs(
        uri, experiment=experiment, filter_string=filter_string, parent_run_id=parent_run_id
    )
    if not runs:
        what = ", ".join(
            f"{k}={v!r}"
            for k, v in (
                ("experiment", experiment),
                ("filter", filter_string),
                ("parent", parent_run_id),
            )
            if v
        )
        raise EmptySelectionError(f"no runs match {what} in {uri}")
    return runs


def compare(
    run_ids: Sequence[str] | None = None,
    experiment: str | None = None,
    filter_string: str | None = None,
    parent_run_id: str | None = None,
    out: str | os.PathLike[str] = "reports/compare.html",
    root: str | os.PathLike[str] | None = None,
    tracking_uri: str | None = None,
    layer: str | None = None,
    dpi: int = 100,
) -> CompareReport:
    """Compare runs and write one self-contained HTML report; returns what was compared.

    Select either ``run_ids`` (in that order; the first is the reference) or a search:
    ``experiment`` (name or id), ``filter_string`` (MLflow's syntax) and/or ``parent_run_id``
    (the children of a sweep's parent), oldest first. ``out`` is relative to ``root`` (the
    repository, by default the one holding the MLflow store). ``tracking_uri`` defaults to
    ``MLFLOW_TRACKING_URI``, else ``<root>/mlflow.db``. ``layer`` picks the conv layer whose
    kernels are shown (default: the first, by name).

    Raises :class:`CompareError` (a ValueError) with one line for unknown run ids, an unknown
    experiment, a filter MLflow rejects, a missing store, or an empty selection
    (:class:`EmptySelectionError`).
    """
    from convscope.files import atomic_write_text
    from convscope.tracking import find_root, query

    base = Path(root).resolve() if root is not None else find_root()
    uri = tracking_uri or query.default_uri(base)
    try:
        records = _select(uri, run_ids, experiment, filter_string, parent_run_id)
        runs = []
        for rec in records:
            data = RunData(record=rec)
            for key in CURVE_KEYS:
                hist = query.metric_history(uri, rec.run_id, key)
                if hist:
                    data.curves[key] = hist
            data.kernel, data.layer, data.epoch, data.note = _first_layer_kernel(
                uri, rec.run_id, layer
            )
            runs.append(data)
    except query.QueryError as e:
        raise CompareError(" ".join(str(e).split())) from e

    ref = next((r for r in runs if r.kernel is not None), None)
    matches: dict[str, FilterMatch] = {}
    if ref is not None:
        for r in runs:
            if r.kernel is not None:
                matches[r.record.run_id] = match_filters(ref.kernel, r.kernel)
    html_text = render_html(runs, matches, ref, uri, dpi=dpi)
    path = Path(out)
    if not path.is_absolute():
        path = base / path
    atomic_write_text(path, html_text)
    return CompareReport(
        path=path,
        runs=runs,
        matches=matches,
        reference=None if ref is None else ref.record.run_id,
        tracking_uri=uri,
    )


# --------------------------------------------------------------------------- HTML


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _differing_params(runs: list[RunData], limit: int = 16) -> list[str]:
    keys = sorted({k for r in runs for k in r.record.params}, key=_natural_key)
    if len(runs) < 2:
        return []
    differ = [k for k in keys if len({r.record.params.get(k) for r in runs}) > 1]
    return differ[:limit]


def _metric_columns(runs: list[RunData]) -> list[str]:
    keys = {k for r in runs for k in r.record.metrics}
    first = [k for k in METRIC_ORDER if k in keys]
    return first + sorted(keys - set(first), key=_natural_key)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
tr.ref td { background: #fff8e0; }
.note { color: #a33; font-size: 0.85em; } .muted { color: #777; font-size: 0.85em; }
.strip { margin: 0.6em 0 1.2em 0; } img { max-width: 100%; }
"""


def render_html(
    runs: list[RunData],
    matches: dict[str, FilterMatch],
    ref: RunData | None,
    uri: str,
    dpi: int = 100,
) -> str:
    """The report as one HTML string (images inline)."""
    from convscope.viz.compare import loss_curves_png, matched_kernels_png

    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>convscope compare: {len(runs)} runs</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>convscope compare: {len(runs)} run(s)</h1>",
        f'<p class="muted">tracking store: {esc(uri)}</p>',
    ]

    # 1. metrics table
    params = _differing_params(runs)
    metrics = _metric_columns(runs)
    head = ["#", "run", "experiment", "status", *params, *metrics]
    parts.append("<h2>Metrics</h2><table><tr>")
    parts += [f"<th{' class=l' if i < 4 else ''}>{esc(h)}</th>" for i, h in enumerate(head)]
    parts.append("</tr>")
    for i, r in enumerate(runs):
        rec = r.record
        cls = ' class="ref"' if ref is not None and r is ref else ""
        cells = [str(i), rec.label, rec.experiment_name, rec.status]
        cells += [rec.params.get(k, "") for k in params]
        cells += [_fmt(rec.metrics.get(k)) for k in metrics]
        parts.append(f"<tr{cls}>")
        parts += [
            f"<td{' class=l' if j < 4 else ''}>{esc(str(c))}</td>" for j, c in enumerate(cells)
        ]
        parts.append("</tr>")
    parts.append("</table>")
    if params:
        parts.append('<p class="muted">parameter columns: those that differ between the runs</p>')

    # 2. loss curves
    parts.append("<h2>Loss curves</h2>")
    curves = [(r.record.label, r.curves) for r in runs]
    if any(c for _, c in curves):
        parts.append(_img(loss_curves_png(curves, CURVE_KEYS, dpi=dpi), "loss curves"))
    else:
        parts.append('<p class="note">no run logged loss or val_loss</p>')

    # 3. kernels
    parts.append("<h2>First conv layer kernels, matched to the reference</h2>")
    if ref is None:
        parts.append('<p class="note">no run logged kernels</p>')
    else:
        kernels = [r.kernel for r in runs if r.kernel is not None]
        vmax = max(float(np.nanmax(np.abs(k))) for k in kernels) or 1.0
        parts.append(
            f'<p class="muted">reference: {esc(ref.record.label)}, layer {esc(str(ref.layer))}; '
            f"one colour scale for all runs, ±{vmax:.3g} (blue negative, red positive). Under "
            "each filter: its index in its own run and its cosine similarity with the "
            "reference filter above it (Hungarian matching).</p>"
        )
        for i, r in enumerate(runs):
            title = f"#{i} {r.record.label}"
            parts.append('<div class="strip">')
            if r.kernel is None:
                parts.append(f"<b>{esc(title)}</b> <span class='note'>{esc(r.note)}</span>")
                parts.append("</div>")
                continue
            m = matches[r.record.run_id]
            shown = reorder(r.kernel, m) if m.matched else _as_hwio(r.kernel)
            order = m.order if m.matched else np.arange(r.kernel.shape[-1])
            sims = m.similarity if m.matched else np.full(len(order), np.nan)
            info = "reference" if r is ref else f"mean similarity {m.mean_similarity:.3f}"
            caption = f"{title}: {r.layer}, epoch {r.epoch}, {info}"
            parts.append(
                f"<div><b>{esc(title)}</b> {esc(f'{r.layer}, epoch {r.epoch}, {info}')}</div>"
            )
            parts.append(_img(matched_kernels_png(shown, order, sims, vmax, caption, dpi), title))
            if m.note:
                parts.append(f'<div class="note">{esc(m.note)}</div>')
            parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- CLI


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``convscope compare`` (called by ``convscope.cli`` when building its parser)."""
    p = subparsers.add_parser(
        "compare",
        help="compare MLflow runs in one self-contained HTML report",
        description=(
            "Compare MLflow runs: a metrics table, the loss curves overlaid and the first conv "
            "layer's kernels matched to the first run's. Select runs by id, or by experiment "
            "and/or an MLflow filter and/or a sweep's parent run."
        ),
    )
    p.add_argument(
        "run_ids", nargs="*", metavar="RUN_ID", help="runs to compare (first = reference)"
    )
    p.add_argument("-e", "--experiment", help="experiment name or id, e.g. convscope/train_keras")
    p.add_argument(
        "-f",
        "--filter",
        dest="filter_string",
        help="MLflow search filter, e.g. \"params.`keras.filters` = '32'\"",
    )
    p.add_argument("-p", "--parent", dest="parent_run_id", help="children of this (sweep) run")
    p.add_argument("-o", "--out", default="reports/compare.html", help="HTML file to write")
    p.add_argument("--layer", help="conv layer to show (default: the first)")
    p.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else <repo>/mlflow.db")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    """Run the comparison; a user error prints one line and exits 2."""
    from convscope.tracking.store import TrackingError

    try:
        report = compare(
            run_ids=args.run_ids or None,
            experiment=args.experiment,
            filter_string=args.filter_string,
            parent_run_id=args.parent_run_id,
            out=args.out,
            tracking_uri=args.tracking_uri,
            layer=args.layer,
        )
    except (CompareError, TrackingError) as e:
        print(f"convscope: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    matched = sum(m.matched for m in report.matches.values())
    print(f"compared {len(report.runs)} run(s) ({matched} with kernels matched): {report.path}")
    return 0

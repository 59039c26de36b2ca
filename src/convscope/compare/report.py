"""The comparison as one self-contained HTML file, rendered by jinja2 (autoescaped).

It has a metrics table (final metrics and only the params that differ between the runs; every
param behind a ``<details>`` toggle), the loss curves overlaid, each run's first conv layer
kernels in the reference's filter order, all strips on one colour scale so they compare
directly, and per conv layer the filter stability across the runs (CKA and matched-filter
cosine, :mod:`convscope.compare.stability`). A strip wraps after :data:`FILTERS_PER_ROW` filters
so that each 3x3 kernel is about 66 px (nearest-neighbour pixels) and the page reads at 1600 px
wide. Images are inline base64 PNG and styles inline: the file opens anywhere, offline. Any
number of runs works (the MLflow UI's image grid stops at 10).
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convscope.compare.collection import (
    CURVE_KEYS,
    CompareError,
    RunData,
    collect_runs,
    natural_key,
)
from convscope.compare.matching import FilterMatch, match_filters, reorder

# metric columns shown first, in this order; the others follow by name
METRIC_ORDER = ("loss", "accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy")
MAX_PARAM_COLUMNS = 16
#: filters per image row of a kernel strip (12 x 4 cells of 22 px: about 1,100 px wide)
FILTERS_PER_ROW = 12

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>convscope compare: {{ rows|length }} runs</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; } img { max-width: 100%; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; } th { background: #f3f3f3; }
table { border-collapse: collapse; font-size: 0.85em; } tr.ref td { background: #fff8e0; }
td { max-width: 24em; overflow-wrap: anywhere; } details { margin: 0.8em 0; }
th { max-width: 9em; overflow-wrap: anywhere; font-weight: 600; } .wide { overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th:nth-child(-n+4), td:nth-child(-n+4) { text-align: left; } .strip { margin: 0.6em 0 1.2em 0; }
.note { color: #a33; font-size: 0.85em; } .muted { color: #777; font-size: 0.85em; }
</style></head><body>
<h1>convscope compare: {{ rows|length }} run(s)</h1>
<p class="muted">tracking store: {{ uri }}</p>
<h2>Metrics</h2>
<table><tr>{% for h in head %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in rows %}<tr{% if row.ref %} class="ref"{% endif %}>
{%- for c in row.cells %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</table>
<p class="muted">{% if params %}parameter columns: the {{ params|length }} that differ between
the runs{% else %}no parameter differs between the runs{% endif %}</p>
<details><summary>all {{ all_params|length }} params</summary><div class="wide">
<table><tr><th>param</th>{% for row in rows %}<th>#{{ loop.index0 }}</th>{% endfor %}</tr>
{% for p in all_params %}<tr><td>{{ p.key }}</td>{% for v in p["values"] %}<td>{{ v }}</td>
{%- endfor %}</tr>
{% endfor %}</table></div></details>
<h2>Loss curves</h2>
{% if curves %}<img alt="loss curves" src="data:image/png;base64,{{ curves }}">
{% else %}<p class="note">no run logged loss or val_loss</p>{% endif %}
<h2>First conv layer kernels, matched to the reference</h2>
{% if reference is none %}<p class="note">no run logged kernels</p>
{% else %}<p class="muted">reference: {{ reference }}; one colour scale for all runs,
±{{ "%.3g"|format(vmax) }} (blue negative, red positive). Under each filter: its index in its
own run and its cosine similarity with the reference filter above it (Hungarian matching).</p>
{% for s in strips %}<div class="strip"><div><b>{{ s.title }}</b>
{% if s.pngs %}{{ s.info }}</div>{% for png in s.pngs %}
<div><img class="kernels" alt="{{ s.title }}" src="data:image/png;base64,{{ png }}"></div>
{% endfor %}{% else %}<span class="note">{{ s.note }}</span></div>{% endif %}
{% if s.pngs and s.note %}<div class="note">{{ s.note }}</div>{% endif %}</div>
{% endfor %}{% endif %}
<h2>Filter stability across the runs</h2>
{% if stability %}<p class="muted">per conv layer, the mean over all pairs of runs: linear CKA
of the layer's outputs on one fixed image set (1: the runs represent the images alike) and
the cosine similarity of Hungarian-matched filters (1: the same filters in another order)</p>
<table><tr><th>layer</th><th>CKA</th><th>matched filter cosine</th><th>pairs</th></tr>
{% for layer, s in stability.items() %}<tr><td>{{ layer }}</td><td>{{ fmt(s.cka) }}</td>
<td>{{ fmt(s.filter_cosine) }}</td><td>{{ s.pairs }}</td></tr>
{% endfor %}</table>
{% else %}<p class="note">fewer than two runs logged kernels</p>{% endif %}
</body></html>
"""


@dataclass
class CompareReport:
    """What :func:`compare` wrote and found."""

    path: Path
    runs: list[RunData]
    matches: dict[str, FilterMatch]
    reference: str | None
    tracking_uri: str
    stability: dict[str, dict[str, Any]] = field(default_factory=dict)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else ""
    return "" if value is None else str(value)


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def render_html(
    runs: list[RunData],
    matches: dict[str, FilterMatch],
    ref: RunData | None,
    uri: str,
    dpi=100,
    stability: dict[str, dict[str, Any]] | None = None,
) -> str:
    """The report as one HTML string (images inline)."""
    import jinja2

    from convscope.viz.compare import loss_curves_png, matched_kernels_png

    keys = sorted({k for r in runs for k in r.record.params}, key=natural_key)
    params = [k for k in keys if len({r.record.params.get(k) for r in runs}) > 1]
    params = params[:MAX_PARAM_COLUMNS] if len(runs) > 1 else []
    metric_keys = {k for r in runs for k in r.record.metrics}
    metrics = [k for k in METRIC_ORDER if k in metric_keys]
    metrics += sorted(metric_keys - set(metrics), key=natural_key)
    rows = [
        {
            "ref": r is ref,
            "cells": [i, r.record.label, r.record.experiment_name, r.record.status]
            + [r.record.params.get(k, "") for k in params]
            + [_fmt(r.record.metrics.get(k)) for k in metrics],
        }
        for i, r in enumerate(runs)
    ]
    curves = [(r.record.label, r.curves) for r in runs]
    curves_png = (
        _b64(loss_curves_png(curves, CURVE_KEYS, dpi=dpi)) if any(r.curves for r in runs) else ""
    )

    strips, vmax = [], 1.0
    if ref is not None:
        vmax = max(float(np.nanmax(np.abs(r.kernel))) for r in runs if r.kernel is not None) or 1.0
    for i, r in enumerate(runs):
        strip = {"title": f"#{i} {r.record.label}", "note": r.note, "pngs": []}
        if r.kernel is not None:
            m = matches[r.record.run_id]
            info = "reference" if r is ref else f"mean similarity {m.mean_similarity:.3f}"
            strip["info"] = f"{r.layer}, epoch {r.epoch}, {info}"
            caption = f"{strip['title']}: {strip['info']}"
            shown = reorder(r.kernel, m)
            pngs = [
                matched_kernels_png(
                    shown[..., c : c + FILTERS_PER_ROW],
                    m.order[c : c + FILTERS_PER_ROW],
                    m.similarity[c : c + FILTERS_PER_ROW],
                    vmax,
                    caption if c == 0 else f"{caption} (continued)",
                    dpi,
                )
                for c in range(0, shown.shape[-1], FILTERS_PER_ROW)
            ]
            strip.update(pngs=[_b64(png) for png in pngs], note=m.note)
        strips.append(strip)

    env = jinja2.Environment(autoescape=True, keep_trailing_newline=True)
    return env.from_string(TEMPLATE).render(
        uri=uri,
        head=["#", "run", "experiment", "status", *params, *metrics],
        rows=rows,
        params=params,
        all_params=[{"key": k, "values": [r.record.params.get(k, "") for r in runs]} for k in keys],
        curves=curves_png,
        reference=None if ref is None else f"{ref.record.label}, layer {ref.layer}",
        vmax=vmax,
        strips=strips,
        stability=stability or {},
        fmt=_fmt,
    )


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

    Select ``run_ids`` (in that order; the first with kernels is the reference) or search by
    ``experiment`` (name or id), ``filter_string`` (MLflow's syntax) and/or ``parent_run_id``
    (a sweep's children), oldest first. ``out`` is relative to ``root`` (default
    :func:`convscope.paths.tracking_root`); ``tracking_uri`` defaults to
    ``MLFLOW_TRACKING_URI``, else the store under ``root``; ``layer`` is the conv layer shown
    (default: the first by name). A selection that cannot be read or is empty raises
    :class:`CompareError`, a ValueError with one line.
    """
    from convscope.compare.stability import run_stability
    from convscope.files import atomic_write_text
    from convscope.paths import project_root, tracking_root
    from convscope.tracking.query import QueryError, default_uri

    base = Path(root).resolve() if root is not None else tracking_root()
    uri = tracking_uri or default_uri(base)
    runs = collect_runs(uri, run_ids, experiment, filter_string, parent_run_id, layer)
    ref = next((r for r in runs if r.kernel is not None), None)
    matches = {
        r.record.run_id: match_filters(ref.kernel, r.kernel)
        for r in runs
        if ref is not None and r.kernel is not None
    }
    try:
        stability = run_stability(uri, [r.record.run_id for r in runs], project_root())
    except QueryError as e:
        raise CompareError(" ".join(str(e).split())) from e
    html = render_html(runs, matches, ref, uri, dpi=dpi, stability=stability)
    path = atomic_write_text(base / out, html)
    ref_id = None if ref is None else ref.record.run_id
    return CompareReport(path, runs, matches, ref_id, uri, stability)

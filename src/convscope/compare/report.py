"""The comparison as one self-contained HTML file, rendered by jinja2 (autoescaped).

It has a metrics table (final metrics and only the params that differ between the runs; every
param behind a ``<details>`` toggle), the loss curves overlaid, a filter grid of the first
conv layer, and per conv layer the filter stability across the runs (CKA and matched-filter
cosine, :mod:`convscope.compare.stability`).

The filter grid is an HTML table: a row per run, a column per reference filter, each run's
filters in the reference's order (Hungarian matching), every tile at 22 px a weight on one
colour scale. A column is one reference filter in every row at any window width: a wide
grid scrolls sideways (the run names stay pinned at the left) instead of wrapping rows.
Cells never break inside a number or a name. A sweep's parent run, which a search finds but
which holds no training of its own, is named in a note. Images are inline base64 PNG and
styles inline: the file opens anywhere, offline. Any number of runs works (the MLflow UI's
image grid stops at 10).
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

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>convscope compare: {{ rows|length }} runs</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; } th { background: #f3f3f3; }
table { border-collapse: collapse; font-size: 0.85em; }
tr.ref td, tr.ref th { background: #fff8e0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { font-weight: 600; } td.name { text-align: left; white-space: normal; min-width: 14em; }
td.text { text-align: left; } details { margin: 0.8em 0; }
.wide { overflow-x: auto; max-width: 100%; } .curves { max-width: 100%; }
.note { color: #a33; font-size: 0.85em; } .muted { color: #777; font-size: 0.85em; }
table.filters td, table.filters th { padding: 3px; text-align: center; vertical-align: top;
  font-size: 0.8em; }
table.filters th.run { position: sticky; left: 0; z-index: 1; text-align: left;
  white-space: normal; min-width: 12em; max-width: 16em; font-weight: normal; }
table.filters tr:not(.ref) th.run { background: #fff; }
table.filters img { display: block; margin: 0 auto; image-rendering: pixelated; }
</style></head><body>
<h1>convscope compare: {{ rows|length }} run(s)</h1>
<p class="muted">tracking store: {{ uri }}</p>
{% for note in left_out %}<p class="note">{{ note }}</p>{% endfor %}
<h2>Metrics</h2>
<div class="wide"><table><tr>{% for h in head %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in rows %}<tr{% if row.ref %} class="ref"{% endif %}>
{%- for c in row.cells %}<td{% if loop.index0 in (1, 2) %} class="name"{% elif loop.index0 == 3 %}
 class="text"{% endif %}>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</table></div>
<p class="muted">{% if params %}parameter columns: the {{ params|length }} that differ between
the runs{% else %}no parameter differs between the runs{% endif %}</p>
<details><summary>all {{ all_params|length }} params</summary><div class="wide">
<table><tr><th>param</th>{% for row in rows %}<th>#{{ loop.index0 }}</th>{% endfor %}</tr>
{% for p in all_params %}<tr><td class="text">{{ p.key }}</td>{% for v in p["values"] %}
<td>{{ v }}</td>{%- endfor %}</tr>
{% endfor %}</table></div></details>
<h2>Loss curves</h2>
{% if curves %}<img class="curves" alt="loss curves" src="data:image/png;base64,{{ curves }}">
{% else %}<p class="note">no run logged loss or val_loss</p>{% endif %}
<h2>{{ layer_title }}, matched to the reference</h2>
{% if reference is none %}<p class="note">no run logged kernels</p>
{% else %}<p class="muted">reference: {{ reference }}. Each column is one filter of the
reference; each row shows the run's filter matched to it (Hungarian matching on cosine
similarity), with its index in its own run and its cosine similarity with the reference
filter. One colour scale for all runs: <img alt="colour scale" src="data:image/png;base64,{{
bar }}" style="vertical-align: middle"> -{{ "%.3g"|format(vmax) }} (blue) to
+{{ "%.3g"|format(vmax) }} (red).</p>
<div class="wide"><table class="filters">
<tr><th class="run">run</th>{% for h in columns %}<th>{{ h }}</th>{% endfor %}</tr>
{% for s in strips %}<tr{% if s.ref %} class="ref"{% endif %}><th class="run"><b>{{ s.title }}</b>
{% if s.info %}<br><span class="muted">{{ s.info }}</span>{% endif %}
{% if s.note %}<div class="note">{{ s.note }}</div>{% endif %}</th>
{% if s.cells %}{% for c in s.cells %}<td>{% if c.png %}<img class="kernels" alt="{{ c.label }}"
 src="data:image/png;base64,{{ c.png }}">{{ c.label }}<br>{{ c.similarity }}{% endif %}</td>
{% endfor %}{% else %}<td colspan="{{ columns|length }}"></td>{% endif %}</tr>
{% endfor %}</table></div>{% endif %}
<h2>Filter stability across the runs</h2>
{% if stability %}<p class="muted">per conv layer, the mean over all pairs of runs: linear CKA
of the layer's outputs on one fixed image set (1: the runs represent the images alike) and
the cosine similarity of Hungarian-matched filters (1: the same filters in another order)</p>
<table><tr><th>layer</th><th>CKA</th><th>matched filter cosine</th><th>pairs</th></tr>
{% for layer, s in stability.items() %}<tr><td class="text">{{ layer }}</td>
<td>{{ fmt(s.cka) }}</td><td>{{ fmt(s.filter_cosine) }}</td><td>{{ s.pairs }}</td></tr>
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
    left_out: Sequence[str] = (),
) -> str:
    """The report as one HTML string (images inline); ``left_out``: notes on runs a search
    found and left out."""
    import jinja2

    from convscope.viz.compare import colour_bar_png, filter_tile_png, loss_curves_png

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
    n_columns = max((len(m.order) for m in matches.values()), default=0)
    for i, r in enumerate(runs):
        strip = {"title": f"#{i} {r.record.label}", "note": r.note, "ref": r is ref, "cells": []}
        if r.kernel is not None:
            m = matches[r.record.run_id]
            info = "reference" if r is ref else f"mean similarity {m.mean_similarity:.3f}"
            strip.update(info=f"{r.layer}, epoch {r.epoch}, {info}", note=m.note)
            shown = reorder(r.kernel, m)
            for c in range(n_columns):
                index = int(m.order[c]) if c < len(m.order) else -1
                if index < 0:
                    strip["cells"].append({"png": "", "label": "", "similarity": ""})
                    continue
                sim = float(m.similarity[c])
                strip["cells"].append(
                    {
                        "png": _b64(filter_tile_png(shown[..., c], vmax)),
                        "label": f"f{index}",
                        "similarity": f"{sim:.2f}" if math.isfinite(sim) else "",
                    }
                )
        strips.append(strip)
    ref_filters = 0 if ref is None else ref.kernel.shape[-1]
    columns = [f"f{c}" if c < ref_filters else "more" for c in range(n_columns)]

    env = jinja2.Environment(autoescape=True, keep_trailing_newline=True)
    return env.from_string(TEMPLATE).render(
        uri=uri,
        head=["#", "run", "experiment", "status", *params, *metrics],
        rows=rows,
        params=params,
        all_params=[{"key": k, "values": [r.record.params.get(k, "") for r in runs]} for k in keys],
        curves=curves_png,
        reference=None if ref is None else f"{ref.record.label}, layer {ref.layer}",
        layer_title="First conv layer's filters" if ref is None else f"Filters of {ref.layer}",
        vmax=vmax,
        bar=_b64(colour_bar_png(vmax)),
        columns=columns,
        left_out=left_out or [],
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
    from convscope.paths import tracking_root
    from convscope.tracking.query import QueryError, default_uri

    base = Path(root).resolve() if root is not None else tracking_root()
    uri = tracking_uri or default_uri(base)
    runs, parents = collect_runs(uri, run_ids, experiment, filter_string, parent_run_id, layer)
    left_out = [
        f"Left out: sweep parent run {p.label}, which holds no training of its own; its jobs "
        f"are its child runs (`convscope compare -p {p.run_id}` compares just them)."
        for p in parents
    ]
    ref = next((r for r in runs if r.kernel is not None), None)
    matches = {
        r.record.run_id: match_filters(ref.kernel, r.kernel)
        for r in runs
        if ref is not None and r.kernel is not None
    }
    try:
        stability = run_stability(uri, [r.record.run_id for r in runs], base)
    except QueryError as e:
        raise CompareError(" ".join(str(e).split())) from e
    html = render_html(runs, matches, ref, uri, dpi=dpi, stability=stability, left_out=left_out)
    path = atomic_write_text(base / out, html)
    ref_id = None if ref is None else ref.record.run_id
    return CompareReport(path, runs, matches, ref_id, uri, stability)

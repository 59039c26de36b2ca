"""The figure manifest: one JSON record per figure, so figures can be found and compared in code.

Every figure is listed with what it shows (kind, model, layer, data shape, tile grid), how it
is coloured (colormap, vmin, vmax), the file it was drawn from (``source``, e.g.
``models/keras_cnn.keras``: its md5 finds the MLflow run that made it, see
:mod:`convscope.tracking.provenance`), and its file, relative to the repository root, with its
pixel size. Two runs' manifests can then be
compared field by field (:func:`diff_manifests`: how a layer's kernel scale changed), and
:func:`verify_manifest` checks that the manifest and the files on disk agree.

The manifest holds no timestamps or run ids, so the same inputs give the same file.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from convscope.files import atomic_write_text
from convscope.validation import ValidationError
from convscope.viz.core import DIVERGING, Plot, write_png

__all__ = [
    "MANIFEST_NAME",
    "FigureRecord",
    "Manifest",
    "diff_manifests",
    "figure_name",
    "load_manifest",
    "verify_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
FIGURE_SUFFIXES = (".png", ".gif")


def _plain(value: Any) -> Any:
    """JSON-able copy: tuples -> lists, NumPy scalars -> Python numbers, non-finite -> None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass
class FigureRecord:
    """One figure of the manifest (see the module docstring for the fields' meaning)."""

    kind: str
    model: str
    layer: str | None
    file: str
    width: int
    height: int
    shape: list[int]
    grid: list[int] | None
    cmap: str
    vmin: float
    vmax: float
    source: str | None = None
    step: int | None = None
    image_index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def format(self) -> str:
        return Path(self.file).suffix.lstrip(".").lower()


def figure_name(
    model: str, kind: str, layer: str | None = None, suffix: str = ".png", **parts
) -> str:
    """A stable file name, e.g. ``keras__feature_maps__conv1__img0.png``."""
    pieces = [model, kind, layer, *(f"{k}{v}" for k, v in parts.items() if v is not None)]
    return "__".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", str(p)) for p in pieces if p) + suffix


class Manifest:
    """Collects figures under ``root/figures_dir`` and writes ``manifest.json`` there.

    ``writer`` maps a root-relative path to the path actually written: a pipeline stage passes
    ``ctx.out``, whose staged paths become the final files when the stage succeeds; default
    the file itself under ``root``. Records always hold the final root-relative path.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        figures_dir: str = "reports/figures",
        writer: Callable[[str], Path] | None = None,
    ):
        self.root = Path(root).resolve()
        self.figures_dir = Path(figures_dir).as_posix().strip("/")
        self.writer = writer
        self.records: list[FigureRecord] = []

    def rel(self, name: str) -> str:
        """Root-relative path of figure file ``name``."""
        return f"{self.figures_dir}/{name}"

    @property
    def path(self) -> Path:
        """Where the manifest ends up (``root/figures_dir/manifest.json``)."""
        return self.root / self.rel(MANIFEST_NAME)

    def target(self, rel: str) -> Path:
        """The path to write root-relative ``rel`` to (staged when a writer is set)."""
        return Path(self.writer(rel)) if self.writer is not None else self.root / rel

    def save_plot(self, plot: Plot, model: str, **where: Any) -> FigureRecord:
        """Write ``plot`` as a PNG (closing its figure) and record it; ``where``: as :meth:`add`."""
        rel = self.rel(figure_name(model, plot.kind, plot.layer, img=where.get("image_index")))
        return self.add(plot, rel, model, size=write_png(plot, self.target(rel)), **where)

    def add(
        self,
        plot: Plot,
        rel: str,
        model: str,
        size: tuple[int, int] | None = None,
        source: str | None = None,
        step: int | None = None,
        image_index: int | None = None,
    ) -> FigureRecord:
        """Record the figure written to root-relative ``rel``; ``size`` is read from the file
        when not given. ``step``: the training epoch the figure shows, when it shows one."""
        width, height = size or image_size(self.target(rel))
        record = FigureRecord(
            kind=plot.kind,
            model=model,
            layer=plot.layer,
            file=Path(rel).as_posix(),
            width=int(width),
            height=int(height),
            shape=[int(d) for d in plot.shape],
            grid=None if plot.grid is None else [int(d) for d in plot.grid],
            cmap=plot.cmap,
            vmin=float(plot.vmin),
            vmax=float(plot.vmax),
            source=source,
            step=None if step is None else int(step),
            image_index=None if image_index is None else int(image_index),
            extra=_plain(plot.extra),
        )
        self.records.append(record)
        return record

    def write(self) -> Path:
        """Write ``manifest.json`` through :func:`convscope.files.atomic_write_text`."""
        files = [r.file for r in self.records]
        dupes = sorted({f for f in files if files.count(f) > 1})
        if dupes:
            raise ValidationError(f"manifest lists these files more than once: {dupes}")
        data = {
            "version": MANIFEST_VERSION,
            "figures_dir": self.figures_dir,
            "count": len(self.records),
            "figures": [_plain(asdict(r)) for r in self.records],
        }
        text = json.dumps(data, indent=2, allow_nan=False) + "\n"
        return atomic_write_text(self.target(self.rel(MANIFEST_NAME)), text)

    def remove_stale(self) -> list[Path]:
        """Delete figure files in the output folder that this manifest does not list.

        A run of a smaller architecture (after ``experiment=deeper``) must not leave the
        bigger one's figures behind, where they would disagree with the manifest.
        """
        listed = {Path(r.file).name for r in self.records}
        folder = self.target(self.rel(MANIFEST_NAME)).parent
        stale = [p for p in _figure_files(folder) if p.name not in listed]
        for p in stale:
            p.unlink()
        return stale


def _figure_files(folder: Path) -> list[Path]:
    """Figure files in ``folder``; hidden names are other writers' temporary or staged files."""
    return [
        p
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in FIGURE_SUFFIXES and not p.name.startswith(".")
    ]


def load_manifest(path: str | os.PathLike[str]) -> list[FigureRecord]:
    """The records of a ``manifest.json``; one-line ValidationError naming a malformed file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {MANIFEST_VERSION}")
        return [FigureRecord(**rec) for rec in data["figures"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValidationError(f"{path}: not a convscope figure manifest ({e!r})") from e


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of a PNG or GIF, read from its header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def verify_manifest(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> list[str]:
    """Problems between a manifest and the disk; an empty list means they agree.

    Every listed file must exist with the recorded pixel size, diverging scales must be
    symmetric, and every figure file in the folder must be listed.
    """
    root, folder = Path(root).resolve(), Path(path).parent
    problems, listed = [], set()
    for r in load_manifest(path):
        f = (root / r.file).resolve()
        listed.add(f)
        if not f.is_file():
            problems.append(f"{r.file}: listed but missing")
            continue
        size = image_size(f)
        if size != (r.width, r.height):
            problems.append(f"{r.file}: is {size[0]}x{size[1]}, manifest says {r.width}x{r.height}")
        if r.cmap == DIVERGING and r.vmin != -r.vmax:
            problems.append(f"{r.file}: diverging scale not symmetric ({r.vmin}, {r.vmax})")
    for f in _figure_files(folder):
        if f.resolve() not in listed:
            problems.append(f"{f.name}: on disk but not in the manifest")
    return problems


def _img(r: FigureRecord) -> list[str]:
    return [] if r.image_index is None else [f"img{r.image_index}"]


def diff_manifests(
    a: list[FigureRecord] | str | os.PathLike[str],
    b: list[FigureRecord] | str | os.PathLike[str],
    fields: tuple[str, ...] = ("shape", "grid", "cmap", "vmin", "vmax"),
) -> dict[str, Any]:
    """Compare two runs' figures in code: what appeared, disappeared or changed.

    Figures are paired by (model, kind, layer, image index). Returns ``{"only_a": [...],
    "only_b": [...], "changed": {key: {field: (a value, b value)}}}``, keys written
    ``model/kind/layer[/imgN]``; e.g. a kernel grid whose ``vmax`` grew shows how much larger
    that layer's weights became between the runs.
    """

    def by_key(records) -> dict[str, FigureRecord]:
        if isinstance(records, str | os.PathLike):
            records = load_manifest(records)
        return {"/".join([r.model, r.kind, r.layer or "-", *_img(r)]): r for r in records}

    ma, mb = by_key(a), by_key(b)
    changed = {}
    for k in sorted(ma.keys() & mb.keys()):
        d = {
            f: (getattr(ma[k], f), getattr(mb[k], f))
            for f in fields
            if getattr(ma[k], f) != getattr(mb[k], f)
        }
        if d:
            changed[k] = d
    return {
        "only_a": sorted(ma.keys() - mb.keys()),
        "only_b": sorted(mb.keys() - ma.keys()),
        "changed": changed,
    }

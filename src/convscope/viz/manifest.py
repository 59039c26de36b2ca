"""The figure manifest: one JSON record per figure, so figures can be found and compared in code.

Every figure the visuals stage writes is listed with what it shows (kind, model, layer, data
shape, tile grid), how it is coloured (colormap, vmin, vmax), where its numbers came from (the
MLflow run that trained the model, when known) and its file, relative to the repository root,
with its pixel size. Two runs' manifests can then be compared field by field (e.g. how a
layer's kernel scale changed), and the tests check that the manifest and the files on disk agree.

The manifest holds no timestamps, so the same inputs give the same file (DVC stays quiet).
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
from convscope.viz.core import Plot, write_png

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "FigureRecord",
    "Manifest",
    "figure_name",
    "diff_manifests",
    "load_manifest",
    "verify_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
FIGURE_SUFFIXES = (".png", ".gif")


def _plain(value: Any) -> Any:
    """JSON-able copy: tuples -> lists, NumPy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class FigureRecord:
    """One figure of the manifest (see the module docstring for the meaning of each field)."""

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
    source_run: str | None = None
    step: int | None = None
    image_index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def format(self) -> str:
        return Path(self.file).suffix.lstrip(".").lower()

    def to_json(self) -> dict[str, Any]:
        return _plain(asdict(self))


def figure_name(
    model: str, kind: str, layer: str | None = None, suffix: str = ".png", **parts: Any
) -> str:
    """A stable file name, e.g. ``keras__feature_maps__conv1__img0.png``."""
    pieces = [model, kind] + ([layer] if layer else [])
    pieces += [f"{k}{v}" for k, v in parts.items() if v is not None]
    name = "__".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", str(p)) for p in pieces)
    return name + suffix


class Manifest:
    """Collects figures under ``root/figures_dir`` and writes ``manifest.json`` there.

    Args:
        root: the repository root; recorded file paths are relative to it.
        figures_dir: where figures go, relative to ``root`` (default ``reports/figures``).
        writer: maps a root-relative path to the path to actually write (a pipeline stage
            passes ``ctx.out``, which stages files until the stage succeeds); default: the
            file itself under ``root``. Records always hold the final root-relative path.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        figures_dir: str = "reports/figures",
        writer: Callable[[str], Path] | None = None,
    ):
        self.root = Path(root).resolve()
        self.figures_dir = Path(figures_dir).as_posix().strip("/")
        self.dir = self.root / self.figures_dir
        self.writer = writer
        self.records: list[FigureRecord] = []

    @property
    def rel_path(self) -> str:
        return f"{self.figures_dir}/{MANIFEST_NAME}"

    @property
    def path(self) -> Path:
        """Where the manifest ends up (``root/figures_dir/manifest.json``)."""
        return self.root / self.rel_path

    def target(self, rel: str) -> Path:
        """The path to write root-relative ``rel`` to (staged when a writer is set)."""
        return Path(self.writer(rel)) if self.writer is not None else self.root / rel

    def save_plot(
        self,
        plot: Plot,
        model: str,
        name: str | None = None,
        source_run: str | None = None,
        step: int | None = None,
        image_index: int | None = None,
    ) -> FigureRecord:
        """Write ``plot`` as a PNG atomically (closing its figure) and record it."""
        name = name or figure_name(model, plot.kind, plot.layer, img=image_index)
        rel = f"{self.figures_dir}/{name}"
        width, height = write_png(plot.figure, self.target(rel))
        record = FigureRecord(
            kind=plot.kind,
            model=model,
            layer=plot.layer,
            file=rel,
            width=width,
            height=height,
            shape=[int(d) for d in plot.shape],
            grid=None if plot.grid is None else [int(d) for d in plot.grid],
            cmap=plot.cmap,
            vmin=float(plot.vmin),
            vmax=float(plot.vmax),
            source_run=source_run,
            step=None if step is None else int(step),
            image_index=image_index,
            extra=_plain(plot.extra),
        )
        self.records.append(record)
        return record

    def add(self, record: FigureRecord) -> FigureRecord:
        """Record a figure written by other means."""
        self.records.append(record)
        return record

    def add_file(
        self, rel: str, facts: dict[str, Any], model: str, source_run: str | None = None
    ) -> FigureRecord:
        """Record root-relative ``rel`` from a facts dict such as
        :func:`~convscope.viz.kernels.kernel_evolution_gif` returns."""
        return self.add(
            FigureRecord(
                kind=facts["kind"],
                model=model,
                layer=facts.get("layer"),
                file=Path(rel).as_posix(),
                width=int(facts["width"]),
                height=int(facts["height"]),
                shape=[int(d) for d in facts["shape"]],
                grid=None if facts.get("grid") is None else [int(d) for d in facts["grid"]],
                cmap=facts["cmap"],
                vmin=float(facts["vmin"]),
                vmax=float(facts["vmax"]),
                source_run=source_run,
                extra=_plain(facts.get("extra", {})),
            )
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "figures_dir": self.figures_dir,
            "count": len(self.records),
            "figures": [r.to_json() for r in self.records],
        }

    def write(self) -> Path:
        """Write ``manifest.json`` atomically; returns its path."""
        files = [r.file for r in self.records]
        dupes = sorted({f for f in files if files.count(f) > 1})
        if dupes:
            raise ValueError(f"manifest lists these files more than once: {dupes}")
        text = json.dumps(self.to_json(), indent=2, sort_keys=False, allow_nan=False) + "\n"
        return atomic_write_text(self.target(self.rel_path), text)

    def remove_stale(self) -> list[Path]:
        """Delete figure files in the folder that this manifest does not list.

        A run of a smaller architecture (say after ``experiment=deeper``) must not leave the
        bigger one's figures behind, where they would disagree with the manifest.
        """
        listed = {(self.root / r.file).resolve() for r in self.records}
        removed = []
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                # Hidden names are other writers' temporary or staged files, never figures.
                stale = p.suffix.lower() in FIGURE_SUFFIXES and not p.name.startswith(".")
                if stale and p.resolve() not in listed:
                    p.unlink()
                    removed.append(p)
        return removed


def load_manifest(path: str | os.PathLike[str]) -> list[FigureRecord]:
    """The records of a ``manifest.json``; ValueError naming the file when it is malformed."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"unsupported manifest version {data.get('version')!r}")
        return [FigureRecord(**rec) for rec in data["figures"]]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{p}: not a convscope figure manifest ({type(e).__name__}: {e})") from e


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of a PNG or GIF, read from its header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def verify_manifest(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> list[str]:
    """Problems between a manifest and the disk; an empty list means they agree.

    Checks every listed file exists with the recorded pixel size, kernel scales are symmetric,
    and no figure file in the folder is missing from the manifest.
    """
    root = Path(root).resolve()
    p = Path(path)
    records = load_manifest(p)
    problems = []
    listed = set()
    for r in records:
        f = (root / r.file).resolve()
        listed.add(f)
        if not f.is_file():
            problems.append(f"{r.file}: listed but missing")
            continue
        size = image_size(f)
        if size != (r.width, r.height):
            problems.append(f"{r.file}: is {size[0]}x{size[1]}, manifest says {r.width}x{r.height}")
        if r.cmap in ("RdBu_r", "RdBu", "coolwarm", "bwr", "seismic") and r.vmin != -r.vmax:
            problems.append(f"{r.file}: diverging scale not symmetric ({r.vmin}, {r.vmax})")
    for f in sorted(p.parent.iterdir()):
        hidden = f.name.startswith(".")
        if f.suffix.lower() in FIGURE_SUFFIXES and not hidden and f.resolve() not in listed:
            problems.append(f"{f.name}: on disk but not in the manifest")
    return problems


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
    ra = load_manifest(a) if isinstance(a, str | os.PathLike) else a
    rb = load_manifest(b) if isinstance(b, str | os.PathLike) else b

    def key(r: FigureRecord) -> str:
        parts = [r.model, r.kind, r.layer or "-"]
        if r.image_index is not None:
            parts.append(f"img{r.image_index}")
        return "/".join(parts)

    ma, mb = {key(r): r for r in ra}, {key(r): r for r in rb}
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

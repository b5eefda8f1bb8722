"""`mmforge preview`: what a dataset holds, as a picture and as a self-contained HTML page.

`preview(PreviewConfig) -> PreviewResult`. Samples are chosen with a seeded generator over the whole index
(the same seed shows the same samples); one row per sample (key and source path on the left), one column per
member of the manifest by its codec kind (rgb; depth through a colour map; class maps through their palette;
any other modality likewise), and a legend: the value maps' encodings and the classes present. `--html`
writes `index.html` with everything inline (no server, no network): the grid, the per-class pixel share and
a depth histogram over a larger seeded sample, per-shard counts, the labelers with their licences and every
recorded failure with its reason. Shards are read only through index urls that are the dataset's own.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from labelers.classes import full_palette
from pipeline.format import fs
from pipeline.format.codecs import BY_SUFFIX, CODECS, decode_member, dequantize_depth, dequantize_normal
from pipeline.format.contract import IndexEntry, ModalityInfo, url_problem
from pipeline.format.outputs import check_output
from pipeline.format.samples import read_samples
from pipeline.format.schema import ConfigError, setting
from pipeline.format.stores import LocalPath, Location, location
from pipeline.pictures.figures import (
    Grid,
    caption,
    chart_png,
    class_colours,
    class_legend,
    colorbar,
    fit_picture,
    picture,
    png_bytes,
    stack,
)
from pipeline.verify.docs import DatasetDocs, NotADatasetError, checked_documents

Sample = tuple[str, dict[str, bytes]]  # (key, {member suffix: bytes}), as the shard reader hands it over
_MAX_LEGEND_CLASSES = 48


@dataclass(frozen=True, kw_only=True)
class PreviewConfig:
    data: Location  # a dataset folder or store prefix
    n: int = setting(16, ge=1, le=1024)  # rows of the grid
    seed: int = setting(0, ge=0, le=2**63 - 1)
    out: Location | None = None  # the grid as PNG (a file or store object)
    html: Location | None = None  # a folder (or prefix) for index.html
    tile: int = setting(160, ge=32, le=1024)  # pixels per tile
    stats_samples: int = setting(256, ge=1, le=100_000)  # samples behind the class shares and the depth histogram

    def __post_init__(self) -> None:  # a str or Path is resolved to its Location
        object.__setattr__(self, "data", location(self.data))
        for name in ("out", "html"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, location(getattr(self, name)))

    def problems(self) -> list[str]:
        """A local --out that cannot take a file, or --html a folder (said before the samples are read)."""
        found = []
        for name, check in (("out", fs.output_file_problem), ("html", fs.output_folder_problem)):
            where = getattr(self, name)
            problem = check(where.path) if isinstance(where, LocalPath) else None
            if problem:
                found.append(f"--{name} {where}{problem}")
        return found


@dataclass(kw_only=True)
class PreviewResult:
    png: Location | None
    html: Location | None
    rows: int
    columns: tuple[str, ...]
    size: tuple[int, int]
    keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Column:
    name: str
    member: str
    info: ModalityInfo | None  # None for rgb

    @property
    def kind(self) -> str:
        return CODECS[BY_SUFFIX[self.member]].kind

    @cached_property
    def palette(self) -> list[int] | None:
        """The colours of a class map's ids (None for other kinds)."""
        if self.kind != "class_map" or self.info is None:
            return None
        return full_palette(self.info.palette, self.info.num_classes or 255)

    @property
    def title(self) -> str:
        if self.info is None:
            return self.name
        if self.kind == "class_map":
            return f"{self.name} ({self.info.num_classes} classes)"
        return f"{self.name} ({self.info.kind})"


@contextmanager
def _open(cfg: PreviewConfig) -> Iterator[DatasetDocs]:
    try:
        with checked_documents(cfg.data) as docs:
            if docs.index is None or docs.manifest is None:
                raise ConfigError(
                    f"{cfg.data}: index.json and manifest.json are needed to preview (run mmforge verify)"
                )
            yield docs
    except NotADatasetError as err:
        raise ConfigError(str(err)) from None


def _columns(docs: DatasetDocs) -> list[_Column]:
    assert docs.manifest is not None
    cols = [_Column("rgb", CODECS["rgb"].suffix, None)]
    cols += [_Column(n, m.member, m) for n, m in docs.manifest.modalities.items() if m.member in BY_SUFFIX]
    return cols


def _entries(docs: DatasetDocs) -> list[IndexEntry]:
    """Index entries whose url is this dataset's own shard and whose tar is there."""
    assert docs.index is not None
    return [
        e
        for e in docs.index.shards
        if e.samples and url_problem(docs.paths, e.name, e.url) is None and e.name in docs.present
    ]


def choose(entries: list[IndexEntry], n: int, seed: int) -> dict[str, list[int]]:
    """Shard name -> sorted sample ordinals within it: `n` samples drawn without replacement over the index."""
    total = sum(e.samples for e in entries)
    picks = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    starts = np.cumsum([0] + [e.samples for e in entries])
    chosen: dict[str, list[int]] = {}
    for g in picks.tolist():
        i = int(np.searchsorted(starts, g, side="right") - 1)
        chosen.setdefault(entries[i].name, []).append(g - int(starts[i]))
    return chosen


def read_chosen(docs: DatasetDocs, chosen: dict[str, list[int]]) -> list[Sample]:
    """The chosen samples, shard by shard, each read once up to its last chosen sample."""
    return [s for shard, picked in chosen.items() for s in read_samples(docs.shard_location(shard), ordinals=picked)]


def _decode(sample: Sample, suffix: str) -> Any:
    members = sample[1]
    return decode_member(suffix, members[suffix]) if suffix in members else None


def _tile(col: _Column, sample: Sample, size: int) -> Image.Image:
    value = _decode(sample, col.member)
    if value is None:
        return Image.new("RGB", (size, size), (230, 230, 230))
    return fit_picture(picture(value, col.kind, col.palette), col.kind, size)


def _label(sample: Sample) -> str:
    meta = _decode(sample, "json") or {}
    return f"{sample[0]}  {meta.get('source', '?')}"


def _legend(cols: list[_Column], samples: list[Sample], width: int) -> Image.Image | None:
    parts = []
    for col in cols:
        if col.kind == "value_map" and col.info is not None:
            if CODECS[BY_SUFFIX[col.member]].per_sample_encoding:
                far = "near" if col.info.kind == "inverse_depth" else "far"
                text = f"{col.name}: {col.info.kind}, png x scale + offset per sample; 2-98 % per tile, bright = {far}"
            else:  # a fixed encoding (a plugin's value map): say what the manifest says it is
                text = f"{col.name}: {col.info.encoding or col.info.kind}; 2-98 % per tile, bright = high"
            parts.append(colorbar(text, width))
        if col.kind == "vector_map" and col.info is not None:
            parts.append(caption(f"{col.name}: unit normals as stored: R, G, B = x, y, z, [-1, 1] -> 0..255", width))
        if col.kind == "class_map" and col.info is not None:
            counts = _class_pixels(col, samples)
            names, colours = col.info.classes or (), class_colours(col.palette or ())
            shown = [
                (
                    c,
                    names[c] if c < len(names) else ("ignore" if c == col.info.ignore_id else f"class {c}"),
                    tuple(colours[c].tolist()),
                )
                for c, _ in counts.most_common(_MAX_LEGEND_CLASSES)
            ]
            parts.append(class_legend(shown, width))  # type: ignore[arg-type]
    return stack(parts) if parts else None


def _class_pixels(col: _Column, samples: list[Sample]) -> Counter[int]:
    counts: Counter[int] = Counter()
    for s in samples:
        ids = _decode(s, col.member)
        if ids is not None:
            values, n = np.unique(ids, return_counts=True)
            counts.update(dict(zip(values.tolist(), n.tolist(), strict=True)))
    return counts


def render_grid(cols: list[_Column], samples: list[Sample], tile: int) -> tuple[Grid, Image.Image]:
    grid = Grid(
        titles=[c.title for c in cols],
        labels=[_label(s) for s in samples],
        tiles=[[_tile(c, s, tile - 2) for c in cols] for s in samples],
        tile=tile,
    )
    return grid, grid.render(_legend(cols, samples, grid.size[0]))


def preview(cfg: PreviewConfig) -> PreviewResult:
    """Write the grid (PNG) and/or the HTML page for the dataset in `cfg.data` (each a file and folder, or
    store locations: written here, then published)."""
    out = cfg.out if cfg.out is not None or cfg.html is not None else location("preview.png")
    for where, flag in ((out, "--out"), (cfg.html, "--html")):
        check_output(where, flag, (cfg.data,))
    with _open(cfg) as docs:
        entries, cols = _entries(docs), _columns(docs)
        if not entries:
            raise ConfigError(f"{cfg.data}: no readable shard with samples to preview")
        samples = read_chosen(docs, choose(entries, cfg.n, cfg.seed))
        _, image = render_grid(cols, samples, cfg.tile)
        if out is not None:
            with out.published() as local:
                fs.write_bytes_atomic(local, png_bytes(image))
        page: Location | None = None
        if cfg.html is not None:
            more = read_chosen(docs, choose(entries, max(cfg.stats_samples, cfg.n), cfg.seed + 1))
            with cfg.html.published() as folder:
                written = write_html(folder, docs, cols, image, more)
            page = cfg.html.join(written.name)
    keys = [key for key, _ in samples]
    return PreviewResult(
        png=out, html=page, rows=len(samples), columns=tuple(c.name for c in cols), size=image.size, keys=keys
    )


# ------------------------------------------------------------------------------------------------ html


def _img(data: bytes, alt: str, ident: str = "") -> str:
    src = "data:image/png;base64," + base64.b64encode(data).decode()
    ident_attr = f' id="{html.escape(ident)}"' if ident else ""
    return f'<img{ident_attr} alt="{html.escape(alt)}" src="{src}">'


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _class_chart(col: _Column, samples: list[Sample]) -> str:
    assert col.info is not None
    counts = _class_pixels(col, samples)
    total = sum(counts.values()) or 1
    names = col.info.classes or ()
    top = counts.most_common(30)
    labels = [f"{c} {names[c] if c < len(names) else ''}".strip() for c, _ in top]
    shares = [100.0 * n / total for _, n in top]
    title = (
        f"{col.name}: pixel share of the 30 most frequent classes ({len(samples)} samples, {len(counts)} classes seen)"
    )
    return _img(chart_png("bar", shares, labels, title, "% of pixels"), title)


def _normal_chart(col: _Column, samples: list[Sample]) -> str:
    """Histogram of each normal's angle to the viewing axis (z), in degrees."""
    values = [dequantize_normal(v)[::4, ::4, 2].ravel() for s in samples if (v := _decode(s, col.member)) is not None]
    z = np.clip(np.concatenate(values), -1.0, 1.0) if values else np.zeros(1)
    title = f"{col.name}: angle between normal and viewing axis z, {len(values)} samples"
    return _img(chart_png("hist", np.degrees(np.arccos(z)).tolist(), [], title, "degrees"), title)


def _chart(col: _Column, samples: list[Sample]) -> str:
    if col.kind == "class_map":
        return _class_chart(col, samples)
    return _normal_chart(col, samples) if col.kind == "vector_map" else _value_chart(col, samples)


def _value_chart(col: _Column, samples: list[Sample]) -> str:
    values = []
    for s in samples:
        q, meta = _decode(s, col.member), _decode(s, "json") or {}
        enc = meta.get(col.name)
        if q is not None and isinstance(enc, dict):
            values.append(dequantize_depth(q, enc)[::4, ::4].ravel())
        elif q is not None and not CODECS[BY_SUFFIX[col.member]].per_sample_encoding:
            values.append(np.asarray(q, dtype=np.float64)[::4, ::4].ravel())  # fixed encoding: stored values
    data = np.concatenate(values) if values else np.zeros(1)
    title = f"{col.name} ({col.info.kind if col.info else ''}): histogram of decoded values, {len(values)} samples"
    return _img(chart_png("hist", data.tolist(), [], title, "value"), title)


def write_html(folder: Path, docs: DatasetDocs, cols: list[_Column], grid: Image.Image, samples: list[Sample]) -> Path:
    assert docs.manifest is not None and docs.index is not None
    m = docs.manifest
    charts = [_chart(c, samples) for c in cols if c.info]
    shard_rows = [[name, st.planned, st.written, st.failed, st.bytes] for name, st in sorted(docs.stats.items())]
    labelers = [
        [d.get("modality"), d.get("name"), d.get("weights"), d.get("revision") or "", d.get("license"), d.get("output")]
        for d in m.labelers
    ]
    failures = [[f.path, f.error, f.message, f.stage] for f in m.failures]
    failures += [
        [f"(shard {s.shard}, {s.planned} images)", "shard failed", s.error.splitlines()[0] if s.error else "", ""]
        for s in m.failed_shards
    ]
    failure_table = _table(["source", "error", "message", "stage"], failures) if failures else "<p>none</p>"
    note = (
        "<p class=warn>Labels come from random-weight smoke models and are meaningless.</p>"
        if m.meaningless_labels
        else ""
    )
    body = f"""<h1>{html.escape(str(docs.paths.root))}</h1>
<p>{m.totals.written} of {m.totals.inputs} images written in {m.totals.shards_complete}/{m.totals.shards} shards,
{m.totals.failed} failed; split {html.escape(m.source.split)}; recipe {html.escape(str(m.recipe.get("name")))}
({html.escape(m.recipe_fingerprint[:12])}).</p>{note}
<h2>Samples</h2>{_img(png_bytes(grid), "sample grid", "grid")}
<h2>Label statistics</h2>{"".join(charts)}
<h2>Shards</h2>{_table(["shard", "planned", "written", "failed", "bytes"], shard_rows)}
<h2>Labelers</h2>{_table(["modality", "labeler", "weights", "revision", "license", "output"], labelers)}
<h2>Failures ({len(failures)})</h2>{failure_table}
"""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mmforge preview: {html.escape(docs.paths.root.name)}</title>
<style>body{{font-family:sans-serif;margin:16px;color:#222}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left}} img{{display:block;margin:8px 0;max-width:none}}
.warn{{color:#a00}}</style></head><body>
{body}</body></html>
"""
    folder.mkdir(parents=True, exist_ok=True)
    fs.write_bytes_atomic(folder / "index.html", page.encode())
    return folder / "index.html"

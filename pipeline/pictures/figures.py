"""Pictures of samples, shared by `mmforge preview`, `mmforge reconstruct` and the pretraining figures.

Every member is drawn by one function, `picture(value, kind)`, by its codec's kind (`DRAWINGS`, one entry per
kind of `pipeline.format.codecs.KINDS` but metadata; a plugin's member is drawn by the kind its codec
declares): images as they are, value maps (depth) through a perceptual colour map over their 2-98 % range,
class maps through the class palette (the ignore id black), unit vectors as they are stored (Omnidata's
[-1, 1] -> 0..255). `fit_picture` puts it in a tile. A figure is a grid of equal square tiles
with a title row and a label strip per row, composed with Pillow so its pixel size is exact:
`width = label + columns x tile`, `height = title + rows x tile (+ legend)`. Charts use matplotlib (Agg).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from labelers.classes import full_palette
from pipeline.format.codecs import IGNORE_ID

DEPTH_CMAP = "magma"  # perceptually uniform; bright = larger value
TITLE_H = 22
GAP = 2
BACKGROUND = (255, 255, 255)
MASKED = (128, 128, 128)


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def colormap(values: np.ndarray, valid: np.ndarray | None = None, cmap: str = DEPTH_CMAP) -> np.ndarray:
    """Float H x W -> uint8 H x W x 3 through `cmap`, normalised to the 2-98 % range of the valid values."""
    from matplotlib import colormaps

    v = values.astype(np.float64)
    sel = v[valid] if valid is not None and valid.any() else v.ravel()
    lo, hi = np.percentile(sel, (2, 98)) if sel.size else (0.0, 1.0)
    scaled = np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return (colormaps[cmap](scaled)[..., :3] * 255).astype(np.uint8)


def class_colours(palette: Sequence[int]) -> np.ndarray:
    """A flat 256 x RGB palette as a (256, 3) uint8 table: ids beyond it and the ignore id are black."""
    table = np.zeros((256, 3), np.uint8)
    flat = np.asarray(list(palette)[: 256 * 3], np.uint8)
    table[: len(flat) // 3] = flat[: len(flat) // 3 * 3].reshape(-1, 3)
    table[IGNORE_ID] = 0
    return table


def palette_rgb(ids: np.ndarray, palette: Sequence[int]) -> np.ndarray:
    """uint8 H x W class ids -> uint8 H x W x 3 through `class_colours(palette)`."""
    return class_colours(palette)[ids]


def _draw_image(value: np.ndarray, palette: Sequence[int] | None) -> np.ndarray:
    """uint8 as it is; floats in [0, 1] (a model's output, un-normalised) to 0..255; one channel as grey."""
    rgb = value if value.dtype == np.uint8 else (np.clip(value, 0, 1) * 255).astype(np.uint8)
    return rgb if rgb.ndim == 3 else np.repeat(rgb[..., None], 3, axis=2)


def _draw_values(value: np.ndarray, palette: Sequence[int] | None) -> np.ndarray:
    """Through the colour map over the 2-98 % of the values (the first channel of a multi-channel map)."""
    return colormap(value if value.ndim == 2 else value[..., 0])


def _draw_classes(value: np.ndarray, palette: Sequence[int] | None) -> np.ndarray:
    """Through the palette (the generated one without a palette); the ignore id black."""
    return palette_rgb(value, full_palette(None) if palette is None else palette)


def _draw_vectors(value: np.ndarray, palette: Sequence[int] | None) -> np.ndarray:
    """As stored: uint8 as it is; float vectors in [-1, 1] (a model's output) to 0..255 as the codec stores them."""
    if value.dtype == np.uint8:
        return value
    return np.rint((np.clip(value, -1, 1) + 1) * 127.5).astype(np.uint8)


@dataclass(frozen=True)
class Drawing:
    """How a codec kind becomes a picture: `draw(value, palette)` -> uint8 H x W x 3; `sharp`: fitted to a tile
    with nearest resampling (class ids never blend into colours of other classes)."""

    draw: Callable[[np.ndarray, Sequence[int] | None], np.ndarray]
    sharp: bool = False


DRAWINGS: dict[str, Drawing] = {
    "image": Drawing(_draw_image),
    "value_map": Drawing(_draw_values),
    "class_map": Drawing(_draw_classes, sharp=True),
    "vector_map": Drawing(_draw_vectors),
}


def picture(
    value: np.ndarray, kind: str, palette: Sequence[int] | None = None, valid: np.ndarray | None = None
) -> np.ndarray:
    """A member's array (as its codec decodes it, or a model's output of the same kind) as an RGB picture
    (uint8 H x W x 3), drawn by its codec `kind`; `palette` (a flat 256 x RGB list) for class maps; `valid`
    (H x W bool) for value maps: the colour range comes from those pixels only (a depth map's holes)."""
    if kind not in DRAWINGS:
        raise ValueError(f"a {kind} member is not drawn as a picture (drawn kinds: {', '.join(DRAWINGS)})")
    if valid is not None and kind == "value_map":
        return colormap(value if value.ndim == 2 else value[..., 0], valid)
    return DRAWINGS[kind].draw(value, palette)


def fit_picture(rgb: np.ndarray, kind: str, tile: int) -> Image.Image:
    """A `picture` of a `kind` member fitted to a tile x tile square (nearest for sharp kinds)."""
    return fit_tile(rgb, tile, nearest=DRAWINGS[kind].sharp)


def fit_tile(rgb: np.ndarray, tile: int, nearest: bool = False) -> Image.Image:
    """An H x W x 3 picture scaled to fit a tile x tile square (aspect kept, centred on white)."""
    im = Image.fromarray(rgb)
    scale = tile / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    im = im.resize(size, Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (tile, tile), BACKGROUND)
    canvas.paste(im, ((tile - im.width) // 2, (tile - im.height) // 2))
    return canvas


@dataclass(frozen=True, kw_only=True)
class Grid:
    """A figure of rows x columns tiles; `labels` one text per row (shown left), `titles` one per column."""

    titles: Sequence[str]
    labels: Sequence[str]
    tiles: Sequence[Sequence[Image.Image]]
    tile: int
    label_width: int = 220

    @property
    def size(self) -> tuple[int, int]:
        return self.label_width + len(self.titles) * self.tile, TITLE_H + len(self.labels) * self.tile

    @property
    def inner(self) -> int:
        """The side of one picture inside its tile (tiles are separated by a white gap)."""
        return self.tile - GAP

    def render(self, legend: Image.Image | None = None) -> Image.Image:
        w, h = self.size
        legend_h = legend.height if legend is not None else 0
        canvas = Image.new("RGB", (max(w, legend.width if legend else 0), h + legend_h), BACKGROUND)
        draw, font = ImageDraw.Draw(canvas), _font()
        for c, title in enumerate(self.titles):
            draw.text(
                (self.label_width + c * self.tile + 4, 5), _clip(title, self.tile, font), fill=(0, 0, 0), font=font
            )
        for r, (label, row) in enumerate(zip(self.labels, self.tiles, strict=True)):
            top = TITLE_H + r * self.tile
            _wrapped(draw, label, (4, top + 4), self.label_width - 8, font)
            for c, tile in enumerate(row):
                if tile.size != (self.inner, self.inner):
                    tile = tile.resize((self.inner, self.inner))
                canvas.paste(tile, (self.label_width + c * self.tile, top))
        if legend is not None:
            canvas.paste(legend, (0, h))
        return canvas


def _clip(text: str, width: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> str:
    """`text`, or its longest prefix + "…" that fits `width` - 8 pixels: a binary search over prefixes of at
    most `width` characters (a glyph is at least a pixel wide), so a name of a million characters from a
    dataset's manifest costs a few measurements, not one per character."""
    room = width - 8
    if len(text) <= width and font.getlength(text) <= room:
        return text
    lo, hi = 0, min(len(text), max(width, 0))  # the longest fitting prefix has lo..hi characters
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if font.getlength(text[:mid] + "…") <= room:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "…" if lo else ""


def _wrapped(draw: ImageDraw.ImageDraw, text: str, at: tuple[int, int], width: int, font: object) -> None:
    """`text` in at most 8 lines of `width` pixels (a word wider than that clipped); the rest is not measured."""
    lines, line = [], ""
    for word in " ".join(text.split()).replace("/", "/\u200b").replace(" ", " \u200b").split("\u200b"):
        if draw.textlength(line + word, font=font) > width and line:  # type: ignore[arg-type]
            lines.append(_clip(line, width + 8, font))  # type: ignore[arg-type]
            line = ""
            if len(lines) == 8:
                break
        line += word
    else:
        lines.append(_clip(line, width + 8, font))  # type: ignore[arg-type]
    draw.multiline_text(at, "\n".join(lines), fill=(0, 0, 0), font=font, spacing=2)  # type: ignore[arg-type]


def class_legend(classes: Sequence[tuple[int, str, tuple[int, int, int]]], width: int) -> Image.Image:
    """Colour swatches with 'id name' for each class shown, in as many columns as fit `width`."""
    font, cell_w, cell_h = _font(), 170, 16
    cols = max(1, width // cell_w)
    rows = (len(classes) + cols - 1) // cols
    im = Image.new("RGB", (width, TITLE_H + rows * cell_h + 6), BACKGROUND)
    draw = ImageDraw.Draw(im)
    draw.text((4, 5), "classes shown (id name)", fill=(0, 0, 0), font=font)
    for i, (cid, name, colour) in enumerate(classes):
        x, y = 4 + (i % cols) * cell_w, TITLE_H + (i // cols) * cell_h
        draw.rectangle((x, y + 2, x + 11, y + 13), fill=colour, outline=(0, 0, 0))
        draw.text((x + 16, y + 1), _clip(f"{cid} {name}", cell_w - 10, font), fill=(0, 0, 0), font=font)
    return im


def caption(title: str, width: int) -> Image.Image:
    """One line of text, the height of a legend title."""
    im = Image.new("RGB", (width, TITLE_H), BACKGROUND)
    ImageDraw.Draw(im).text((4, 4), _clip(title, width, _font()), fill=(0, 0, 0), font=_font())
    return im


def colorbar(title: str, width: int, cmap: str = DEPTH_CMAP) -> Image.Image:
    """A horizontal colour bar with a caption (low -> high)."""
    font = _font()
    im = Image.new("RGB", (width, TITLE_H + 20), BACKGROUND)
    draw = ImageDraw.Draw(im)
    draw.text((4, 4), _clip(title, width, font), fill=(0, 0, 0), font=font)
    bar = colormap(np.tile(np.linspace(0, 1, 256), (12, 1)), cmap=cmap)
    im.paste(Image.fromarray(bar).resize((min(256, width - 8), 12)), (4, TITLE_H))
    return im


def stack(parts: Sequence[Image.Image]) -> Image.Image:
    """Images one below the other, left-aligned, on white."""
    width, height = max(p.width for p in parts), sum(p.height for p in parts)
    canvas, y = Image.new("RGB", (width, height), BACKGROUND), 0
    for p in parts:
        canvas.paste(p, (0, y))
        y += p.height
    return canvas


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def chart_png(kind: str, values: Sequence[float], labels: Sequence[str], title: str, xlabel: str = "") -> bytes:
    """A small matplotlib chart (Agg): `bar` (horizontal, one bar per label) or `hist` (values binned)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    height = 0.25 * len(labels) + 1.2 if kind == "bar" else 3.0
    fig, ax = plt.subplots(figsize=(6.4, max(2.0, min(height, 12.0))), dpi=100)
    try:
        if kind == "bar":
            ax.barh(range(len(values)), values, color="#4c72b0")
            ax.set_yticks(range(len(labels)), labels, fontsize=8)
            ax.invert_yaxis()
        else:
            ax.hist(values, bins=64, color="#4c72b0")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)

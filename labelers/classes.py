"""Class tables of class-map labelers: names and colours by class id (255 = ignore, never a class).

A labeler's spec names its table (`LabelerSpec.classes`); the table's names and palette reach manifest.json,
and from there verify, preview, reconstruct and the trainer, so nothing else assumes a class count. Bundled
tables live in `labelers/data/<name>.tsv` (columns `index name r g b`, one row per class id); a path to a TSV
of the same form names a table of one's own. With no table, a class map gets `generated_palette(n)`.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

BUNDLED = ("coco-panoptic-133", "ade20k-150", "nyu40", "scenes-primitives")


@dataclass(frozen=True)
class ClassTable:
    name: str
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __len__(self) -> int:
        return len(self.names)

    def palette(self) -> list[int]:
        """A flat 256 x RGB palette: the table's colours for its ids, black elsewhere (255 = ignore)."""
        flat = [0] * (256 * 3)
        for i, color in enumerate(self.colors):
            flat[3 * i : 3 * i + 3] = color
        return flat


class ClassTableError(ValueError):
    """A class table that cannot be read: named with its file and line, never a traceback."""


def _rows(name: str, text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) of each row: plain tab-separated text, no quoting, one field per column."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.startswith("#")]
    if not lines:
        raise ClassTableError(f"class table {name}: no header line (need columns index, name, r, g, b)")
    split = [(n, line.rstrip("\r").split("\t")) for n, line in lines]
    header = split[0][1]
    for n, fields in split:
        if any('"' in f for f in fields):
            raise ClassTableError(f'class table {name}, line {n}: a quote (") where plain tab-separated text belongs')
        if len(fields) != len(header):
            raise ClassTableError(f"class table {name}, line {n}: {len(fields)} field(s), the header has {len(header)}")
    return header, split[1:]


def _parse(name: str, text: str) -> ClassTable:
    header, rows = _rows(name, text)
    missing = {"index", "name", "r", "g", "b"} - set(header)
    if missing:
        raise ClassTableError(f"class table {name}: missing column(s) {sorted(missing)} (need index, name, r, g, b)")
    names, colors = [], []
    for expected, (line, fields) in enumerate(rows):
        row = dict(zip(header, fields, strict=True))
        try:
            index, rgb = int(row["index"]), tuple(int(row[c]) for c in "rgb")
        except ValueError:
            raise ClassTableError(f"class table {name}, line {line}: index, r, g and b must be integers") from None
        if index != expected:
            raise ClassTableError(f"class table {name}: row {expected} has index {index} (ids must be 0, 1, ...)")
        if not all(0 <= v <= 255 for v in rgb):
            raise ClassTableError(f"class table {name}: colour of {row['name']!r} is outside 0..255")
        names.append(row["name"])
        colors.append((rgb[0], rgb[1], rgb[2]))
    if not 0 < len(names) < 255:
        raise ClassTableError(f"class table {name}: needs 1..254 classes (255 is the ignore id), has {len(names)}")
    return ClassTable(name, tuple(names), tuple(colors))


@cache
def class_table(name: str) -> ClassTable:
    """A bundled table by name (see `BUNDLED`), or a TSV file by path."""
    if name in BUNDLED:
        return _parse(name, resources.files("labelers").joinpath(f"data/{name}.tsv").read_text())
    path = Path(name).expanduser()
    if path.suffix == ".tsv" and path.is_file():
        try:
            return _parse(name, path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise ClassTableError(f"class table {name}: cannot read it as UTF-8 text ({err})") from None
    raise ClassTableError(f"unknown class table {name!r}: one of {', '.join(BUNDLED)} or a path to a .tsv file")


def generated_palette(num_classes: int) -> list[int]:
    """Distinct colours for a class map with no table: hues spaced by the golden ratio, fixed for each id."""
    flat = [0] * (256 * 3)
    for i in range(min(num_classes, 255)):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65 + 0.35 * (i % 2), 0.95 - 0.3 * (i % 3 == 2))
        flat[3 * i : 3 * i + 3] = (round(r * 255), round(g * 255), round(b * 255))
    return flat


def palette_for(table: str | None, num_classes: int) -> list[int]:
    """The palette a class map of `num_classes` ids is stored and drawn with (built once per table)."""
    return list(_palette_for(table, num_classes))


@cache
def _palette_for(table: str | None, num_classes: int) -> tuple[int, ...]:
    return tuple(class_table(table).palette() if table else generated_palette(num_classes))


def full_palette(colours: Sequence[int] | None, num_classes: int = 255) -> list[int]:
    """A stored palette (3 values per class, as in manifest.json) padded to 256 x RGB; generated without one."""
    if not colours:
        return generated_palette(num_classes)
    return list(colours)[:768] + [0] * (768 - min(len(colours), 768))

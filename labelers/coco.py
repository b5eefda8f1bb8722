"""The 133 COCO panoptic classes in Mask2Former's contiguous order, with panopticapi colours."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class CocoClass:
    index: int
    coco_id: int
    name: str
    isthing: bool
    color: tuple[int, int, int]


@cache
def coco_panoptic_classes() -> tuple[CocoClass, ...]:
    text = resources.files("labelers").joinpath("data/coco-panoptic-133.tsv").read_text()
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    reader = csv.DictReader(rows, delimiter="\t")
    return tuple(
        CocoClass(
            int(r["index"]), int(r["coco_id"]), r["name"], r["isthing"] == "1", (int(r["r"]), int(r["g"]), int(r["b"]))
        )
        for r in reader
    )


def palette(num_classes: int = 133) -> list[int]:
    """A 256-entry flat RGB palette: COCO colours for the class ids, black elsewhere (255 = ignore)."""
    flat = [0] * (256 * 3)
    for c in coco_panoptic_classes()[:num_classes]:
        flat[3 * c.index : 3 * c.index + 3] = c.color
    return flat

"""What every labeler declares about itself: weights provenance, preprocessing and the kind of map it makes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from labelers.classes import class_table
from labelers.standards import IGNORE_ID

OUTPUT_KINDS = ("depth", "inverse_depth", "value", "classes", "normal")
# the kind of member (pipeline.format.codecs) each output is stored as; "value" is any other float map (a plugin's)
OUTPUT_MEMBER_KIND = {
    "depth": "value_map",
    "inverse_depth": "value_map",
    "value": "value_map",
    "classes": "class_map",
    "normal": "vector_map",
}
GEOMETRIES = ("square", "short_side", "multiple_of_32")
MAX_SIDE = 8192  # pixels a labeler's network is fed on a side (its size, max_side): 4x the largest shipped


@dataclass(frozen=True, kw_only=True)
class LabelerSpec:
    """Provenance and preprocessing of one labeler (timm's `pretrained_cfg`, for pseudo-labelers).

    `modality` names the sample member the labeler fills (a key of `pipeline.format.codecs.CODECS`).
    A class labeler names its class table (`classes`: names and colours, see `labelers.classes`).
    `geometry` says how an image is resized for the network: `square` to size x size, `short_side` so the
    short side is near `size` with both sides multiples of 32, `multiple_of_32` to the nearest multiples of
    32 of the image itself, clamped to [min_side, max_side]. Maps always come back at the image's size.
    """

    name: str
    modality: str
    model_class: str
    weights: str
    revision: str | None = None
    license: str
    size: int
    geometry: str = "square"
    min_side: int = 32
    max_side: int = 1024
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    output: str
    num_classes: int | None = None
    classes: str | None = None  # class maps: the class table (names, colours), see labelers.classes
    meaningless: bool = False
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_KINDS:
            raise ValueError(f"{self.name}: output must be one of {OUTPUT_KINDS}, got {self.output!r}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"{self.name}: geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if self.output == "classes" and not (self.num_classes and 0 < self.num_classes < IGNORE_ID):
            raise ValueError(f"{self.name}: a class labeler needs 0 < num_classes < {IGNORE_ID} ({IGNORE_ID} = ignore)")
        if self.classes is not None:
            if self.output != "classes":
                raise ValueError(f"{self.name}: only a class labeler has a class table")
            table = class_table(self.classes)
            if len(table) != self.num_classes:
                raise ValueError(
                    f"{self.name}: class table {self.classes} has {len(table)} classes, "
                    f"num_classes is {self.num_classes}"
                )
        if self.size < 32 or self.min_side > self.max_side:
            raise ValueError(f"{self.name}: size must be >= 32 and min_side <= max_side")
        if self.size > MAX_SIDE or self.max_side > MAX_SIDE or self.min_side < 1:
            raise ValueError(f"{self.name}: size and max_side must be <= {MAX_SIDE} pixels, min_side >= 1")

    @property
    def labeler_id(self) -> str:
        """Short id recorded in every sample: name@revision (or the local weights folder's name)."""
        return f"{self.name}@{self.revision or 'local'}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["labeler_id"] = self.labeler_id
        return d


class Labeler(Protocol):
    """Maps a batch of uint8 H x W x 3 RGB images to one map each at the image's size: float32 H x W depth,
    uint8 H x W classes, or float32 H x W x 3 unit surface normals (output `normal`)."""

    spec: LabelerSpec

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]: ...

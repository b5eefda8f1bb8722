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
        problems = _setting_problems(self)  # a recipe overrides these: wrong types and ranges named, not guessed
        if problems:
            raise ValueError(f"{self.name}: {'; '.join(problems)}")
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
        if self.min_side > self.max_side:  # each side's own range: _setting_problems
            raise ValueError(f"{self.name}: min_side must be <= max_side")

    @property
    def labeler_id(self) -> str:
        """Short id recorded in every sample: name@revision (or the local weights folder's name)."""
        return f"{self.name}@{self.revision or 'local'}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["labeler_id"] = self.labeler_id
        return d


_TYPES: dict[str, tuple[type, ...]] = {
    "weights": (str,),
    "revision": (str, type(None)),
    "license": (str,),
    "geometry": (str,),
    "num_classes": (int, type(None)),
    "classes": (str, type(None)),
    "meaningless": (bool,),
    "notes": (str,),
    "extra": (dict,),
}
_SIDES = {"size": 32, "min_side": 1, "max_side": 1}  # least value; sides are at most MAX_SIDE pixels


def _setting_problems(spec: LabelerSpec) -> list[str]:
    """What is wrong with the settings a recipe may override: types, sides, and mean/std (three finite
    numbers each, std > 0: a zero std divides every pixel by zero and the labeler sees only inf and NaN)."""
    problems = [
        f"{key} must be {' or '.join('null' if t is type(None) else t.__name__ for t in kinds)}, got {value!r}"
        for key, kinds in _TYPES.items()
        if (value := getattr(spec, key)) is not None or type(None) not in kinds
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool))
    ]
    for key, least in _SIDES.items():
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= MAX_SIDE:
            problems.append(f"{key} must be an integer {least}..{MAX_SIDE}, got {value!r}")
    for key in ("mean", "std"):
        value = getattr(spec, key)
        numbers = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3
        if not numbers or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            problems.append(f"{key} must be three numbers, got {value!r}")
        elif not all(np.isfinite(v) for v in value) or (key == "std" and not all(v > 0 for v in value)):
            problems.append(f"{key} must be three finite numbers{' > 0' if key == 'std' else ''}, got {list(value)}")
    return problems


class Labeler(Protocol):
    """Maps a batch of uint8 H x W x 3 RGB images to one map each at the image's size: float32 H x W depth,
    uint8 H x W classes, or float32 H x W x 3 unit surface normals (output `normal`)."""

    spec: LabelerSpec

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]: ...

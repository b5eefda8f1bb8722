"""Label geometry: the network's input size for an image, and grouping a batch by that size."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from labelers.spec import LabelerSpec


def _round32(x: float, lo: int, hi: int) -> int:
    return int(min(max(round(x / 32) * 32, lo), hi))


def network_size(spec: LabelerSpec, height: int, width: int) -> tuple[int, int]:
    """(h, w) the network sees for an image of height x width, as `spec.geometry` says."""
    lo, hi = max(32, spec.min_side), spec.max_side
    if spec.geometry == "square":
        return spec.size, spec.size
    if spec.geometry == "short_side":
        scale = spec.size / min(height, width)
        return _round32(height * scale, lo, hi), _round32(width * scale, lo, hi)
    scale = min(1.0, hi / max(height, width))  # keep the aspect ratio when the long side is capped
    return _round32(height * scale, lo, hi), _round32(width * scale, lo, hi)


def group_by_size(spec: LabelerSpec, shapes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    """Indices of the batch grouped by network input size, so each group runs as one tensor."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (h, w) in enumerate(shapes):
        groups[network_size(spec, h, w)].append(i)
    return dict(groups)

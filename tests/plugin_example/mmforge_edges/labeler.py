"""`sobel-edges`: Sobel gradient magnitude of the luminance, scaled by its 99th percentile to [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from labelers import LabelerSpec, register_labeler

SPEC = LabelerSpec(
    name="sobel-edges",
    modality="edges",
    model_class="numpy Sobel filter",
    weights="",
    license="n/a (no weights)",
    size=32,
    output="value",
    notes="Sobel gradient magnitude of Rec. 601 luminance, divided by its 99th percentile, clipped to [0, 1].",
)


def edge_strength(rgb: np.ndarray) -> np.ndarray:
    y = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    p = np.pad(y, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    magnitude = np.hypot(gx, gy)
    top = float(np.percentile(magnitude, 99))
    return np.clip(magnitude / top, 0, 1).astype(np.float32) if top > 0 else np.zeros_like(magnitude)


class SobelEdges:
    def __init__(self, spec: LabelerSpec) -> None:
        self.spec = spec

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [edge_strength(im) for im in images]


@register_labeler(SPEC, check=lambda spec: None)
def build(spec: LabelerSpec, *, device: str = "cpu", precision: str = "fp32") -> SobelEdges:
    return SobelEdges(spec)

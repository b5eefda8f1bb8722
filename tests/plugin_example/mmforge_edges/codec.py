"""The `edges.png` member: edge strength in [0, 1] stored as an 8-bit greyscale PNG (value = png / 255)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.format.codecs import Codec, register_codec


def quantize(strength: np.ndarray, kind: str) -> tuple[np.ndarray, None]:
    return np.clip(np.rint(strength.astype(np.float64) * 255.0), 0, 255).astype(np.uint8), None


def encode(value: np.ndarray, level: int) -> bytes:
    if value.dtype != np.uint8 or value.ndim != 2:
        raise ValueError(f"edges must be uint8 HxW, got {value.dtype} {value.shape}")
    buf = io.BytesIO()
    Image.fromarray(value, "L").save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        if im.mode != "L":
            raise ValueError(f"edges PNG must be 8-bit greyscale, got mode {im.mode}")
        return np.asarray(im)


register_codec(
    "edges",
    Codec(
        suffix="edges.png",
        kind="value_map",
        dtype="uint8",
        channels=1,
        encoder=lambda v, o: encode(v, o.png_level),
        decoder=decode,
        quantize=quantize,
        encoding="edge strength = png / 255 (Sobel magnitude of luminance, / its 99th percentile, clipped)",
    ),
)

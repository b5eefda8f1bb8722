"""The one codec table of the data contract: how each sample member is written and read.

Writer, verifier, trainer and previewer all import this table. Readers never use WebDataset's stock image
decoders on these members: they clip 16-bit depth to 8 bits and turn palette class ids into grey levels.

A package of your own adds a member type without editing this one: expose a module under the entry-point
group `multimae_forge.codecs` whose import calls `register_codec(name, Codec(...))`.

| member        | value in memory                         | bytes on disk                          |
|---------------|-----------------------------------------|----------------------------------------|
| `rgb.jpg`     | uint8 H x W x 3                         | JPEG (original bytes when safe)        |
| `depth.png`   | uint16 H x W                            | 16-bit greyscale PNG                   |
| `semseg.png`  | uint8 H x W, ids 0..N-1, 255 = ignore    | 8-bit PNG, palette mode for viewing    |
| `normal.png`  | uint8 H x W x 3, n = v / 255 * 2 - 1     | 8-bit RGB PNG (Omnidata convention)    |
| `json`        | dict                                    | UTF-8 JSON, sorted keys                |
| `cls`         | int                                     | ASCII decimal                          |

A class map is valid when every id is a class or the ignore id (`invalid_class_ids`, the one rule for the
builder, `verify --deep` and the trainer's loader).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from labelers.plugins import load_entry_points, registry, unavailable
from labelers.standards import FACING
from labelers.standards import IGNORE_ID as IGNORE_ID  # re-exported: the ignore id of class maps
from pipeline.format.png import encode_png

DEPTH_LEVELS = 65535
NORMAL_LEVELS = 255
# Largest |n| - 1 a stored unit normal can show: each component is off by at most half a step (1 / 255).
NORMAL_LENGTH_TOLERANCE = 3**0.5 / NORMAL_LEVELS
ENTRY_POINT_GROUP = "multimae_forge.codecs"

# image: the rgb photo; value_map: one float per pixel, quantised; vector_map: unit 3-vectors per pixel;
# class_map: class ids; metadata: not a pixel array
KINDS = ("image", "value_map", "vector_map", "class_map", "metadata")
Quantize = Callable[[np.ndarray, str], tuple[np.ndarray, "dict[str, Any] | None"]]


@dataclass(frozen=True, kw_only=True)
class EncodeOptions:
    """What an encoder may be told besides the value: the same for every codec (one encode signature)."""

    png_level: int = 1
    jpeg_quality: int = 95
    palette: list[int] | None = None  # class maps: a flat 256 x RGB palette stored for viewing


@dataclass(frozen=True, kw_only=True)
class Codec:
    """One member type and its facts: `kind` (image, value_map, class_map, metadata), the in-memory `dtype`
    and `channels` of array values (None for metadata), and `encode(value, EncodeOptions) -> bytes` /
    `decode(bytes) -> value`. Checks of decoded values (verify --deep, the loader, the manifest) come from
    these facts, never from the codec's name.

    Label maps also say how a labeler's float output becomes the stored array (`quantize(map, output_kind)
    -> (array, per-sample encoding or None)`; the encoding goes into the sample json under the modality),
    what that encoding is for the manifest (`encoding`), and may check decoded values (`check(value) ->
    reason or None`, run by verify --deep)."""

    suffix: str
    kind: str
    dtype: str | None
    channels: int | None
    encoder: Callable[[Any, EncodeOptions], bytes]
    decoder: Callable[[bytes], Any]
    quantize: Quantize | None = None
    encoding: str | None = None
    per_sample_encoding: bool = False
    check: Callable[[np.ndarray], str | None] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"codec {self.suffix}: kind must be one of {KINDS}, got {self.kind!r}")

    def encode(self, value: Any, options: EncodeOptions | None = None) -> bytes:
        return self.encoder(value, options or EncodeOptions())

    def decode(self, data: bytes) -> Any:
        return self.decoder(data)

    def store(self, label: np.ndarray, output: str) -> tuple[np.ndarray, dict[str, Any] | None]:
        """A labeler's map as this member stores it: class ids as uint8, other maps through `quantize`."""
        if self.kind == "class_map":
            return label.astype(np.uint8), None
        if self.quantize is None:
            raise ValueError(f"codec {self.suffix}: cannot store a labeler's map (no quantize)")
        return self.quantize(label, output)

    @property
    def is_map(self) -> bool:
        """A pixel-aligned array (image, value map or class map) of the sample's H x W."""
        return self.kind != "metadata"

    def problem(self, value: Any) -> str | None:
        """Why a decoded value does not have this codec's dtype and channels (None when it does)."""
        if not self.is_map:
            return None
        shape = ("H", "W") if self.channels == 1 else ("H", "W", self.channels)
        ok = (
            isinstance(value, np.ndarray)
            and value.dtype == np.dtype(self.dtype)
            and value.ndim == len(shape)
            and (self.channels == 1 or value.shape[2] == self.channels)
        )
        if ok:
            return None
        got = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        return f"must decode to {self.dtype} {'x'.join(map(str, shape))}, got {got}"


def encode_rgb(rgb: np.ndarray, quality: int = 95) -> bytes:
    """uint8 H x W x 3 -> baseline JPEG (4:4:4 chroma so labels and pixels stay aligned in colour too)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be uint8 HxWx3, got {rgb.dtype} {rgb.shape}")
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def encode_depth(depth: np.ndarray, level: int = 1) -> bytes:
    """uint16 H x W -> 16-bit greyscale PNG. Use `quantize_depth` to get the uint16 map from floats."""
    if depth.dtype != np.uint16 or depth.ndim != 2:
        raise ValueError(f"depth must be uint16 HxW, got {depth.dtype} {depth.shape}")
    return encode_png(depth, level)


def decode_depth(data: bytes) -> np.ndarray:
    """16-bit PNG -> uint16 H x W. Refuses anything that is not a single-channel 16-bit image."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise ValueError(f"depth PNG must be 16-bit single channel, got mode {im.mode}")
        arr = np.asarray(im)
    if arr.dtype != np.uint16:
        if arr.min() < 0 or arr.max() > DEPTH_LEVELS:
            raise ValueError("depth PNG values outside the uint16 range")
        arr = arr.astype(np.uint16)
    return arr


def quantize_depth(depth: np.ndarray, kind: str) -> tuple[np.ndarray, dict[str, Any]]:
    """float H x W -> (uint16 H x W, encoding) with value = png * scale + offset (per sample, min-max).

    The encoding is recorded in the sample's json so the map is invertible within one uint16 step.
    """
    d = np.nan_to_num(depth.astype(np.float64), copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(d.min()), float(d.max())
    scale = (hi - lo) / DEPTH_LEVELS if hi > lo else 1.0
    d -= lo  # in place on the one float64 copy: each full-size temporary costs as much as the arithmetic
    d /= scale
    q = np.clip(np.rint(d, out=d), 0, DEPTH_LEVELS, out=d).astype(np.uint16)
    return q, {"kind": kind, "scale": scale, "offset": lo, "levels": DEPTH_LEVELS}


def dequantize_depth(q: np.ndarray, encoding: dict[str, Any]) -> np.ndarray:
    """uint16 H x W + encoding -> float32 depth (or inverse depth, as `encoding['kind']` says)."""
    return (q.astype(np.float64) * encoding["scale"] + encoding["offset"]).astype(np.float32)


def encode_semseg(ids: np.ndarray, palette: list[int] | None = None, level: int = 1) -> bytes:
    """uint8 H x W class ids -> 8-bit PNG; with a palette it is stored in palette mode (ids unchanged)."""
    if ids.dtype != np.uint8 or ids.ndim != 2:
        raise ValueError(f"semseg must be uint8 HxW, got {ids.dtype} {ids.shape}")
    return encode_png(ids, level, palette)


def decode_semseg(data: bytes) -> np.ndarray:
    """8-bit PNG -> uint8 H x W class ids (palette indices are the ids; no colour conversion)."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(f"semseg PNG must be 8-bit single channel or palette, got mode {im.mode}")
        return np.asarray(im).astype(np.uint8, copy=False)


def invalid_class_ids(ids: np.ndarray, num_classes: int, ignore_id: int = IGNORE_ID) -> dict[int, int]:
    """The one rule of a valid class map (builder, verify --deep and the trainer's loader all apply it): every
    id is a class (0 .. num_classes - 1) or the ignore id. Returns the other ids with their pixel counts
    (empty: valid). Any integer array (a labeler's ids before they are stored as uint8, too)."""
    if not ids.size or (int(ids.min()) >= 0 and int(ids.max()) < num_classes):
        return {}  # the common case, without counting
    if ids.dtype == np.uint8:  # the stored form: one counting pass, no sort
        counts = np.bincount(ids.ravel(), minlength=256)
        found = np.flatnonzero(counts)
        counted = zip(found.tolist(), counts[found].tolist(), strict=True)
    else:
        values, counts = np.unique(ids, return_counts=True)
        counted = zip(values.tolist(), counts.tolist(), strict=True)
    return {i: n for i, n in counted if not 0 <= i < num_classes and i != ignore_id}


def class_ids_problem(ids: np.ndarray, num_classes: int, ignore_id: int = IGNORE_ID) -> str | None:
    """Why `ids` is not a valid class map (`invalid_class_ids`), or None when it is."""
    bad = invalid_class_ids(ids, num_classes, ignore_id)
    if not bad:
        return None
    shown = sorted(bad)[:10]
    return f"class ids {shown} >= num_classes {num_classes} (and not {ignore_id}) in {sum(bad.values())} px"


def encode_normal(normals: np.ndarray, level: int = 1) -> bytes:
    """uint8 H x W x 3 (Omnidata's 0..255 of [-1, 1]) -> 8-bit RGB PNG. `quantize_normal` makes it."""
    if normals.dtype != np.uint8 or normals.ndim != 3 or normals.shape[2] != 3:
        raise ValueError(f"normal must be uint8 HxWx3, got {normals.dtype} {normals.shape}")
    return encode_png(normals, level)


def decode_normal(data: bytes) -> np.ndarray:
    """8-bit RGB PNG -> uint8 H x W x 3. Refuses other modes (a grey or palette image is not a normal map)."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode != "RGB":
            raise ValueError(f"normal PNG must be 8-bit RGB, got mode {im.mode}")
        return np.asarray(im)


def quantize_normal(normals: np.ndarray, kind: str = "normal") -> tuple[np.ndarray, None]:
    """float H x W x 3 vectors -> unit length (a zero or non-finite one: FACING) -> uint8
    (v = round((n + 1) / 2 * 255)); a fixed encoding, so no per-sample one."""
    if normals.ndim != 3 or normals.shape[2] != 3:
        raise ValueError(f"normals must be H x W x 3, got {normals.shape}")
    n = np.nan_to_num(normals.astype(np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    length = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where(length > 1e-6, n / np.maximum(length, 1e-6), np.asarray(FACING))  # unit, or facing the camera
    return np.clip(np.rint((n + 1.0) * (NORMAL_LEVELS / 2.0)), 0, NORMAL_LEVELS).astype(np.uint8), None


def dequantize_normal(v: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3 -> float32 vectors in [-1, 1] (unit length within NORMAL_LENGTH_TOLERANCE)."""
    return (v.astype(np.float32) * (2.0 / NORMAL_LEVELS) - 1.0).astype(np.float32)


def normal_length_problem(v: np.ndarray) -> str | None:
    """Why a stored normal map is not made of unit vectors (None when every pixel is, within quantisation)."""
    error = np.abs(np.linalg.norm(dequantize_normal(v), axis=-1) - 1.0)
    bad = int((error > NORMAL_LENGTH_TOLERANCE + 1e-6).sum())
    if bad:
        worst, allowed = float(error.max()), NORMAL_LENGTH_TOLERANCE
        return f"{bad} px are not unit vectors (|n| off by up to {worst:.3f}, allowed {allowed:.4f})"
    return None


def encode_json(meta: dict[str, Any]) -> bytes:
    # ASCII escapes: any file name (even one that is not valid UTF-8) survives the round trip
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def decode_json(data: bytes) -> dict[str, Any]:
    value = json.loads(data.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("sample json must be an object")
    return value


def encode_cls(index: int) -> bytes:
    return str(int(index)).encode()


def decode_cls(data: bytes) -> int:
    return int(data.decode("ascii").strip())


CODECS: dict[str, Codec] = {
    "rgb": Codec(
        suffix="rgb.jpg",
        kind="image",
        dtype="uint8",
        channels=3,
        encoder=lambda v, o: encode_rgb(v, o.jpeg_quality),
        decoder=decode_rgb,
    ),
    "depth": Codec(
        suffix="depth.png",
        kind="value_map",
        dtype="uint16",
        channels=1,
        encoder=lambda v, o: encode_depth(v, o.png_level),
        decoder=decode_depth,
        quantize=quantize_depth,
        encoding="value = png * scale + offset, per sample in the sample json",
        per_sample_encoding=True,
    ),
    "semseg": Codec(
        suffix="semseg.png",
        kind="class_map",
        dtype="uint8",
        channels=1,
        encoder=lambda v, o: encode_semseg(v, o.palette, o.png_level),
        decoder=decode_semseg,
    ),
    "normal": Codec(
        suffix="normal.png",
        kind="vector_map",
        dtype="uint8",
        channels=3,
        encoder=lambda v, o: encode_normal(v, o.png_level),
        decoder=decode_normal,
        quantize=quantize_normal,
        encoding="n = png / 255 * 2 - 1 per channel (x right, y, z; Omnidata's [-1, 1] -> 0..255), unit length",
        check=normal_length_problem,
    ),
    "json": Codec(
        suffix="json",
        kind="metadata",
        dtype=None,
        channels=None,
        encoder=lambda v, o: encode_json(v),
        decoder=decode_json,
    ),
    "cls": Codec(
        suffix="cls", kind="metadata", dtype=None, channels=None, encoder=lambda v, o: encode_cls(v), decoder=decode_cls
    ),
}

BY_SUFFIX: dict[str, str] = {codec.suffix: name for name, codec in CODECS.items()}
registry(CODECS)  # a plugin that raises while loading: what it registered here is taken back
registry(BY_SUFFIX)


def register_codec(name: str, codec: Codec) -> Codec:
    """Add a member type (a plugin's modality). Names and suffixes are unique; a label map needs `quantize`
    unless it is a class map (stored as the labeler's ids)."""
    if name in CODECS and CODECS[name] is not codec:
        raise ValueError(f"codec {name!r} is registered twice")
    if codec.suffix in BY_SUFFIX and BY_SUFFIX[codec.suffix] != name:
        raise ValueError(f"codec {name!r}: suffix {codec.suffix!r} is already codec {BY_SUFFIX[codec.suffix]!r}'s")
    if codec.kind in ("value_map", "vector_map") and codec.quantize is None:
        raise ValueError(f"codec {name!r}: a {codec.kind} needs `quantize` (labeler output -> stored array)")
    CODECS[name] = codec
    BY_SUFFIX[codec.suffix] = name
    return codec


def _load_plugins() -> None:
    load_entry_points(ENTRY_POINT_GROUP)


def split_member(name: str) -> tuple[str, str]:
    """'00000100003.depth.png' -> ('00000100003', 'depth.png'): the key is everything before the first dot."""
    key, dot, suffix = name.partition(".")
    if not dot or not key:
        raise ValueError(f"member name {name!r} has no key.suffix form")
    return key, suffix


def decode_member(suffix: str, data: bytes) -> Any:
    """Decode one member by its suffix; unknown suffixes are refused (no pickle, no torch.load)."""
    if suffix not in BY_SUFFIX:
        raise ValueError(
            f"unknown member type {suffix!r}; allowed: {sorted(BY_SUFFIX)}{unavailable(ENTRY_POINT_GROUP)}"
        )
    return CODECS[BY_SUFFIX[suffix]].decode(data)


_load_plugins()

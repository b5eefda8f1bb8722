"""Read and decode one source image into the RGB array the labelers see and the bytes the shard stores.

Bad images raise; the shard records them as failures. Decoding follows EXIF orientation, converts CMYK,
greyscale, palette, alpha and 16-bit images to 8-bit RGB, and refuses decompression bombs.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from pipeline.format import stores
from pipeline.format.codecs import CODECS, encode_rgb

_ORIENTATION = 0x0112
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # uint8 H x W x 3, exactly what the labelers see
    jpeg: bytes  # what the shard stores as rgb.jpg
    stored_original: bool  # True when `jpeg` is the source file's own bytes
    source_sha256: str
    source_mode: str
    source_format: str
    orig_size: tuple[int, int]  # (width, height) as stored in the file, before EXIF rotation
    orientation: int = 1  # the EXIF orientation that was applied (1: none)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 RGB; alpha is composited on white, 16-bit greys keep their top 8 bits."""
    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        arr = np.asarray(im).astype(np.int64)
        if im.mode in _SIXTEEN_BIT or arr.max() > 255:
            arr = np.clip(arr, 0, 65535) >> 8
        return np.repeat(arr.astype(np.uint8)[..., None], 3, axis=2)
    if im.mode == "F":
        arr = np.clip(np.asarray(im), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def _is_safe_jpeg(im: Image.Image, orientation: object) -> bool:
    """Stored bytes may be kept only for a baseline RGB JPEG that needs no rotation."""
    if im.format != "JPEG" or im.mode != "RGB":
        return False
    if im.info.get("progressive") or im.info.get("progression"):
        return False
    return orientation == 1


def _resize(im: Image.Image, max_side: int) -> Image.Image:
    w, h = im.size
    if max_side <= 0 or max(w, h) <= max_side:
        return im
    scale = max_side / max(w, h)
    return im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ValueError("empty file (0 bytes)")
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's own limit follows the recipe's, up or down
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the check below raises instead
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > max_pixels:
            raise Image.DecompressionBombError(f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
        im.load()
    return im


_SOURCE_BLOCK = 4 << 20  # a store object is read in blocks this size: most photos in one request, header included


def read_source(path: stores.Location | Path | str, *, max_bytes: int, max_pixels: int) -> bytes:
    """The bytes of one source image, read only when safe: a regular file (links followed; a FIFO, socket
    or device raises NotRegularFileError) or a store object, at most `max_bytes`, and with an image header
    whose pixel count is within `max_pixels` (checked from the header before the rest of the file is read)."""
    with stores.open_input(path, block_size=_SOURCE_BLOCK) as (f, size):
        if size > max_bytes:
            raise ValueError(f"file is {size} bytes, over the recipe's limit of {max_bytes} ([image] max_file_bytes)")
        _check_header(f, max_pixels)
        f.seek(0)
        data = _read_at_most(f, max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"file grew past the recipe's limit of {max_bytes} bytes while being read")
    return data


def _read_at_most(f: IO[bytes], limit: int) -> bytes:
    """Up to `limit` bytes in blocks: `f.read(limit)` would allocate `limit` bytes up front, and a recipe may
    set `max_file_bytes` far above any memory (every image would then fail with MemoryError)."""
    parts, total = [], 0
    while total < limit:
        block = f.read(min(limit - total, _SOURCE_BLOCK))
        if not block:
            break
        parts.append(block)
        total += len(block)
    return b"".join(parts)


def _check_header(f: object, max_pixels: int) -> None:
    """Raise DecompressionBombError when the header declares too many pixels; unreadable headers are left
    to the decoder (which names the problem)."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(f) as im:  # type: ignore[arg-type]
                w, h = im.size
        except (OSError, ValueError, SyntaxError):  # a DecompressionBombError goes on up
            return
    if w * h > max_pixels:
        raise Image.DecompressionBombError(f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")


def decode_upright(data: bytes, *, max_pixels: int) -> np.ndarray:
    """uint8 H x W x 3: the image upright (EXIF orientation applied) at its own size, by the rules of
    `decode_image` but without its JPEG round trip (`mmforge predict` reads images this way)."""
    im = _open_checked(data, max_pixels)
    tag = im.getexif().get(_ORIENTATION, 1)
    return _to_rgb((ImageOps.exif_transpose(im) or im) if tag != 1 else im)


def decode_image(data: bytes, *, max_pixels: int, max_side: int = 0, jpeg_quality: int = 95) -> DecodedImage:
    im = _open_checked(data, max_pixels)
    fmt, mode, size = im.format or "?", im.mode, im.size
    tag = im.getexif().get(_ORIENTATION, 1)
    safe = _is_safe_jpeg(im, tag) and _resize(im, max_side) is im
    # exif_transpose returns a copy even when there is nothing to turn: called only when there may be
    upright = _resize((ImageOps.exif_transpose(im) or im) if tag != 1 else im, max_side)
    rgb = _to_rgb(upright)
    jpeg = data
    if not safe:  # the labelers must see exactly the pixels the stored JPEG decodes to
        jpeg = encode_rgb(rgb, quality=jpeg_quality)
        rgb = CODECS["rgb"].decode(jpeg)
    orientation = int(tag or 1)
    return DecodedImage(rgb, jpeg, safe, hashlib.sha256(data).hexdigest(), mode, fmt, size, orientation)

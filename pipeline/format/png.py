"""A PNG writer for label maps: one scanline filter ("Up") and zlib, nothing else.

Pillow's writer tries all five PNG filters on every row and keeps the best, which for a 16-bit depth map
costs more than the compression itself (`benchmarks/RESULTS.md`, Builder: about twice the time, for files
no smaller). Label maps are smooth down the image, so subtracting the row above is the filter that pays.
The files are plain PNG (IHDR, optional PLTE, one IDAT, IEND, CRCs); any reader opens them, and the
codecs read them back with Pillow.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_UP = 2  # PNG filter type: each byte minus the byte above it (the row before the first is zeros)
# PNG colour types
_GREY, _RGB, _PALETTE = 0, 2, 3


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _header(array: np.ndarray, palette: list[int] | None) -> tuple[int, int]:
    """(bit depth, colour type) of an array PNG can hold exactly; ValueError for any other."""
    unsigned = array.dtype.kind == "u"  # of either byte order
    if array.ndim == 2 and unsigned and array.dtype.itemsize == 2 and palette is None:
        return 16, _GREY
    if array.ndim == 2 and array.dtype == np.uint8:
        return 8, (_GREY if palette is None else _PALETTE)
    if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8 and palette is None:
        return 8, _RGB
    what = f"{array.dtype} {array.shape}" + (" with a palette" if palette is not None else "")
    raise ValueError(f"cannot write {what} as PNG: uint16 HxW, uint8 HxW (optionally with a palette) or uint8 HxWx3")


def encode_png(array: np.ndarray, level: int = 1, palette: list[int] | None = None) -> bytes:
    """uint16 H x W (16-bit grey), uint8 H x W (8-bit grey, or palette indices with `palette`, a flat list of
    R, G, B values, at most 256 colours) or uint8 H x W x 3 (RGB) -> PNG bytes; `level` is zlib's 0..9."""
    depth, colour = _header(array, palette)
    h, w = array.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"cannot write an empty {array.shape} array as PNG")
    if palette is not None and (len(palette) % 3 or not 3 <= len(palette) <= 768):
        raise ValueError(f"a PNG palette is 1..256 RGB triples, got {len(palette)} values")
    if palette is not None and int(array.max()) >= len(palette) // 3:
        raise ValueError(f"index {int(array.max())} has no colour in a palette of {len(palette) // 3}")
    big_endian = array.astype(">u2", copy=False) if depth == 16 else array
    rows = np.ascontiguousarray(big_endian).view(np.uint8).reshape(h, -1)
    scanlines = np.empty((h, rows.shape[1] + 1), np.uint8)
    scanlines[:, 0] = _UP
    scanlines[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=scanlines[1:, 1:])  # uint8 arithmetic wraps mod 256, as PNG's does
    parts = [SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))]
    if palette is not None:
        parts.append(_chunk(b"PLTE", bytes(palette)))
    parts += [_chunk(b"IDAT", zlib.compress(scanlines.data, level)), _chunk(b"IEND", b"")]
    return b"".join(parts)

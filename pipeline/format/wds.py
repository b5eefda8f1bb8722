"""Decoders for reading mmforge shards with other libraries (WebDataset, wids, Hugging Face datasets, Ray).

Built on the one codec table (`pipeline.format.codecs`), so depth stays uint16 and class ids stay ids.

WARNING: WebDataset's stock image decoders (`.decode("pil")`, "rgb8", "l8", "torchrgb", ...) convert every
PNG to 8 bits: 16-bit depth is clipped (every value above 255 becomes 255) and palette class ids become grey
levels. Never decode `depth.png` / `semseg.png` with them. Nor enable the default handlers that unpickle
`.pyd/.pkl` or `torch.load` `.pth` members: these decoders refuse any member that is not in the table.

    wds.WebDataset(urls, shardshuffle=False).decode(mmforge_decoder)   # handler, per member
    wds.WebDataset(urls, shardshuffle=False).map(decode_sample)        # or whole samples
    wids.ShardListDataset("OUT/wids-index.json", transformations=[decode_sample])
    ray.data.read_webdataset(paths, decoder=decode_sample)

This project's own readers take samples from `pipeline.format.samples.read_samples` instead.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from pipeline.format.codecs import BY_SUFFIX, decode_member


def _suffix(key: str) -> str:
    return key.lstrip(".")


def _raw(value: Any) -> bytes:
    """Member bytes from whatever a reader hands over: bytes, a file-like object, or {'bytes': ...}."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, io.IOBase) or hasattr(value, "read"):
        if hasattr(value, "seek"):
            value.seek(0)
        return bytes(value.read())
    if isinstance(value, Mapping) and isinstance(value.get("bytes"), bytes):
        return value["bytes"]
    raise TypeError(f"cannot get member bytes from a {type(value).__name__}")


def mmforge_decoder(key: str, data: bytes) -> Any:
    """WebDataset handler: `.decode(mmforge_decoder)`. `key` is the member suffix as WebDataset passes it
    ('.depth.png' or 'depth.png'). Unknown members raise (readers accept only the codec table's members)."""
    return decode_member(_suffix(key), data)


def decode_sample(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Decode every codec-table member of a raw sample; bookkeeping fields (`__key__`, ...) pass through.

    Member names lose a leading dot ('.depth.png' from wids -> 'depth.png'); others raise ValueError."""
    out: dict[str, Any] = {}
    for key, value in sample.items():
        if key.startswith("__"):
            out[key] = value
        elif _suffix(key) in BY_SUFFIX:
            out[_suffix(key)] = decode_member(_suffix(key), _raw(value))
        else:
            raise ValueError(f"member {key!r} is not in the codec table; allowed: {sorted(BY_SUFFIX)}")
    return out

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
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.format import stores
from pipeline.format.codecs import BY_SUFFIX, decode_member, split_member


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


def read_samples(path: str | Path, ordinals: Collection[int] | None = None) -> Iterator[tuple[int, dict[str, bytes]]]:
    """(ordinal, {suffix: bytes, "__key__": key}) of one shard's samples in tar order, read as a stream with
    tarfile; only the members of the codec table, and only the samples at `ordinals` when given (reading
    stops after the last of them)."""
    wanted = set(ordinals) if ordinals is not None else None
    if wanted is not None and not wanted:
        return
    last = max(wanted) if wanted is not None else None
    current, ordinal, sample = None, -1, {}  # type: tuple[str | None, int, dict[str, bytes]]
    with stores.open_input(path) as (stream, _), tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, suffix = split_member(member.name)
            if key != current:
                if sample:
                    yield ordinal, sample
                current, ordinal, sample = key, ordinal + 1, {}
                if last is not None and ordinal > last:
                    return
            if (wanted is None or ordinal in wanted) and suffix in BY_SUFFIX:
                f = tar.extractfile(member)
                sample["__key__"] = key.encode()
                sample[suffix] = f.read() if f is not None else b""
    if sample:
        yield ordinal, sample

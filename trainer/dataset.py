"""A dataset folder written by `mmforge build-dataset`: its shard index and manifest, checked on open.

`OUT/index.json` lists the shards (name, url, samples, bytes, sha256) and the total; `OUT/manifest.json`
describes the modalities (members, class counts). A folder whose files do not match its index is refused.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.codecs import CODECS
from trainer.config import ModelConfig
from trainer.errors import DataError
from trainer.modalities import MODALITIES, used_modalities


@dataclass(frozen=True, kw_only=True)
class Shard:
    name: str
    path: str
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    root: Path
    shards: tuple[Shard, ...]
    total_samples: int
    manifest: dict[str, Any]


def load_dataset(root: Path, *, verify_checksums: bool = False) -> DatasetInfo:
    """Read OUT/index.json and OUT/manifest.json and check that the shards on disk match the index."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    index, manifest = _read_json(root / "index.json"), _read_json(root / "manifest.json")
    if index.get("format") != 1 or not isinstance(index.get("shards"), list):
        raise DataError(f"{root / 'index.json'}: not a format-1 shard index")
    shards = tuple(_shard(root, entry, verify_checksums) for entry in index["shards"])
    total = sum(s.samples for s in shards)
    if index.get("total_samples") != total:
        raise DataError(f"index.json total_samples {index.get('total_samples')} != sum over shards {total}")
    if not shards:
        raise DataError(f"{root}: the index lists no shards")
    return DatasetInfo(root=root, shards=shards, total_samples=total, manifest=manifest)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"missing {path.name} in data folder {path.parent}")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object")
    return value


def _shard(root: Path, entry: dict[str, Any], verify: bool) -> Shard:
    try:
        shard = Shard(
            name=entry["name"],
            path=str(root / entry["url"]),
            samples=int(entry["samples"]),
            bytes=int(entry["bytes"]),
            sha256=str(entry["sha256"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"index.json: malformed shard entry {entry!r}") from exc
    path = Path(shard.path)
    if not path.is_file() or path.stat().st_size != shard.bytes:
        found = path.stat().st_size if path.is_file() else "no file"
        raise DataError(f"index does not match shards: {entry['url']} is {found}, index says {shard.bytes} bytes")
    if verify and _sha256(path) != shard.sha256:
        raise DataError(f"index does not match shards: sha256 of {entry['url']} differs")
    return shard


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_manifest(info: DatasetInfo, model: ModelConfig) -> None:
    """Every modality the model reads is in the dataset, and class maps have the model's class count.

    A modality is present when the manifest lists its member (`members`) or describes it (`modalities`).
    """
    described = info.manifest.get("modalities", {})
    members = set(info.manifest.get("members", [])) | {described[n].get("member") for n in described}
    for name in used_modalities(model):
        if name not in described and CODECS[MODALITIES[name].codec].suffix not in members:
            raise DataError(
                f"dataset {info.root} has no {name!r} member (manifest members: {sorted(members - {None})})"
            )
        classes = described.get(name, {}).get("num_classes")
        if MODALITIES[name].channels is None and classes is not None and classes != model.num_classes:
            raise DataError(f"dataset {name!r} has {classes} classes, model.num_classes is {model.num_classes}")
        if described.get(name, {}).get("kind") == "inverse_depth":
            warnings.warn(
                f"dataset {info.root}: {name!r} holds relative INVERSE depth (e.g. MiDaS labels); the MultiMAE "
                "paper trained on relative depth (Omnidata, recipe manifests/imagenet1k-multimae.toml)",
                stacklevel=2,
            )

"""A dataset folder written by `mmforge build-dataset`, checked before training.

The document checks of `mmforge verify` (`pipeline.verify.docs`: every document valid, cross-checked with
the plan and the others, every url this dataset's own shard inside OUT) run first; a dataset with defects,
or one whose build is incomplete, is refused unless the run allows it (`allow_defects`). Shard sizes are
checked against the index always; sha256 too with `verify_checksums`. A dataset on an object store is
checked the same way on a private copy of its documents; its shards are streamed from the store.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from pipeline.format import stores
from pipeline.format.codecs import CODECS, IGNORE_ID
from pipeline.format.contract import IndexEntry, Manifest, url_problem
from pipeline.verify.docs import DatasetDocs, NotADatasetError, checked_documents
from trainer.config import ModelConfig
from trainer.errors import DataError
from trainer.model.modalities import MODALITIES, used_modalities

log = logging.getLogger(__name__)
_LISTED = 5


@dataclass(frozen=True, kw_only=True)
class Shard:
    name: str
    path: str
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    root: stores.Location
    shards: tuple[Shard, ...]
    total_samples: int
    manifest: Manifest | None


def load_dataset(
    root: stores.Location | Path, *, verify_checksums: bool = False, allow_defects: bool = False
) -> DatasetInfo:
    """Check the dataset's documents and shard sizes; DataError on a dataset that cannot be trusted."""
    root = stores.location(root)
    if not root.is_folder():
        raise DataError(f"data folder not found: {root}")
    try:
        with checked_documents(root) as docs:
            return _checked(root, docs, verify_checksums, allow_defects)
    except NotADatasetError as err:
        raise DataError(str(err)) from None
    except OSError as err:
        raise DataError(f"cannot read the dataset {root}: {err}") from None


def _checked(root: stores.Location, docs: DatasetDocs, verify_checksums: bool, allow_defects: bool) -> DatasetInfo:
    if docs.defects:
        _refuse_or_warn(
            root, [f"{d.kind}: {d.shard or d.member or 'dataset'}: {d.reason}" for d in docs.defects], allow_defects
        )
    if docs.index is None:
        raise DataError(f"{root}: index.json is missing or invalid; it cannot be read without one")
    shards = tuple(_shard(docs, entry, verify_checksums) for entry in docs.index.shards if entry.samples)
    if not shards:
        raise DataError(f"{root}: the index lists no shards with samples")
    return DatasetInfo(root=root, shards=shards, total_samples=sum(s.samples for s in shards), manifest=docs.manifest)


def _refuse_or_warn(root: stores.Location, defects: list[str], allow: bool) -> None:
    listed = "; ".join(defects[:_LISTED]) + (f"; and {len(defects) - _LISTED} more" if len(defects) > _LISTED else "")
    if not allow:
        raise DataError(
            f"dataset {root} fails its checks ({listed}); see `mmforge verify {root}`, or pass --allow-defects "
            "to train on it anyway"
        )
    log.warning("training on dataset %s despite %d defects (--allow-defects): %s", root, len(defects), listed)


def _shard(docs: DatasetDocs, entry: IndexEntry, verify: bool) -> Shard:
    problem = url_problem(docs.paths, entry.name, entry.url)
    if problem:  # never read a file the index points at outside the dataset, even when told to go on
        raise DataError(f"index.json: {problem}")
    where = docs.shard_location(entry.name)
    shard = Shard(name=entry.name, path=where, samples=entry.samples, bytes=entry.bytes, sha256=entry.sha256)
    present = entry.name in docs.present
    if not present or docs.shard_size(entry.name) != shard.bytes:
        found = docs.shard_size(entry.name) if present else "no file"
        raise DataError(f"index does not match shards: {entry.url} is {found}, index says {shard.bytes} bytes")
    if verify and _sha256(where) != shard.sha256:
        raise DataError(f"index does not match shards: sha256 of {entry.url} differs")
    return shard


def _sha256(where: str) -> str:
    digest = hashlib.sha256()
    with stores.open_input(where) as (f, _):
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_classes(info: DatasetInfo, model: ModelConfig) -> int:
    """The class count of the class maps the model reads, as the dataset's manifest records it (0 when the
    model reads no class map: the count is then unused)."""
    if not any(CODECS[MODALITIES[n].codec].kind == "class_map" for n in used_modalities(model)):
        return 0
    counts = {
        described.num_classes
        for name, described in (info.manifest.modalities.items() if info.manifest else ())
        if name in used_modalities(model) and CODECS[MODALITIES[name].codec].kind == "class_map"
    }
    if len(counts) != 1 or None in counts:
        raise DataError(
            f"dataset {info.root}: model.num_classes = 0 takes the class count from the manifest, which records "
            f"{sorted(c for c in counts if c is not None) or 'none'} for the class maps the model reads"
        )
    return int(counts.pop())  # type: ignore[arg-type]


def check_manifest(info: DatasetInfo, model: ModelConfig) -> None:
    """Every modality the model reads is in the dataset, and class maps have the model's class count and the
    contract's ignore id (the one the loader accepts and the losses leave out, `codecs.IGNORE_ID`).

    A modality is present when the manifest lists its member (`members`) or describes it (`modalities`).
    """
    if info.manifest is None:
        raise DataError(f"dataset {info.root}: manifest.json is missing or invalid")
    described = info.manifest.modalities
    members = set(info.manifest.members) | {m.member for m in described.values()}
    for name in used_modalities(model):
        if name not in described and CODECS[MODALITIES[name].codec].suffix not in members:
            raise DataError(f"dataset {info.root} has no {name!r} member (manifest members: {sorted(members)})")
        classes = described[name].num_classes if name in described else None
        if CODECS[MODALITIES[name].codec].kind == "class_map" and classes is not None and classes != model.num_classes:
            raise DataError(
                f"dataset {name!r} has {classes} classes, model.num_classes is {model.num_classes} (set it to "
                f"{classes}, or 0 to take the manifest's count)"
            )
        ignore = described[name].ignore_id if name in described else None
        if ignore is not None and ignore != IGNORE_ID:
            raise DataError(
                f"dataset {name!r} marks unlabelled pixels with {ignore}; the trainer reads the contract's "
                f"ignore id {IGNORE_ID} only"
            )
        if name in described and described[name].kind == "inverse_depth":
            warnings.warn(
                f"dataset {info.root}: {name!r} holds relative INVERSE depth (e.g. MiDaS labels); the MultiMAE "
                "paper trained on relative depth (Omnidata, recipe manifests/imagenet1k-multimae.toml)",
                stacklevel=2,
            )

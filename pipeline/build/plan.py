"""Plan: walk the source once, assign class ids, cut into shards, and freeze it in OUT/plan/.

The plan is written once; a resumed run reads it back, so it makes the same shards in the same order.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.build.recipe import ConfigError, SourceConfig
from pipeline.format import contract, fs, stores
from pipeline.format.contract import DatasetPaths, PlanEntries, PlanHeader, PlanShard
from pipeline.format.locations import Found


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the source root, POSIX separators
    cls: int | None


@dataclass(frozen=True)
class ShardSpec:
    """One unit of work: a few hundred to a few thousand entries, never the whole dataset."""

    index: int
    name: str
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class Plan:
    split: str
    source: str
    source_fingerprint: str
    recipe_fingerprint: str
    classes: tuple[str, ...] | None
    shards: tuple[ShardSpec, ...]
    format: int = contract.FORMAT

    @property
    def num_inputs(self) -> int:
        return sum(len(s.entries) for s in self.shards)

    @property
    def plan_id(self) -> str:
        """Digest of what this plan makes: recorded in every document and sample of the dataset."""
        if self.format < 2:
            return ""
        layout = [[s.name, len(s.entries)] for s in self.shards]
        parts = [self.split, self.source_fingerprint, self.recipe_fingerprint, list(self.classes or ()), layout]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def header(self) -> PlanHeader:
        return PlanHeader(
            format=self.format,
            plan_id=self.plan_id,
            split=self.split,
            source=self.source,
            source_fingerprint=self.source_fingerprint,
            recipe_fingerprint=self.recipe_fingerprint,
            classes=self.classes,
            shards=tuple(PlanShard(name=s.name, count=len(s.entries)) for s in self.shards),
            num_inputs=self.num_inputs,
        )


def _skip(name: str) -> bool:
    return name.startswith(".") or name.startswith("._")


def walk_source(src: stores.Location | Path, extensions: tuple[str, ...]) -> Found:
    """Every image of a source folder or store prefix, sorted by relative path."""
    return _images(stores.location(src).walk(_skip), extensions)


def walk_images(root: Path, extensions: tuple[str, ...]) -> Found:
    """(relative path, size, mtime_ns) of every image under a local folder: case-insensitive extensions, hidden
    and `._*` files skipped, symlinked folders followed once (`LocalPath.walk`)."""
    return walk_source(root, extensions)


def _images(files: Found, extensions: tuple[str, ...]) -> Found:
    """The files with one of `extensions` (in any case), sorted."""
    exts = {e.lower() for e in extensions}
    return sorted(f for f in files if os.path.splitext(f[0].rsplit("/", 1)[-1])[1].lower() in exts)


def fingerprint(files: Found) -> str:
    h = hashlib.sha256()
    for rel, size, mtime in files:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def class_names(files: Found, root: stores.Location | Path, mode: str) -> tuple[str, ...] | None:
    """Sorted class folder names (ImageNet layout: every image exactly one folder deep), else None."""
    depths = {rel.count("/") for rel, _, _ in files}
    layout_ok = depths == {1}
    if mode == "no" or (mode == "auto" and not layout_ok):
        return None
    if not layout_ok:
        raise ConfigError(f"class_folders = yes, but images under {root} are not all exactly one folder deep")
    return tuple(sorted({rel.split("/", 1)[0] for rel, _, _ in files}))


def make_plan(root: stores.Location | Path, source: SourceConfig, shard_size: int, recipe_fingerprint: str) -> Plan:
    files = walk_source(root, source.extensions)
    classes = class_names(files, root, source.class_folders)
    ids = {name: i for i, name in enumerate(classes or ())}
    entries = [Entry(rel, ids[rel.split("/", 1)[0]] if classes else None) for rel, _, _ in files]
    shards = tuple(
        ShardSpec(i, f"{source.split}-{i:06d}", tuple(entries[start : start + shard_size]))
        for i, start in enumerate(range(0, len(entries), shard_size))
    )
    return Plan(source.split, str(root), fingerprint(files), recipe_fingerprint, classes, shards)


def source_fingerprint(root: stores.Location | Path, source: SourceConfig) -> str:
    return fingerprint(walk_source(root, source.extensions))


def save_plan(plan: Plan, paths: DatasetPaths) -> None:
    """One small file per shard plus a header, so no process ever holds the whole list it does not need.
    Written into a temp folder renamed to plan/ at the end: a killed planner leaves no partial plan."""
    with fs.atomic_folder(paths.plan_dir) as tmp:
        for shard in plan.shards:
            pairs = tuple((e.path, e.cls) for e in shard.entries)
            entries = PlanEntries(index=shard.index, name=shard.name, entries=pairs)
            contract.write_doc(tmp / paths.plan_entries(shard.name).name, entries)
        contract.write_doc(tmp / paths.plan_header.name, plan.header())


def load_plan(paths: DatasetPaths) -> Plan:
    """The frozen plan; a document that does not validate raises contract.DocumentError."""
    header = contract.read_plan_header(paths)
    shards = []
    for i, item in enumerate(header.shards):
        data = contract.read_doc(paths, PlanEntries, paths.plan_entries(item.name))
        if data.name != item.name or len(data.entries) != item.count:
            raise contract.DocumentError(paths.rel(paths.plan_entries(item.name)), "does not match plan/plan.json")
        problems = contract.entry_problems(header, data)
        if problems:
            raise contract.DocumentError(paths.rel(paths.plan_entries(item.name)), problems)
        shards.append(ShardSpec(i, item.name, tuple(Entry(p, c) for p, c in data.entries)))
    return Plan(
        header.split,
        header.source,
        header.source_fingerprint,
        header.recipe_fingerprint,
        header.classes,
        tuple(shards),
        header.format,
    )

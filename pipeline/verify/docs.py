"""The document half of `verify`: read every dataset document through the contract and cross-check them with
each other and with the files present, without reading a shard's bytes. `mmforge verify` runs it first; the
trainer runs it before training and refuses a dataset it finds defects in.

Trusts nothing but the plan: every index url must be this dataset's own shard inside OUT; plan header,
stats markers, index, wids index and manifest must name the same plan (`plan_id`, fingerprints, classes,
counts); a document that does not parse or validate is a `bad_document` defect, never a traceback.

A dataset on an object store is checked on a local copy of its documents (`Location.scratch`, then
`Stage.fetch`); its shards are not downloaded but taken from the store's listing (`DatasetDocs.listed`: name and
size of each).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pipeline.format import fs, ownership
from pipeline.format.contract import (
    DatasetPaths,
    DocumentError,
    Index,
    IndexEntry,
    Manifest,
    Marker,
    PlanEntries,
    PlanHeader,
    ShardStats,
    WidsIndex,
    document_name,
    entry_problems,
    read_doc,
    url_problem,
)
from pipeline.format.stores import Location, location
from pipeline.verify.sample import Defect

T = TypeVar("T")


class NotADatasetError(ValueError):
    """OUT is missing or holds no dataset at all (bad usage, exit code 2), as opposed to a defective one."""


@dataclass
class DatasetDocs:
    """The documents of one dataset folder as read (None where missing or invalid) and the defects found."""

    paths: DatasetPaths
    where: Location  # the dataset (a store dataset's documents are a local copy in `paths.root`)
    marker: Marker | None = None
    plan: PlanHeader | None = None
    manifest: Manifest | None = None
    index: Index | None = None
    wids: WidsIndex | None = None
    entries: dict[str, PlanEntries] = field(default_factory=dict)
    stats: dict[str, ShardStats] = field(default_factory=dict)
    present: list[str] = field(default_factory=list)  # planned shards whose tar is present
    defects: list[Defect] = field(default_factory=list)
    listed: dict[str, int] = field(default_factory=dict)  # store objects not copied (shards/*.tar): name -> size

    def shard_location(self, shard: str) -> str:
        """Where a shard's bytes are read: the local tar, or the store object."""
        return str(self.where.join(self.paths.url(shard)))

    def shard_size(self, shard: str) -> int:
        rel = self.paths.url(shard)
        return self.listed[rel] if rel in self.listed else self.paths.shard_tar(shard).stat().st_size

    @property
    def planned(self) -> dict[str, int | None]:
        """Shard name -> planned sample count, from the frozen plan (or, without it, the index)."""
        if self.plan is not None:
            return {s.name: s.count for s in self.plan.shards}
        return {s.name: None for s in self.index.shards} if self.index is not None else {}

    @property
    def plan_id(self) -> str:
        return self.plan.plan_id if self.plan is not None else ""

    @property
    def classes(self) -> tuple[str, ...] | None:
        if self.plan is not None:
            return self.plan.classes
        return self.manifest.classes if self.manifest is not None else None

    def index_entries(self) -> dict[str, IndexEntry]:
        return {s.name: s for s in self.index.shards} if self.index is not None else {}

    def add(self, kind: str, reason: str, **where: Any) -> None:
        self.defects.append(Defect(kind=kind, reason=reason, **where))


def _read(docs: DatasetDocs, cls: type[T], path: Path) -> T | None:
    try:
        return read_doc(docs.paths, cls, path)
    except DocumentError as err:
        kind = "missing_file" if err.problems == ["missing"] else "bad_document"
        docs.add(kind, str(err), member=err.name)
        return None


def open_dataset(out: Path, where: Location | None = None, listed: dict[str, int] | None = None) -> DatasetDocs:
    """Read the dataset-level documents; NotADatasetError when OUT holds no dataset at all. `where` and
    `listed`: OUT is the local copy of the documents of the dataset `where` (see DatasetDocs)."""
    paths = DatasetPaths(Path(out))
    where = location(paths.root) if where is None else where
    if not paths.root.is_dir():
        raise NotADatasetError(f"{where} does not exist or is not a folder")
    if not any(p.is_file() for p in (paths.marker, paths.plan_header, paths.manifest, paths.index)):
        raise NotADatasetError(
            f"{where} is not a dataset {where.noun} (no mmforge.json, plan/plan.json, manifest.json or index.json)"
        )
    docs = DatasetDocs(paths, where, listed=dict(listed or {}))
    docs.plan = _read(docs, PlanHeader, paths.plan_header)
    if paths.marker.exists() or (docs.plan is not None and docs.plan.format >= 2):
        docs.marker = _read(docs, Marker, paths.marker)
    docs.manifest = _read(docs, Manifest, paths.manifest)
    docs.index = _read(docs, Index, paths.index)
    docs.wids = _read(docs, WidsIndex, paths.wids_index)
    return docs


@contextmanager
def checked_documents(out: Location | Path) -> Iterator[DatasetDocs]:
    """`check_documents` of a folder, or of a store dataset (on a private copy of its documents, removed when
    the block ends; its shards stay on the store, `DatasetDocs.shard_location`)."""
    where = location(out)
    with where.scratch("mmforge-docs-") as stage:
        listing = stage.listing()
        stage.fetch(document_name, listing)
        shards = {rel: entry.size for rel, entry in listing.items() if not document_name(rel)}
        yield check_documents(stage.root, where, shards)


def check_documents(out: Path, where: Location | None = None, listed: dict[str, int] | None = None) -> DatasetDocs:
    """Every document-level check (no shard bytes read); the defects are in the result. `where`: the dataset
    whose documents `out` holds (OUT itself when not given)."""
    docs = open_dataset(out, where, listed)
    holder = ownership.lock_holder(docs.paths)
    if holder:
        docs.add("build_in_progress", f"a build is writing this dataset now ({holder})")
    if docs.marker is not None and docs.plan is not None and docs.marker.format != docs.plan.format:
        reason = f"mmforge.json says format {docs.marker.format}, plan/plan.json format {docs.plan.format}"
        docs.add("plan_mismatch", reason, member="plan/plan.json")
    _plan_entries(docs)
    _shard_files(docs)
    _stray_temps(docs)
    _manifest_checks(docs)
    _index_checks(docs)
    for shard in docs.present:
        _stats_checks(docs, shard)
    _failure_checks(docs)
    _totals(docs)
    return docs


def _plan_entries(docs: DatasetDocs) -> None:
    if docs.plan is None:
        return
    for item in docs.plan.shards:
        entries = _read(docs, PlanEntries, docs.paths.plan_entries(item.name))
        if entries is None:
            continue
        for problem in entry_problems(docs.plan, entries):
            docs.add("bad_document", f"plan/{item.name}.json: {problem}", shard=item.name)
        if entries.name != item.name or len(entries.entries) != item.count:
            n = len(entries.entries)
            reason = f"plan/{item.name}.json names {entries.name} with {n} entries; plan.json says {item.count}"
            docs.add("plan_mismatch", reason, shard=item.name)
        docs.entries[item.name] = entries


def _shard_files(docs: DatasetDocs) -> None:
    """Check the shards/ folder against the plan: missing, extra, stray and unexpected files."""
    folder, planned, present = docs.paths.shards_dir, docs.planned, set()
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    stored = {rel.removeprefix("shards/") for rel in docs.listed if rel.startswith("shards/")}
    names = sorted(set(names) | stored)
    for name in names:
        stem = name.removesuffix(".tar").removesuffix(".stats.json")
        if fs.is_temp(folder / name):
            docs.add("stray_temp_file", f"leftover temp file shards/{name}", member=name)
        elif stem == name:
            docs.add("unexpected_file", f"shards/{name} is not a shard", member=name)
        elif stem not in planned:
            docs.add("extra_shard", f"shards/{name} is not in the plan", shard=stem)
        elif name not in stored and not (folder / name).is_file():  # a FIFO, a device, a folder, a dangling link
            kind = "a dangling link" if not (folder / name).exists() else fs.file_kind((folder / name).stat().st_mode)
            docs.add("unexpected_file", f"shards/{name} is {kind}, not a regular file", shard=stem)
        elif name.endswith(".tar"):
            present.add(stem)
    lost = {s.shard: s.error for s in docs.manifest.failed_shards} if docs.manifest is not None else {}
    for shard in planned:
        if shard not in present:
            why = f" (build failed: {lost[shard].splitlines()[0] if lost[shard] else '?'})" if shard in lost else ""
            docs.add("missing_shard", f"shards/{shard}.tar is missing{why}", shard=shard)
        elif f"{shard}.stats.json" not in names:
            docs.add("missing_marker", f"shards/{shard}.stats.json (the done marker) is missing", shard=shard)
    docs.present = [s for s in planned if s in present]


def _stray_temps(docs: DatasetDocs) -> None:
    """Temp files of killed writers and files no document names beside the dataset files (shards/ is
    checked with the shards)."""
    paths = docs.paths
    named = paths.named_by(tuple(docs.planned)) | {paths.plan_dir, paths.shards_dir}
    for folder in (paths.root, paths.plan_dir):
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            rel = paths.rel(path)
            if fs.is_temp(path):
                docs.add("stray_temp_file", f"leftover temp file {rel}", member=rel)
            elif path not in named:
                docs.add("unexpected_file", f"{rel} is no file of this dataset", member=rel)
    for rel in sorted(r for r in docs.listed if not r.startswith("shards/")):  # on the store, not copied
        docs.add("unexpected_file", f"{rel} is no file of this dataset", member=rel)


def _same_plan(docs: DatasetDocs, what: str, plan_id: str, **where: Any) -> None:
    if docs.plan is not None and plan_id != docs.plan_id:
        said = f"plan {plan_id[:12]}" if plan_id else "no plan id"
        docs.add("plan_mismatch", f"{what} is of {said}, this dataset's plan is {docs.plan_id[:12]}", **where)


def _manifest_checks(docs: DatasetDocs) -> None:
    m, plan = docs.manifest, docs.plan
    if m is None or plan is None:
        return
    _same_plan(docs, "manifest.json", m.plan_id, member="manifest.json")
    pairs = {
        "recipe_fingerprint": (m.recipe_fingerprint, plan.recipe_fingerprint),
        "source.fingerprint": (m.source.fingerprint, plan.source_fingerprint),
        "classes": (m.classes, plan.classes),
        "source.num_inputs": (m.source.num_inputs, plan.num_inputs),
        "totals.shards": (m.totals.shards, len(plan.shards)),
    }
    for name, (theirs, ours) in pairs.items():
        if theirs != ours:
            docs.add("plan_mismatch", f"manifest {name} differs from plan/plan.json", member="manifest.json")
    cls = "cls"
    if (cls in m.members) != (plan.classes is not None):
        said = "lists" if cls in m.members else "lacks"
        reason = f"'members' {said} {cls} but the plan has {len(plan.classes or ())} classes"
        docs.add("bad_document", reason, member="manifest.json")


def _index_checks(docs: DatasetDocs) -> None:
    if docs.index is None:
        return
    _same_plan(docs, "index.json", docs.index.plan_id, member="index.json")
    for entry in docs.index.shards:
        if entry.name not in docs.planned:
            docs.add("index_mismatch", "index.json lists a shard not in the plan", shard=entry.name)
        problem = url_problem(docs.paths, entry.name, entry.url)
        if problem:
            docs.add("bad_url", f"index.json: {problem}", shard=entry.name)
    if docs.wids is not None:
        expected = [(s.url, s.samples) for s in docs.index.shards]
        if [(s.url, s.nsamples) for s in docs.wids.shardlist] != expected:
            reason = "wids-index.json 'shardlist' does not match index.json (urls and sample counts)"
            docs.add("index_mismatch", reason, member="wids-index.json")


def _stats_checks(docs: DatasetDocs, shard: str) -> None:
    stats = _read(docs, ShardStats, docs.paths.shard_stats(shard))
    if stats is None:
        return
    docs.stats[shard] = stats
    _same_plan(docs, f"shards/{shard}.stats.json", stats.plan_id, shard=shard)
    if stats.shard != shard:
        docs.add("plan_mismatch", f"the stats marker is shard {stats.shard}'s", shard=shard)
    planned = docs.planned.get(shard)
    if planned is not None and stats.planned != planned:
        docs.add("count_mismatch", f"stats 'planned' is {stats.planned}; plan/ says {planned}", shard=shard)
    entry = docs.index_entries().get(shard)
    if docs.index is not None and entry is None:
        docs.add("not_in_index", "no entry in index.json", shard=shard)
    if entry is not None:
        for kind, what, ours, theirs in (
            ("count_mismatch", "samples", stats.written, entry.samples),
            ("bytes_mismatch", "bytes", stats.bytes, entry.bytes),
            ("sha256_mismatch", "sha256", stats.sha256, entry.sha256),
        ):
            if ours != theirs:
                docs.add(kind, f"stats {what} is {ours}; index.json says {theirs}", shard=shard)
    size = docs.shard_size(shard)
    if size != stats.bytes:
        docs.add("bytes_mismatch", f"the tar is {size} bytes; its stats say {stats.bytes}", shard=shard)


def _failure_checks(docs: DatasetDocs) -> None:
    """Every recorded failure is a source of that shard's plan; the manifest lists exactly the stats'."""
    for shard, stats in docs.stats.items():
        planned = {p for p, _ in docs.entries[shard].entries} if shard in docs.entries else None
        for f in stats.failures:
            if planned is not None and f.path not in planned:
                docs.add("plan_mismatch", f"failure {f.path!r} is not a source of this shard's plan", shard=shard)
    if docs.manifest is not None:
        listed = [f for s in docs.present if s in docs.stats for f in docs.stats[s].failures]
        if list(docs.manifest.failures) != listed:
            n = len(docs.manifest.failures)
            reason = f"manifest lists {n} failures, the stats markers {len(listed)} (or they differ)"
            docs.add("failures_mismatch", reason, member="manifest.json")


def _totals(docs: DatasetDocs) -> None:
    m = docs.manifest
    lost = sum(s.planned for s in m.failed_shards) if m is not None else 0
    for s in m.failed_shards if m is not None else ():
        reason = f"the build lost this shard ({s.planned} images): {s.error.splitlines()[:1]}"
        docs.add("shard_failed", reason, shard=s.shard)
    inputs = sum(n or 0 for n in docs.planned.values())
    written = sum(st.written for st in docs.stats.values())
    failed = sum(st.failed for st in docs.stats.values()) + lost
    if m is not None:
        for name, recorded, value in (
            ("inputs", m.totals.inputs, inputs),
            ("written", m.totals.written, written),
            ("failed", m.totals.failed, failed),
        ):
            if recorded != value:
                docs.add(
                    "totals_mismatch",
                    f"manifest totals.{name} is {recorded}, the shards give {value}",
                    member="manifest.json",
                )
        if not m.complete:
            docs.add("totals_mismatch", "manifest says the build is not complete")
    if docs.plan is not None and len(docs.stats) == len(docs.planned) and inputs != written + failed:
        docs.add("totals_mismatch", f"inputs {inputs} != written {written} + failed {failed}")

"""The dataset folder: its paths and its documents, typed, versioned and validated (the data contract's
folder half; `pipeline.format.codecs` is its member half).

Builder, verifier, the trainer's reader and the synthetic datasets read and write the folder only through
here, and here only through `pipeline.format.fs`. Layout of OUT:

    mmforge.json                       marker: this folder is a dataset written by multimae-forge
    .mmforge.lock                      advisory lock of the build running now (holder inside)
    plan/plan.json, plan/{shard}.json  the frozen plan: header (written last), one entry list per shard
    shards/{shard}.tar                 samples
    shards/{shard}.stats.json          written after the tar: its presence marks the shard done
    index.json, wids-index.json        per-shard samples, bytes, sha256; the wids shard index
    manifest.json                      resolved recipe, fingerprints, labelers, modalities, totals, failures

Format 2 adds the marker and `plan_id` (a digest of the plan) to the plan header, every stats marker,
index.json, the manifest and every sample's json, so a shard from another dataset is recognised even when its
counts match. Format-1 folders (no marker, no plan_id) are still read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from pipeline.format import fs
from pipeline.format.schema import ConfigError, load, setting, to_plain

FORMAT = 2
READABLE_FORMATS = (1, 2)
TOOL = "multimae-forge"
MARKER = "mmforge.json"
LOCK = ".mmforge.lock"
WIDS_KIND = "wids-shard-index-v1"
SHA256 = r"[0-9a-f]{64}"
SHARD_NAME = r"[A-Za-z0-9_]+-[0-9]{6}"
T = TypeVar("T")


class DocumentError(ValueError):
    """A dataset document is missing, unreadable, not JSON, or does not validate; `name` is its path in OUT."""

    def __init__(self, name: str, problems: str | list[str]) -> None:
        self.name, self.problems = name, [problems] if isinstance(problems, str) else problems
        super().__init__(f"{name}: {'; '.join(self.problems[:5])}" + (" ..." if len(self.problems) > 5 else ""))


# ----------------------------------------------------------------------------------------------- documents


@dataclass(frozen=True, kw_only=True)
class Marker:
    tool: str = setting(choices=(TOOL,))
    kind: str = setting(choices=("dataset",))
    format: int = setting(choices=READABLE_FORMATS)


@dataclass(frozen=True, kw_only=True)
class PlanShard:
    name: str = setting(pattern=SHARD_NAME)
    count: int = setting(ge=0)


@dataclass(frozen=True, kw_only=True)
class PlanHeader:
    format: int = setting(choices=READABLE_FORMATS)
    plan_id: str = ""  # format 2
    split: str = setting(pattern=r"[A-Za-z0-9_]+")
    source: str
    source_fingerprint: str = setting(pattern=SHA256)
    recipe_fingerprint: str = setting(pattern=SHA256)
    classes: tuple[str, ...] | None = None
    shards: tuple[PlanShard, ...]
    num_inputs: int = setting(ge=0)

    def problems(self) -> list[str]:
        names = [s.name for s in self.shards]
        expected = [f"{self.split}-{i:06d}" for i in range(len(names))]
        found = [] if names == expected else [f"shards must be named {self.split}-000000, -000001, ... in order"]
        if self.num_inputs != sum(s.count for s in self.shards):
            found.append(f"num_inputs {self.num_inputs} != the shards' counts {sum(s.count for s in self.shards)}")
        if self.format >= 2 and not re.fullmatch(SHA256, self.plan_id):
            found.append("plan_id must be a sha256 digest")
        return found


@dataclass(frozen=True, kw_only=True)
class PlanEntries:
    """plan/{shard}.json: the shard's source files in order, each (relative path, class index or None)."""

    index: int = setting(ge=0)
    name: str = setting(pattern=SHARD_NAME)
    entries: tuple[tuple[str, int | None], ...]


def entry_problems(header: PlanHeader, entries: PlanEntries) -> list[str]:
    """Why a shard's plan entries cannot be this plan's: paths must be relative and inside the source, and
    class indices present exactly when the plan has classes, each the index of the path's class folder."""
    found, classes = [], header.classes
    ids = {name: i for i, name in enumerate(classes or ())}
    for path, cls in entries.entries:
        pure = PurePosixPath(path)
        if not path or pure.is_absolute() or ".." in pure.parts:
            found.append(f"entry {path!r} is not a relative path inside the source")
        elif classes is None and cls is not None:
            found.append(f"entry {path!r} has class {cls} but the plan has no classes")
        elif classes is not None and cls != ids.get(path.split("/", 1)[0]):
            found.append(f"entry {path!r} has class {cls}, its folder is class {ids.get(path.split('/', 1)[0])}")
        if len(found) >= 5:
            break
    return found


@dataclass(frozen=True, kw_only=True)
class Failure:
    """A source image that is not in the shards, and why."""

    path: str
    error: str
    message: str
    stage: str = setting(choices=("read", "label", "encode"))


@dataclass(frozen=True, kw_only=True)
class ShardStats:
    format: int = setting(choices=READABLE_FORMATS)
    plan_id: str = ""  # format 2
    shard: str = setting(pattern=SHARD_NAME)
    index: int = setting(ge=0)
    planned: int = setting(ge=0)
    written: int = setting(ge=0)
    failed: int = setting(ge=0)
    failures: tuple[Failure, ...] = ()
    bytes: int = setting(ge=0)
    sha256: str = setting(pattern=SHA256)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    labelers: dict[str, str] = field(default_factory=dict)
    source_kinds: dict[str, int] = field(default_factory=dict)
    rgb_reencoded: int = setting(0, ge=0)
    node: str = ""  # where the shard was made: the Ray node id, or "local" (the in-process executor)
    host: str = ""  # that node's host name

    def problems(self) -> list[str]:
        found = []
        if self.written + self.failed != self.planned:
            found.append(f"written {self.written} + failed {self.failed} != planned {self.planned}")
        if self.failed != len(self.failures):
            found.append(f"failed is {self.failed} but {len(self.failures)} failures are listed")
        return found


@dataclass(frozen=True, kw_only=True)
class IndexEntry:
    name: str = setting(pattern=SHARD_NAME)
    url: str
    samples: int = setting(ge=0)
    bytes: int = setting(ge=0)
    sha256: str = setting(pattern=SHA256)


@dataclass(frozen=True, kw_only=True)
class Index:
    format: int = setting(choices=READABLE_FORMATS)
    plan_id: str = ""  # format 2
    split: str
    shards: tuple[IndexEntry, ...]
    total_samples: int = setting(ge=0)

    def problems(self) -> list[str]:
        total = sum(s.samples for s in self.shards)
        found = [] if total == self.total_samples else [f"total_samples {self.total_samples} != sum {total}"]
        names = [s.name for s in self.shards]
        return found + ([] if len(set(names)) == len(names) else ["a shard is listed twice"])


@dataclass(frozen=True, kw_only=True)
class WidsShard:
    url: str
    nsamples: int = setting(ge=0)


@dataclass(frozen=True, kw_only=True)
class WidsIndex:
    __kind__: str = setting(WIDS_KIND, choices=(WIDS_KIND,))
    wids_version: int = 1
    name: str
    shardlist: tuple[WidsShard, ...]


@dataclass(frozen=True, kw_only=True)
class ModalityInfo:
    """manifest.json 'modalities': one per label map, as its codec and labeler describe it."""

    member: str
    labeler: str
    kind: str
    dtype: str | None = None
    num_classes: int | None = setting(None, ge=1)
    ignore_id: int | None = None
    classes: tuple[str, ...] | None = None
    palette: tuple[int, ...] | None = None
    encoding: str | None = None


@dataclass(frozen=True, kw_only=True)
class SourceInfo:
    path: str
    fingerprint: str = setting(pattern=SHA256)
    split: str
    num_inputs: int = setting(ge=0)
    layout: str = setting(choices=("class_folders", "flat_or_nested"))


@dataclass(frozen=True, kw_only=True)
class Totals:
    inputs: int = setting(ge=0)
    written: int = setting(ge=0)
    failed: int = setting(ge=0)
    shards: int = setting(ge=0)
    shards_complete: int = setting(ge=0)
    shards_failed: int = setting(ge=0)
    source_kinds: dict[str, int] = field(default_factory=dict)
    rgb_reencoded: int = setting(0, ge=0)

    def problems(self) -> list[str]:
        ok = self.inputs == self.written + self.failed
        return [] if ok else [f"inputs {self.inputs} != written {self.written} + failed {self.failed}"]


@dataclass(frozen=True, kw_only=True)
class NodeThroughput:
    """What one node made: shards, images, and the seconds its shard tasks ran (summed over parallel tasks)."""

    host: str = ""
    shards: int = setting(0, ge=0)
    images: int = setting(0, ge=0)
    seconds: float = setting(0.0, ge=0)
    images_per_task_s: float = setting(0.0, ge=0)


@dataclass(frozen=True, kw_only=True)
class LostShard:
    shard: str
    planned: int = setting(ge=0)
    error: str


@dataclass(frozen=True, kw_only=True)
class Manifest:
    format: int = setting(choices=READABLE_FORMATS)
    plan_id: str = ""  # format 2
    created: str
    recipe: dict[str, Any]
    recipe_fingerprint: str = setting(pattern=SHA256)
    source: SourceInfo
    classes: tuple[str, ...] | None = None
    packages: dict[str, str | None] = field(default_factory=dict)
    labelers: tuple[dict[str, Any], ...] = ()
    modalities: dict[str, ModalityInfo]
    members: tuple[str, ...]
    meaningless_labels: bool = False
    totals: Totals
    failures: tuple[Failure, ...] = ()
    failed_shards: tuple[LostShard, ...] = ()
    complete: bool
    nodes: dict[str, NodeThroughput] = field(default_factory=dict)  # by stats `node`; shards of every run
    command: str = ""  # the command that repeats the build (rerun it to finish or repair the dataset)

    @property
    def ok(self) -> bool:
        return self.complete and self.totals.failed == 0

    def problems(self) -> list[str]:
        listed = {m.member for m in self.modalities.values()}
        missing = sorted(listed - set(self.members))
        return [f"members lacks the modalities' members {missing}"] if missing else []


# ----------------------------------------------------------------------------------------------- the folder


def sample_key(shard_index: int, position: int) -> str:
    """The key of the sample at `position` of shard `shard_index` (dot-free, in plan order)."""
    return f"{shard_index:06d}{position:05d}"


def key_position(key: str, shard_index: int) -> int | None:
    """The plan position a key stands for in shard `shard_index`, or None when it is no key of that shard."""
    if len(key) != 11 or not key.isdigit() or int(key[:6]) != shard_index:
        return None
    return int(key[6:])


@dataclass(frozen=True)
class DatasetPaths:
    """Every path of a dataset folder, spelled once."""

    root: Path

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def index(self) -> Path:
        return self.root / "index.json"

    @property
    def wids_index(self) -> Path:
        return self.root / "wids-index.json"

    @property
    def plan_dir(self) -> Path:
        return self.root / "plan"

    @property
    def plan_header(self) -> Path:
        return self.plan_dir / "plan.json"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    def plan_entries(self, shard: str) -> Path:
        return self.plan_dir / f"{shard}.json"

    def shard_tar(self, shard: str) -> Path:
        return self.shards_dir / f"{shard}.tar"

    def shard_stats(self, shard: str) -> Path:
        return self.shards_dir / f"{shard}.stats.json"

    @staticmethod
    def url(shard: str) -> str:
        """The url of a shard in index.json and the wids index: relative to OUT."""
        return f"shards/{shard}.tar"

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def documents(self) -> tuple[Path, ...]:
        """The dataset-level documents (not per shard), marker first."""
        return (self.marker, self.plan_header, self.manifest, self.index, self.wids_index)

    def named_by(self, shards: tuple[str, ...]) -> set[Path]:
        """Every file a dataset with these shards may hold (besides temp files of its writers)."""
        named = set(self.documents()) | {self.lock}
        for s in shards:
            named |= {self.plan_entries(s), self.shard_tar(s), self.shard_stats(s)}
        return named


_DOCUMENT = re.compile(
    rf"(mmforge\.json|manifest\.json|index\.json|wids-index\.json|plan/plan\.json|plan/{SHARD_NAME}\.json"
    rf"|shards/{SHARD_NAME}\.stats\.json)"
)
_SHARD_TAR = re.compile(rf"shards/{SHARD_NAME}\.tar")


def document_name(rel: str) -> bool:
    """Whether `rel` (relative to OUT) can be one of a dataset's documents (what a store copy downloads)."""
    return _DOCUMENT.fullmatch(rel) is not None


def dataset_name(rel: str) -> bool:
    """Whether `rel` can be any file of a dataset: a document or a shard tar."""
    return document_name(rel) or _SHARD_TAR.fullmatch(rel) is not None


def url_problem(paths: DatasetPaths, shard: str, url: str) -> str | None:
    """Why an index url is not this dataset's shard `shard` (None when it is): it must be the relative url
    `shards/{shard}.tar` and resolve, links followed, to that file inside OUT."""
    pure = PurePosixPath(url)
    if pure.is_absolute() or ".." in pure.parts or "\\" in url or ":" in url:
        return f"url {url!r} is not a plain path inside the dataset folder"
    if url != paths.url(shard):
        return f"url {url!r} does not name shard {shard} ({paths.url(shard)})"
    target, root = (paths.root / url).resolve(), paths.root.resolve()
    if root not in target.parents:
        return f"url {url!r} resolves to {target}, outside the dataset folder"
    return None


# ----------------------------------------------------------------------------------------------- reading


def parse_doc(cls: type[T], data: bytes, name: str) -> T:
    """Bytes of a document -> the typed document; DocumentError when it is not JSON or does not validate."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise DocumentError(name, f"not valid JSON ({type(err).__name__}: {str(err)[:200]})") from None
    if isinstance(raw, dict) and raw.get("format") not in (None, *READABLE_FORMATS):
        raise DocumentError(name, f"format {raw.get('format')!r} is not one this version reads {READABLE_FORMATS}")
    try:
        return load(cls, raw)
    except ConfigError as err:
        raise DocumentError(name, err.problems) from None
    except RecursionError:
        raise DocumentError(name, "nested too deeply") from None


def read_doc(paths: DatasetPaths, cls: type[T], path: Path) -> T:
    name = paths.rel(path)
    if not path.is_file():
        raise DocumentError(name, "missing")
    try:
        data = fs.read_file(path)
    except OSError as err:
        raise DocumentError(name, f"unreadable: {err.strerror or err}") from None
    return parse_doc(cls, data, name)


def write_doc(path: Path, doc: Any) -> None:
    """Atomically write a typed document (or a plain dict) as sorted, indented JSON."""
    fs.write_json_atomic(path, to_plain(doc))


def read_plan_header(paths: DatasetPaths) -> PlanHeader:
    return read_doc(paths, PlanHeader, paths.plan_header)


def read_stats(paths: DatasetPaths, shard: str) -> ShardStats:
    return read_doc(paths, ShardStats, paths.shard_stats(shard))


def read_manifest(paths: DatasetPaths) -> Manifest:
    return read_doc(paths, Manifest, paths.manifest)


def read_index(paths: DatasetPaths) -> Index:
    return read_doc(paths, Index, paths.index)


def read_wids(paths: DatasetPaths) -> WidsIndex:
    return read_doc(paths, WidsIndex, paths.wids_index)


def read_marker(paths: DatasetPaths) -> Marker:
    return read_doc(paths, Marker, paths.marker)


def write_marker(paths: DatasetPaths) -> None:
    write_doc(paths.marker, Marker(tool=TOOL, kind="dataset", format=FORMAT))

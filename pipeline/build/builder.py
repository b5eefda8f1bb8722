"""`build-dataset`: plan (or resume a plan), run the shards on a distributor, write the dataset files.

OUT is built through its stage (`Location.stage`): a local folder is its own; an object-store OUT
(`s3://bucket/out`) is a local folder that first copies the store's documents (shards are listed, not
downloaded), so ownership, resume and the plan work exactly as for a folder. Each document is published after it
is written in the stage (the plan's entries before its header, the manifest last; nothing to do on a folder);
workers publish their shards themselves (`pipeline.build.sink`).
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from labelers import check_labeler
from labelers.weights import WeightsUnavailableError
from pipeline.build.dataset_files import write_dataset_files
from pipeline.build.executors import Callbacks, init_ray, run_local, run_ray
from pipeline.build.label_files import LOCAL_ONLY, check_root, is_files
from pipeline.build.plan import Plan, ShardSpec, load_plan, make_plan, save_plan, source_fingerprint
from pipeline.build.progress import BuildProgress
from pipeline.build.recipe import BuildConfig, ConfigError
from pipeline.build.shard import ShardContext
from pipeline.format import fs, ownership, stores
from pipeline.format.contract import DatasetPaths, DocumentError, Manifest, ShardStats, document_name, read_stats
from pipeline.format.locations import FolderStage

# Below this many images to build, `--executor auto` runs in-process: Ray's start-up (a local cluster, one actor
# per labeler loading its weights) costs more than it saves. Measured in benchmarks/RESULTS.md ("Executor").
LOCAL_MAX_IMAGES = 500


@dataclass(frozen=True)
class Executor:
    name: str  # "local" or "ray"
    reason: str  # why, for the summary


@dataclass(frozen=True)
class BuildResult:
    out: stores.Location
    manifest: Manifest
    seconds: float
    images_this_run: int
    executor: Executor | None = None  # None: nothing was left to build
    checked: int = 0  # shards an earlier run left, checked against their stats
    repaired: tuple[str, ...] = ()  # of those, the damaged or lost ones this run rebuilt

    @property
    def ok(self) -> bool:
        return self.manifest.ok


def check_source_folder(src: stores.Location) -> None:
    """The source is a folder (or a store prefix with objects): checked first, before the recipe's labelers load."""
    if not src.is_folder():
        raise ConfigError(f"source folder {src} does not exist or is not a folder")


def _check_source(cfg: BuildConfig) -> None:
    check_source_folder(cfg.src)
    if cfg.out.inside(cfg.src):
        raise ConfigError(f"output {cfg.out} must not be inside the source {cfg.src.noun} {cfg.src}")
    if any(is_files(s) for s in cfg.recipe.labelers):
        cfg.src.local_path(LOCAL_ONLY)


def _check_weights(cfg: BuildConfig) -> None:
    """Fail before any work when real weights or label folders are missing (weights are not checked for a
    remote cluster: its workers load them)."""
    for spec in cfg.recipe.labelers:
        if is_files(spec):
            check_root(spec, cfg.src.local_path(LOCAL_ONLY))
            continue
        if cfg.address:
            continue
        try:
            check_labeler(spec)
        except WeightsUnavailableError as err:
            raise ConfigError(f"labeler {spec.name}: {err}") from err


def _resume_plan(cfg: BuildConfig, paths: DatasetPaths) -> Plan | None:
    """The frozen plan of an earlier run, if there is one and source and recipe are unchanged."""
    if cfg.overwrite or not paths.plan_header.exists():
        return None
    try:
        plan = load_plan(paths)
    except DocumentError as err:
        raise ConfigError(f"{cfg.out}: {err}; rerun with --overwrite to start over") from None
    if plan.recipe_fingerprint != cfg.recipe.fingerprint():
        raise ConfigError(
            f"{cfg.out} was built with another recipe (or batch size / precision); use the same, or "
            "--overwrite to start over"
        )
    if plan.source_fingerprint != source_fingerprint(cfg.src, cfg.recipe.source):
        raise ConfigError(f"source {cfg.src} changed since {cfg.out} was planned; rerun with --overwrite")
    return plan


class _Publish:
    """Publishes the driver's documents from OUT's stage (`Stage.publish`: nothing to do for a local OUT).
    `listing`: what OUT holds beyond the stage (an object-store OUT's objects; nothing for a folder)."""

    def __init__(self, paths: DatasetPaths, stage: stores.Stage, listing: dict[str, stores.Entry]) -> None:
        self.paths, self.stage, self.listing = paths, stage, listing

    def files(self, *files: Path) -> None:
        self.stage.publish(*files)

    def plan(self, plan: Plan) -> None:
        """The plan's entries, then (entries of an unfinished earlier plan removed) its header: the header's
        presence means a whole plan, as the local plan folder's rename does."""
        entries = [self.paths.plan_entries(s.name) for s in plan.shards]
        self.files(*entries)
        ours = {self.paths.rel(p) for p in entries}
        self._remove([r for r in self.listing if r.startswith("plan/") and r not in ours])
        self.files(self.paths.plan_header)

    def remove_dataset(self, named: set[Path]) -> None:
        """`--overwrite` on a store: remove the objects the old documents name (the marker stays): shards first,
        the plan's header last but the dataset documents, so a killed removal leaves a prefix that is still
        ours to finish."""
        rels = {self.paths.rel(p) for p in named} - {self.paths.rel(self.paths.marker)}
        header = self.paths.rel(self.paths.plan_header)
        order = {"shards": 0, "plan": 1}
        self._remove(
            sorted(
                (r for r in rels if r in self.listing),
                key=lambda r: (order.get(r.split("/", 1)[0], 3) + (r == header), r),
            )
        )

    def _remove(self, rels: list[str]) -> None:
        if rels:
            self.stage.remove(rels)
            self.listing = {r: e for r, e in self.listing.items() if r not in set(rels)}

    @property
    def local(self) -> bool:
        """Whether the shards are local files (an object-store OUT's are objects, listed, not downloaded)."""
        return isinstance(self.stage, FolderStage)

    def tar_size(self, shard: str) -> int | None:
        tar = self.paths.shard_tar(shard)
        entry = self.listing.get(self.paths.rel(tar))
        if entry is not None:
            return entry.size
        return tar.stat().st_size if tar.is_file() else None


def _new_plan(cfg: BuildConfig, paths: DatasetPaths, publish: _Publish) -> Plan:
    """Walk the source into a new plan; only then (it may fail) is an earlier build removed and OUT marked."""
    plan = make_plan(cfg.src, cfg.recipe.source, cfg.recipe.shards.size, cfg.recipe.fingerprint())
    if plan.num_inputs == 0:
        raise ConfigError(f"no images found under {cfg.src} (extensions: {' '.join(cfg.recipe.source.extensions)})")
    if cfg.overwrite:
        publish.remove_dataset(ownership.named_files(paths))
        ownership.remove_dataset(paths)
    ownership.claim(paths)
    publish.files(paths.marker)
    paths.shards_dir.mkdir(exist_ok=True)
    save_plan(plan, paths)
    publish.plan(plan)
    return plan


@dataclass(frozen=True)
class Kept:
    """What a rerun found in OUT: the shards it keeps (each checked against its stats marker) and the ones it
    rebuilds because they were damaged or lost after their build (shard name -> why)."""

    stats: dict[str, ShardStats]
    damaged: dict[str, str]
    checked: int  # markers checked against their tars


def _tar_sha256(paths: DatasetPaths, shard: str) -> str:
    with paths.shard_tar(shard).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _damage(paths: DatasetPaths, plan: Plan, publish: _Publish, shard: str, hashed: bool) -> str | ShardStats:
    """The stats of a shard whose tar is what its marker records, or why it is not."""
    try:
        stats = read_stats(paths, shard)
    except DocumentError as err:
        return f"its stats marker is unreadable ({err})"
    if stats.plan_id != plan.plan_id:
        return "its stats marker is of another plan"
    size = publish.tar_size(shard)
    if size is None:
        return "the tar is missing (its stats marker says it was written)"
    if size != stats.bytes:
        return f"the tar is {size} bytes, its stats say {stats.bytes}"
    if hashed and _tar_sha256(paths, shard) != stats.sha256:
        return "the tar's sha256 differs from its stats (damaged after its build)"
    return stats


def _completed(paths: DatasetPaths, plan: Plan, publish: _Publish) -> Kept:
    """The shards a previous run finished, each checked against its stats marker (size, and the sha256 of a
    local tar). A marker without an intact tar is a damaged shard: rebuilt. A tar without a marker is an
    unfinished one (rebuilt, as ever). A shard where an image failed in labelling is tried again (that may
    have been the labeller's fault)."""
    done, damaged = {}, {}
    marked = [s.name for s in plan.shards if paths.shard_stats(s.name).is_file()]
    for name in marked:
        found = _damage(paths, plan, publish, name, hashed=publish.local)
        if isinstance(found, str):
            damaged[name] = found
        elif not any(f.stage == "label" for f in found.failures):
            done[name] = found
    return Kept(done, damaged, len(marked))


def _context(cfg: BuildConfig, plan: Plan) -> ShardContext:
    r = cfg.recipe
    return ShardContext(
        src=cfg.src.absolute(),
        out=cfg.out.absolute(),
        classes=plan.classes,
        image=r.image,
        encoding=r.encoding,
        labelers=r.labelers,
        batch_size=r.runtime.batch_size,
        plan_id=plan.plan_id,
    )


def choose_executor(cfg: BuildConfig, images: int) -> Executor:
    """Ray with `--address` or `--executor ray`; in-process with `--executor local`; with `auto` (the default),
    in-process for fewer than LOCAL_MAX_IMAGES images to build in this run, Ray beyond."""
    if cfg.address:
        return Executor("ray", f"--address {cfg.address}")
    if cfg.executor != "auto":
        return Executor(cfg.executor, f"--executor {cfg.executor}")
    if images < LOCAL_MAX_IMAGES:
        return Executor(
            "local", f"auto: {images} images to build, under {LOCAL_MAX_IMAGES}; Ray's start-up would cost more"
        )
    return Executor("ray", f"auto: {images} images to build, {LOCAL_MAX_IMAGES} or more")


def _run(cfg: BuildConfig, executor: Executor, todo: list[ShardSpec], ctx: ShardContext, cb: Callbacks) -> None:
    if not todo:
        return
    if executor.name == "local":
        run_local(todo, ctx, cfg.recipe.runtime, cb)
    else:
        init_ray(cfg.address, cfg.quiet)
        run_ray(todo, ctx, cfg.recipe.runtime, cb)


def build_dataset(cfg: BuildConfig) -> BuildResult:
    """Build (or finish building) the dataset `cfg` describes. Raises ConfigError on bad input, before
    anything in OUT is changed."""
    _check_source(cfg)
    cfg.out.check_writable()
    stage = cfg.out.stage("datasets", "dataset")  # one build per OUT and machine: the stage's lock
    paths = DatasetPaths(stage.root)
    if stage.lock_root == stage.root:  # the lock file goes into OUT itself: OUT must be ours before it is written
        ownership.check_ownership(paths)
    _check_weights(cfg)
    created = not paths.root.exists()
    ownership.create_folder(paths)
    try:
        with ownership.BuildLock(DatasetPaths(stage.lock_root)):
            return _build(cfg, paths, _claim(cfg, stage, paths))
    except ConfigError:
        if created and paths.root.is_dir() and not any(paths.root.iterdir()):
            paths.root.rmdir()
        raise


def _claim(cfg: BuildConfig, stage: stores.Stage, paths: DatasetPaths) -> _Publish:
    """With the lock held: refuse an OUT that holds anything not ours (a store's objects from their listing,
    before anything is downloaded), copy its documents into the stage, check them there (builds of one store
    OUT from two machines at once are not detected)."""
    try:
        listing = stage.listing()
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {cfg.out}: {err}") from None
    ownership.check_names(listing, paths, str(cfg.out))
    planned = paths.rel(paths.plan_header) in listing  # else plan entries are an unfinished plan's
    try:
        stage.fetch(lambda r: document_name(r) and (planned or r.split("/")[0] != "plan"), listing)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {cfg.out}: {err}") from None
    ownership.check_listed(paths, listing, str(cfg.out))
    ownership.check_ownership(paths)  # again, now that no other build can change OUT
    return _Publish(paths, stage, listing)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _check_kept(paths: DatasetPaths, plan: Plan, publish: _Publish) -> Kept:
    """Check the shards an earlier run left against their markers, saying so (hashing takes ~1 s per GB)."""
    marked = sum(paths.shard_stats(s.name).is_file() for s in plan.shards)
    if marked:
        how = "size, sha256" if publish.local else "size (an object store's tars are not downloaded)"
        _say(f"checking {marked} kept shards against their stats ({how})")
    kept = _completed(paths, plan, publish)
    for name, why in kept.damaged.items():
        _say(f"repairing shard {name}: {why}")
    return kept


def _build(cfg: BuildConfig, paths: DatasetPaths, publish: _Publish) -> BuildResult:
    started = time.perf_counter()
    plan = _resume_plan(cfg, paths) or _new_plan(cfg, paths, publish)
    for folder in (paths.root, paths.plan_dir, paths.shards_dir):
        fs.remove_temps(folder)
    kept = _check_kept(paths, plan, publish)
    stats = dict(kept.stats)
    todo = [s for s in plan.shards if s.name not in stats]
    done_images = sum(len(s.entries) for s in plan.shards if s.name in stats)
    executor = choose_executor(cfg, plan.num_inputs - done_images)
    bar = BuildProgress(
        images=plan.num_inputs,
        shards=len(plan.shards),
        done_images=done_images,
        done_shards=len(stats),
        quiet=cfg.quiet,
    )
    failed: dict[str, str] = {}

    def done(shard: ShardSpec, s: ShardStats) -> None:
        stats[shard.name] = s
        where = f"{s.node[:8]}@{s.host}" if s.node and s.node != "local" else s.host or s.node
        bar.shard_done(shard.name, s.written, s.failed, where, s.seconds)

    def lost(shard: ShardSpec, error: str) -> None:
        failed[shard.name] = error
        bar.shard_failed(shard.name, len(shard.entries))

    try:
        _run(cfg, executor, todo, _context(cfg, plan), Callbacks(bar.images, done, lost, bar.stalled))
    finally:
        bar.close()
    manifest = write_dataset_files(paths, plan, cfg.recipe, stats, failed, cfg.command)
    publish.files(paths.index, paths.wids_index, paths.manifest)
    return BuildResult(
        cfg.out,
        manifest,
        time.perf_counter() - started,
        plan.num_inputs - done_images,
        executor=executor,
        checked=kept.checked,
        repaired=tuple(s for s in kept.damaged if s in stats),
    )


def summary(result: BuildResult, max_listed: int = 20) -> str:
    m, t = result.manifest, result.manifest.totals
    rate = result.images_this_run / result.seconds if result.seconds > 0 else 0.0
    lines = [
        f"{result.out}: {t.written} of {t.inputs} images written in {t.shards_complete}/{t.shards} "
        f"shards, {t.failed} failed ({result.images_this_run} processed this run in {result.seconds:.1f} s, "
        f"{rate:.1f} img/s)"
    ]
    for f in m.failures[:max_listed]:
        lines.append(f"  failed: {f.path}: {f.error}: {f.message}")
    if len(m.failures) > max_listed:
        lines.append(f"  ... {len(m.failures) - max_listed} more in manifest.json")
    if len(m.nodes) > 1:
        for node, n in m.nodes.items():
            lines.append(
                f"  node {node[:12]} ({n.host}): {n.shards} shards, {n.images} images, {n.images_per_task_s} img/task-s"
            )
    for s in m.failed_shards:
        lines.append(f"  shard {s.shard} failed ({s.planned} images): {s.error.splitlines()[0] if s.error else '?'}")
    if result.checked:
        lines.append(
            f"  {result.checked} kept shards checked against their stats, {len(result.repaired)} repaired"
            + (f": {', '.join(result.repaired[:max_listed])}" if result.repaired else "")
        )
    if result.executor is not None and result.images_this_run:
        lines.append(f"  executor: {result.executor.name} ({result.executor.reason})")
    if m.meaningless_labels:
        lines.append("  note: labels come from random-weight smoke models and are meaningless")
    return "\n".join(lines)


def describe(cfg: BuildConfig) -> str:
    """One line: the resolved recipe in short (the full one is saved in manifest.json)."""
    r = cfg.recipe
    labs = ", ".join(f"{s.modality}={s.name}" for s in r.labelers)
    return (
        f"recipe {r.name} ({r.fingerprint()[:12]}): {labs}; shard size {r.shards.size}, "
        f"batch {r.runtime.batch_size}; {cfg.src} -> {cfg.out} [{cfg.executor}]"
    )

"""The per-shard work: read + decode, label in batches, encode, write a temp tar, publish, write stats.

A plain function, testable without Ray. Labelling is handed to a `submit` callable so decoding of the next
batch overlaps labelling of the current one. One bad image is a recorded failure, never a lost shard.
"""

from __future__ import annotations

import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labelers import LabelerSpec
from labelers.classes import palette_for
from pipeline.build.images import DecodedImage, decode_image, read_source
from pipeline.build.label_files import LOCAL_ONLY, is_files, read_label
from pipeline.build.plan import Entry, ShardSpec
from pipeline.build.recipe import EncodingConfig, ImageConfig
from pipeline.build.sink import ShardSink
from pipeline.format import contract
from pipeline.format.codecs import CODECS, EncodeOptions, class_ids_problem, encode_cls, encode_json
from pipeline.format.contract import DatasetPaths, Failure, ShardStats, sample_key
from pipeline.format.stores import Location

Labels = dict[str, list[np.ndarray]]  # modality -> one map per image
Submit = Callable[[list[np.ndarray]], Callable[[], Labels]]  # start labelling; call the result to wait


@dataclass(frozen=True, kw_only=True)
class ShardContext:
    src: Location  # absolute: a shard task may run in another folder or on another machine
    out: Location
    classes: tuple[str, ...] | None
    image: ImageConfig
    encoding: EncodingConfig
    labelers: tuple[LabelerSpec, ...]
    batch_size: int
    plan_id: str

    @property
    def file_labelers(self) -> tuple[LabelerSpec, ...]:
        """The labelers that read ground truth from files here, in the shard task (no model, no actor)."""
        return tuple(s for s in self.labelers if is_files(s))

    @property
    def model_labelers(self) -> tuple[LabelerSpec, ...]:
        return tuple(s for s in self.labelers if not is_files(s))


STAGES = ("read", "submit", "label", "encode", "write")  # submit: handing a batch to the labelers
CPU_STAGES = tuple(f"{stage}_cpu" for stage in STAGES)
# CPU seconds of every thread of the process while the shard ran: in-process that includes the models; in a
# Ray shard task it is all the task's work, Ray's own threads (object copies, RPCs) included
PROCESS_CPU = "process_cpu"


@dataclass
class _Tally:
    failures: list[Failure] = field(default_factory=list)
    # per stage: wall seconds, and "<stage>_cpu": CPU seconds of the shard task's own thread in that stage
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys((*STAGES, *CPU_STAGES), 0.0))
    isolate: bool = False  # last attempt: record images that fail labelling instead of failing the shard
    written: int = 0
    source_kinds: Counter[str] = field(default_factory=Counter)  # "FORMAT/MODE" of written images
    reencoded: int = 0


@contextmanager
def _timed(tally: _Tally, stage: str) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        tally.timings[stage] += time.perf_counter() - wall
        tally.timings[f"{stage}_cpu"] += time.thread_time() - cpu


def _failure(entry: Entry, err: BaseException, stage: str) -> Failure:
    """A failed input: source path, exception class, message, and the stage (read, label, encode)."""
    message = str(err)[:500] or repr(err)
    return Failure(path=entry.path, error=type(err).__name__, message=message, stage=stage)


def _fetch(entries: list[Entry], ctx: ShardContext, limits: dict[str, int]) -> list[bytes | Exception]:
    """Each source's bytes (or why not), `Location.parallel_reads` at a time: from a store, one object read
    after another would leave its per-request latency (tens of ms) between every two images."""

    def one(entry: Entry) -> bytes | Exception:
        try:
            return read_source(ctx.src.join(entry.path), **limits)
        except Exception as err:  # a bad image is data: recorded by the caller
            return err

    readers = min(ctx.src.parallel_reads, len(entries))
    if readers < 2:
        return [one(e) for e in entries]
    with ThreadPoolExecutor(readers) as pool:
        return list(pool.map(one, entries))


def _read(
    entries: Sequence[tuple[int, Entry]], ctx: ShardContext, tally: _Tally
) -> list[tuple[int, Entry, DecodedImage, dict[str, np.ndarray]]]:
    """Decode each source image and read its label files (the `files` labelers); a failure of either is the
    image's recorded failure (stage `read` or `label`)."""
    ok = []
    limits = dict(max_bytes=ctx.image.max_file_bytes, max_pixels=ctx.image.max_pixels)
    fetched = _fetch([e for _, e in entries], ctx, limits)
    for (pos, entry), data in zip(entries, fetched, strict=True):
        try:
            if isinstance(data, Exception):
                raise data
            img = decode_image(
                data, max_pixels=ctx.image.max_pixels, max_side=ctx.image.max_side, jpeg_quality=ctx.image.jpeg_quality
            )
        except Exception as err:  # bad images are data: recorded with their reason
            tally.failures.append(_failure(entry, err, "read"))
            continue
        try:
            given = {
                s.modality: read_label(s, ctx.src.local_path(LOCAL_ONLY), entry.path, img, **limits)
                for s in ctx.file_labelers
            }
        except Exception as err:
            tally.failures.append(_failure(entry, err, "label"))
            continue
        ok.append((pos, entry, img, given))
    return ok


def _label_map(spec: LabelerSpec, label: np.ndarray, ctx: ShardContext) -> tuple[bytes, dict[str, Any] | None]:
    codec, options = CODECS[spec.modality], EncodeOptions(png_level=ctx.encoding.png_level)
    if codec.kind == "class_map":
        n = spec.num_classes or 0
        problem = class_ids_problem(label, n)
        if problem:
            raise ValueError(f"{spec.name} produced {problem}")
        options = EncodeOptions(png_level=ctx.encoding.png_level, palette=palette_for(spec.classes, n))
    stored, encoding = codec.store(label, spec.output)
    return codec.encode(stored, options), encoding


def _members(
    shard: ShardSpec, pos: int, entry: Entry, img: DecodedImage, maps: dict[str, np.ndarray], ctx: ShardContext
) -> dict[str, bytes]:
    h, w = img.rgb.shape[:2]
    meta: dict[str, Any] = {
        "key": sample_key(shard.index, pos),
        "source": entry.path,
        "source_sha256": img.source_sha256,
        "source_format": img.source_format,
        "source_mode": img.source_mode,
        "orig_size": {"width": img.orig_size[0], "height": img.orig_size[1]},
        "size": {"width": w, "height": h},
        "rgb": "original" if img.stored_original else "reencoded",
        "class": ctx.classes[entry.cls] if ctx.classes is not None and entry.cls is not None else None,
        "labelers": {s.modality: s.labeler_id for s in ctx.labelers},
    }
    if ctx.plan_id:
        meta["dataset"] = ctx.plan_id
    members = {CODECS["rgb"].suffix: img.jpeg}
    for spec in ctx.labelers:
        label = maps[spec.modality]
        if label.shape[:2] != (h, w):
            raise ValueError(f"{spec.name} returned a {label.shape[:2]} map for a {(h, w)} image")
        members[CODECS[spec.modality].suffix], encoding = _label_map(spec, label, ctx)
        if encoding is not None:
            meta[spec.modality] = encoding
    members[CODECS["json"].suffix] = encode_json(meta)
    if entry.cls is not None:
        members[CODECS["cls"].suffix] = encode_cls(entry.cls)
    return members


def _wait_labels(
    batch: list[tuple[int, Entry, DecodedImage, dict[str, np.ndarray]]],
    pending: Callable[[], Labels],
    submit: Submit,
    tally: _Tally,
) -> list[tuple[int, Entry, DecodedImage, dict[str, np.ndarray]]]:
    """Labels for a batch (the models' beside those read from files). A labelling error fails the shard (it
    is retried whole), except on the last attempt (`isolate`): then each image is labelled alone and only the
    ones that still fail are recorded."""
    try:
        labels = pending()
        results = [
            (p, e, im, {**given, **{m: maps[i] for m, maps in labels.items()}})
            for i, (p, e, im, given) in enumerate(batch)
        ]
    except Exception:
        if not tally.isolate:
            raise
        results = []
        for p, e, im, given in batch:
            try:
                one = submit([im.rgb])()
                results.append((p, e, im, {**given, **{m: maps[0] for m, maps in one.items()}}))
            except Exception as err:
                tally.failures.append(_failure(e, err, "label"))
    return results


def _write_batch(writer: ShardSink, shard: ShardSpec, labelled: list[Any], ctx: ShardContext, tally: _Tally) -> None:
    for pos, entry, img, maps in labelled:
        try:
            with _timed(tally, "encode"):
                members = _members(shard, pos, entry, img, maps, ctx)
        except Exception as err:
            tally.failures.append(_failure(entry, err, "encode"))
            continue
        with _timed(tally, "write"):
            writer.add(sample_key(shard.index, pos), members)
        tally.written += 1
        tally.source_kinds[f"{img.source_format}/{img.source_mode}"] += 1
        tally.reencoded += not img.stored_original


def _flush(
    writer: ShardSink,
    shard: ShardSpec,
    previous: tuple[list[Any], Callable[[], Labels] | None, int],
    ctx: ShardContext,
    submit: Submit,
    tally: _Tally,
    progress: Callable[[int], None] | None,
) -> None:
    batch, pending, planned = previous
    if pending is not None:
        with _timed(tally, "label"):
            labelled = _wait_labels(batch, pending, submit, tally)
        _write_batch(writer, shard, labelled, ctx, tally)
    if progress is not None:
        progress(planned)


def process_shard(
    shard: ShardSpec,
    ctx: ShardContext,
    submit: Submit,
    progress: Callable[[int], None] | None = None,
    isolate: bool = False,
) -> ShardStats:
    """Build one shard and publish it atomically; returns the stats that were written beside it.

    `isolate` (the last attempt): images that fail labelling are recorded one by one instead of failing the
    shard. A source or output folder this worker cannot see fails the shard, never its images. An object-store
    OUT is written through a temp stage of this worker (`Location.scratch`): nothing of it needs to be shared.
    """
    with ctx.out.scratch("mmforge-shard-") as stage:
        paths = DatasetPaths(stage.root)
        shards = stage.folder(paths.rel(paths.shards_dir))
        for folder, visible in ((ctx.src, ctx.src.is_folder()), (shards, shards.is_dir())):
            if not visible:
                raise FileNotFoundError(f"{folder} is not visible on this worker (a cluster needs a shared filesystem)")
        return _process(shard, ctx, submit, progress, isolate, ShardSink(paths, shard.name, stage))


def _process(
    shard: ShardSpec,
    ctx: ShardContext,
    submit: Submit,
    progress: Callable[[int], None] | None,
    isolate: bool,
    sink: ShardSink,
) -> ShardStats:
    tally, started, cpu_started = _Tally(isolate=isolate), time.perf_counter(), time.process_time()
    indexed = list(enumerate(shard.entries))
    with sink:
        previous: tuple[list[Any], Callable[[], Labels] | None, int] | None = None
        for start in range(0, len(indexed), ctx.batch_size):
            chunk = indexed[start : start + ctx.batch_size]
            with _timed(tally, "read"):
                batch = _read(chunk, ctx, tally)
            with _timed(tally, "submit"):
                pending = submit([item[2].rgb for item in batch]) if batch else None
            if previous is not None:
                _flush(sink, shard, previous, ctx, submit, tally, progress)
            previous = (batch, pending, len(chunk))
        if previous is not None:
            _flush(sink, shard, previous, ctx, submit, tally, progress)
    stats = ShardStats(
        format=contract.FORMAT,
        plan_id=ctx.plan_id,
        shard=shard.name,
        index=shard.index,
        planned=len(shard.entries),
        written=tally.written,
        failed=len(tally.failures),
        failures=tuple(tally.failures),
        bytes=sink.bytes,
        sha256=sink.sha256,
        timings={k: round(v, 4) for k, v in {**tally.timings, PROCESS_CPU: time.process_time() - cpu_started}.items()},
        seconds=round(time.perf_counter() - started, 4),
        labelers={s.modality: s.labeler_id for s in ctx.labelers},
        source_kinds=dict(sorted(tally.source_kinds.items())),
        rgb_reencoded=tally.reencoded,
        node=_node_id(),
        host=socket.gethostname(),
    )
    sink.mark_done(stats)  # last: its presence marks the shard done
    return stats


def _node_id() -> str:
    """The Ray node this runs on, where Ray runs in this process ("local" where it does not)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return "local"
    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # not inside a task or actor
        return "local"


def local_submit(labelers: Sequence[Any]) -> Submit:
    """In-process labelling (no Ray): runs when the shard asks for the result, so its time counts as label."""

    def submit(images: list[np.ndarray]) -> Callable[[], Labels]:
        return lambda: {lab.spec.modality: lab(images) for lab in labelers}

    return submit

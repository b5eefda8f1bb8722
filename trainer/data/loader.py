"""Streaming loader over the dataset's WebDataset shards (the data contract: README.md, "Output").

Per epoch, every rank reads the same number of micro-batches (so DDP never waits on a rank that ran out of
data): the shard list is shuffled with (seed, epoch), split over ranks x workers, and each worker cycles
over its shards (reshuffled per pass) through a sample shuffle buffer until it has produced its quota.

Everything random is seeded from (seed, epoch, rank, worker, position), so a worker's stream is a pure
function of its cursor (raw samples read, batches and corrupt samples so far); the trainer saves the
cursors with each checkpoint and a resumed run reads exactly the batches the interrupted one would have.
Shards are read by the one shard reader (`pipeline.format.samples.read_samples`, with this loader's
corrupt-data policy as its `on_error`) and members decoded by the codec table only (`decode_modalities`: no
pickle, no 8-bit image decoders); a corrupt sample or unreadable tar data is counted and skipped, and the
worker stops with a `DataError` past `DataConfig.max_corrupt`. A class map is corrupt by `verify`'s rule
(`codecs.class_ids_problem`); its ignore id (255) is data, kept through the augmentation, left out of the
loss (`trainer.model.losses`) and embedded as zeros (`trainer.model.adapters`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.format.codecs import CODECS, class_ids_problem, decode_member
from pipeline.format.samples import Sample, read_samples
from trainer.config import ConfigError, DataConfig, ModelConfig
from trainer.data import batch_resize
from trainer.data.augment import augment, sample_crop
from trainer.data.dataset import DatasetInfo, Shard
from trainer.errors import DataError
from trainer.model.modalities import MODALITIES, used_modalities

log = logging.getLogger(__name__)
Batch = dict[str, Any]
Keyed = tuple[str, Sample]  # a raw sample as the shard reader hands it over: (key, {suffix: bytes})
CROP = "__crop__"  # on_device items: the sample's Crop


@dataclass(kw_only=True)
class Cursor:
    """Position of one loader worker in its epoch stream."""

    raw: int = 0
    batches: int = 0
    corrupt: int = 0


@dataclass(frozen=True, kw_only=True)
class EpochPlan:
    """What one rank reads in one epoch: `micro_batches` batches, over `workers` streams (>= 1)."""

    seed: int
    epoch: int
    rank: int
    world: int
    workers: int
    micro_batches: int

    def quota(self, worker: int) -> int:
        """Micro-batches of worker w: those with index m % workers == w."""
        return max(0, (self.micro_batches - worker + self.workers - 1) // self.workers)

    def shards(self, shards: tuple[Shard, ...], worker: int) -> list[Shard]:
        check_enough_shards(len(shards), self.world, self.workers)
        slots = self.world * self.workers
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(shards))
        return [shards[i] for i in order[self.rank * self.workers + worker :: slots]]


def check_enough_shards(shards: int, world: int, workers: int) -> None:
    """Every (rank, worker) stream needs a shard of its own."""
    if shards < world * workers:
        raise DataError(
            f"{shards} shards cannot feed {world} ranks x {workers} loader workers; "
            f"need at least {world * workers} shards (use fewer --workers, or more, smaller shards)"
        )


class ShardStream(IterableDataset):
    """Yields this rank's micro-batches of one epoch; DataLoader worker p plays stream (p + rotation) % W.

    on_device: batches of cut crops for the training device to resample (`trainer.data.batch_resize`) instead of
    finished tensors; the same crops and flips either way."""

    def __init__(
        self,
        *,
        info: DatasetInfo,
        data: DataConfig,
        model: ModelConfig,
        plan: EpochPlan,
        cursors: list[Cursor],
        rotation: int = 0,
        on_device: bool = False,
    ) -> None:
        super().__init__()
        self.info, self.data, self.model, self.plan = info, data, model, plan
        self.cursors, self.rotation, self.on_device = cursors, rotation, on_device
        self.modalities = used_modalities(model)

    def __iter__(self) -> Iterator[Batch]:
        worker_info = get_worker_info()
        physical = worker_info.id if worker_info is not None else 0
        return self.batches((physical + self.rotation) % self.plan.workers)

    def batches(self, worker: int) -> Iterator[Batch]:
        cursor = dataclasses.replace(self.cursors[worker])
        quota, items = self.plan.quota(worker), []
        if cursor.batches >= quota:
            return
        stream = self._raw_stream(worker, cursor)
        cursor.corrupt = self.cursors[worker].corrupt  # the fast-forward re-met counted tar errors
        for sample in stream:
            cursor.raw += 1
            item = self._decode_or_count(sample, worker, cursor)
            if item is not None:
                items.append(item)
            if len(items) == self.data.batch_size:
                cursor.batches += 1
                yield collate(items, worker, cursor)
                items = []
                if cursor.batches >= quota:
                    return

    def _raw_stream(self, worker: int, cursor: Cursor) -> Iterator[Keyed]:
        rng = np.random.default_rng([self.plan.seed, self.plan.epoch, self.plan.rank, worker, 1])
        stream = shuffle(self._cycle(worker, cursor), self.data.shuffle_buffer, rng)
        for _ in range(cursor.raw):  # fast-forward on resume: raw tar members only, nothing decoded
            next(stream)
        return stream

    def _cycle(self, worker: int, cursor: Cursor) -> Iterator[Keyed]:
        shards, plan = self.plan.shards(self.info.shards, worker), self.plan
        handler = self._tar_handler(cursor)
        for rounds in range(1 << 62):
            seeds = [plan.seed, plan.epoch, plan.rank, worker, 2, rounds]
            order = np.random.default_rng(seeds).permutation(len(shards))
            streams = (read_samples(shards[i].path, on_error=handler) for i in order)
            count = 0
            for sample in interleave(streams, self.data.open_shards):
                count += 1
                yield sample
            if count == 0:
                raise DataError(f"shards {[s.name for s in shards]} gave no samples (empty or unreadable tar files)")

    def _tar_handler(self, cursor: Cursor) -> Any:
        def handle(exc: Exception) -> None:
            self._count_corrupt(cursor, f"unreadable tar data: {exc!r}")

        return handle

    def _decode_or_count(self, sample: Keyed, worker: int, cursor: Cursor) -> dict[str, Any] | None:
        rng = np.random.default_rng([self.plan.seed, self.plan.epoch, self.plan.rank, worker, 3, cursor.raw])
        key, members = sample
        try:
            return self.decode(members, rng)
        except Exception as exc:  # a bad sample is data, not a crash: counted, bounded by max_corrupt
            self._count_corrupt(cursor, f"sample {key!r}: {type(exc).__name__}: {exc}")
            return None

    def _count_corrupt(self, cursor: Cursor, reason: str) -> None:
        cursor.corrupt += 1
        if cursor.corrupt <= 10:
            log.warning("skipping corrupt data (%d so far in this worker): %s", cursor.corrupt, reason)
        if cursor.corrupt > self.data.max_corrupt:
            raise DataError(f"more than {self.data.max_corrupt} corrupt samples in one loader worker; last: {reason}")

    def decode(self, sample: Sample, rng: np.random.Generator) -> dict[str, Any]:
        """Raw sample -> finished tensors of every used modality, with one shared crop and flip (on_device:
        the crop's windows, `batch_resize.windows`, and the crop under CROP)."""
        arrays = decode_modalities(sample, self.modalities)
        h, w = check_arrays(arrays, self.model)
        d = self.data
        crop = sample_crop(h, w, rng, d.crop_scale, d.crop_ratio, d.hflip)
        if self.on_device:
            return {**batch_resize.windows(arrays, crop), CROP: crop}
        return augment(arrays, crop, self.model.image_size)


def decode_modalities(sample: Sample, modalities: Iterable[str]) -> dict[str, np.ndarray]:
    """The members of `modalities` in a raw sample, decoded by the codec table (KeyError: one is missing)."""
    arrays = {}
    for name in modalities:
        suffix = CODECS[MODALITIES[name].codec].suffix
        if suffix not in sample:
            raise KeyError(f"member {suffix!r} missing")
        arrays[name] = decode_member(suffix, sample[suffix])
    return arrays


def check_arrays(arrays: dict[str, np.ndarray], model: ModelConfig) -> tuple[int, int]:
    """All members pixel-aligned (same H x W); class maps valid for model.num_classes by the rule `verify`
    applies (`codecs.class_ids_problem`: classes or the ignore id). Returns (H, W)."""
    sizes = {name: a.shape[:2] for name, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"members differ in size: {sizes}")
    for name, a in arrays.items():
        problem = class_ids_problem(a, model.num_classes) if _is_class_map(name) else None
        if problem:
            raise ValueError(f"{name} has {problem}")
    h, w = next(iter(sizes.values()))
    return int(h), int(w)


def _is_class_map(name: str) -> bool:
    return CODECS[MODALITIES[name].codec].kind == "class_map"


def interleave(streams: Iterator[Iterator[Any]], width: int) -> Iterator[Any]:
    """Round-robin over `width` streams at a time, opening the next stream when one ends.

    Shards written in source order hold one class each (ImageNet); reading several at once mixes classes
    before the shuffle buffer, which alone would hold mostly one shard.
    """
    active: list[Iterator[Any]] = []
    for stream in streams:
        active.append(stream)
        if len(active) == width:
            yield from _round_robin(active, refill=streams)
    yield from _round_robin(active, refill=iter(()))


def _round_robin(active: list[Iterator[Any]], refill: Iterator[Iterator[Any]]) -> Iterator[Any]:
    """Yield from `active` in turn; an ended stream is replaced from `refill` or dropped. Empties `active`."""
    i = 0
    while active:
        i %= len(active)
        try:
            yield next(active[i])
            i += 1
        except StopIteration:
            replacement = next(refill, None)
            if replacement is None:
                active.pop(i)
            else:
                active[i] = replacement


def shuffle(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Buffer shuffle: fill `size` items, then emit a random one and refill its slot."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = int(rng.integers(size))
        buffer[k], item = item, buffer[k]
        yield item
    order = rng.permutation(len(buffer))
    yield from (buffer[i] for i in order)


def collate(items: list[dict[str, Any]], worker: int, cursor: Cursor) -> Batch:
    if CROP in items[0]:
        crops = [it.pop(CROP) for it in items]
        batch: Batch = batch_resize.pack(items, crops)
    else:
        batch = {name: torch.stack([it[name] for it in items]) for name in items[0]}
    batch["__cursor__"] = {"worker": worker, **dataclasses.asdict(cursor)}
    return batch


def augment_on_device(data: DataConfig, device: torch.device, modalities: Iterable[str]) -> bool:
    """Where `data.augment_on` puts the resampling for a run on `device` (True: the device). "auto" keeps it
    in the workers where a used modality's interpolation has no batched form; "device" then refuses."""
    unsupported = [name for name in modalities if not batch_resize.supported(name)]
    if data.augment_on == "device" and unsupported:
        raise ConfigError(
            f'data.augment_on = "device": modalities {unsupported} use an interpolation the device path lacks'
            f' (it has {list(batch_resize.INTERPOLATIONS)}); use "worker" or "auto"'
        )
    return data.augment_on == "device" or (data.augment_on == "auto" and device.type == "cuda" and not unsupported)


def make_loader(stream: ShardStream, workers: int, pin_memory: bool) -> DataLoader:
    """One epoch's loader; batches come in micro-batch order (worker round robin, in order)."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers else None,
        generator=torch.Generator(),  # the loader's base seed must not draw from the global (masking) RNG
        prefetch_factor=4 if workers else None,
    )


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)

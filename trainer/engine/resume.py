"""Step-granular checkpoints of a run (written and read by `trainer.engine.loop.Trainer`): what each rank adds, and
the checks before a run continues from one.

Each checkpoint holds the model, optimizer and scaler, the resolved config (a plain dict) and, per rank, the
RNG states and the loader cursors, so a resumed run draws the same masks and reads the same batches (the
payload and its reader: `trainer.engine.checkpoint`). It also holds its `RunRecord`: the fingerprint of the
dataset it trained on and every change of schedule asked for with `--reschedule`.

A resume refuses what would silently change the run (`check_resume`): another model, batch layout, seed or
world size; another dataset (by fingerprint: the same shards moved elsewhere are the same data); another
schedule (steps, epochs, warmup, learning rate) unless `--reschedule` asks for it, and then it is recorded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import torch

from trainer.config import FinetuneConfig, PretrainConfig, RunConfig, config_to_dict
from trainer.data.dataset import DatasetInfo
from trainer.data.loader import Cursor
from trainer.engine.checkpoint import Checkpoint
from trainer.engine.distributed import DistInfo
from trainer.engine.optim import lr_at
from trainer.engine.run import Schedule, fresh_cursors
from trainer.errors import CheckpointError

log = logging.getLogger(__name__)


def rank_state(dist: DistInfo, cursors: list[Cursor]) -> dict[str, Any]:
    """What each rank adds to a checkpoint: its RNG states and loader cursors."""
    cuda = torch.cuda.get_rng_state(dist.device) if dist.device.type == "cuda" else torch.empty(0)
    return {"rng_cpu": torch.get_rng_state(), "rng_cuda": cuda, "cursors": [vars(c).copy() for c in cursors]}


def restore_rng(mine: dict[str, Any], dist: DistInfo) -> None:
    torch.set_rng_state(mine["rng_cpu"])
    if dist.device.type == "cuda" and mine["rng_cuda"].numel():
        torch.cuda.set_rng_state(mine["rng_cuda"], dist.device)


def restored_cursors(mine: dict[str, Any], current: list[Cursor], cfg: Any) -> list[Cursor]:
    """This rank's loader cursors; with another worker count the epoch's rest is drawn afresh (logged)."""
    cursors = [Cursor(**c) for c in mine["cursors"]]
    if len(cursors) == len(current):
        return cursors
    log.warning(
        "loader workers changed (%d -> %d): this epoch's remaining batches are drawn afresh, "
        "not in the interrupted run's order",
        len(cursors),
        len(current),
    )
    return fresh_cursors(cfg)


_MUST_MATCH = ("model.", "task.", "data.batch_size", "optim.accum_steps", "train.seed")
SCHEDULE_KEYS = ("train.steps", "train.epochs", "optim.warmup_epochs", "optim.base_lr", "optim.min_lr")


def dataset_fingerprint(info: DatasetInfo) -> str:
    """sha256 of the shards' names, sample counts and sha256 (as the index lists them): the same data wherever
    it lies, another fingerprint for any other shard, count or content."""
    rows = [[s.name, s.samples, s.sha256] for s in info.shards]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """What a run's checkpoints and config.json record besides the config: the data (where it was read, its
    fingerprint) and every schedule change made with --reschedule (step, {key: [before, after]}, time)."""

    data: str
    fingerprint: str
    reschedules: tuple[dict[str, Any], ...] = ()

    @classmethod
    def of(cls, info: DatasetInfo) -> RunRecord:
        return cls(data=str(info.root), fingerprint=dataset_fingerprint(info))

    def plain(self) -> dict[str, Any]:
        return {"data": self.data, "fingerprint": self.fingerprint, "reschedules": [dict(r) for r in self.reschedules]}

    @classmethod
    def read(cls, ckpt: Checkpoint) -> RunRecord | None:
        """The record of a checkpoint; None for one written before records were (it has none)."""
        raw = ckpt.extra.get("run")
        if raw is None:
            return None
        try:
            reschedules = tuple(dict(r) for r in raw.get("reschedules", ()))
            return cls(data=str(raw["data"]), fingerprint=str(raw["fingerprint"]), reschedules=reschedules)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise CheckpointError(f"{ckpt.source}: its run record is not readable ({str(raw)[:80]})") from None


def check_resume(
    ckpt: Checkpoint, cfg: RunConfig, dist: DistInfo, record: RunRecord, samples: int, reschedule: bool
) -> RunRecord:
    """Refuse a checkpoint this run cannot continue without silently changing it (`check_compatible`, another
    dataset, another schedule unless `reschedule`); returns the record the run goes on with (the change of
    schedule appended when there is one)."""
    check_compatible(ckpt, cfg, dist)
    theirs = RunRecord.read(ckpt)
    if theirs is None:
        log.warning("%s was written before checkpoints recorded their dataset: the data is not checked", ckpt.source)
    elif theirs.fingerprint != record.fingerprint:
        raise CheckpointError(
            f"checkpoint {ckpt.source} was trained on another dataset ({theirs.data}, fingerprint "
            f"{theirs.fingerprint[:12]}; --data {record.data} is {record.fingerprint[:12]}): a run continues on its "
            "own data; choose another --out for a new run"
        )
    changes = schedule_changes(ckpt, cfg)
    past = theirs.reschedules if theirs else ()
    if not changes:
        return RunRecord(data=record.data, fingerprint=record.fingerprint, reschedules=past)
    step = ckpt.step or 0
    assert ckpt.config is not None  # a run checkpoint (check_compatible)
    before = Schedule.build(ckpt.config, samples, dist.world, check_floor=False)  # what ran, as it ran
    after = Schedule.build(cfg, samples, dist.world)
    listed = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
    if after.total_steps < step:
        raise CheckpointError(
            f"the checkpoint is at step {step}, past the {after.total_steps} steps of the new schedule ({listed})"
        )
    if not reschedule:
        raise CheckpointError(
            f"resuming would change the schedule ({listed}; the learning rate at step {step} would go from "
            f"{_lr(ckpt.config, before, step):.3g} to {_lr(cfg, after, step):.3g}): pass --reschedule to continue "
            "with the new schedule (recorded in the checkpoint), or choose another --out"
        )
    log.warning("rescheduled at step %d (--reschedule): %s", step, listed)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    change = {"step": step, "changes": {k: [old, new] for k, (old, new) in changes.items()}, "at": now}
    return RunRecord(data=record.data, fingerprint=record.fingerprint, reschedules=(*past, change))


def schedule_changes(ckpt: Checkpoint, cfg: RunConfig) -> dict[str, tuple[Any, Any]]:
    """The schedule keys whose value differs between the checkpoint's config and `cfg`: {key: (there, here)}."""
    theirs, ours = _flatten(config_to_dict(ckpt.config)), _flatten(config_to_dict(cfg))
    return {k: (theirs.get(k), ours.get(k)) for k in SCHEDULE_KEYS if theirs.get(k) != ours.get(k)}


def _lr(cfg: RunConfig, s: Schedule, step: int) -> float:
    return lr_at(step, peak=s.peak_lr, warmup_steps=s.warmup_steps, total_steps=s.total_steps, min_lr=cfg.optim.min_lr)


def check_compatible(ckpt: Checkpoint, cfg: PretrainConfig | FinetuneConfig, dist: DistInfo) -> None:
    """Refuse to resume a checkpoint without the training state, or whose model, batch layout or seed differ
    from this run's."""
    if not ckpt.resumable:
        raise CheckpointError(f"{ckpt.source} holds no training state (optimizer, RNG, loader position) to resume")
    theirs, ours = _flatten(config_to_dict(ckpt.config)), _flatten(config_to_dict(cfg))
    if not theirs.get("task.classes"):  # written before runs recorded their class names: nothing to compare
        theirs.pop("task.classes", None)
        ours.pop("task.classes", None)
    for key in sorted(set(theirs) | set(ours)):
        if key.startswith(_MUST_MATCH) and theirs.get(key) != ours.get(key):
            raise CheckpointError(
                f"checkpoint is from another config: {key} is {theirs.get(key)!r} there, {ours.get(key)!r} here"
            )
    if ckpt.extra["world_size"] != dist.world:
        raise CheckpointError(f"checkpoint was written by {ckpt.extra['world_size']} ranks; this run has {dist.world}")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat

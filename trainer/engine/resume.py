"""Step-granular checkpoints of a run (written and read by `trainer.engine.loop.Trainer`): what each rank adds, and
the checks before a run continues from one.

Each checkpoint holds the model, optimizer and scaler, the resolved config (a plain dict) and, per rank, the
RNG states and the loader cursors, so a resumed run draws the same masks and reads the same batches (the
payload and its reader: `trainer.engine.checkpoint`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from trainer.config import FinetuneConfig, PretrainConfig, config_to_dict
from trainer.data.loader import Cursor
from trainer.engine.checkpoint import Checkpoint
from trainer.engine.distributed import DistInfo
from trainer.engine.run import fresh_cursors
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


def check_compatible(ckpt: Checkpoint, cfg: PretrainConfig | FinetuneConfig, dist: DistInfo) -> None:
    """Refuse to resume a checkpoint without the training state, or whose model, batch layout or seed differ
    from this run's."""
    if not ckpt.resumable:
        raise CheckpointError(f"{ckpt.source} holds no training state (optimizer, RNG, loader position) to resume")
    theirs, ours = _flatten(config_to_dict(ckpt.config)), _flatten(config_to_dict(cfg))
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

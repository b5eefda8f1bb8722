"""Step-granular checkpoints of a run: what every rank saves, and how a run continues from it.

Each checkpoint holds the model, optimizer and scaler, the resolved config (a plain dict) and, per rank, the
RNG states and the loader cursors, so a resumed run draws the same masks and reads the same batches.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from trainer.checkpoint import save_checkpoint
from trainer.config import PretrainConfig, config_to_dict
from trainer.data import Cursor
from trainer.distributed import DistInfo, gather_objects
from trainer.errors import CheckpointError
from trainer.run import Trainer, TrainState, fresh_cursors

log = logging.getLogger(__name__)


def rank_state(t: Trainer) -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state(t.dist.device) if t.dist.device.type == "cuda" else torch.empty(0)
    cursors = [vars(c).copy() for c in t.state.cursors]
    return {"rng_cpu": torch.get_rng_state(), "rng_cuda": cuda, "cursors": cursors}


def write_checkpoint(t: Trainer) -> None:
    ranks = gather_objects(rank_state(t), t.dist.world)
    if not t.dist.is_main:
        return
    s = t.state
    payload = {
        "format": 1,
        "step": s.step,
        "epoch": s.epoch,
        "micro": s.micro,
        "world_size": t.dist.world,
        "config": config_to_dict(t.cfg),
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scaler": t.scaler.state_dict() if t.scaler else {},
        "ranks": ranks,
        "nonfinite": {"total": s.nonfinite_total, "streak": s.nonfinite_streak},
    }
    save_checkpoint(t.run_dir, s.step, payload, t.cfg.train.keep_last)


def restore(t: Trainer, ckpt: dict[str, Any]) -> None:
    """Continue exactly where the checkpoint left off, or refuse one written by another config."""
    check_compatible(ckpt, t.cfg, t.dist)
    try:
        t.model.load_state_dict(ckpt["model"], strict=True)
        t.optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint does not fit this model: {exc}") from exc
    if t.scaler and ckpt["scaler"]:
        t.scaler.load_state_dict(ckpt["scaler"])
    mine = ckpt["ranks"][t.dist.rank]
    restore_rng(mine, t.dist)
    t.state = TrainState(
        step=ckpt["step"],
        epoch=ckpt["epoch"],
        micro=ckpt["micro"],
        cursors=restored_cursors(mine, t),
        nonfinite_total=ckpt["nonfinite"]["total"],
        nonfinite_streak=ckpt["nonfinite"]["streak"],
    )


def restore_rng(mine: dict[str, Any], dist: DistInfo) -> None:
    torch.set_rng_state(mine["rng_cpu"])
    if dist.device.type == "cuda" and mine["rng_cuda"].numel():
        torch.cuda.set_rng_state(mine["rng_cuda"], dist.device)


def restored_cursors(mine: dict[str, Any], t: Trainer) -> list[Cursor]:
    """This rank's loader cursors; with another worker count the epoch's rest is drawn afresh (logged)."""
    cursors = [Cursor(**c) for c in mine["cursors"]]
    if len(cursors) == len(t.state.cursors):
        return cursors
    log.warning(
        "loader workers changed (%d -> %d): this epoch's remaining batches are drawn afresh, "
        "not in the interrupted run's order",
        len(cursors),
        len(t.state.cursors),
    )
    return fresh_cursors(t.cfg)


_MUST_MATCH = ("model.", "task.", "data.batch_size", "optim.accum_steps", "train.seed")


def check_compatible(ckpt: dict[str, Any], cfg: PretrainConfig, dist: DistInfo) -> None:
    """Refuse to resume a checkpoint whose model, batch layout or seed differ from this run's."""
    theirs, ours = _flatten(ckpt.get("config", {})), _flatten(config_to_dict(cfg))
    for key in sorted(set(theirs) | set(ours)):
        if key.startswith(_MUST_MATCH) and theirs.get(key) != ours.get(key):
            raise CheckpointError(
                f"checkpoint is from another config: {key} is {theirs.get(key)!r} there, {ours.get(key)!r} here"
            )
    if ckpt.get("world_size") != dist.world:
        raise CheckpointError(f"checkpoint was written by {ckpt.get('world_size')} ranks; this run has {dist.world}")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat

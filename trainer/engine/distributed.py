"""Process-group setup under torchrun (env:// rendezvous, any number of nodes) and the collectives used."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from trainer.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(device: str, local_rank: int) -> torch.device:
    """'auto' = this rank's GPU when CUDA is there, else the CPU; 'cuda' means cuda:<LOCAL_RANK>."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r}: {exc}") from exc


def init_distributed(device: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPUs)."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over ranks (in place); identity in a single process."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def nonfinite_anywhere(values: torch.Tensor) -> tuple[bool, torch.Tensor]:
    """Agree across ranks whether any rank saw a non-finite value; returns (flag, sum of finite values).

    One all-reduce of [flag, values...]: every rank gets the same flag, so every rank skips or stops.
    """
    flag = (~torch.isfinite(values)).any().float().reshape(1)
    packed = all_sum(torch.cat([flag, torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)]))
    return bool(packed[0].item() > 0), packed[1:]


def gather_objects(obj: Any, world: int) -> list[Any]:
    """Every rank's `obj` on every rank (small things: RNG states, loader cursors)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()

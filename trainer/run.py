"""The state of one pretraining run: options, schedule, progress counters and the `Trainer` bundle."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from labelers.standards import torch_dtype
from trainer.config import PretrainConfig
from trainer.data import Cursor
from trainer.dataset import DatasetInfo
from trainer.distributed import DistInfo
from trainer.errors import DataError
from trainer.logs import RunLog
from trainer.model import MultiMAE
from trainer.optim import peak_lr


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Where to read and write, and how: the parts of a run that are not the recipe."""

    data: Path
    out: Path
    resume: bool = True
    device: str = "auto"
    allow_defects: bool = False  # train on a dataset that fails its document checks (warned, not refused)


@dataclass(frozen=True, kw_only=True)
class Schedule:
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    global_batch: int

    @classmethod
    def build(cls, cfg: PretrainConfig, total_samples: int, world: int) -> Schedule:
        global_batch = cfg.data.batch_size * world * cfg.optim.accum_steps
        per_epoch = total_samples // global_batch
        if per_epoch < 1:
            raise DataError(f"{total_samples} samples cannot fill one global batch of {global_batch}")
        total = cfg.train.steps or cfg.train.epochs * per_epoch
        warmup = round(cfg.optim.warmup_epochs * per_epoch)
        return cls(
            steps_per_epoch=per_epoch,
            total_steps=total,
            warmup_steps=warmup,
            peak_lr=peak_lr(cfg.optim, global_batch),
            global_batch=global_batch,
        )


@dataclass(kw_only=True)
class TrainState:
    step: int = 0
    epoch: int = 0
    micro: int = 0  # micro-batches done in this epoch
    cursors: list[Cursor] = field(default_factory=list)
    nonfinite_total: int = 0
    nonfinite_streak: int = 0


@dataclass(kw_only=True)
class RunSummary:
    run_dir: Path
    steps: int
    losses: list[float]
    skipped_nonfinite: int
    export: Path | None


@dataclass(kw_only=True)
class Trainer:
    """What the loop needs, built once per run."""

    cfg: PretrainConfig
    dist: DistInfo
    info: DatasetInfo
    schedule: Schedule
    run_dir: Path
    model: MultiMAE
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    state: TrainState
    log: RunLog | None = None
    losses: list[float] = field(default_factory=list)


def precision(cfg: PretrainConfig, dist: DistInfo) -> torch.dtype:
    if cfg.train.precision == "auto":
        return torch.bfloat16 if dist.device.type == "cuda" else torch.float32
    return torch_dtype(cfg.train.precision)


def fresh_cursors(cfg: PretrainConfig) -> list[Cursor]:
    return [Cursor() for _ in range(max(1, cfg.data.workers))]

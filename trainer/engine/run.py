"""The parts of a run besides the loop (`trainer.engine.loop.Trainer`): the `Job` protocol, options, schedule,
progress counters and the summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import nn

from labelers.standards import torch_dtype
from pipeline.format.stores import Location, location
from trainer.config import FinetuneConfig, PretrainConfig, RunConfig
from trainer.data.dataset import DatasetInfo
from trainer.data.loader import Cursor
from trainer.engine.distributed import DistInfo
from trainer.engine.logs import RunLog
from trainer.engine.optim import peak_lr
from trainer.errors import ConfigError, DataError

C = TypeVar("C", PretrainConfig, FinetuneConfig)  # the config type of one kind of run


class RunView(Protocol, Generic[C]):
    """What a job's hooks read of the running loop: the config, the data, the model, the step, the folder and
    the log; never the loop's machinery (optimizer, scaler, wrapped objective). Job state lives on the job."""

    cfg: C
    info: DatasetInfo
    dist: DistInfo
    state: TrainState
    schedule: Schedule
    model: nn.Module
    run_dir: Path
    log: RunLog | None


class Job(Protocol, Generic[C]):
    """What one kind of run (pretrain, finetune, probe) adds to the shared loop (`trainer.engine.loop.run`)."""

    def check(self, info: DatasetInfo, cfg: C) -> C: ...  # the config, resolved against the dataset
    def build_model(self, cfg: C, info: DatasetInfo) -> nn.Module: ...
    def param_groups(self, model: nn.Module, cfg: C) -> list[dict] | None: ...
    def objective(self, model: nn.Module) -> nn.Module: ...
    def task_names(self, model: nn.Module) -> list[str]: ...
    def stream(self, t: RunView[C], plan: Any, rotation: int) -> Any: ...
    def describe(self, t: RunView[C]) -> str: ...
    def on_step(self, t: RunView[C]) -> None: ...
    def finish(self, t: RunView[C]) -> Path | None: ...


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Where to read and write, and how: the parts of a run that are not the recipe."""

    data: Location  # a dataset folder or store prefix (a str or Path is resolved by `location`)
    out: Location  # a run folder or store prefix
    resume: bool = True
    device: str = "auto"
    allow_defects: bool = False  # train on a dataset that fails its document checks (warned, not refused)
    reschedule: bool = False  # resume with another schedule than the checkpoint's (recorded), else refused
    stop_grace_s: float = 20.0  # after SIGTERM / SIGINT: the step and its checkpoint, or exit without (stop.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", location(self.data))
        object.__setattr__(self, "out", location(self.out))


@dataclass(frozen=True, kw_only=True)
class Schedule:
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    global_batch: int
    warmup_note: str = ""  # how the warmup was fitted to the run, when it was

    @classmethod
    def build(cls, cfg: RunConfig, total_samples: int, world: int, *, check_floor: bool = True) -> Schedule:
        """Steps from epochs (or `train.steps`); warmup from `warmup_epochs`. A run cut to `train.steps` keeps the
        recipe's warmup fraction (warmup_epochs / epochs), and no warmup is ever longer than the run. A `min_lr`
        above the peak is refused (`check_floor`; off for a checkpoint's own schedule, which has already run)."""
        global_batch = cfg.data.batch_size * world * cfg.optim.accum_steps
        per_epoch = total_samples // global_batch
        if per_epoch < 1:
            raise DataError(f"{total_samples} samples cannot fill one global batch of {global_batch}")
        total = cfg.train.steps or cfg.train.epochs * per_epoch
        warmup, note = round(cfg.optim.warmup_epochs * per_epoch), ""
        if cfg.train.steps and cfg.train.epochs and total != cfg.train.epochs * per_epoch:
            fraction = cfg.optim.warmup_epochs / cfg.train.epochs
            warmup = round(fraction * total)
            recipe = f"{cfg.optim.warmup_epochs:g} of {cfg.train.epochs} epochs"
            note = f"scaled to {fraction:.1%} of the {total} steps, as in the recipe ({recipe})"
        if warmup >= total:
            warmup, note = (
                max(0, total - 1),
                f"cut to {max(0, total - 1)} steps: the recipe's warmup is longer than the run",
            )
        peak = peak_lr(cfg.optim, global_batch)
        if check_floor and cfg.optim.min_lr > peak * (1 + 1e-9):  # the cosine would climb (beyond float rounding)
            raise ConfigError(
                f"optim.min_lr {cfg.optim.min_lr:g} is above this run's peak lr {peak:.4g} (base_lr "
                f"{cfg.optim.base_lr:g} x global batch {global_batch} / 256); min_lr is absolute: set it <= {peak:.4g}"
            )
        return cls(
            steps_per_epoch=per_epoch,
            total_steps=total,
            warmup_steps=warmup,
            peak_lr=peak,
            global_batch=global_batch,
            warmup_note=note,
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
    seconds: float = 0.0
    samples_per_s: float = 0.0
    task_losses: dict[str, list[float]] = field(default_factory=dict)  # per task, the steps of this run
    checkpoint: Path | None = None
    verb: str = "pretrained"
    export_label: str = "timm export"
    published: str = ""  # the store prefix the run folder was published to (run_dir is then a local stage)

    def text(self) -> str:
        """The end of a run, for a person: steps, time, speed, losses per task, where things are."""
        lines = [
            f"{self.verb} {self.steps} steps in {self.seconds:.1f} s ({self.samples_per_s:.1f} samples/s); "
            f"{self.skipped_nonfinite} skipped as non-finite"
        ]
        for name, values in self.task_losses.items():
            if values:
                lines.append(f"  loss {name}: {_losses_text(values)}")
        if self.losses:
            lines.append(f"  loss total: {_losses_text(self.losses)}")
        lines.append(f"  run folder {self.run_dir}; checkpoint {self.checkpoint}; {self.export_label} {self.export}")
        if self.published:
            lines.append(f"  published to {self.published} (the run folder above is this machine's stage of it)")
        return "\n".join(lines)


def _losses_text(values: list[float]) -> str:
    """Last value and mean over the finite ones (a non-finite step's loss is NaN here, never a 0.0 in the mean)."""
    finite = [v for v in values if math.isfinite(v)]
    mean = f"mean {sum(finite) / len(finite):.4f} over {len(finite)} steps" if finite else "no finite step"
    left_out = len(values) - len(finite)
    return f"last {values[-1]:.4f}, {mean}" + (f" ({left_out} non-finite left out)" if left_out else "")


def precision(cfg: RunConfig, dist: DistInfo) -> torch.dtype:
    if cfg.train.precision == "auto":
        return torch.bfloat16 if dist.device.type == "cuda" else torch.float32
    return torch_dtype(cfg.train.precision)


def fresh_cursors(cfg: RunConfig) -> list[Cursor]:
    return [Cursor() for _ in range(max(1, cfg.data.workers))]

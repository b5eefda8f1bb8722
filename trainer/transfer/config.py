"""Typed configs of fine-tuning and linear probing: the encoder shape (`ModelConfig`, its pretraining-only
fields unused), the task with its head and loss, and the loader, optimiser and loop parts shared with
pretraining. Loaded from TOML by the one loader (`pipeline.format.schema`), every problem listed at once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.format.schema import ConfigError, load, read_toml, setting, validate
from trainer.config import DataConfig, ModelConfig, OptimConfig, TrainConfig

TASK_TARGETS = {"cls": "cls", "semseg": "semseg", "depth": "depth"}  # task -> the sample member it learns


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """What is learnt and how: the head (as the official fine-tuning adapters), its loss and its lr decay."""

    name: str = setting("cls", choices=tuple(TASK_TARGETS))
    num_classes: int = setting(0, ge=0, le=255)  # 0: from the dataset's manifest (or the .cls class folders)
    main_input: str = "rgb"  # dense heads read this input's tokens (RGB-D semseg: rgb, as the paper)
    probe: bool = False  # linear probe: frozen encoder, BatchNorm (no affine) + Linear on mean-pooled tokens
    layer_decay: float = setting(0.75, gt=0, le=1)
    drop_path: float = setting(0.1, ge=0, lt=1)
    label_smoothing: float = setting(0.1, ge=0, lt=1)
    mixup: float = setting(0.0, ge=0)  # Beta(alpha, alpha) of timm's Mixup; 0 = off
    cutmix: float = setting(0.0, ge=0)
    ignore_id: int = setting(255, ge=0, le=255)
    head_embed_dim: int = setting(6144, ge=16)  # ConvNeXt head: preds_per_patch x channels
    preds_per_patch: int = setting(16, ge=1)
    head_depth: int = setting(4, ge=0)
    hooks: tuple[int, ...] = (2, 5, 8, 11)  # DPT head: encoder blocks whose outputs it reads
    layer_dims: tuple[int, ...] = (96, 192, 384, 768)
    features: int = setting(256, ge=2)
    depth_scale: float = setting(1.0, gt=0)  # depth target = decoded value x depth_scale (0.001: mm -> m)
    eval_every: int = setting(0, ge=0)  # evaluate on --val every N steps (0: at the end only)

    @property
    def target(self) -> str:
        return TASK_TARGETS[self.name]

    def problems(self) -> list[str]:
        found = []
        if self.name == "depth" and (len(self.hooks) != 4 or len(self.layer_dims) != 4):
            found.append("the depth head takes 4 hooks and 4 layer_dims")
        if self.probe and self.name != "cls":
            found.append("probe = true is a linear classification probe: task name must be cls")
        return found


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(inputs=("rgb",), outputs=()))
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(figure_every=0))

    def problems(self) -> list[str]:
        found = []
        if self.task.name in ("semseg", "depth") and self.task.main_input not in self.model.inputs:
            found.append(
                f"task.main_input {self.task.main_input!r} is not one of model.inputs {list(self.model.inputs)}"
            )
        bad = [h for h in self.task.hooks if not 0 <= h < self.model.depth]
        if self.task.name == "depth" and bad:
            found.append(f"task.hooks {bad} are not blocks of a {self.model.depth}-block encoder")
        if self.data.augment_on == "device":
            found.append('data.augment_on = "device" is pretraining\'s; fine-tuning resamples in the workers ("auto")')
        return found


def load_finetune_config(path: Path | None, **overrides: Any) -> FinetuneConfig:
    """A fine-tuning recipe (TOML) with command-line overrides (None keeps the file's value)."""
    cfg = FinetuneConfig()
    if path is not None:
        try:
            cfg = load(FinetuneConfig, read_toml(path, "fine-tuning config"))
        except ConfigError as err:
            raise ConfigError(err.problems, f"fine-tuning config {path}") from None
    return apply_finetune_overrides(cfg, **overrides)


_SECTIONS = {
    "steps": "train",
    "epochs": "train",
    "batch_size": "data",
    "workers": "data",
    "tensorboard": "train",
    "wandb": "train",
    "task": "task",
    "inputs": "model",
    "probe": "task",
}
_RENAMED = {"task": "name"}


def apply_finetune_overrides(cfg: FinetuneConfig, **overrides: Any) -> FinetuneConfig:
    for key, value in overrides.items():
        if key not in _SECTIONS:
            raise ConfigError(f"unknown override {key!r}")
        if value is None:
            continue
        part = getattr(cfg, _SECTIONS[key])
        cfg = dataclasses.replace(cfg, **{_SECTIONS[key]: dataclasses.replace(part, **{_RENAMED.get(key, key): value})})
    validate(cfg, "options")
    return cfg

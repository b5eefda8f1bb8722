"""Fine-tuning and linear-probing recipes: `load_finetune_config` reads one from TOML by the one loader
(`pipeline.format.schema`, every problem listed at once) and applies the command line's overrides.

The types (`FinetuneConfig`, `TaskConfig`) live with the pretraining config in `trainer.config`, where every
wing reads them (a checkpoint's config is one of the two: `trainer.engine.checkpoint`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipeline.format.schema import ConfigError, load, read_toml, validate
from trainer.config import FinetuneConfig, TaskConfig

__all__ = ["FinetuneConfig", "TaskConfig", "apply_finetune_overrides", "load_finetune_config"]


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

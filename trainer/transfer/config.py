"""Fine-tuning and linear-probing recipes: `load_finetune_config` reads one (a TOML file or a shipped name) with
option values by name, through the one loader of every run kind (`trainer.config.load_run_config`).

The types (`FinetuneConfig`, `TaskConfig`) live with the pretraining config in `trainer.config`, where every
wing reads them (a checkpoint's config is one of the two: `trainer.engine.checkpoint`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.config import FinetuneConfig, TaskConfig, load_run_config
from trainer.options import config_overrides

__all__ = ["FinetuneConfig", "TaskConfig", "load_finetune_config"]


def load_finetune_config(path: str | Path | None, **options: Any) -> FinetuneConfig:
    """A fine-tuning recipe with option values by name (`steps=3`, `inputs="rgb,depth"`; None keeps the file's)."""
    return load_run_config("finetune", path, config_overrides(options))

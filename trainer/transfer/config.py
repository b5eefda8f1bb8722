"""Fine-tuning and linear-probing recipes: `load_finetune_config` reads one (a TOML file or a shipped name) with
option values by name, through the one loader of every run kind (`trainer.config.load_run_config`).

Without a recipe, a run reads its task's own (`task_recipe`: the registry entry's `recipe`, or `probe_recipe` for
a probe: `finetune --task semseg` reads `finetune-ade20k-semseg`), never the config types' defaults (the
pretraining shape and length); a task that names none asks for `--config`.

The types (`FinetuneConfig`, `TaskConfig`) live with the pretraining config in `trainer.config`, where every
wing reads them (a checkpoint's config is one of the two: `trainer.engine.checkpoint`)."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.config import RUN_KINDS, FinetuneConfig, TaskConfig, load_run_config, task_rules
from trainer.errors import ConfigError
from trainer.options import config_overrides

__all__ = ["FinetuneConfig", "TaskConfig", "load_finetune_config", "task_recipe"]


def task_recipe(kind: str, task: str | None, sets: Sequence[str] = ()) -> str | None:
    """The recipe a `kind` run (finetune, probe) reads without `--config`: its task's (the kind's task, else
    `task`, else a `--set task.name=...` of `sets`, else the config's default task); None for an unknown task
    (the loader then names the known ones); a ConfigError when the task ships none."""
    fixed = RUN_KINDS[kind].fixed
    name = fixed.get("task.name", task or _set_task(sets) or TaskConfig().name)
    spec = task_rules().get(name)
    if spec is None:
        return None
    probe = bool(fixed.get("task.probe"))
    recipe = spec.probe_recipe if probe else spec.recipe
    if recipe is None:
        what = f"a linear probe of the {name} task" if probe else f"the {name} task"
        raise ConfigError(
            f"{kind} without --config: {what} ships no recipe; pass --config NAME|PATH (mmforge list configs)"
        )
    return recipe


def _set_task(sets: Sequence[str]) -> str | None:
    """The last `task.name=VALUE` of `--set` items (a TOML string, or a bare word)."""
    found = None
    for item in sets:
        key, sep, value = item.partition("=")
        if sep and key.strip() == "task.name":
            try:
                found = str(tomllib.loads(f"v = {value.strip()}")["v"])
            except (tomllib.TOMLDecodeError, RecursionError):
                found = value.strip()
    return found


def load_finetune_config(path: str | Path | None, **options: Any) -> FinetuneConfig:
    """A fine-tuning recipe with option values by name (`steps=3`, `inputs="rgb,depth"`; None keeps the file's);
    without `path`, the task's own recipe (`task_recipe`)."""
    source = path if path is not None else task_recipe("finetune", options.get("task"))
    return load_run_config("finetune", source, config_overrides(options))

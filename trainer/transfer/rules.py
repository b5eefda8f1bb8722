"""What the settings checks read of each transfer task and evaluation protocol, without the registries.

`trainer.transfer.tasks` and `protocols` hold torch code (heads, losses, resampling), so importing them takes
over a second; a fine-tuning config is checked before that (`trainer.config.task_rules`) against the built-in
entries here, unless a plugin extends the task registry (its entry-point group, `GROUP`) or the registry is
already imported. The tasks' own rules on their settings live here and the registry's entries name them;
`tests/test_settings_bounds.py` pins the rest (names, flags, protocol names) to the registries.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GROUP = "multimae_forge.transfer_tasks"  # the entry-point group of transfer-task plugins
REGISTRY = "trainer.transfer.tasks"
EVAL_PROTOCOL_NAMES = ("center", "pad", "slide", "ade20k", "nyuv2-semseg", "nyuv2-depth", "imagenet")


def no_problems(task: Any) -> list[str]:
    return []


def convnext_problems(t: Any) -> list[str]:
    side = math.isqrt(t.preds_per_patch)
    if side * side == t.preds_per_patch and t.head_embed_dim % t.preds_per_patch == 0:
        return []
    return [
        f"preds_per_patch {t.preds_per_patch} must be a square (4 x 4 = 16) dividing head_embed_dim {t.head_embed_dim}"
    ]


def dpt_problems(t: Any) -> list[str]:
    found = [] if len(t.hooks) == 4 and len(t.layer_dims) == 4 else ["the depth head takes 4 hooks and 4 layer_dims"]
    if not all(1 <= d <= 8192 for d in t.layer_dims):
        found.append(f"layer_dims must be 1..8192 channels, got {list(t.layer_dims)}")
    return found


@dataclass(frozen=True, kw_only=True)
class TaskRules:
    """What a settings check reads of a transfer task (`TransferTask`'s fields of the same names; `probe`: it
    has a linear probe; recipe, probe_recipe: the run configs `finetune` and `probe` read without --config)."""

    config_problems: Callable[[Any], list[str]]
    reads_main_input: bool
    hooked: bool
    probe: bool
    recipe: str | None
    probe_recipe: str | None = None


BUILT_IN: dict[str, TaskRules] = {
    "cls": TaskRules(
        config_problems=no_problems, reads_main_input=False, hooked=False, probe=True, recipe="finetune-in1k-cls"
    ),
    "semseg": TaskRules(
        config_problems=convnext_problems,
        reads_main_input=True,
        hooked=False,
        probe=True,
        recipe="finetune-ade20k-semseg",
    ),
    "depth": TaskRules(
        config_problems=dpt_problems, reads_main_input=True, hooked=True, probe=True, recipe="finetune-nyuv2-depth"
    ),
}

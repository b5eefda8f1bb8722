"""The trainer's `edges` modality (a patch input like depth's) and its `edges` output task (masked L1)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from trainer.model import losses
from trainer.model.modalities import Modality, Task, patch_input, register_modality, register_task


def to_tensor(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(a, copy=True)).unsqueeze(0).float() / 255.0  # (1, H, W) in [0, 1]


def finish(x: Tensor) -> Tensor:
    return (x - 0.5) / 0.5


register_modality(
    Modality(
        name="edges",
        codec="edges",
        channels=1,
        stride=1,
        interpolation="bilinear",
        to_tensor=to_tensor,
        finish=finish,
        build_input=patch_input,
    )
)
register_task(Task(name="edges", source="edges", loss=losses.masked_l1))

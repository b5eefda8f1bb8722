"""The `edges` transfer task: per-pixel edge strength regressed from the main input's tokens.

A fine-tuning task added from outside multimae-forge (entry point `multimae_forge.transfer_tasks`): its target
is the plugin's own member (`edges.png`, the `edges` modality), its head a Linear from each patch token to the
patch's values, its loss L1, its metrics MAE and RMSE over every pixel (lower is better).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.model.modalities import MODALITIES
from trainer.transfer.tasks import (
    FinetuneShape,
    Metrics,
    TargetSample,
    TaskSettings,
    TransferTask,
    first_channel,
    main_tokens,
    register_transfer_task,
)


class EdgeHead(nn.Module):
    """patch tokens (B, nh*nw, D) of the main input -> edge strength (B, 1, H, W)."""

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(dim, patch * patch)

    def forward(self, tokens: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
        b, (nh, nw), p = tokens.shape[0], grid, self.patch
        x = self.proj(tokens).reshape(b, nh, nw, p, p).permute(0, 1, 3, 2, 4).reshape(b, 1, nh * p, nw * p)
        return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="bilinear")


class EdgeMetrics:
    """Mean absolute and root-mean-square error of the edge strength over every pixel of the split."""

    def __init__(self) -> None:
        self.n, self.abs, self.sq = 0, 0.0, 0.0

    def update(self, pred: Tensor, target: Tensor) -> None:
        err = pred.double() - target.double()
        self.abs += float(err.abs().sum())
        self.sq += float((err**2).sum())
        self.n += int(err.numel())

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"mae": self.abs / n, "rmse": (self.sq / n) ** 0.5, "pixels": float(self.n)}


def edge_target(s: TargetSample) -> Tensor:
    strength = torch.from_numpy(np.asarray(s.value, dtype=np.float32) / 255.0).unsqueeze(0)  # png / 255
    return s.place(strength, "bilinear", 0.0)[0]  # where the inputs are (an evaluation protocol's too), in [0, 1]


def edge_head(cfg: FinetuneShape, classes: int) -> nn.Module:
    return EdgeHead(cfg.model.dim, cfg.model.patch_size // MODALITIES[cfg.task.main_input].stride)


def l1(out: Tensor, target: Tensor, t: TaskSettings, training: bool) -> Tensor:
    return F.l1_loss(out[:, 0], target)


def edge_metrics(classes: int, t: TaskSettings) -> Metrics:
    return EdgeMetrics()


register_transfer_task(
    TransferTask(
        name="edges",
        target="edges",
        codec="edges",
        prepare_target=edge_target,
        head=edge_head,
        readout=main_tokens,
        reads_main_input=True,
        loss=l1,
        predict=first_channel,
        metrics=edge_metrics,
        main_metric="mae",
        higher_is_better=False,
    )
)

"""AdamW with the recipe's parameter groups, and the per-step warmup-cosine learning rate."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainer.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights; no decay for biases, norms (ndim <= 1), tokens and embeddings."""
    skip: set[str] = getattr(model, "no_weight_decay_names", set)()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, fused: bool = False) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas, fused=fused or None)


def peak_lr(cfg: OptimConfig, global_batch: int) -> float:
    """lr = base_lr x global batch / 256 (global batch = per-rank batch x ranks x accumulation)."""
    return cfg.base_lr * global_batch / 256


def lr_at(step: int, *, peak: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 over `warmup_steps`, then half-cosine from `peak` to `min_lr` at `total_steps`."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

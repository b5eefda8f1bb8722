"""AdamW with the recipe's parameter groups, and the per-step warmup-cosine learning rate."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainer.config import OptimConfig


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameters without weight decay besides biases and norms: the global tokens and what each module
    lists in its `no_weight_decay` (position and class embeddings, mask tokens, task embeddings)."""
    names = {"global_tokens"}
    for prefix, module in model.named_modules():
        for suffix in getattr(module, "no_weight_decay", ()):
            names.update(f"{prefix}.{n}" for n, _ in module.named_parameters() if n.startswith(suffix))
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights; no decay for biases, norms (ndim <= 1), tokens and embeddings."""
    skip = no_weight_decay_names(model)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def layer_id(name: str, num_layers: int) -> int:
    """Layer of a parameter for layer-wise lr decay: input adapters and global tokens 0, encoder block i
    i + 1, everything after the encoder (heads) num_layers + 1."""
    if name.startswith(("input_adapters.", "global_tokens")):
        return 0
    if name.startswith("encoder."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def layer_decay_groups(model: nn.Module, weight_decay: float, decay: float, num_layers: int) -> list[dict]:
    """One group per (layer, decay or not); each with `lr_scale` = decay ** (num_layers + 1 - layer)."""
    skip = no_weight_decay_names(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid, no_wd = layer_id(name, num_layers), p.ndim <= 1 or name in skip
        group = groups.setdefault(
            (lid, no_wd),
            {"params": [], "weight_decay": 0.0 if no_wd else weight_decay, "lr_scale": decay ** (num_layers + 1 - lid)},
        )
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, *, fused: bool = False, groups: list[dict] | None = None
) -> torch.optim.AdamW:
    groups = groups if groups is not None else param_groups(model, cfg.weight_decay)
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
    """The step's lr in every group, times the group's `lr_scale` (layer decay) where it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)

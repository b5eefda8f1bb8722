"""Multi-modal token masking: Dirichlet budgets over input modalities, then a random fill/trim to exactly V.

Masks are (B, N_modality) long tensors, 1 = masked (hidden from the encoder), 0 = visible, the convention of
the official release. Randomness comes from torch's global generators (saved in checkpoints), or from a
generator passed to `random_mask` (`reconstruct --score --keep`: the same positions for the same `--seed`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.distributions import Dirichlet


def sample_budgets(batch: int, modalities: int, num_visible: int, alpha: float) -> Tensor:
    """(B, M) visible tokens per modality: round(p * V) with p ~ Dirichlet(alpha, ..., alpha) per sample."""
    p = Dirichlet(torch.full((modalities,), float(alpha))).sample((batch,))  # (B, M), rows sum to 1
    return (p * num_visible).round().long()


def random_mask(
    batch: int, tokens: int, budget: Tensor, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """(B, N) mask with `budget[b]` visible tokens at random positions of sample b (drawn from `generator`, one
    on `device`, or the global one)."""
    draw = torch.rand(batch, tokens, device=device, generator=generator)
    rank = draw.argsort(dim=1).argsort(dim=1)  # random permutation
    return (rank >= budget.to(device).unsqueeze(1)).long()


def masked_pixels(mask: Tensor, size: int) -> Tensor:
    """(B, g*g) token mask, 1 = masked -> (B, size, size) bool, True on the pixels of masked tokens."""
    b, n = mask.shape
    g = math.isqrt(n)
    grid = mask.reshape(b, g, g).bool()
    return grid.repeat_interleave(size // g, dim=1).repeat_interleave(size // g, dim=2)


def fill_or_trim(mask_all: Tensor, num_visible: int) -> Tensor:
    """Make exactly V tokens visible per sample: visible tokens first in random order, then masked ones.

    When the rounded budgets sum to less than V, random masked tokens (of any modality) are revealed; when
    they sum to more, random visible ones are hidden.
    """
    order = (mask_all + torch.rand(mask_all.shape, device=mask_all.device)).argsort(dim=1)  # (B, N_all)
    fixed = torch.ones_like(mask_all)
    fixed.scatter_(1, order[:, :num_visible], 0)
    return fixed


@torch.compiler.disable  # eager under torch.compile: the CPU Dirichlet draw, and the same masks as eager runs
def draw_masks(
    counts: Mapping[str, int], batch: int, num_visible: int, alpha: float, device: torch.device
) -> dict[str, Tensor]:
    """Per-modality masks with Dirichlet budgets; together exactly `num_visible` visible tokens per sample."""
    budgets = sample_budgets(batch, len(counts), num_visible, alpha)
    parts = [random_mask(batch, n, budgets[:, i], device) for i, n in enumerate(counts.values())]
    fixed = fill_or_trim(torch.cat(parts, dim=1), num_visible)
    return dict(zip(counts, fixed.split(list(counts.values()), dim=1), strict=True))


def keep_and_restore(
    masks: Mapping[str, Tensor], order: Sequence[str], num_visible: int | None = None
) -> tuple[Tensor, Tensor]:
    """ids_keep (B, V): visible token positions in token order; ids_restore (B, N_all) inverts the sort.

    Every sample must have the same number V of visible tokens (the encoder sees a dense (B, V) batch);
    pass V when it is known (drawn masks) to skip the check and keep the graph free of data-dependent sizes.
    """
    mask_all = torch.cat([masks[name] for name in order], dim=1)  # (B, N_all)
    if num_visible is None:
        visible = (mask_all == 0).sum(dim=1)
        if (visible != visible[0]).any():
            raise ValueError(f"masks must leave the same number of visible tokens per sample, got {visible.tolist()}")
        num_visible = int(visible[0])
    ids_shuffle = mask_all.argsort(dim=1, stable=True)  # visible first, each group in token order
    return ids_shuffle[:, :num_visible], ids_shuffle.argsort(dim=1)

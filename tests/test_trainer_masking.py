"""Dirichlet token budgets: exactly 98 visible tokens of 588, Dirichlet(1,1,1) proportions, zero budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.model.masking import draw_masks, fill_or_trim, keep_and_restore, sample_budgets

COUNTS = {"rgb": 196, "depth": 196, "semseg": 196}


def visible_per_modality(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([(m == 0).sum(1) for m in masks.values()], dim=1)  # (B, M)


def test_budgets_sum_to_98_of_588() -> None:
    torch.manual_seed(0)
    masks = draw_masks(COUNTS, 512, 98, 1.0, torch.device("cpu"))
    assert sum(m.shape[1] for m in masks.values()) == 588
    assert visible_per_modality(masks).sum(1).eq(98).all()
    assert all(set(m.unique().tolist()) <= {0, 1} for m in masks.values())


@pytest.mark.slow
def test_budgets_follow_dirichlet_one_one_one() -> None:
    """Each share p_i of Dirichlet(1,1,1) is Beta(1, 2): mean 1/3, var 1/18, CDF 1 - (1 - x)^2."""
    torch.manual_seed(1234)
    shares = visible_per_modality(draw_masks(COUNTS, 20000, 98, 1.0, torch.device("cpu"))).double() / 98
    assert torch.allclose(shares.mean(0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01)
    assert torch.allclose(shares.var(0), torch.full((3,), 1 / 18, dtype=torch.float64), atol=0.004)
    for i in range(3):
        x = np.sort(shares[:, i].numpy())
        empirical = np.arange(1, x.size + 1) / x.size
        ks = np.max(np.abs(empirical - (1 - (1 - x) ** 2)))
        assert ks < 0.02, ks  # rounding to 1/98 steps moves the CDF by < 0.02
    corr = np.corrcoef(shares.numpy().T)[0, 1]
    assert abs(corr - (-0.5)) < 0.03  # Dirichlet(1,1,1): corr(p_i, p_j) = -1/2


@pytest.mark.slow
def test_a_modality_may_get_zero_tokens() -> None:
    torch.manual_seed(5)
    budgets = sample_budgets(20000, 3, 98, 1.0)
    zero_rate = float((budgets == 0).any(1).double().mean())
    assert 0.02 < zero_rate < 0.05  # P(round(98 p_i) = 0) ~ 3 x 0.0102
    final = visible_per_modality(draw_masks(COUNTS, 20000, 98, 1.0, torch.device("cpu")))
    assert (final == 0).any(1).sum() > 100


def test_fill_and_trim_fix_the_rounding() -> None:
    torch.manual_seed(0)
    short = torch.ones(4, 30, dtype=torch.long)
    short[:, :5] = 0  # 5 visible, 8 wanted: 3 masked tokens revealed
    assert (fill_or_trim(short, 8) == 0).sum(1).eq(8).all()
    long = torch.zeros(4, 30, dtype=torch.long)
    long[:, 20:] = 1  # 20 visible, 8 wanted: 12 hidden, all from the visible ones
    fixed = fill_or_trim(long, 8)
    assert (fixed == 0).sum(1).eq(8).all() and fixed[:, 20:].eq(1).all()


def test_keep_and_restore_roundtrip() -> None:
    torch.manual_seed(0)
    masks = draw_masks({"a": 6, "b": 6}, 3, 4, 1.0, torch.device("cpu"))
    ids_keep, ids_restore = keep_and_restore(masks, ["a", "b"])
    mask_all = torch.cat([masks["a"], masks["b"]], 1)
    assert torch.gather(mask_all, 1, ids_keep).eq(0).all()
    tokens = torch.arange(12).expand(3, 12).contiguous()
    shuffled = torch.gather(tokens, 1, mask_all.argsort(dim=1, stable=True))
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), tokens)

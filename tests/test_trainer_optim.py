"""The recipe's optimiser: lr scaling with the global batch, warmup then cosine, betas, decay groups."""

import math
from pathlib import Path

import pytest
import torch

from trainer.config import load_config
from trainer.engine.optim import build_optimizer, lr_at
from trainer.engine.run import Schedule
from trainer.errors import ConfigError
from trainer.model.multimae import MultiMAE

CONFIGS = Path(__file__).resolve().parents[1] / "trainer" / "configs"


def test_vit_b_recipe_schedule_on_8_ranks():
    cfg = load_config(CONFIGS / "multimae-b-1600e.toml")
    schedule = Schedule.build(cfg, total_samples=1_281_167, world=8)
    assert schedule.global_batch == 2048 and schedule.peak_lr == pytest.approx(8e-4)  # 1e-4 x 2048 / 256
    assert schedule.steps_per_epoch == 1_281_167 // 2048
    assert schedule.warmup_steps == 40 * schedule.steps_per_epoch
    assert schedule.total_steps == 1600 * schedule.steps_per_epoch


def test_accumulation_counts_in_the_global_batch():
    cfg = load_config(CONFIGS / "smoke.toml")
    one = Schedule.build(cfg, total_samples=10_000, world=2)
    cfg2 = type(cfg)(**{**cfg.__dict__, "optim": type(cfg.optim)(**{**cfg.optim.__dict__, "accum_steps": 4})})
    four = Schedule.build(cfg2, total_samples=10_000, world=2)
    assert four.global_batch == 4 * one.global_batch and four.peak_lr == pytest.approx(4 * one.peak_lr)


def test_a_min_lr_above_the_runs_peak_is_refused_where_the_batch_is_known():
    """min_lr is absolute and the peak scales with the global batch: 1e-3 is under the peak of 1e-4 per 256 at
    batch 4096 (1.6e-3) and above it at batch 64 (2.5e-5), where the cosine would climb instead of decaying."""
    cfg = load_config(CONFIGS / "smoke.toml")
    optim = type(cfg.optim)(**{**cfg.optim.__dict__, "base_lr": 1e-4, "min_lr": 1e-3})

    def batch(n: int):
        data = type(cfg.data)(**{**cfg.data.__dict__, "batch_size": n})
        return type(cfg)(**{**cfg.__dict__, "optim": optim, "data": data})

    big, small = batch(512), batch(64)
    assert Schedule.build(big, total_samples=100_000, world=8).peak_lr == pytest.approx(1.6e-3)
    with pytest.raises(ConfigError, match=r"optim.min_lr 0.001 is above this run's peak lr 2.5e-05 \(base_lr 0.0001 x"):
        Schedule.build(small, total_samples=100_000, world=1)
    # a floor written as the peak's decimal is the peak, whatever the float rounding of base_lr x 48 / 256
    held = type(optim)(**{**optim.__dict__, "base_lr": 0.00112, "min_lr": 0.00021})
    odd = type(cfg)(
        **{**cfg.__dict__, "optim": held, "data": type(cfg.data)(**{**cfg.data.__dict__, "batch_size": 16})}
    )
    assert Schedule.build(odd, total_samples=100_000, world=3).peak_lr == pytest.approx(0.00021)


def test_warmup_then_cosine_to_min():
    peak, warm, total = 8e-4, 10, 110
    assert lr_at(0, peak=peak, warmup_steps=warm, total_steps=total) == 0.0
    assert lr_at(5, peak=peak, warmup_steps=warm, total_steps=total) == pytest.approx(peak / 2)
    assert lr_at(warm, peak=peak, warmup_steps=warm, total_steps=total) == pytest.approx(peak)
    mid = lr_at(60, peak=peak, warmup_steps=warm, total_steps=total)
    assert mid == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(total, peak=peak, warmup_steps=warm, total_steps=total) == pytest.approx(0.0, abs=1e-12)


def test_betas_and_decay_groups():
    cfg = load_config(CONFIGS / "smoke.toml")
    model = MultiMAE(cfg.model)
    opt = build_optimizer(model, cfg.optim)
    decay, no_decay = opt.param_groups
    assert decay["betas"] == (0.9, 0.95) and decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert "global_tokens" in skipped
    assert any(n.endswith("mask_token") for n in skipped) and any(".task_embeddings." in n for n in skipped)
    assert any(n.endswith("class_emb.weight") for n in skipped)  # the semseg class embedding
    assert all(p.ndim > 1 for p in decay["params"])
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    assert norms and not any(id(p) in norms or names[id(p)].endswith(".bias") for p in decay["params"])

"""On a CUDA machine: smoke pretraining in bf16 autocast with fused AdamW, then an exact resume."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.synth.rectangles import write_dataset
from trainer.train import RunOptions, build_config, pretrain

SMOKE = Path(__file__).resolve().parents[1] / "trainer" / "configs" / "smoke.toml"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bf16_smoke_run_on_cuda_and_resume(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", [13, 9, 11, 7])
    cfg = build_config(SMOKE, steps=12)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False, checkpoint_every=6))
    full = pretrain(cfg, RunOptions(data=data, out=tmp_path / "full", device="cuda"))
    assert full.skipped_nonfinite == 0 and all(torch.isfinite(torch.tensor(full.losses)))
    ckpt = torch.load(tmp_path / "full" / "checkpoint-last.pt", weights_only=True)
    assert ckpt["config"]["train"]["precision"] == "auto" and ckpt["ranks"][0]["rng_cuda"].numel() > 0
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    (tmp_path / "resumed" / "checkpoint-12.pt").unlink()
    shutil.copyfile(tmp_path / "resumed" / "checkpoint-6.pt", tmp_path / "resumed" / "checkpoint-last.pt")
    resumed = pretrain(cfg, RunOptions(data=data, out=tmp_path / "resumed", device="cuda"))
    assert resumed.losses == pytest.approx(full.losses[6:], rel=2e-2)  # GPU kernels are not bitwise stable

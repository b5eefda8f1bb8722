"""Smoke pretraining on the demo shards written by the real builder lowers the loss, then resumes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli.app import app
from trainer.train import RunOptions, build_config, pretrain

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "manifests" / "demo.toml"
SMOKE = ROOT / "trainer" / "configs" / "smoke.toml"


@pytest.mark.slow
def test_smoke_pretraining_on_demo_shards(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["build-dataset", str(ROOT / "examples" / "images"), str(out), "--recipe", str(DEMO)]
    built = CliRunner().invoke(app, [*args, "--executor", "local", "--quiet"])
    assert built.exit_code == 0, built.output
    torch.set_num_threads(1)
    cfg = build_config(SMOKE, steps=40)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False, checkpoint_every=20))
    summary = pretrain(cfg, RunOptions(data=out, out=tmp_path / "run", device="cpu"))
    first, last = sum(summary.losses[:8]) / 8, sum(summary.losses[-8:]) / 8
    assert summary.skipped_nonfinite == 0 and last < first - 1.0, summary.losses
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=44))
    resumed = pretrain(longer, RunOptions(data=out, out=tmp_path / "run", device="cpu", reschedule=True))
    assert resumed.steps == 44 and len(resumed.losses) == 4

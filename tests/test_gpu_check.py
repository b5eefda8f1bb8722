"""benchmarks/gpu_check.py runs every stage on the CPU (--dry-run, tiny sizes), so the GPU script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_prints_every_figure(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MMFORGE_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--workdir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert not [line for line in lines if "error" in line], lines
    checks = [line["check"] for line in lines]
    assert checks == ["labeler"] * 3 + ["imagenet_estimate", "builder", "trainer", "loader", "loader", "total"]
    labelers = {line["modality"]: line for line in lines if line["check"] == "labeler"}
    assert set(labelers) == {"depth", "normal", "semseg"} and all(v["img_s"] > 0 for v in labelers.values())
    estimate, builder, trainer, *loaders = lines[3:8]
    assert estimate["devices"] == 8 and estimate["hours"] > 0
    assert builder["images"] == 8 and builder["efficiency"] > 0 and builder["labelers_alone_img_s"] > 0
    assert trainer["train_samples_per_s"] > 0 and trainer["compile"] is False
    assert [loader["augment_on"] for loader in loaders] == ["worker", "device"]
    for loader in loaders:
        assert loader["workers"] == 2 and loader["samples_per_s"] > 0 and loader["headroom"] > 0
    assert lines[-1]["dry_run"] is True and lines[-1]["failed"] is False

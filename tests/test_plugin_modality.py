"""A whole modality from outside the package: tests/plugin_example (codec, labeler, trainer modality, all
found through entry points) goes build -> verify --deep -> pretrain -> resume, in fresh processes.

The plugin is made visible the way an installed package is: its folder, holding the package and its
`.dist-info` (METADATA, entry_points.txt), is on the processes' path; nothing is imported by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = Path(__file__).parent / "plugin_example"


def mmforge(*args: str, plugin: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    paths = [str(PLUGIN)] if plugin else []
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    command = [sys.executable, "-c", "from pipeline.cli.app import main; main()", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_plugin_modality_build_verify_pretrain_resume(tmp_path: Path) -> None:
    out, run = tmp_path / "edges", tmp_path / "run"
    built = mmforge(
        "build-dataset", str(ROOT / "examples" / "images"), str(out), "--recipe", str(PLUGIN / "recipe.toml")
    )
    assert built.returncode == 0, built.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["members"] == ["rgb.jpg", "depth.png", "edges.png", "json"]
    edges = manifest["modalities"]["edges"]
    assert edges["labeler"] == "sobel-edges@local" and edges["dtype"] == "uint8" and "png / 255" in edges["encoding"]
    assert manifest["totals"]["written"] == 12

    verified = mmforge("verify", str(out), "--deep")
    assert deep_ok(verified), verified.stdout + verified.stderr[-2000:]
    without = mmforge("verify", str(out), "--deep", plugin=False)  # the member type comes from the plugin
    assert without.returncode != 0 and "edges.png" in without.stdout + without.stderr

    args = ("pretrain", "--data", str(out), "--config", str(PLUGIN / "pretrain.toml"), "--out", str(run))
    trained = mmforge(*args, "--device", "cpu", "--steps", "4")
    assert trained.returncode == 0, trained.stderr[-3000:]
    resumed = mmforge(*args, "--device", "cpu", "--steps", "6")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 4" in resumed.stdout + resumed.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(set(r["losses"]) == {"rgb", "depth", "edges"} and np.isfinite(r["losses"]["edges"]) for r in records)


def deep_ok(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0 and "OK (deep)" in result.stdout + result.stderr

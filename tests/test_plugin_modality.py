"""A whole modality from outside the package: tests/plugin_example (codec, labeler, trainer modality, all
found through entry points) goes build -> verify --deep -> pretrain -> resume, in fresh processes; its
transfer task (`edges` regressed from rgb) fine-tunes and evaluates.

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
    resumed = mmforge(*args, "--device", "cpu", "--steps", "6", "--reschedule")  # a longer run, said so
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 4" in resumed.stdout + resumed.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(set(r["losses"]) == {"rgb", "depth", "edges"} and np.isfinite(r["losses"]["edges"]) for r in records)


def deep_ok(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0 and "OK (deep)" in result.stdout + result.stderr


EDGES_ONLY = """
[recipe]
name = "edges-only"
[shards]
size = 4
[labelers.edges]
name = "sobel-edges"
[runtime]
batch_size = 4
precision = "fp32"
"""


@pytest.mark.slow
def test_plugin_transfer_task_finetunes_and_evaluates(tmp_path: Path) -> None:
    """The plugin's `edges` task (`mmforge_edges.task`, entry point `multimae_forge.transfer_tasks`): its own
    target member, head, loss, metrics and a main metric where lower is better, without a line of trainer/."""
    data, run, recipe = tmp_path / "edges", tmp_path / "run", tmp_path / "recipe.toml"
    recipe.write_text(EDGES_ONLY)
    built = mmforge("build-dataset", str(ROOT / "examples" / "images"), str(data), "--recipe", str(recipe))
    assert built.returncode == 0, built.stderr[-3000:]

    args = ("finetune", "--data", str(data), "--val", str(data), "--config", str(PLUGIN / "finetune.toml"))
    tuned = mmforge(*args, "--out", str(run), "--device", "cpu", "--steps", "3", "--no-tensorboard")
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    records = [json.loads(line) for line in (run / "val.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(set(r["val"]) == {"mae", "rmse", "pixels"} for r in records)

    scores = tmp_path / "m.json"
    scored = mmforge("evaluate", str(run / "checkpoint-best.pt"), "--data", str(data), "--json", str(scores))
    assert scored.returncode == 0, scored.stderr[-3000:]
    doc = json.loads(scores.read_text())
    assert doc["task"] == "edges" and doc["metrics"]["pixels"] == 12 * 64 * 64
    assert doc["metrics"]["mae"] == pytest.approx(min(r["val"]["mae"] for r in records))  # lower is better

    without = mmforge(*args, "--out", str(tmp_path / "refused"), "--device", "cpu", plugin=False)
    refusal = "task.name must be one of cls, semseg, depth; got 'edges'"  # the registry without the plugin
    assert without.returncode == 2 and refusal in without.stdout + without.stderr

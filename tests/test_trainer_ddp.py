"""Two-process DDP on CPU (gloo) under torchrun: training runs, and a NaN on one rank skips on both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pipeline.synth.rectangles import write_dataset
from trainer import train

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "trainer" / "configs" / "smoke.toml"

# Rank 1 alone gets a NaN loss at its 3rd micro-batch; without an agreed flag rank 0 would call backward
# (DDP all-reduce) while rank 1 would not, and the run would hang until the timeout.
FAULTY_LAUNCH = textwrap.dedent(
    """
    import os, sys
    import torch
    from trainer.model import multimae as model
    from trainer import train
    original, calls = model.MultiMAE.forward_loss, {"n": 0}

    def forward_loss(self, preds, targets, masks):
        total, per_task = original(self, preds, targets, masks)
        calls["n"] += 1
        if os.environ["RANK"] == "1" and calls["n"] == 3:
            total = total * float("nan")
        return total, per_task

    model.MultiMAE.forward_loss = forward_loss
    torch.set_num_threads(1)
    sys.exit(train.main(sys.argv[1:]))
    """
)


def torchrun(script: Path | None, args: list[str], timeout: int = 240) -> subprocess.CompletedProcess[str]:
    target = [str(script)] if script else ["-m", "trainer.train"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target, *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_process_ddp_with_a_nonfinite_loss_on_one_rank(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", [11, 9, 12, 8])  # uneven: 20 vs 20 samples, 4 shards
    script = tmp_path / "launch.py"
    script.write_text(FAULTY_LAUNCH)
    args = [
        "--data",
        str(data),
        "--config",
        str(SMOKE),
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        "--steps",
        "6",
        "--workers",
        "1",
    ]
    result = torchrun(script, args)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["skipped"] for r in records] == [False, False, True, False, False, False]
    ckpt = torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2 and ckpt["nonfinite"]["total"] == 1
    assert not torch.equal(ckpt["ranks"][0]["rng_cpu"], ckpt["ranks"][1]["rng_cpu"])


@pytest.mark.slow
def test_ddp_resume_continues_and_refuses_another_world_size(tmp_path: Path, capsys) -> None:
    data = write_dataset(tmp_path / "data", [8, 8, 8, 8])
    run = tmp_path / "run"
    args = ["--data", str(data), "--config", str(SMOKE), "--out", str(run), "--device", "cpu", "--workers", "0"]
    first = torchrun(None, [*args, "--steps", "3"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("pretrained 3 steps in") == 1  # the run's summary, once (rank 0), as `pretrain` prints
    assert "Warning" not in first.stderr, first.stderr[-3000:]  # DDP is built without a deprecated argument
    resumed = torchrun(None, [*args, "--steps", "5", "--reschedule"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    assert train.main([*args, "--steps", "6"]) == 2  # one process cannot resume a two-rank checkpoint
    assert (
        capsys.readouterr().err.strip().splitlines()[-1] == "error: checkpoint was written by 2 ranks; this run has 1"
    )

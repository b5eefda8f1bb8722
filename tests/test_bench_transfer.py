"""The transfer benchmark runs end to end (tiny splits, a few steps), so it cannot rot between measurements."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_transfer


@pytest.mark.slow
def test_transfer_benchmark_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_transfer.main(["--quick", "--work", str(tmp_path / "work")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    names = [r["row"] for r in rows]
    assert names == [
        "fine-tune, random init",
        "pretrain (smoke MultiMAE)",
        "linear probe, pretrained encoder",
        "linear probe, random-init encoder",
        "fine-tune, pretrained init",
    ]
    assert all(0.0 <= r["top1"] <= 100.0 for r in rows if "top1" in r)

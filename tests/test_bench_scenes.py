"""The rendered-scenes benchmark runs end to end (tiny splits, a few steps), so it cannot rot between
measurements; its table has every row and column, every number finite; its refusals are one line, exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import bench_scenes
from benchmarks.common import Refused
from trainer.pretrain.cross_modal import align_scale_shift, majority_class_scores, mean_depth


def _numbers(value: object) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


@pytest.mark.slow
def test_scenes_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "scenes.json"
    assert bench_scenes.main(["--quick", "--work", str(tmp_path / "work"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert list(rows) == list(bench_scenes.INITS)
    columns = [f"{m} {t} {k}" for m in bench_scenes.MODES for t, ks in bench_scenes.COLUMNS.items() for k in ks]
    for row in rows.values():
        assert list(row) == columns
        for stat in row.values():
            assert len(stat["values"]) == 2 and set(stat) == {"mean", "std", "values"}
    assert all(math.isfinite(x) for x in _numbers(rows))
    pretrained = report["pretrain"]
    assert set(pretrained) == {name for name, spec in bench_scenes.INITS.items() if spec is not None}
    gt = pretrained["multimae-gt"]["cross_modal"]
    assert {"depth", "depth_baseline", "semseg", "semseg_baseline"} <= set(gt)
    assert all(math.isfinite(x) for x in _numbers(gt))
    assert set(report["goal"]) == {"checks", "met_by_row", "met_by_protocol", "bounds", "met"}
    assert len(report["goal"]["checks"]) == 8 * len(bench_scenes.TEACHER_ROWS)
    assert len(report["goal"]["bounds"]) == 2 * 4 * len(bench_scenes.TEACHER_ROWS)  # ceiling and control
    assert set(report["goal"]["met_by_protocol"]) == set(bench_scenes.MODES)


def test_scenes_benchmark_refuses_a_foreign_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mine.txt").write_text("a user's file")
    with pytest.raises(SystemExit) as exit_info:
        bench_scenes.main(["--quick", "--work", str(tmp_path)])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert (tmp_path / "mine.txt").read_text() == "a user's file"


def test_scenes_benchmark_refuses_unknown_rows(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_scenes.main(["--quick", "--work", str(tmp_path / "w"), "--inits", "random,imagenet"])
    assert exit_info.value.code == 2


def test_a_pretraining_recorded_without_its_checkpoint_is_refused_before_any_work(tmp_path: Path) -> None:
    """A finished pretraining's record reused, its checkpoint deleted since: its transfer cells cannot run,
    so the benchmark says which folder to delete instead of failing in a worker after other work started."""
    pool = bench_scenes.Pool(1)
    data = {"finetune": tmp_path / "finetune-16-gt", "test": tmp_path / "test-16-gt"}
    gone = tmp_path / "pre-mae-0123456789" / "checkpoint-last.pt"
    try:
        with pytest.raises(Refused, match="pre-mae-0123456789 is recorded as pretrained but has no checkpoint"):
            bench_scenes.submit_transfers(pool, bench_scenes.Plan.quick(), data, tmp_path, "mae", gone)
        assert not pool.queue
        gone.parent.mkdir()
        gone.write_bytes(b"")  # present: the cells are queued (nothing runs until drain)
        bench_scenes.submit_transfers(pool, bench_scenes.Plan.quick(), data, tmp_path, "mae", gone)
        assert len(pool.queue) == len(bench_scenes.TASKS) * len(bench_scenes.MODES) * 2
    finally:
        pool.executor.shutdown()


def _row(**means: float) -> dict[str, dict[str, Any]]:
    """A table row with std 0.5 in every goal column: `_row(d=60, m=25)` gives both protocols those means."""
    columns = {
        f"{mode} {c}": v
        for mode in bench_scenes.MODES
        for c, v in (("depth delta1", means["d"]), ("semseg miou", means["m"]))
    }
    return {column: {"mean": value, "std": 0.5, "values": [value]} for column, value in columns.items()}


def test_the_goal_needs_the_claim_the_ceiling_and_the_control() -> None:
    rows = {"random": _row(d=58, m=24), "mae": _row(d=60, m=25), "rgb-visible-teacher": _row(d=63.5, m=29)}
    assert bench_scenes.goal(rows)["met"]  # the claim alone: no ceiling or control row run
    short = rows | {"rgb-visible-teacher": _row(d=62.5, m=29)}  # depth 2.5 above mae
    assert not bench_scenes.goal(short)["met"]
    assert not bench_scenes.goal(rows | {"rgb-visible-gt": _row(d=61, m=29)})["met"]  # teacher beats the ceiling
    assert bench_scenes.goal(rows | {"rgb-visible-gt": _row(d=63, m=28.5)})["met"]  # within 2 std of it
    verdict = bench_scenes.goal(rows | {"rgb-visible-smoke": _row(d=62, m=25)})  # smoke above mae on depth
    assert not verdict["met"]
    assert [name for name, b in verdict["bounds"].items() if not b["holds"]] == [
        f"control: rgb-visible-smoke - mae, {mode} depth delta1" for mode in sorted(bench_scenes.MODES)
    ]


def test_alignment_recovers_scale_and_shift() -> None:
    target = torch.rand(2, 8, 8) * 3 + 1
    valid = torch.ones_like(target, dtype=torch.bool)
    valid[1, :2] = False
    pred = (target - 2.0) / 0.5  # a standardised-looking map: affine in the target
    assert torch.allclose(align_scale_shift(pred, target, valid)[valid], target[valid], atol=1e-4)
    flat = align_scale_shift(torch.zeros_like(target), target, valid)
    assert torch.allclose(flat, mean_depth(target, valid))  # a flat prediction scores as the per-image mean


def test_majority_class_baseline() -> None:
    scores = majority_class_scores(torch.tensor([60.0, 30.0, 10.0, 0.0]))
    assert scores["pixel_acc"] == pytest.approx(60.0)
    assert scores["miou"] == pytest.approx(20.0)  # 0.6 IoU for the majority class, 0 for the two others present

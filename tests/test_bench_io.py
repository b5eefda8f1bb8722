"""The object-store and loader benchmarks run end to end at tiny sizes (so they cannot rot) and print their
figures as JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(module: str, *args: str, tmp_path: Path) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "MMFORGE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_bench_store_compares_a_folder_with_s3(tmp_path: Path) -> None:
    pytest.importorskip("moto.server")
    rows = run(
        "benchmarks.bench_store", "--images", "8", "--shard-size", "4", "--workdir", str(tmp_path), tmp_path=tmp_path
    )
    assert [(r["command"], r["where"]) for r in rows] == [
        ("build", "local -> local"),
        ("build", "s3 -> s3"),
        ("verify", "local"),
        ("verify", "s3"),
    ]
    assert all(r.get("images", r.get("samples")) == 8 for r in rows)


def test_bench_loader_reports_floor_and_loader(tmp_path: Path) -> None:
    (row,) = run("benchmarks.bench_loader", "--samples", "8", "--repeats", "1", tmp_path=tmp_path)
    assert row["samples"] == 8 and row["floor_samples_per_s"] > 0 and row["loader_over_floor"] > 0


def test_bench_png_compares_both_writers_on_the_same_maps(tmp_path: Path) -> None:
    args = ("--images", "2", "--repeats", "1", "--workdir", str(tmp_path))
    (row,) = run("benchmarks.bench_png", *args, tmp_path=tmp_path)
    for maps in ("smoke_labelers", "smooth_375x500"):
        for modality in ("depth", "semseg"):
            figures = row[maps][modality]
            assert all(figures[k] > 0 for k in ("encode_ms_pillow", "encode_ms_ours", "kb_pillow", "kb_ours")), figures


def test_benchmark_scratch_folders_empty_only_what_a_benchmark_made(tmp_path: Path) -> None:
    from benchmarks.common import SCRATCH_MARK, Refused, make_source, scratch_folder

    src = make_source(tmp_path / "src", 3)
    assert sorted(p.name for p in src.iterdir()) == [SCRATCH_MARK, "img_00000.jpg", "img_00001.jpg", "img_00002.jpg"]
    assert len(list(make_source(src, 1).glob("*.jpg"))) == 1  # its own folder: emptied and refilled
    (tmp_path / "empty").mkdir()
    assert scratch_folder(tmp_path / "empty") == tmp_path / "empty"  # an empty folder is taken
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("a user's file")
    with pytest.raises(Refused, match="refusing to empty"):
        scratch_folder(theirs)
    (tmp_path / "link").symlink_to(src)
    with pytest.raises(Refused, match="not a folder"):
        scratch_folder(tmp_path / "link")
    assert (theirs / "keep.txt").read_text() == "a user's file" and (src / SCRATCH_MARK).is_file()

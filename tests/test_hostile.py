"""Hostile and unlucky input: each way the promise "nothing lost, nothing silently wrong" used to break,
reproduced, and what happens now asserted (exit code, message, files untouched, nothing lost).

Builds use the demo recipe (smoke labelers) on a few tiny images; forged datasets start from synthetic
datasets written by the builder's own shard path, so every forgery starts from a dataset that verifies.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.build import images
from pipeline.cli.app import app
from pipeline.format.contract import DatasetPaths
from pipeline.format.ownership import BuildLock
from pipeline.synth.rectangles import write_dataset
from pipeline.verify.verifier import VerifyConfig, verify_dataset
from tests.conftest import DEMO_RECIPE, gradient, png_header_only
from trainer.config import SMOKE_CONFIG

S0, S1 = "train-000000", "train-000001"


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (what "untouched" compares)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def src(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(gradient(40 + 8 * i, 56)).save(folder / f"img{i}.jpg", quality=90)
    return folder


def build(src: Path, out: Path, *extra: str):
    return run(
        "build-dataset", str(src), str(out), "--recipe", str(DEMO_RECIPE), "--executor", "local", "--quiet", *extra
    )


def failures(out: Path) -> dict[str, dict]:
    return {f["path"]: f for f in json.loads((out / "manifest.json").read_text())["failures"]}


# ------------------------------------------------------------------------------------- files not ours


def test_foreign_index_json_in_out_is_refused_and_untouched(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.json").write_text('{"mine": true}')
    before = tree(out)
    result = build(src, out)
    assert result.exit_code == 2 and "no mmforge.json marker" in result.stderr
    assert tree(out) == before and sorted(p.name for p in out.iterdir()) == ["index.json"]


def test_foreign_files_inside_our_dataset_are_never_removed(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert build(src, out).exit_code == 0
    (out / "shards" / "train-000099.tar").write_bytes(b"someone else's shard")
    (out / "plan" / "notes.txt").write_text("mine")
    before = tree(out)
    for extra in ((), ("--overwrite",)):
        result = build(src, out, *extra)
        assert result.exit_code == 2, result.output
        assert "did not write" in result.stderr and "shards/train-000099.tar" in result.stderr
        assert tree(out) == before


def test_overwrite_removes_only_what_the_documents_name(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert build(src, out).exit_code == 0
    (out / ".index.json.tmp-1-deadbeef").write_text("{")  # a killed writer's temp file is ours
    first = tree(out)
    result = build(src, out, "--overwrite")
    assert result.exit_code == 0, result.output
    again = tree(out)
    assert set(again) == set(first) - {".index.json.tmp-1-deadbeef"}
    assert {k: v for k, v in again.items() if k.endswith(".tar")} == {
        k: v for k, v in first.items() if k.endswith(".tar")
    }


def test_a_format_1_dataset_is_not_ours_to_change(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "data" / "format1-dataset", out)
    before = tree(out)
    result = build(src, out, "--overwrite")
    assert result.exit_code == 2 and "marker" in result.stderr and tree(out) == before


# ------------------------------------------------------------------------------------- one build at a time


def test_second_build_at_once_is_refused_naming_the_holder(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert build(src, out).exit_code == 0
    before = tree(out)
    with BuildLock(DatasetPaths(out), "mmforge build-dataset (the first one)"):
        result = build(src, out, "--overwrite")
        report = verify_dataset(VerifyConfig(out=out, quiet=True))
    assert result.exit_code == 2 and f"pid {os.getpid()}" in result.stderr and "the first one" in result.stderr
    assert "build_in_progress" in {d.kind for d in report.defects}
    assert tree(out) == before


def test_a_stale_lock_is_taken_over(src: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    assert build(src, out).exit_code == 0
    (out / ".mmforge.lock").write_text(json.dumps({"pid": 999999, "host": "gone", "started": "x", "command": "y"}))
    result = build(src, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / ".mmforge.lock").exists()
    assert "stale lock" in caplog.text and "999999" in caplog.text


# ------------------------------------------------------------------------------------- special source files


@pytest.mark.timeout(60)
def test_fifo_socket_and_device_are_recorded_failures_not_hangs(src: Path, tmp_path: Path) -> None:
    os.mkfifo(src / "pipe.jpg")
    (src / "zero.jpg").symlink_to("/dev/zero")  # read whole, it would never end
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock.png"))
    try:
        out = tmp_path / "out"
        result = build(src, out)
    finally:
        sock.close()
    assert result.exit_code == 1, result.output  # 1: some inputs failed, all accounted for
    failed = failures(out)
    assert set(failed) == {"pipe.jpg", "zero.jpg", "sock.png"}
    assert "FIFO" in failed["pipe.jpg"]["message"] and "character device" in failed["zero.jpg"]["message"]
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert totals["inputs"] == 6 == totals["written"] + totals["failed"]


def test_files_over_the_recipe_size_limit_are_failures(src: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "small.toml"
    recipe.write_text(DEMO_RECIPE.read_text().replace("[image]\n", "[image]\nmax_file_bytes = 1500\n"))
    big = src / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(big)
    out = tmp_path / "out"
    result = run("build-dataset", str(src), str(out), "--recipe", str(recipe), "--executor", "local", "--quiet")
    assert result.exit_code == 1
    assert "max_file_bytes" in failures(out)["big.png"]["message"]


def test_the_pixel_limit_is_checked_from_the_header_before_the_file_is_read(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(30_000, 30_000) + bytes(4 << 20))
    read: list[int] = []
    real = images.stores.fs.open_regular

    class Counting(io.BufferedReader):
        def read(self, n: int | None = -1) -> bytes:
            data = super().read(n)
            read.append(len(data))
            return data

    def counting(p: Path):
        with real(p) as (f, size):
            yield Counting(f.raw), size  # type: ignore[arg-type]

    monkeypatch.setattr(images.stores.fs, "open_regular", __import__("contextlib").contextmanager(counting))
    with pytest.raises(Image.DecompressionBombError):
        images.read_source(path, max_bytes=1 << 30, max_pixels=89_478_485)
    assert sum(read) < 1 << 20  # the header was read, not the 4 MiB behind it


# ------------------------------------------------------------------------------------- bad settings


def test_bad_recipe_values_are_all_listed_and_nothing_is_written(src: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "bad.toml"
    text = DEMO_RECIPE.read_text().replace("[image]\n", "[image]\njpeg_quality = -5\n")
    recipe.write_text(text.replace('precision = "fp32"', 'precision = "fp8"').replace("size = 4", "size = 0"))
    out = tmp_path / "out"
    result = run("build-dataset", str(src), str(out), "--recipe", str(recipe), "--executor", "local")
    assert result.exit_code == 2 and not out.exists()
    for fragment in (
        "4 problems",
        "image.jpeg_quality must be >= 1",
        "runtime.precision must be one of",
        "shards.size must be >= 1",
        "runtime.batch_size must be >= 1",
    ):
        assert fragment in result.stderr, result.stderr


def test_recipe_not_utf8_and_output_that_cannot_be_created(src: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "latin1.toml"
    recipe.write_bytes(DEMO_RECIPE.read_bytes().replace(b"Offline demo", b"D\xe9mo"))
    result = run("build-dataset", str(src), str(tmp_path / "out"), "--recipe", str(recipe))
    assert result.exit_code == 2 and "not UTF-8" in result.stderr and not (tmp_path / "out").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = build(src, blocker / "out")
    assert result.exit_code == 2 and "cannot create output folder" in result.stderr and blocker.read_text() == "x"


def test_bad_trainer_values_are_all_listed_before_anything_is_written(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", [4, 4])
    config = tmp_path / "bad.toml"
    text = SMOKE_CONFIG.read_text().replace("num_visible = 16", "num_visible = 48")
    text = text.replace("[train]", '[train]\nprecision = "fp4"').replace(
        "shuffle_buffer = 16", "shuffle_buffer = 16\nhflip = 7.0"
    )
    config.write_text(text)
    run_dir = tmp_path / "run"
    result = run("pretrain", "--data", str(data), "--out", str(run_dir), "--config", str(config), "--device", "cpu")
    assert result.exit_code == 2 and not run_dir.exists()
    for fragment in (
        "num_visible 48 must be < the 48 tokens",
        "data.hflip must be <= 1",
        "train.precision must be one of",
    ):
        assert fragment in result.stderr, result.stderr


def test_a_torn_last_metrics_line_does_not_stop_resume(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", [8, 8])
    run_dir = tmp_path / "run"
    common = ["pretrain", "--data", str(data), "--out", str(run_dir), "--config", str(SMOKE_CONFIG), "--device", "cpu"]
    assert run(*common, "--steps", "2").exit_code == 0
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 1.2')  # a kill in the middle of a write
    result = run(*common, "--steps", "4", "--reschedule")  # a longer run, said so
    assert result.exit_code == 0, result.output
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------- forged datasets


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "good", [3, 3], seed=1)


def verify(out: Path, deep: bool = False):
    result = run(
        "verify", str(out), "--json", str(out.parent / "report.json"), "--quiet", *(["--deep"] if deep else [])
    )
    report = json.loads((out.parent / "report.json").read_text()) if result.exit_code in (0, 1) else {}
    return result, {d["kind"] for d in report.get("defects", [])}


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(change(doc) or doc))


def test_the_synthetic_dataset_verifies(good: Path) -> None:
    result, kinds = verify(good, deep=True)
    assert result.exit_code == 0 and not kinds, result.output


def test_index_url_pointing_at_another_shard(good: Path) -> None:
    def swap(doc: dict) -> None:
        a, b = doc["shards"]
        a["url"], b["url"] = b["url"], a["url"]

    edit_json(good / "index.json", swap)
    result, kinds = verify(good)
    assert result.exit_code == 1 and "bad_url" in kinds
    train = run("pretrain", "--data", str(good), "--out", str(good.parent / "run"), "--config", str(SMOKE_CONFIG))
    assert train.exit_code == 2 and "fails its checks" in train.stderr


@pytest.mark.parametrize("url", ["../elsewhere/shards/train-000000.tar", "/etc/passwd", "shards/../../x.tar"])
def test_index_url_outside_out_is_never_read(good: Path, url: str) -> None:
    edit_json(good / "index.json", lambda doc: doc["shards"][0].update(url=url))
    result, kinds = verify(good)
    assert result.exit_code == 1 and "bad_url" in kinds
    args = ["pretrain", "--data", str(good), "--out", str(good.parent / "run"), "--config", str(SMOKE_CONFIG)]
    train = run(*args, "--allow-defects")  # even when told to go on
    assert train.exit_code == 2 and "not a plain path" in train.stderr


def test_shard_that_is_a_link_out_of_the_dataset(good: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.tar"
    shutil.move(good / "shards" / f"{S0}.tar", outside)
    (good / "shards" / f"{S0}.tar").symlink_to(outside)
    result, kinds = verify(good)
    assert result.exit_code == 1 and "bad_url" in kinds


@pytest.mark.parametrize("doc", ["manifest.json", "index.json", "wids-index.json", "plan/plan.json", "mmforge.json"])
def test_empty_documents_are_named_defects(good: Path, doc: str) -> None:
    (good / doc).write_text("{}")
    result, kinds = verify(good)
    assert result.exit_code == 1 and "bad_document" in kinds, result.output


def test_empty_stats_marker_is_a_named_defect(good: Path) -> None:
    (good / "shards" / f"{S1}.stats.json").write_text("{}")
    result, kinds = verify(good)
    assert result.exit_code == 1 and "bad_document" in kinds


@pytest.mark.parametrize(
    "content",
    [b"[" * 100_000, b"\xff\xfe not utf-8", b"[]", b'{"format": 1e999}', b"NaN", b'{"format": 2, "shards": "x"}', b""],
    ids=["deep", "binary", "list", "huge", "nan", "wrong-type", "empty"],
)
@pytest.mark.parametrize("doc", ["manifest.json", "index.json", f"shards/{S0}.stats.json", "plan/plan.json"])
def test_hostile_json_is_a_defect_list_not_a_traceback(good: Path, doc: str, content: bytes) -> None:
    (good / doc).write_bytes(content)
    result, kinds = verify(good)
    assert result.exit_code == 1, result.output
    assert "bad_document" in kinds and "Traceback" not in result.output


def test_shards_index_and_wids_index_swapped_in_from_another_dataset(good: Path, tmp_path: Path) -> None:
    other = write_dataset(tmp_path / "other", [3, 3], seed=2)  # same counts, other images
    for name in ("index.json", "wids-index.json"):
        shutil.copy(other / name, good / name)
    for path in (other / "shards").iterdir():
        shutil.copy(path, good / "shards" / path.name)
    result, kinds = verify(good)
    assert result.exit_code == 1 and {"plan_mismatch", "not_in_plan"} <= kinds, kinds


def test_one_shard_tar_from_another_dataset_with_its_own_records(good: Path, tmp_path: Path) -> None:
    other = write_dataset(tmp_path / "other", [3, 3], seed=2)
    shutil.copy(other / "shards" / f"{S1}.tar", good / "shards" / f"{S1}.tar")
    stats = json.loads((other / "shards" / f"{S1}.stats.json").read_text())
    edit_json(good / f"shards/{S1}.stats.json", lambda d: d.update(sha256=stats["sha256"], bytes=stats["bytes"]))
    index_entry = json.loads((other / "index.json").read_text())["shards"][1]
    edit_json(good / "index.json", lambda d: d["shards"][1].update(index_entry))
    result, kinds = verify(good)
    assert result.exit_code == 1 and "not_in_plan" in kinds, kinds


def test_incomplete_dataset_is_refused_by_pretrain_unless_allowed(good: Path) -> None:
    edit_json(good / "manifest.json", lambda d: d.update(complete=False))
    args = ["pretrain", "--data", str(good), "--config", str(SMOKE_CONFIG), "--device", "cpu", "--steps", "1"]
    refused = run(*args, "--out", str(good.parent / "run1"))
    assert refused.exit_code == 2 and "not complete" in refused.stderr and not (good.parent / "run1").exists()
    allowed = run(*args, "--out", str(good.parent / "run2"), "--allow-defects")
    assert allowed.exit_code == 0, allowed.output


def test_a_plan_entry_neither_written_nor_failed(good: Path) -> None:
    entries = good / "plan" / f"{S0}.json"
    edit_json(entries, lambda d: d["entries"].__setitem__(1, ["someone-else.png", 0]))
    result, kinds = verify(good)
    assert result.exit_code == 1 and "not_in_plan" in kinds


def test_modes_of_files_do_not_matter_to_verify(good: Path) -> None:
    for path in (good / "shards").iterdir():
        path.chmod(stat.S_IRUSR)
    result, kinds = verify(good)
    assert result.exit_code == 0 and not kinds


# ------------------------------------------------------------------------------------- found in review


def test_a_lock_that_is_a_link_is_never_written_through(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert build(src, out).exit_code == 0
    precious = tmp_path / "notes.txt"
    precious.write_text("mine")
    (out / ".mmforge.lock").symlink_to(precious)
    result = build(src, out, "--overwrite")
    assert result.exit_code == 2 and ".mmforge.lock" in result.stderr and precious.read_text() == "mine"


@pytest.mark.timeout(60)
def test_fifos_and_devices_inside_a_dataset_never_hang_verify(good: Path) -> None:
    os.mkfifo(good / ".mmforge.lock")
    (good / "shards" / f"{S1}.tar").unlink()
    os.mkfifo(good / "shards" / f"{S1}.tar")
    (good / "shards" / f"{S0}.tar").unlink()
    (good / "shards" / f"{S0}.tar").symlink_to("/dev/zero")
    result, kinds = verify(good)
    assert result.exit_code == 1 and "unexpected_file" in kinds and "build_in_progress" in kinds


def test_a_dangling_shard_link_is_a_defect(good: Path) -> None:
    (good / "shards" / f"{S1}.tar").unlink()
    (good / "shards" / f"{S1}.tar").symlink_to("/nonexistent/x.tar")
    result, kinds = verify(good)
    assert result.exit_code == 1 and "unexpected_file" in kinds and "Traceback" not in result.output


def test_a_format_downgrade_does_not_switch_the_plan_checks_off(good: Path, tmp_path: Path) -> None:
    other = write_dataset(tmp_path / "other", [3, 3], seed=2)
    for name in (f"{S1}.tar", f"{S1}.stats.json"):
        shutil.copy(other / "shards" / name, good / "shards" / name)
    edit_json(
        good / "index.json",
        lambda d: d["shards"].__setitem__(1, json.loads((other / "index.json").read_text())["shards"][1]),
    )
    edit_json(good / "plan" / "plan.json", lambda d: d.update(format=1, plan_id=""))
    result, kinds = verify(good, deep=True)
    assert result.exit_code == 1 and "plan_mismatch" in kinds and "not_in_plan" in kinds


@pytest.mark.parametrize(
    ("entry", "why"), [(["/etc/passwd", 0], "not a relative path"), (["synthetic/img-000-00001.png", 5], "class")]
)
def test_plan_entries_are_validated(good: Path, entry: list, why: str) -> None:
    edit_json(good / "plan" / f"{S0}.json", lambda d: d["entries"].__setitem__(1, entry))
    result, kinds = verify(good)
    assert result.exit_code == 1 and "bad_document" in kinds
    assert why in (good.parent / "report.json").read_text()


def test_non_finite_settings_are_refused(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", [4, 4])
    config = tmp_path / "inf.toml"
    config.write_text(SMOKE_CONFIG.read_text().replace("warmup_epochs = 0.5", "warmup_epochs = inf"))
    result = run("pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--config", str(config))
    assert result.exit_code == 2 and "optim.warmup_epochs must be a finite number" in result.stderr


def test_a_folder_where_a_document_belongs_is_foreign(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert build(src, out).exit_code == 0
    (out / "index.json").unlink()
    (out / "index.json").mkdir()
    (out / "index.json" / "thesis.tex").write_text("precious")
    result = build(src, out, "--overwrite")
    assert result.exit_code == 2 and (out / "index.json" / "thesis.tex").read_text() == "precious"

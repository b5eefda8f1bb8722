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


def test_gpu_site_carries_the_loader_packages_and_refuses_compiled_ones(tmp_path: Path, monkeypatch) -> None:
    from benchmarks.common import SCRATCH_MARK, Refused
    from benchmarks.gpu_site import PACKAGES, copy_site

    site = tmp_path / "site"
    assert copy_site(site) > 0 and sorted(p.name for p in site.iterdir()) == sorted((*PACKAGES, SCRATCH_MARK))
    assert not list(site.rglob("__pycache__"))
    code = "import webdataset, wids, braceexpand; print(webdataset.__file__, wids.__file__, braceexpand.__file__)"
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(Path(f).is_relative_to(site) for f in done.stdout.split())  # found there first

    (tmp_path / "native" / "fast").mkdir(parents=True)
    (tmp_path / "native" / "fast" / "__init__.py").write_text("")
    (tmp_path / "native" / "fast" / "_core.so").write_bytes(b"\x7fELF")
    monkeypatch.syspath_prepend(str(tmp_path / "native"))
    with pytest.raises(Refused, match="compiled files"):
        copy_site(site, ("braceexpand", "fast"))
    assert (site / "webdataset").is_dir()  # refused before anything was removed
    with pytest.raises(Refused, match="not an installed package"):
        copy_site(site, ("no_such_package_here",))
    assert copy_site(site, ("braceexpand",)) > 0 and not (site / "webdataset").exists()  # its own folder: emptied
    with pytest.raises(Refused, match="a benchmark did not make it"):
        copy_site(tmp_path / "native", ("braceexpand",))  # someone's folder: left as it is
    assert (tmp_path / "native" / "fast" / "_core.so").is_file()


def test_gpu_site_refuses_a_folder_it_did_not_make_in_one_line_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "theirs.txt").write_text("a user's file")
    for target in (tmp_path, tmp_path / "theirs.txt"):
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.gpu_site", str(target)], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 2 and done.stderr.startswith("gpu_site: error: "), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert (tmp_path / "theirs.txt").read_text() == "a user's file"

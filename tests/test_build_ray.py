"""The Ray distributor: same shards as in-process, and a shard that keeps failing is retried a bounded
number of times, then reported, while the other shards complete."""

import json
import shutil
from pathlib import Path

import pytest

from pipeline.build.builder import build_dataset
from pipeline.build.recipe import BuildConfig, load_recipe, with_overrides
from tests.conftest import DEMO_RECIPE, EXAMPLES
from tests.test_build import build, read_samples

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]


def six_photos(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(EXAMPLES.glob("*.jpg"))[:6]:
        shutil.copy(p, src / p.name)
    return src


def ray_build(src: Path, out: Path):
    recipe = with_overrides(load_recipe(DEMO_RECIPE), shard_size=2)
    return build_dataset(BuildConfig(src=src, out=out, recipe=recipe, executor="ray", quiet=True))


def test_ray_build_writes_every_image(ray_session, tmp_path):
    result = ray_build(six_photos(tmp_path), tmp_path / "out")
    assert result.ok and result.manifest.totals.written == 6
    samples = read_samples(tmp_path / "out")
    assert len(samples) == 6
    assert all(s["depth.png"].shape == s["rgb.jpg"].shape[:2] for s in samples.values())


def test_a_shard_that_keeps_failing_is_reported_and_the_rest_complete(ray_session, tmp_path):
    src, out = six_photos(tmp_path), tmp_path / "out"
    assert build(src, out, shard_size=2).ok  # in-process first; then shard 1 is made unpublishable
    blocker = out / "shards" / "train-000001.tar"  # a folder where the shard must be published
    blocker.unlink()
    (out / "shards" / "train-000001.stats.json").unlink()
    blocker.mkdir()  # empty: a folder holding files would be someone else's, and the build would refuse
    result = ray_build(src, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert not result.ok and not manifest["complete"]
    assert [s["shard"] for s in manifest["failed_shards"]] == ["train-000001"]
    assert (
        "IsADirectoryError" in manifest["failed_shards"][0]["error"]
        or "Directory" in manifest["failed_shards"][0]["error"]
    )
    totals = manifest["totals"]
    assert totals["written"] == 4 and totals["failed"] == 2 and totals["inputs"] == 6
    assert sorted(p.name for p in (out / "shards").glob("*.stats.json")) == [
        "train-000000.stats.json",
        "train-000002.stats.json",
    ]

    blocker.rmdir()
    assert ray_build(src, out).ok  # the rerun finishes the failed shard only


def test_the_watchdog_names_shards_without_progress_once_per_period():
    import time

    from pipeline.build.executors import Watchdog
    from pipeline.build.plan import ShardSpec

    reports: list[list[str]] = []
    dog = Watchdog(0.001, lambda names, minutes: reports.append(names))  # 60 ms
    slow, fast, done = (ShardSpec(i, f"train-00000{i}", ()) for i in range(3))
    for shard in (slow, fast, done):
        dog.alive(shard)
    dog.gone(done)
    time.sleep(0.04)
    dog.alive(fast)  # progress
    time.sleep(0.04)
    dog.check()
    assert reports == [["train-000000"]]
    dog.check()  # just reported: not again until another period passes
    assert reports == [["train-000000"]]
    off = Watchdog(0, lambda *_: reports.append(["never"]))  # stall_minutes = 0: off
    off.alive(slow)
    time.sleep(0.01)
    off.check()
    assert reports == [["train-000000"]]

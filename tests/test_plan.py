"""Walking the source: layouts, names, hidden files, symlink loops; shards and the frozen plan."""

import os
from pathlib import Path

import pytest

from pipeline.build.plan import load_plan, make_plan, save_plan, walk_images
from pipeline.build.recipe import ConfigError, SourceConfig
from pipeline.format.contract import DatasetPaths


def touch(root: Path, *names: str) -> None:
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_class_folders_get_sorted_ids(tmp_path):
    touch(tmp_path, "n02/b.JPEG", "n01/a.jpeg", "n01/c.JPG", "n03/d.png")
    plan = make_plan(tmp_path, SourceConfig(), 2, "r")
    assert plan.classes == ("n01", "n02", "n03")
    entries = [e for s in plan.shards for e in s.entries]
    assert [(e.path, e.cls) for e in entries] == [
        ("n01/a.jpeg", 0),
        ("n01/c.JPG", 0),
        ("n02/b.JPEG", 1),
        ("n03/d.png", 2),
    ]
    assert [s.name for s in plan.shards] == ["train-000000", "train-000001"]


def test_flat_and_nested_have_no_classes(tmp_path):
    touch(tmp_path, "top.jpg", "2020/trip/x.jpg", "2021/y.jpg")
    plan = make_plan(tmp_path, SourceConfig(), 10, "0" * 64)
    assert plan.classes is None and plan.num_inputs == 3
    with pytest.raises(ConfigError, match="one folder deep"):
        make_plan(tmp_path, SourceConfig(class_folders="yes"), 10, "r")


def test_hidden_appledouble_and_other_extensions_are_skipped(tmp_path):
    touch(tmp_path, "a.jpg", ".hidden.jpg", "._a.jpg", ".cache/b.jpg", "notes.txt", "c.TIFF", "d.WebP")
    assert [p for p, _, _ in walk_images(tmp_path, SourceConfig().extensions)] == ["a.jpg", "c.TIFF", "d.WebP"]


def test_symlink_loops_are_survived(tmp_path):
    touch(tmp_path, "a/x.jpg")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    os.symlink(tmp_path / "a", tmp_path / "alias")
    found = [p for p, _, _ in walk_images(tmp_path, (".jpg",))]
    assert found.count("a/x.jpg") == 1 and len(found) == 1


def test_unicode_names(tmp_path):
    touch(tmp_path, "ünïcödé/naïve café.jpg", "日本/写真.jpg")
    plan = make_plan(tmp_path, SourceConfig(), 10, "0" * 64)
    assert plan.classes == ("ünïcödé", "日本")
    save_plan(plan, DatasetPaths(tmp_path / "out"))
    assert load_plan(DatasetPaths(tmp_path / "out")) == plan


def test_plan_round_trips_and_is_deterministic(tmp_path):
    touch(tmp_path, *(f"c{i % 3}/{i:03d}.jpg" for i in range(25)))
    plan = make_plan(tmp_path, SourceConfig(split="val"), 7, "a" * 64)
    assert [len(s.entries) for s in plan.shards] == [7, 7, 7, 4]
    assert plan.shards[0].name == "val-000000"
    save_plan(plan, DatasetPaths(tmp_path / "out"))
    assert (
        load_plan(DatasetPaths(tmp_path / "out")) == plan == make_plan(tmp_path, SourceConfig(split="val"), 7, "a" * 64)
    )

"""The `files` labeler: ground truth from a parallel folder becomes verified shards (ADE20K and NYUv2 layouts),
every missing or misaligned label a recorded failure, labels aligned through EXIF rotation and resizing."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.build.images import decode_image
from pipeline.build.label_files import read_label, spec_of
from pipeline.build.recipe import ConfigError, load_recipe, recipe_from_dict
from pipeline.cli.app import app
from pipeline.format.codecs import decode_depth, decode_json, decode_semseg, dequantize_depth
from tests.conftest import ROOT, gradient

MANIFESTS = ROOT / "manifests"
CONFIGS = ROOT / "trainer" / "configs"


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(rgb: np.ndarray, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def write_ade_like(root: Path, split: str, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """ADEChallengeData2016's layout: images/<split>/*.jpg beside annotations/<split>/*.png (ids 0..150)."""
    rng = np.random.default_rng(seed)
    (root / "images" / split).mkdir(parents=True)
    (root / "annotations" / split).mkdir(parents=True)
    labels = {}
    for i in range(n):
        name = f"ADE_{split}_{i:08d}"
        h, w = 40 + 8 * (i % 3), 56
        (root / "images" / split / f"{name}.jpg").write_bytes(_jpeg(gradient(h, w)))
        ids = rng.integers(0, 151, size=(h, w), dtype=np.uint8)
        (root / "annotations" / split / f"{name}.png").write_bytes(_png(ids))
        labels[f"{name}.jpg"] = ids
    return labels


def read_samples(out: Path) -> dict[str, dict[str, bytes]]:
    """source path -> {suffix: bytes} over every shard of a built dataset."""
    by_key: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, _, suffix = m.name.partition(".")
                by_key.setdefault(key, {})[suffix] = tar.extractfile(m).read()  # type: ignore[union-attr]
    return {decode_json(s["json"])["source"]: s for s in by_key.values()}


def build(src: Path, out: Path, recipe: Path, *extra: str) -> object:
    args = ["build-dataset", str(src), str(out), "--recipe", str(recipe), "--executor", "local", *extra]
    return CliRunner().invoke(app, args)


@pytest.mark.slow
def test_ade20k_layout_builds_verifies_and_fine_tunes(tmp_path: Path) -> None:
    ade = tmp_path / "ADEChallengeData2016"
    labels = write_ade_like(ade, "training", 8)
    write_ade_like(ade, "validation", 3, seed=1)
    missing, wrong_size, out_of_range = (
        "ADE_training_00000001.jpg",
        "ADE_training_00000002.jpg",
        "ADE_training_00000003.jpg",
    )
    (ade / "annotations" / "training" / missing.replace(".jpg", ".png")).unlink()
    (ade / "annotations" / "training" / wrong_size.replace(".jpg", ".png")).write_bytes(
        _png(np.zeros((9, 9), np.uint8))
    )
    bad = labels[out_of_range].copy()
    bad[0, 0] = 151
    (ade / "annotations" / "training" / out_of_range.replace(".jpg", ".png")).write_bytes(_png(bad))

    result = build(ade / "images" / "training", tmp_path / "ade-train", MANIFESTS / "ade20k.toml", "--shard-size", "4")
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]  # 1: some inputs failed, all accounted for
    manifest = json.loads((tmp_path / "ade-train" / "manifest.json").read_text())
    assert manifest["totals"]["written"] == 5 and manifest["totals"]["failed"] == 3
    failures = {f["path"]: f for f in manifest["failures"]}
    assert set(failures) == {missing, wrong_size, out_of_range}
    assert all(f["stage"] == "label" for f in failures.values())
    assert "no label file" in failures[missing]["message"]
    assert "9x9" in failures[wrong_size]["message"]
    assert "151" in failures[out_of_range]["message"]
    semseg = manifest["modalities"]["semseg"]
    assert semseg["num_classes"] == 150 and semseg["classes"][0] == "wall" and len(semseg["palette"]) == 450

    samples = read_samples(tmp_path / "ade-train")
    assert len(samples) == 5
    for source, members in samples.items():  # reduce zero label: 0 -> 255, k -> k - 1, exactly
        want = np.where(labels[source] == 0, 255, labels[source].astype(np.int64) - 1).astype(np.uint8)
        np.testing.assert_array_equal(decode_semseg(members["semseg.png"]), want)
    assert CliRunner().invoke(app, ["verify", str(tmp_path / "ade-train"), "--deep"]).exit_code == 0

    val = build(ade / "images" / "validation", tmp_path / "ade-val", MANIFESTS / "ade20k.toml", "--split", "val")
    assert val.exit_code == 0, val.output  # type: ignore[attr-defined]
    args = ["finetune", "--data", str(tmp_path / "ade-train"), "--val", str(tmp_path / "ade-val"), "--device", "cpu"]
    args += ["--config", str(CONFIGS / "finetune-semseg-smoke.toml"), "--out", str(tmp_path / "ft"), "--steps", "2"]
    done = CliRunner().invoke(app, [*args, "--batch-size", "2", "--no-tensorboard"])
    assert done.exit_code == 0 and "150 classes" in done.output, done.output


def write_nyu_like(root: Path, n: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """MultiMAE's NYUv2 task folders: <split>/rgb/data/*.png, depth/data/*.png (uint16, metres x 6553.6),
    semseg/data/*.png (NYU40 ids, 0 = void)."""
    rng = np.random.default_rng(3)
    for task in ("rgb", "depth", "semseg"):
        (root / task / "data").mkdir(parents=True)
    depths, classes = {}, {}
    for i in range(n):
        name = f"{i:04d}.png"
        (root / "rgb" / "data" / name).write_bytes(_png(gradient(48, 64)))
        raw = rng.integers(3000, 65000, size=(48, 64)).astype(np.uint16)
        raw[:4] = 0  # invalid: no depth measured
        (root / "depth" / "data" / name).write_bytes(_png(raw))
        ids = rng.integers(0, 41, size=(48, 64), dtype=np.uint8)
        (root / "semseg" / "data" / name).write_bytes(_png(ids))
        depths[f"data/{name}"], classes[f"data/{name}"] = raw, ids
    return depths, classes


@pytest.mark.slow
def test_nyuv2_layout_gives_metric_depth_and_40_classes(tmp_path: Path) -> None:
    depths, classes = write_nyu_like(tmp_path / "nyu" / "train", 4)
    result = build(tmp_path / "nyu" / "train" / "rgb", tmp_path / "nyu-train", MANIFESTS / "nyuv2.toml")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    manifest = json.loads((tmp_path / "nyu-train" / "manifest.json").read_text())
    assert manifest["totals"]["written"] == 4 and manifest["modalities"]["semseg"]["num_classes"] == 40
    for source, members in read_samples(tmp_path / "nyu-train").items():
        meta = decode_json(members["json"])
        metres = dequantize_depth(decode_depth(members["depth.png"]), meta["depth"])
        want = depths[source] * (10 / 65536)
        assert np.abs(metres - want).max() <= meta["depth"]["scale"]  # within one uint16 step
        assert (metres[:4] == 0).all()  # invalid stays 0, which the trainer masks out
        ids = decode_semseg(members["semseg.png"])
        np.testing.assert_array_equal(ids == 255, classes[source] == 0)
        assert int(ids[ids != 255].max()) <= 39
    assert CliRunner().invoke(app, ["verify", str(tmp_path / "nyu-train"), "--deep"]).exit_code == 0
    args = ["finetune", "--data", str(tmp_path / "nyu-train"), "--device", "cpu", "--inputs", "rgb,depth"]
    args += ["--config", str(CONFIGS / "finetune-semseg-smoke.toml"), "--out", str(tmp_path / "rgbd"), "--steps", "2"]
    done = CliRunner().invoke(app, [*args, "--batch-size", "2", "--no-tensorboard"])
    assert done.exit_code == 0 and "40 classes" in done.output, done.output


def test_labels_follow_exif_rotation_and_resizing(tmp_path: Path) -> None:
    """A label is drawn on the stored pixels; it is turned and resized with the image (nearest, ids kept)."""
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    ids = np.zeros((40, 60), np.uint8)
    ids[:, :30] = 3  # left half of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: the stored left half becomes the top half
    data = _jpeg(gradient(40, 60), exif=exif.tobytes())
    (tmp_path / "lab" / "a.png").write_bytes(_png(ids))
    spec = spec_of("semseg", {"root": "../lab", "num_classes": 5})
    img = decode_image(data, max_pixels=10**8, max_side=30)
    label = read_label(spec, tmp_path / "img", "a.jpg", img, max_bytes=10**7, max_pixels=10**8)
    assert label.shape == img.rgb.shape[:2] == (30, 20)
    assert (label[:15] == 3).all() and (label[15:] == 0).all()


def test_files_labeler_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        recipe_from_dict({"labelers": {"semseg": {"name": "files", "root": "x"}}})
    with pytest.raises(ConfigError, match="colour"):
        recipe_from_dict({"labelers": {"semseg": {"name": "files", "root": "x", "num_classes": 3, "colour": 1}}})
    with pytest.raises(ConfigError, match="files labels are value or class maps"):
        recipe_from_dict({"labelers": {"rgb": {"name": "files", "root": "x"}}})
    with pytest.raises(ConfigError, match="150 classes"):
        recipe_from_dict(
            {"labelers": {"semseg": {"name": "files", "root": "x", "num_classes": 3, "classes": "ade20k-150"}}}
        )
    for name in ("ade20k.toml", "nyuv2.toml"):
        assert load_recipe(MANIFESTS / name).labelers


def test_missing_label_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "images" / "training").mkdir(parents=True)
    (tmp_path / "images" / "training" / "a.jpg").write_bytes(_jpeg(gradient(8, 8)))
    result = build(tmp_path / "images" / "training", tmp_path / "out", MANIFESTS / "ade20k.toml")
    assert result.exit_code == 2 and "label folder" in result.output  # type: ignore[attr-defined]
    assert not (tmp_path / "out").exists()

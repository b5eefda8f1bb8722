"""Teacher labelers: network shapes, deterministic training, the shipped weights label rendered scenes and beat
trivial baselines on scenes they never saw, and missing weights fail in one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from labelers import build_labeler, check_labeler, resolve_spec
from labelers.teacher import TeacherNet
from labelers.teacher_spec import DEPTH_RANGE_M, TASKS, shipped_path
from labelers.teacher_train import ClassTally, DepthTally, main, train_teacher
from labelers.weights import WeightsUnavailableError

NAMES = [t.labeler for t in TASKS.values()]
HELD_OUT_SEED, HELD_OUT_SCENES = 90210, 24  # seed and split ("teacher-test") of no teacher's training data


def write_fake_scenes(root: Path, split: str, n: int, size: int = 64) -> None:
    """Random task folders in the renderer's layout (no renderer needed): rgb, depth (mm), semseg."""
    rng = np.random.default_rng(len(split) + n)
    for task in ("rgb", "depth", "semseg"):
        (root / split / task / "data").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = f"{i:06d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / split / "rgb/data" / name)
        depth = rng.integers(0, 6000, (size, size)).astype(np.uint16)
        Image.fromarray(depth).save(root / split / "depth/data" / name)
        classes = rng.integers(0, 5, (size, size)).astype(np.uint8)
        classes[:4] = 255
        Image.fromarray(classes).save(root / split / "semseg/data" / name)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Freshly rendered scenes of a split and seed no teacher trained or was scored on, with the camera the
    shipped teachers' scenes had (their reports record it)."""
    pytest.importorskip("pybullet")
    from labelers.teacher_spec import shipped_report
    from pipeline.synth.scenes import DISTANCE, SceneConfig, render_scenes

    camera = shipped_report(TASKS["depth"])["scenes"].get("camera", {})
    distance = tuple(camera.get("distance", DISTANCE))
    root = tmp_path_factory.mktemp("scenes")
    cfg = SceneConfig(
        n=HELD_OUT_SCENES, seed=HELD_OUT_SEED, size=96, split="teacher-test", distance=distance, workers=1
    )
    render_scenes(root, cfg, quiet=True)
    return root / "teacher-test"


def read_pngs(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_networks_map_images_to_maps_of_their_size(task: str) -> None:
    net = TeacherNet(TASKS[task].net_config()).eval()
    assert sum(p.numel() for p in net.parameters()) < 300_000
    for h, w in ((96, 96), (64, 128)):
        assert net(torch.zeros(2, 3, h, w)).shape == (2, TASKS[task].out_channels, h, w)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_training_is_deterministic(task: str, tmp_path: Path) -> None:
    write_fake_scenes(tmp_path / "scenes", "teacher", 8)
    write_fake_scenes(tmp_path / "scenes", "teacher-val", 4)
    reports = [
        train_teacher(tmp_path / "scenes", task, tmp_path / f"run{i}", steps=3, batch=4, seed=5, quiet=True)
        for i in range(2)
    ]
    file = TASKS[task].file
    assert (tmp_path / "run0" / file).read_bytes() == (tmp_path / "run1" / file).read_bytes()
    assert reports[0]["weights"]["sha256"] == reports[1]["weights"]["sha256"]
    on_disk = json.loads((tmp_path / "run0" / f"{TASKS[task].labeler}.json").read_text())
    assert on_disk["teacher"] == reports[0]["teacher"] and on_disk["train_scenes"] == 8
    assert not [p for p in (tmp_path / "run0").iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("name", NAMES)
def test_shipped_teachers_label_a_rendered_scene(name: str, held_out: Path) -> None:
    spec = resolve_spec(name)
    assert shipped_path(spec.weights).stat().st_size < 1_000_000
    check_labeler(spec)
    images = read_pngs(held_out / "rgb" / "data")[:3]
    maps = build_labeler(spec)(images)
    for m in maps:
        assert m.shape == (96, 96)
        if spec.output == "classes":
            assert m.dtype == np.uint8 and int(m.max()) < (spec.num_classes or 0)
        else:
            lo, hi = DEPTH_RANGE_M
            assert m.dtype == np.float32 and np.isfinite(m).all() and lo <= m.min() and m.max() <= hi


def test_shipped_depth_teacher_beats_mean_depth(held_out: Path) -> None:
    truth = np.stack(read_pngs(held_out / "depth" / "data")).astype(np.float32) / 1000.0
    pred = np.stack(build_labeler(resolve_spec("scenes-depth-teacher"))(read_pngs(held_out / "rgb" / "data")))
    teacher, constant = DepthTally(), DepthTally()
    teacher.add(torch.from_numpy(pred), torch.from_numpy(truth))
    constant.add(torch.full(truth.shape, float(truth[truth > 0].mean())), torch.from_numpy(truth))  # an oracle mean
    t, b = teacher.result(), constant.result()
    assert t["delta1"] > b["delta1"] + 20 and t["absrel"] < 0.6 * b["absrel"], (t, b)


def test_shipped_semseg_teacher_beats_the_majority_class(held_out: Path) -> None:
    truth = np.stack(read_pngs(held_out / "semseg" / "data")).astype(np.int64)
    pred = np.stack(build_labeler(resolve_spec("scenes-semseg-teacher"))(read_pngs(held_out / "rgb" / "data")))
    teacher, majority = ClassTally(5), ClassTally(5)
    teacher.add(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(truth))
    majority.add(torch.zeros(truth.shape, dtype=torch.int64), torch.from_numpy(truth))  # the floor everywhere
    t, b = teacher.result(), majority.result()
    assert t["miou"] > b["miou"] + 10, (t, b)


@pytest.mark.parametrize("name", NAMES)
def test_specs_carry_the_held_out_quality_into_the_manifest(name: str) -> None:
    spec = resolve_spec(name)
    report = spec.extra["shipped_report"]
    assert report["split"] == "teacher" and report["eval_split"] == "teacher-val" and report["scenes"]["seed"] >= 0
    assert report["command"].startswith("python -m labelers.teacher_train")
    metric = "miou" if spec.output == "classes" else "delta1"
    assert report["teacher"][metric] > report["baseline"][metric]
    assert f"{report['teacher'][metric]} %" in spec.notes
    json.dumps(spec.to_dict())


@pytest.mark.parametrize("name", NAMES)
def test_missing_or_foreign_weights_fail_in_one_clear_line(name: str, tmp_path: Path) -> None:
    missing = resolve_spec(name, {"weights": str(tmp_path / "none.safetensors")})
    with pytest.raises(WeightsUnavailableError, match="missing") as err:
        check_labeler(missing)
    assert "\n" not in str(err.value)
    with pytest.raises(WeightsUnavailableError, match="missing"):
        build_labeler(missing)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsUnavailableError, match="unreadable"):
        check_labeler(resolve_spec(name, {"weights": str(tmp_path / "junk.safetensors")}))
    other = next(n for n in NAMES if n != name)
    with pytest.raises(WeightsUnavailableError, match="teacher, not"):
        check_labeler(resolve_spec(name, {"weights": str(shipped_path(resolve_spec(other).weights))}))


def test_cli_refuses_bad_paths_and_settings_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_fake_scenes(tmp_path / "scenes", "teacher", 2)
    cases = [
        [str(tmp_path / "nowhere"), "--task", "depth", "--out", str(tmp_path / "out")],
        [str(tmp_path / "scenes"), "--task", "depth", "--out", str(tmp_path / "out"), "--steps", "0"],
        [str(tmp_path / "scenes"), "--task", "depth", "--out", str(tmp_path / "out"), "--split", "train"],
        [str(tmp_path / "scenes"), "--task", "depth", "--out", str(tmp_path / "out")],  # no teacher-val split
        [str(tmp_path / "scenes"), "--task", "normals", "--out", str(tmp_path / "out")],
    ]
    for argv in cases:
        with pytest.raises(SystemExit) as exit_:
            raise SystemExit(main(argv))
        assert exit_.value.code == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, argv
    assert not (tmp_path / "out").exists()

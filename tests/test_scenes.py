"""Rendered scenes: exact labels (planar metric depth, shape classes, camera-frame normals, void where nothing
is hit), byte-identical for a seed whatever the workers, resumable, refusing bad options and foreign OUTs, and
built into verified shards by manifests/scenes.toml."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pybullet as pb
import pytest
from PIL import Image

from pipeline.synth.scenes import (
    TASKS,
    Body,
    Camera,
    Light,
    Scene,
    SceneConfig,
    ScenesError,
    _turn,
    draw_scene,
    render,
    render_scene,
    render_scenes,
    scene_name,
    scene_rng,
)
from tests.conftest import ROOT

IDENTITY = tuple(np.eye(3).ravel().tolist())
LIGHT = Light((0.3, -0.5, 1.0), (1.0, 1.0, 1.0), 0.5, 0.6, 0.2)
GREY = (0.5, 0.5, 0.5, 1.0)


@pytest.fixture(scope="module")
def client() -> Iterator[int]:
    c = pb.connect(pb.DIRECT)
    yield c
    pb.disconnect(physicsClientId=c)


def cfg(**kw: object) -> SceneConfig:
    settings: dict = {"n": 4, "seed": 7, "size": 32, "workers": 1, **kw}
    return SceneConfig(**settings)


def floor(half: float = 4.0, rgba: tuple[float, float, float, float] = GREY) -> Body:
    return Body("box", 0, (half, half, 0.01), (0.0, 0.0, -0.01), IDENTITY, rgba)


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_depth_is_planar_metres_and_normals_face_the_camera(client: int) -> None:
    """A wall 1.5 m in front of a level camera: every wall pixel is 1.5 m deep, at the image's corners too
    (planar depth, not the ray's length), and faces the camera; the floor's normal is 'up' = -y."""
    wall = Body("box", 1, (3.0, 0.5, 3.0), (0.0, 0.5, 3.0), IDENTITY, (0.8, 0.3, 0.2, 1.0))
    scene = Scene(Camera(eye=(0.0, -1.5, 0.6), target=(0.0, 0.0, 0.6)), LIGHT, (floor(), wall))
    out = render(client, scene, 64)
    on_wall = out["classes"] == 1
    assert on_wall[0].all() and on_wall[:, 0].any() and (out["classes"] == 0).any()
    np.testing.assert_allclose(out["depth"][on_wall], 1.5, atol=2e-4)
    np.testing.assert_allclose(out["normals"][on_wall], np.broadcast_to((0, 0, 1), (on_wall.sum(), 3)), atol=1e-6)
    np.testing.assert_allclose(
        out["normals"][out["classes"] == 0], [[0, -1, 0]] * (out["classes"] == 0).sum(), atol=1e-6
    )


def test_floor_depth_matches_the_analytic_plane(client: int) -> None:
    """A camera h above an endless floor, tilted down: each pixel's depth is where its ray meets z = 0."""
    scene = Scene(Camera(eye=(0.0, -2.0, 1.2), target=(0.0, 0.0, 0.0)), LIGHT, (floor(30.0),))
    out = render(client, scene, 48)
    _, down, forward = scene.camera.axes()
    tan = np.tan(np.radians(scene.camera.fov_deg) / 2)
    y = ((np.arange(48) + 1) * (2 / 48) - 1) * tan  # the tiny renderer samples row i at i + 1
    ray_z = forward[2] + y * down[2]  # right is level: x does not change the ray's height
    hit = out["classes"] == 0
    want = np.broadcast_to((-1.2 / ray_z)[:, None], (48, 48))
    np.testing.assert_allclose(out["depth"][hit], want[hit], rtol=1e-4)


def test_void_where_nothing_is_hit(client: int, tmp_path: Path) -> None:
    """Above a small floor's edge: class 255, depth 0, normal 0 in memory; on disk 255, 0 and FACING."""
    scene = Scene(Camera(eye=(0.0, -2.5, 0.8), target=(0.0, 0.0, 0.8)), LIGHT, (floor(1.5),))
    out = render(client, scene, 32)
    void = out["classes"] == 255
    assert 0.3 < void.mean() < 0.9 and void[0].all()
    assert ((out["depth"] == 0) == void).all()
    assert ((np.linalg.norm(out["normals"], axis=-1) == 0) == void).all()
    render_scenes(tmp_path / "s", cfg(n=6), quiet=True)  # random scenes: void and depth 0 coincide
    for name in ("000000.png", "000003.png", "000005.png"):
        depth, ids = png(tmp_path / "s/train/depth/data" / name), png(tmp_path / "s/train/semseg/data" / name)
        normal = png(tmp_path / "s/train/normal/data" / name)
        assert ((depth == 0) == (ids == 255)).all() and (ids[ids != 255] <= 4).all()
        assert (normal[ids == 255] == (128, 128, 255)).all()
        lengths = np.linalg.norm(normal.astype(np.float32) * (2 / 255) - 1, axis=-1)
        assert np.abs(lengths - 1).max() < 3**0.5 / 255 + 1e-6  # unit vectors, as the normal codec checks


def test_random_scenes_are_mostly_labelled_and_some_show_sky(client: int) -> None:
    labelled = [(render_scene(client, scene_rng(0, "train", i), cfg())["classes"] != 255).mean() for i in range(12)]
    assert np.mean(labelled) > 0.7 and min(labelled) < 1.0


def test_classes_follow_shape_never_colour(client: int) -> None:
    """One of each shape in view: ids are exactly floor + the four shapes; recolouring every body and the
    light changes the picture but not one class, depth or normal."""
    shapes = [("box", (0.2, 0.2, 0.2), 0.2), ("sphere", (0.2,), 0.2), ("cylinder", (0.15, 0.4), 0.2)]
    shapes.append(("capsule", (0.12, 0.3), 0.27))
    bodies = [floor()] + [
        Body(name, k + 1, dims, (-0.9 + 0.6 * k, 0.0, z), IDENTITY, (0.9, 0.1, 0.1, 1.0))
        for k, (name, dims, z) in enumerate(shapes)
    ]
    scene = Scene(Camera(eye=(0.0, -2.5, 1.2), target=(0.0, 0.0, 0.2)), LIGHT, tuple(bodies))
    recoloured = Scene(
        scene.camera,
        dataclasses.replace(LIGHT, color=(0.8, 0.9, 1.0), ambient=0.3),
        tuple(dataclasses.replace(b, rgba=(0.1, 0.2 + 0.1 * i, 0.9, 1.0)) for i, b in enumerate(bodies)),
    )
    a, b = render(client, scene, 64), render(client, recoloured, 64)
    assert set(np.unique(a["classes"]).tolist()) - {255} == {0, 1, 2, 3, 4}
    assert not np.array_equal(a["rgb"], b["rgb"])
    for key in ("classes", "depth", "normals"):
        np.testing.assert_array_equal(a[key], b[key])
    random = draw_scene(scene_rng(3, "train", 0), cfg(max_objects=12, min_objects=12))
    assert [body.label for body in random.bodies[1:]] == [
        {"box": 1, "sphere": 2, "cylinder": 3, "capsule": 4}[body.shape] for body in random.bodies[1:]
    ]


def test_same_seed_same_bytes_with_one_or_two_workers(tmp_path: Path) -> None:
    one = render_scenes(tmp_path / "one", cfg(n=6, workers=1), quiet=True)
    two = render_scenes(tmp_path / "two", cfg(n=6, workers=2), quiet=True)
    assert one.rendered == two.rendered == 6 and one.kept == 0
    first, second = files(tmp_path / "one"), files(tmp_path / "two")
    assert len(first) == 4 * 6 + 2 and first == second  # 24 PNGs + scenes.json + classes.tsv
    record = json.loads(first["scenes.json"])
    assert record["splits"] == {"train": {"n": 6, "complete": True}} and record["size"] == 32
    assert first["classes.tsv"].decode().splitlines()[1:3] == ["0\tfloor\t152\t223\t138", "1\tbox\t31\t119\t180"]
    other = render_scenes(tmp_path / "other", cfg(n=1, seed=8), quiet=True)
    assert (
        other.rendered == 1
        and files(tmp_path / "other")["train/rgb/data/000000.png"] != first["train/rgb/data/000000.png"]
    )


def test_splits_are_different_scenes_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "s"
    render_scenes(out, cfg(n=3), quiet=True)
    render_scenes(out, cfg(n=3, split="val"), quiet=True)
    assert (
        len(list((out / "train/rgb/data").iterdir())) == 3
        and sorted(p.name for p in (out / "val/depth/data").iterdir())[-1] == "000002.png"
    )
    for i in range(3):
        assert (out / f"train/rgb/data/{i:06d}.png").read_bytes() != (out / f"val/rgb/data/{i:06d}.png").read_bytes()
    assert set(json.loads((out / "scenes.json").read_text())["splits"]) == {"train", "val"}


def test_rerun_keeps_finished_scenes_and_finishes_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "s"
    render_scenes(out, cfg(n=4), quiet=True)
    before = files(out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    (out / "train/depth/data/000002.png").unlink()  # as if killed between two renames
    stale = out / "train/rgb/data/.000003.png.999.tmp"
    stale.write_bytes(b"half a file")
    again = render_scenes(out, cfg(n=4, workers=2), quiet=True)
    assert (again.kept, again.rendered) == (3, 1) and not stale.exists()
    assert files(out) == before
    kept = [p for p in stamps if "000002" not in p.name]
    assert all(p.stat().st_mtime_ns == stamps[p] for p in kept)
    grown = render_scenes(out, cfg(n=6), quiet=True)
    assert (grown.kept, grown.rendered) == (4, 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n": 0}, "n must be at least 1"),
        ({"size": 16}, "size must be 32..1024"),
        ({"size": 2048}, "size must be 32..1024"),
        ({"workers": 0}, "workers must be at least 1"),
        ({"classes": "animals"}, "one of primitives"),
        ({"split": "../up"}, "split must be"),
        ({"seed": -1}, "seed must be"),
        ({"min_objects": 5, "max_objects": 3}, "min_objects <= max_objects"),
        ({"distance": (0.2, 1.0)}, "distance must be 0.6 <= lo <= hi <= 10.0"),
        ({"distance": (2.0, 1.0)}, "distance must be"),
    ],
)
def test_bad_options_are_refused_with_the_allowed_values(options: dict, message: str) -> None:
    with pytest.raises(ScenesError, match=message) as err:
        cfg(**options)
    assert isinstance(err.value, ValueError)


def test_a_nearer_camera_makes_larger_shapes_and_other_settings(client: int, tmp_path: Path) -> None:
    """--distance LO:HI: the camera's distance range; the default range draws the same scenes as before the
    option existed (the same draws), a nearer range the same scenes seen from nearer: more shape pixels."""
    share = {}
    for near_far in ((1.8, 3.4), (1.0, 1.8)):
        maps = [render_scene(client, scene_rng(0, "train", i), cfg(distance=near_far))["classes"] for i in range(16)]
        share[near_far] = np.mean([((m > 0) & (m != 255)).sum() / max((m != 255).sum(), 1) for m in maps])
    assert share[(1.0, 1.8)] > 1.5 * share[(1.8, 3.4)]
    assert (
        draw_scene(scene_rng(0, "train", 3), cfg()).camera
        == draw_scene(scene_rng(0, "train", 3), cfg(distance=(1.8, 3.4))).camera
    )
    out = tmp_path / "s"
    render_scenes(out, cfg(n=1, distance=(1.0, 1.8)), quiet=True)
    assert json.loads((out / "scenes.json").read_text())["camera"]["distance"] == [1.0, 1.8]
    with pytest.raises(ScenesError, match="other settings"):
        render_scenes(out, cfg(n=1), quiet=True)


def test_an_out_of_other_settings_or_foreign_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ScenesError, match="is a file"):
        render_scenes(tmp_path / "file", cfg(n=1), quiet=True)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(ScenesError, match=r"no scenes\.json"):
        render_scenes(tmp_path / "foreign", cfg(n=1), quiet=True)
    out = tmp_path / "s"
    render_scenes(out, cfg(n=2), quiet=True)
    for other, word in [(cfg(n=2, size=48), "size"), (cfg(n=2, seed=1), "seed"), (cfg(n=1), "may grow")]:
        with pytest.raises(ScenesError, match=word):
            render_scenes(out, other, quiet=True)
    assert json.loads((out / "scenes.json").read_text())["size"] == 32  # refused before touching anything
    (out / "scenes.json").write_text("[1, 2]")
    with pytest.raises(ScenesError, match=r"not a scenes\.json"):
        render_scenes(out, cfg(n=2), quiet=True)


def test_placement_keeps_bodies_apart_and_off_the_camera() -> None:
    for i in range(40):
        scene = draw_scene(scene_rng(1, "train", i), cfg(min_objects=6, max_objects=6))
        eye = np.asarray(scene.camera.eye)
        assert 2 <= len(scene.bodies) <= 7 and scene.bodies[0].label == 0
        for body in scene.bodies[1:]:
            assert np.linalg.norm(eye - body.position) > 0.4 and body.position[2] > 0
    lying = _turn(0.0, np.pi / 2)
    np.testing.assert_allclose(lying @ (0, 0, 1), (0, -1, 0), atol=1e-12)  # a lying body's axis is level


def png_of(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def shard_samples(ds: Path) -> dict[str, dict[str, bytes]]:
    """source path -> {member suffix: bytes} over a built dataset's shards."""
    by_key: dict[str, dict[str, bytes]] = {}
    for path in sorted((ds / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, _, suffix = member.name.partition(".")
                by_key.setdefault(key, {})[suffix] = tar.extractfile(member).read()  # type: ignore[union-attr]
    return {json.loads(m["json"])["source"]: m for m in by_key.values()}


def _mmforge() -> str:
    local = ROOT / ".venv" / "bin" / "mmforge"
    found = str(local) if local.exists() else shutil.which("mmforge")
    if found is None:
        pytest.skip("no mmforge executable")
    return found


@pytest.mark.slow
def test_scenes_build_into_verified_ground_truth_shards(tmp_path: Path) -> None:
    render_scenes(tmp_path / "scenes", cfg(n=8, size=48), quiet=True)
    ds, env = tmp_path / "ds", {**os.environ, "HF_HUB_OFFLINE": "1"}
    src, recipe = str(tmp_path / "scenes/train/rgb"), str(ROOT / "manifests/scenes.toml")
    build = [_mmforge(), "build-dataset", src, str(ds), "--recipe", recipe, "--executor", "local", "--quiet"]
    done = subprocess.run(build, capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((ds / "manifest.json").read_text())
    assert manifest["totals"]["written"] == 8 and manifest["totals"]["failed"] == 0
    assert manifest["modalities"]["semseg"]["classes"][:2] == ["floor", "box"]
    for source, members in shard_samples(ds).items():  # labels arrive exactly: metres, ids and void
        meta = json.loads(members["json"])
        metres = png_of(members["depth.png"]).astype(np.float64) * meta["depth"]["scale"] + meta["depth"]["offset"]
        want = png(tmp_path / "scenes/train/depth" / source).astype(np.float64) / 1000
        assert np.abs(np.where(want > 0, metres, 0) - want).max() <= meta["depth"]["scale"] + 1e-9
        np.testing.assert_array_equal(png_of(members["semseg.png"]), png(tmp_path / "scenes/train/semseg" / source))
    verify = subprocess.run(
        [_mmforge(), "verify", str(ds), "--deep"], capture_output=True, text=True, env=env, timeout=240
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_task_folders_are_the_files_labeler_layout(tmp_path: Path) -> None:
    render_scenes(tmp_path / "s", cfg(n=1), quiet=True)
    assert sorted(p.name for p in (tmp_path / "s/train").iterdir()) == sorted(TASKS)
    with (
        Image.open(tmp_path / "s/train/depth/data/000000.png") as depth,
        Image.open(tmp_path / "s/train/semseg/data/000000.png") as ids,
    ):
        assert depth.mode == "I;16" and ids.mode == "P" and depth.size == ids.size == (32, 32)
    assert scene_name(5, 10**6) == "000005.png" and scene_name(5, 10**6 + 1) == "0000005.png"


def test_the_scenes_command_renders_and_refuses_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    runner = CliRunner()
    ok = runner.invoke(app, ["scenes", str(tmp_path / "s"), "--n", "2", "--seed", "3", "--workers", "1", "--quiet"])
    assert ok.exit_code == 0 and "2 scenes rendered, 0 kept" in ok.output
    assert sorted(p.name for p in (tmp_path / "s" / "train" / "rgb" / "data").iterdir()) == ["000000.png", "000001.png"]
    bad_options = (["--n", "0"], ["--n", "2", "--size", "8"], ["--n", "2", "--seed", "4"])
    bad_options += (
        ["--n", "2", "--workers", "-1"],
        ["--n", "2", "--distance", "1:x"],
        ["--n", "2", "--distance", "9:1"],
    )
    for bad in bad_options:
        result = runner.invoke(app, ["scenes", str(tmp_path / "s"), *bad])
        assert result.exit_code == 2 and result.output.count("\n") == 1 and result.output.startswith("error: "), bad


def test_an_out_folder_that_cannot_be_written_is_one_line() -> None:
    """/sys refuses a new folder even to root: the error a read-only or full disk gives, as one line, exit 2."""
    from typer.testing import CliRunner

    from pipeline.cli.app import app

    result = CliRunner().invoke(app, ["scenes", "/sys/mmforge-scenes", "--n", "1", "--workers", "1", "--quiet"])
    assert result.exit_code == 2 and result.output.startswith("error: cannot write the scenes to /sys/mmforge-scenes")
    assert result.output.count("\n") == 1

"""Rendered scenes with exact labels: a dataset source whose depth, classes and normals are known, not predicted.

Each scene is a floor (a finite slab) with 2-6 primitives resting on it, rendered by pybullet's CPU renderer
(`ER_TINY_RENDERER`, shadows on). Everything is drawn at random per scene: the shapes, their sizes, poses and
colours, the floor's size and colour, the camera (distance, height, direction) and the light. A pixel's class
is the SHAPE it shows, never its colour, so class and depth must be read from shading, outline and occlusion.

Usage:

    from pipeline.synth.scenes import SceneConfig, render_scenes
    if __name__ == "__main__":  # workers are spawned processes: a script needs this guard
        render_scenes(Path("scenes"), SceneConfig(n=1000, seed=0, size=96, split="train"))
    # the same from the command line: mmforge scenes scenes --n 1000 --seed 0 --size 96 --split train
    # then shards of ground truth: mmforge build-dataset scenes/train/rgb ds --recipe manifests/scenes.toml

    # one scene in-process, as arrays (no files):
    client = pybullet.connect(pybullet.DIRECT)
    arrays = render_scene(client, scene_rng(0, "train", 0), SceneConfig(n=1, seed=0, workers=1))

Layout under OUT (one split per call; another split is added beside; names are the scene's index in its
split, 6 digits, more when n > 10^6):

    OUT/<split>/rgb/data/000000.png      8-bit RGB, size x size
    OUT/<split>/depth/data/000000.png    16-bit grey: planar depth in millimetres (round(metres * 1000)), 0 = invalid
    OUT/<split>/semseg/data/000000.png   8-bit class ids 0..C-1 (palette mode, the class table's colours), 255 = void
    OUT/<split>/normal/data/000000.png   8-bit RGB: camera-frame unit normals, v = round((n + 1) * 127.5)
    OUT/classes.tsv                      the class table (index name r g b), as labelers/data/scenes-<set>.tsv
    OUT/scenes.json                      generator version, class set, size, seed, camera, per-split counts

Labels:
- depth: from the z-buffer z in [0, 1], depth = far * near / (far - (far - near) * z) in metres: the distance
  along the camera's viewing axis (planar z-depth, what a depth camera measures), not the length of the ray.
- classes: by the body hit (pybullet's segmentation mask), body -> shape -> class id; void where nothing is hit.
- normals: the outward normal of the ideal shape (box face, sphere, cylinder side or cap, capsule) at the
  back-projected point (round shapes are rendered as meshes within 0.5 % of their radius), in the camera
  frame of Omnidata / 2D-3D-S: x right, y down, z towards the camera; a floor seen from above is (0, -, +).
  Void pixels are the zero vector in memory and FACING (0, 0, 1), stored as (128, 128, 255), on disk, as
  the `normal` codec stores an unknown normal.
Depth is 0, classes 255 and normals void exactly where nothing is hit (the sky beyond the floor's edge).

Determinism: scene i of split s with seed K is drawn from a numpy Generator seeded by (K, sha256(s), i), so
its bytes depend on neither the number of workers nor the order of work, the same seed gives byte-identical
PNGs, and different splits give different scenes.

Reliability: every file is written to a temp name and renamed (rgb last, so the builder never lists a scene
whose labels are missing); a rerun keeps scenes whose four files exist and renders the rest. OUT is refused
when it is a file, holds files that are not ours, or holds scenes of other settings (`ScenesError`).
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from labelers.classes import ClassTable, class_table


def _import_pybullet() -> Any:
    """pybullet, imported with its C-level banner ("pybullet build time: ...") kept off the terminal: a command's
    output is its own report and its errors, one line each."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            import pybullet

            ctypes.CDLL(None).fflush(None)  # C's buffered streams, while they still point at /dev/null
        return pybullet
    finally:
        for fd, saved_fd in zip((1, 2), saved, strict=True):
            os.dup2(saved_fd, fd)
            os.close(saved_fd)


pb = _import_pybullet()

GENERATOR = "multimae-forge scenes"
GENERATOR_VERSION = 1
TASKS = ("rgb", "depth", "semseg", "normal")  # task folders; rgb is renamed into place last
SIZE_RANGE = (32, 1024)
MAX_OBJECTS = 12
MAX_SCENES = 10_000_000  # of one split (a render plans every index up front)
MAX_WORKERS = 1024  # processes
VOID = 255  # class id where nothing is hit (the ignore id of class maps)
FACING = (0.0, 0.0, 1.0)  # the stored normal where none is known
FOV_DEG, NEAR, FAR = 60.0, 0.05, 20.0  # vertical field of view (square images), clip planes in metres
DISTANCE = (1.8, 3.4)  # metres from the camera to the point it looks at, drawn uniformly (the default range)
DISTANCE_RANGE = (0.6, 10.0)  # what --distance accepts: nearer would put the camera inside the shapes
PNG_LEVEL = 6
PLACE_RADIUS = 0.8  # metres: objects' centres lie within this distance of the floor's centre
_SPLIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

Dims = tuple[float, ...]
Footprint = tuple[float, float, float]  # x, y, radius of a body's circle on the floor


class ScenesError(ValueError):
    """Options out of range, or an OUT that this generator must not write into."""


# ---------------------------------------------------------------------------------------------------- shapes


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _box_normals(p: np.ndarray, dims: Dims) -> np.ndarray:
    """The face whose plane the point is nearest (the smallest | half extent_i - |p_i| |)."""
    axis = np.argmin(np.abs(np.asarray(dims) - np.abs(p)), axis=1)
    rows = np.arange(len(p))
    n = np.zeros_like(p)
    n[rows, axis] = np.where(p[rows, axis] >= 0, 1.0, -1.0)
    return n


def _sphere_normals(p: np.ndarray, dims: Dims) -> np.ndarray:
    return _unit(p)


def _cylinder_normals(p: np.ndarray, dims: Dims) -> np.ndarray:
    """Axis along local z: a cap where the point is nearer the cap plane than the side."""
    radius, length = dims
    rho = np.hypot(p[:, 0], p[:, 1])
    cap = np.abs(np.abs(p[:, 2]) - length / 2) < np.abs(rho - radius)
    side = _unit(np.stack([p[:, 0], p[:, 1], np.zeros_like(rho)], axis=1))
    caps = np.zeros_like(p)
    caps[:, 2] = np.where(p[:, 2] >= 0, 1.0, -1.0)
    return np.where(cap[:, None], caps, side)


def _capsule_normals(p: np.ndarray, dims: Dims) -> np.ndarray:
    """Axis along local z: away from the nearest point of the core segment."""
    length = dims[1]
    core = np.clip(p[:, 2], -length / 2, length / 2)
    return _unit(p - np.stack([np.zeros_like(core), np.zeros_like(core), core], axis=1))


Profile = list[list[tuple[float, float, float, float]]]  # strips of (rho, z, normal rho, normal z)
CAPSULE_ASPECTS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)  # cylinder length / radius of a capsule
SEGMENTS = 32  # around the axis: a chord strays r * (1 - cos(pi / 32)) = 0.5 % of r from the ideal surface


def _arc(radius: float, z0: float, start: float, stop: float, steps: int) -> list[tuple[float, float, float, float]]:
    """Points of a meridian arc of a sphere of `radius` centred at (0, z0), polar angles start..stop."""
    angles = np.linspace(start, stop, steps + 1)
    return [(radius * math.sin(a), z0 + radius * math.cos(a), math.sin(a), math.cos(a)) for a in angles]


def _revolve(radial: np.ndarray, axial: np.ndarray) -> list[list[float]]:
    """(P,) radial and axial components turned through SEGMENTS + 1 angles -> P * (SEGMENTS + 1) 3-vectors."""
    phi = np.linspace(0, 2 * math.pi, SEGMENTS + 1)
    x, y = radial[:, None] * np.cos(phi), radial[:, None] * np.sin(phi)
    return np.stack([x, y, np.broadcast_to(axial[:, None], x.shape)], axis=-1).reshape(-1, 3).tolist()


def _lathe(profile: Profile) -> dict[str, Any]:
    """A closed surface of revolution about local z: pybullet mesh arguments with smooth outward normals."""
    points = np.asarray([point for strip in profile for point in strip], np.float64)  # (P, 4)
    return {
        "shapeType": pb.GEOM_MESH,
        "vertices": _revolve(points[:, 0], points[:, 1]),
        "normals": _revolve(points[:, 2], points[:, 3]),
        "indices": list(_triangles(tuple(len(strip) for strip in profile))),
        "uvs": [(0.0, 0.0)] * (len(points) * (SEGMENTS + 1)),
    }


@cache
def _triangles(strips: tuple[int, ...]) -> tuple[int, ...]:
    """Vertex indices of the quads between consecutive rings of each strip, two triangles each, wound outward
    ((down the strip) x (around the axis) points out)."""
    width, indices, base = SEGMENTS + 1, [], 0
    for length in strips:
        for i in range(length - 1):
            for k in range(SEGMENTS):
                a, b = base + i * width + k, base + (i + 1) * width + k
                indices += [a, b, a + 1, b, b + 1, a + 1]
        base += length * width
    return tuple(indices)


@cache
def _unit_sphere() -> dict[str, Any]:
    return _lathe([_arc(1.0, 0.0, 0.0, math.pi, SEGMENTS // 2)])


@cache
def _unit_cylinder() -> dict[str, Any]:
    return _lathe(
        [[(0, 0.5, 0, 1), (1, 0.5, 0, 1)], [(1, 0.5, 1, 0), (1, -0.5, 1, 0)], [(1, -0.5, 0, -1), (0, -0.5, 0, -1)]]
    )


def _sphere_mesh(d: Dims) -> dict[str, Any]:
    return {**_unit_sphere(), "meshScale": [d[0]] * 3}


def _cylinder_mesh(d: Dims) -> dict[str, Any]:
    """The unit cylinder scaled (r, r, length): its normals keep their directions under that scaling."""
    return {**_unit_cylinder(), "meshScale": [d[0], d[0], d[1]]}


def _capsule_mesh(d: Dims) -> dict[str, Any]:
    """The capsule of radius 1 and its length / radius (one of CAPSULE_ASPECTS), scaled by its radius."""
    return {**_unit_capsule(round(d[1] / d[0], 6)), "meshScale": [d[0]] * 3}


@cache
def _unit_capsule(length: float) -> dict[str, Any]:
    h, quarter = length / 2, SEGMENTS // 4
    return _lathe([_arc(1.0, h, 0.0, math.pi / 2, quarter) + _arc(1.0, -h, math.pi / 2, math.pi, quarter)])


def _draw_capsule(rng: np.random.Generator) -> Dims:
    """Radius, and a length of radius x one of CAPSULE_ASPECTS: pybullet keeps every mesh it is given (the
    arguments' references leak), so meshes come from a few cached templates, never one per object."""
    radius = float(rng.uniform(0.05, 0.16))
    return (radius, radius * CAPSULE_ASPECTS[int(rng.integers(len(CAPSULE_ASPECTS)))])


@dataclass(frozen=True)
class Shape:
    """A primitive: how its size is drawn, how pybullet draws it, how it rests (height of its centre and radius
    of its footprint, upright or lying on its side) and its outward normals at local points."""

    name: str
    draw: Callable[[np.random.Generator], Dims]
    visual: Callable[[Dims], dict[str, Any]]
    rest: Callable[[Dims, bool], tuple[float, float]]
    normals: Callable[[np.ndarray, Dims], np.ndarray]
    can_lie: bool = False


SHAPES: dict[str, Shape] = {
    "box": Shape(
        "box",
        draw=lambda rng: tuple(float(v) for v in rng.uniform(0.07, 0.3, 3)),
        visual=lambda d: {"shapeType": pb.GEOM_BOX, "halfExtents": list(d)},
        rest=lambda d, lying: (d[2], math.hypot(d[0], d[1])),
        normals=_box_normals,
    ),
    "sphere": Shape(
        "sphere",
        draw=lambda rng: (float(rng.uniform(0.08, 0.3)),),
        visual=_sphere_mesh,
        rest=lambda d, lying: (d[0], d[0]),
        normals=_sphere_normals,
    ),
    "cylinder": Shape(
        "cylinder",
        draw=lambda rng: (float(rng.uniform(0.05, 0.22)), float(rng.uniform(0.12, 0.6))),
        visual=_cylinder_mesh,
        rest=lambda d, lying: (d[0], math.hypot(d[0], d[1] / 2)) if lying else (d[1] / 2, d[0]),
        normals=_cylinder_normals,
        can_lie=True,
    ),
    "capsule": Shape(
        "capsule",
        draw=_draw_capsule,
        visual=_capsule_mesh,
        rest=lambda d, lying: (d[0], d[1] / 2 + d[0]) if lying else (d[1] / 2 + d[0], d[0]),
        normals=_capsule_normals,
        can_lie=True,
    ),
}


@dataclass(frozen=True)
class ClassSet:
    """Classes of a scene: 0 is the floor, k the k-th shape; `table` names the class table in labelers/data."""

    table: str
    shapes: tuple[str, ...]


CLASS_SETS: dict[str, ClassSet] = {
    "primitives": ClassSet("scenes-primitives", ("box", "sphere", "cylinder", "capsule")),
}


# ---------------------------------------------------------------------------------------------------- config


def _default_workers() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, kw_only=True)
class SceneConfig:
    """What to render: `n` scenes of `split`, drawn from `seed`, `size` x `size` pixels, of class set `classes`
    with `min_objects`..`max_objects` shapes each, the camera `distance` (lo, hi metres) from the point it looks at
    (nearer: the shapes fill more of the picture), on `workers` processes (the bytes do not depend on it)."""

    n: int
    seed: int
    size: int = 96
    split: str = "train"
    classes: str = "primitives"
    min_objects: int = 2
    max_objects: int = 6
    distance: tuple[float, float] = DISTANCE
    workers: int = field(default_factory=_default_workers)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ScenesError("; ".join(problems))

    def problems(self) -> list[str]:
        lo, hi = SIZE_RANGE
        checks = [
            (1 <= self.n <= MAX_SCENES, f"n must be at least 1 and at most {MAX_SCENES:,}, got {self.n}"),
            (0 <= self.seed < 2**63, f"seed must be 0..2^63-1, got {self.seed}"),
            (lo <= self.size <= hi, f"size must be {lo}..{hi} pixels, got {self.size}"),
            (
                bool(_SPLIT.match(self.split)),
                f"split must be letters, digits, '_' or '-' (a folder name), got {self.split!r}",
            ),
            (self.classes in CLASS_SETS, f"unknown class set {self.classes!r}: one of {', '.join(CLASS_SETS)}"),
            (
                1 <= self.min_objects <= self.max_objects <= MAX_OBJECTS,
                f"objects must be 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, "
                f"got {self.min_objects}..{self.max_objects}",
            ),
            (
                DISTANCE_RANGE[0] <= self.distance[0] <= self.distance[1] <= DISTANCE_RANGE[1],
                f"distance must be {DISTANCE_RANGE[0]} <= lo <= hi <= {DISTANCE_RANGE[1]} metres, got "
                f"{self.distance[0]}..{self.distance[1]}",
            ),
            (
                1 <= self.workers <= MAX_WORKERS,
                f"workers must be at least 1 and at most {MAX_WORKERS}, got {self.workers}",
            ),
        ]
        return [message for ok, message in checks if not ok]

    def settings(self) -> dict[str, Any]:
        """What the bytes of a scene depend on (besides split and index): must match within one OUT."""
        return {
            "generator": GENERATOR,
            "version": GENERATOR_VERSION,
            "classes": self.classes,
            "size": self.size,
            "seed": self.seed,
            "min_objects": self.min_objects,
            "max_objects": self.max_objects,
            "camera": {"fov_deg": FOV_DEG, "near": NEAR, "far": FAR}
            | ({} if self.distance == DISTANCE else {"distance": list(self.distance)}),
        }


# ---------------------------------------------------------------------------------------------------- a scene


@dataclass(frozen=True)
class Camera:
    """A pinhole camera at `eye` looking at `target`, world z up; square images, vertical field of view."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    fov_deg: float = FOV_DEG
    near: float = NEAR
    far: float = FAR

    def axes(self) -> np.ndarray:
        """Rows: right, down, forward (unit vectors in the world); the image's x, y and viewing direction."""
        forward = _unit(np.subtract(self.target, self.eye).astype(np.float64))
        right = _unit(np.cross(forward, (0.0, 0.0, 1.0)))
        return np.stack([right, np.cross(forward, right), forward])


@dataclass(frozen=True)
class Light:
    direction: tuple[float, float, float]  # where the light is, seen from the world's origin
    color: tuple[float, float, float]
    ambient: float
    diffuse: float
    specular: float


@dataclass(frozen=True)
class Body:
    """One rendered body: a shape of `dims` (class id `label`), at `position`, turned by `rotation` (3 x 3,
    local -> world, row-major), coloured `rgba`."""

    shape: str
    label: int
    dims: Dims
    position: tuple[float, float, float]
    rotation: tuple[float, ...]
    rgba: tuple[float, float, float, float]

    def matrix(self) -> np.ndarray:
        return np.asarray(self.rotation, np.float64).reshape(3, 3)


@dataclass(frozen=True)
class Scene:
    """Everything a rendering depends on: the floor is `bodies[0]`."""

    camera: Camera
    light: Light
    bodies: tuple[Body, ...]


def _turn(yaw: float, tilt: float) -> np.ndarray:
    """Rotation about world z by `yaw` after a rotation about x by `tilt` (local -> world)."""
    cz, sz, cx, sx = math.cos(yaw), math.sin(yaw), math.cos(tilt), math.sin(tilt)
    return np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
        [[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]]
    )


def quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """A proper rotation matrix -> pybullet's quaternion (x, y, z, w)."""
    m = rotation
    w = math.sqrt(max(0.0, 1.0 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    x = math.copysign(math.sqrt(max(0.0, 1.0 + m[0, 0] - m[1, 1] - m[2, 2])) / 2, m[2, 1] - m[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1.0 - m[0, 0] + m[1, 1] - m[2, 2])) / 2, m[0, 2] - m[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1.0 - m[0, 0] - m[1, 1] + m[2, 2])) / 2, m[1, 0] - m[0, 1])
    return (x, y, z, w)


def _colour(rng: np.random.Generator) -> tuple[float, float, float, float]:
    r, g, b = (float(v) for v in rng.uniform(0.05, 1.0, 3))
    return (r, g, b, 1.0)


def _draw_camera(rng: np.random.Generator, near_far: tuple[float, float] = DISTANCE) -> Camera:
    """The camera `near_far` metres (drawn uniformly) from a point near the floor's centre, looking at it."""
    target = (float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.25, 0.25)), float(rng.uniform(0.0, 0.3)))
    distance, elevation, azimuth = rng.uniform(*near_far), math.radians(rng.uniform(6, 72)), rng.uniform(0, 2 * math.pi)
    offset = distance * np.array(
        [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)]
    )
    eye = np.add(target, offset)
    return Camera(eye=(float(eye[0]), float(eye[1]), float(eye[2])), target=target)


def _draw_light(rng: np.random.Generator) -> Light:
    azimuth, elevation = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(25, 85))
    direction = (math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation))
    color = tuple(float(v) for v in rng.uniform(0.75, 1.0, 3))
    ambient, diffuse, specular = (float(v) for v in rng.uniform((0.25, 0.35, 0.0), (0.65, 0.8, 0.6)))
    return Light(direction, (color[0], color[1], color[2]), ambient, diffuse, specular)


def _draw_floor(rng: np.random.Generator) -> Body:
    half = (float(rng.uniform(3.0, 8.0)), float(rng.uniform(3.0, 8.0)), 0.01)
    return Body("box", 0, half, (0.0, 0.0, -0.01), tuple(np.eye(3).ravel().tolist()), _colour(rng))


def _clear(x: float, y: float, radius: float, height: float, placed: list[Footprint], eye: np.ndarray) -> bool:
    """Whether a body at (x, y) of footprint `radius`, centre `height`, overlaps no placed body nor the camera."""
    apart = all(math.hypot(x - a, y - b) > radius + r for a, b, r in placed)
    return apart and math.dist((x, y, height), eye) > math.hypot(radius, height) + 2 * NEAR


def _draw_object(rng: np.random.Generator, classes: ClassSet, placed: list[Footprint], eye: np.ndarray) -> Body | None:
    """A shape resting on the floor within PLACE_RADIUS of the centre, clear of the `placed` footprints and of
    the camera; None when 20 tries find no room. Appends its footprint to `placed`."""
    label = int(rng.integers(len(classes.shapes))) + 1
    shape = SHAPES[classes.shapes[label - 1]]
    dims, lying = shape.draw(rng), shape.can_lie and bool(rng.random() < 0.5)
    height, radius = shape.rest(dims, lying)
    rotation = _turn(float(rng.uniform(0, 2 * math.pi)), math.pi / 2 if lying else 0.0)
    colour = _colour(rng)
    for _ in range(20):
        x, y = (float(v) for v in rng.uniform(-PLACE_RADIUS, PLACE_RADIUS, 2))
        if math.hypot(x, y) <= PLACE_RADIUS and _clear(x, y, radius, height, placed, eye):
            placed.append((x, y, radius))
            return Body(shape.name, label, dims, (x, y, height), tuple(rotation.ravel().tolist()), colour)
    return None


def draw_scene(rng: np.random.Generator, cfg: SceneConfig) -> Scene:
    """A random scene (pure numpy: no renderer needed). Draws always happen in the same order."""
    camera, light, floor = _draw_camera(rng, cfg.distance), _draw_light(rng), _draw_floor(rng)
    count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    placed: list[Footprint] = []
    eye = np.asarray(camera.eye)
    drawn = [_draw_object(rng, CLASS_SETS[cfg.classes], placed, eye) for _ in range(count)]
    return Scene(camera, light, (floor, *(body for body in drawn if body is not None)))


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of scene `index` of `split`: independent of workers and order, stable across runs."""
    split_key = int.from_bytes(hashlib.sha256(split.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, split_key, index]))


# ---------------------------------------------------------------------------------------------------- rendering


def _build(client: int, scene: Scene) -> None:
    """The scene's bodies in a fresh world of `client`; body unique ids are their indices in `scene.bodies`."""
    pb.resetSimulation(physicsClientId=client)
    for uid, body in enumerate(scene.bodies):
        visual = pb.createVisualShape(
            rgbaColor=body.rgba, physicsClientId=client, **SHAPES[body.shape].visual(body.dims)
        )
        made = pb.createMultiBody(
            baseMass=0,
            baseVisualShapeIndex=visual,
            basePosition=body.position,
            baseOrientation=quaternion(body.matrix()),
            physicsClientId=client,
        )
        if made != uid:
            raise RuntimeError(f"pybullet gave body id {made}, expected {uid} (the world was not empty)")


def _snapshot(client: int, scene: Scene, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgba uint8, z-buffer float32, body ids int32 with -1 where nothing is hit) of the built scene."""
    cam, light = scene.camera, scene.light
    view = pb.computeViewMatrix(cam.eye, cam.target, (0.0, 0.0, 1.0), physicsClientId=client)
    projection = pb.computeProjectionMatrixFOV(cam.fov_deg, 1.0, cam.near, cam.far, physicsClientId=client)
    _, _, rgba, z, ids = pb.getCameraImage(
        size, size, view, projection, shadow=1, renderer=pb.ER_TINY_RENDERER, physicsClientId=client,
        lightDirection=light.direction, lightColor=light.color, lightAmbientCoeff=light.ambient,
        lightDiffuseCoeff=light.diffuse, lightSpecularCoeff=light.specular,
    )  # fmt: skip
    shape = (size, size)
    return (np.asarray(rgba, np.uint8).reshape(*shape, 4), np.asarray(z, np.float32).reshape(shape),
            np.asarray(ids, np.int32).reshape(shape))  # fmt: skip


def metric_depth(z: np.ndarray, near: float, far: float) -> np.ndarray:
    """z-buffer values in [0, 1] -> planar depth in metres: far * near / (far - (far - near) * z)."""
    return (far * near / (far - (far - near) * z.astype(np.float64))).astype(np.float32)


def world_points(depth: np.ndarray, camera: Camera) -> np.ndarray:
    """H x W planar depths -> H x W x 3 world points. The tiny renderer samples pixel (row i, column j) at the
    image point (j, i + 1), a corner, not the centre (it rasterises a y-up image on integer coordinates)."""
    h, w = depth.shape
    t = math.tan(math.radians(camera.fov_deg) / 2)
    x = (np.arange(w) * (2 / w) - 1) * t * (w / h)
    y = ((np.arange(h) + 1) * (2 / h) - 1) * t  # down the image
    right, down, forward = camera.axes()
    rays = forward + x[None, :, None] * right + y[:, None, None] * down
    return np.asarray(camera.eye) + depth[..., None].astype(np.float64) * rays


def _normals(ids: np.ndarray, depth: np.ndarray, scene: Scene) -> np.ndarray:
    """H x W x 3 unit normals in the camera frame (x right, y down, z towards the camera); 0 where void."""
    points = world_points(depth, scene.camera)
    world = np.zeros_like(points)
    for uid, body in enumerate(scene.bodies):
        hit = ids == uid
        if hit.any():
            r = body.matrix()
            local = (points[hit] - np.asarray(body.position)) @ r
            world[hit] = SHAPES[body.shape].normals(local, body.dims) @ r.T
    right, down, forward = scene.camera.axes()
    return (world @ np.stack([right, down, -forward], axis=1)).astype(np.float32)


def render(client: int, scene: Scene, size: int) -> dict[str, np.ndarray]:
    """A scene on pybullet connection `client` -> rgb (uint8 H x W x 3), depth (float32 metres, 0 = nothing hit),
    classes (uint8, 255 = nothing hit), normals (float32 H x W x 3, camera frame, 0 where nothing is hit)."""
    _build(client, scene)
    rgba, z, ids = _snapshot(client, scene, size)
    hit = ids >= 0
    depth = np.where(hit, metric_depth(z, scene.camera.near, scene.camera.far), 0).astype(np.float32)
    labels = np.array([VOID] + [body.label for body in scene.bodies], np.uint8)
    classes = labels[np.clip(ids, -1, len(scene.bodies) - 1) + 1]
    return {"rgb": rgba[..., :3].copy(), "depth": depth, "classes": classes, "normals": _normals(ids, depth, scene)}


def render_scene(client: int, rng: np.random.Generator, cfg: SceneConfig) -> dict[str, np.ndarray]:
    """One random scene drawn from `rng` rendered on pybullet connection `client` (see `render`)."""
    return render(client, draw_scene(rng, cfg), cfg.size)


# ---------------------------------------------------------------------------------------------------- files


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=PNG_LEVEL)  # fixed settings, no metadata: same bytes every run
    return buf.getvalue()


def depth_millimetres(depth: np.ndarray) -> np.ndarray:
    """float metres (0 = invalid) -> uint16 millimetres; a hit never rounds to 0, depths beyond 65.535 m clip."""
    mm = np.clip(np.rint(depth.astype(np.float64) * 1000), 1, 65535).astype(np.uint16)
    return np.where(depth > 0, mm, 0).astype(np.uint16)


def normal_bytes(normals: np.ndarray) -> np.ndarray:
    """float unit normals (0 = void) -> uint8 v = round((n + 1) * 127.5); void stored as FACING."""
    known = np.linalg.norm(normals, axis=-1, keepdims=True) > 1e-6
    n = np.where(known, normals, np.asarray(FACING))
    return np.clip(np.rint((n.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def encode_scene(arrays: dict[str, np.ndarray], palette: list[int]) -> dict[str, bytes]:
    """A rendered scene -> the PNG bytes of its four task files (semseg in palette mode, ids unchanged)."""
    semseg = Image.fromarray(arrays["classes"])
    semseg.putpalette(palette)
    return {
        "rgb": _png(Image.fromarray(arrays["rgb"])),
        "depth": _png(Image.fromarray(depth_millimetres(arrays["depth"]))),
        "semseg": _png(semseg),
        "normal": _png(Image.fromarray(normal_bytes(arrays["normals"]))),
    }


def scene_name(index: int, n: int) -> str:
    """The file name of scene `index` in a split of `n`: 6 digits, more when n > 10^6."""
    return f"{index:0{max(6, len(str(n - 1)))}d}.png"


def _publish(folders: dict[str, Path], name: str, files: dict[str, bytes]) -> None:
    """Each file to a temp name, then renamed into place; rgb last, so a listed image has its labels."""
    temps = {}
    for task in TASKS:
        temps[task] = folders[task] / f".{name}.{os.getpid()}.tmp"
        temps[task].write_bytes(files[task])
    for task in (*TASKS[1:], TASKS[0]):
        os.replace(temps[task], folders[task] / name)


# ---------------------------------------------------------------------------------------------------- workers


@dataclass(frozen=True)
class _Chunk:
    """Scenes for one worker task: everything it needs, small to pickle."""

    root: Path
    cfg: SceneConfig
    palette: tuple[int, ...]
    indices: tuple[int, ...]


_client: int | None = None  # this process's pybullet connection, made once and reused


def _connect() -> int:
    global _client
    if _client is None or not pb.isConnected(physicsClientId=_client):
        _client = pb.connect(pb.DIRECT)
    return _client


def _disconnect() -> None:
    global _client
    if _client is not None and pb.isConnected(physicsClientId=_client):
        pb.disconnect(physicsClientId=_client)
    _client = None


def _render_chunk(chunk: _Chunk) -> int:
    """Render and publish the chunk's scenes; returns how many."""
    client, cfg = _connect(), chunk.cfg
    folders = task_folders(chunk.root, cfg.split)
    for index in chunk.indices:
        arrays = render_scene(client, scene_rng(cfg.seed, cfg.split, index), cfg)
        _publish(folders, scene_name(index, cfg.n), encode_scene(arrays, list(chunk.palette)))
    return len(chunk.indices)


def _chunks(todo: list[int], size: int) -> Iterator[tuple[int, ...]]:
    for start in range(0, len(todo), size):
        yield tuple(todo[start : start + size])


def _in_process(chunks: Iterable[_Chunk], bar: tqdm) -> None:
    try:
        for chunk in chunks:
            bar.update(_render_chunk(chunk))
    finally:
        _disconnect()


def _in_pool(chunks: Iterable[_Chunk], workers: int, bar: tqdm) -> None:
    """At most 2 chunks per worker in flight, so 100k scenes never become 100k futures."""
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        pending: set[Future[int]] = set()
        for chunk in chunks:
            pending = _drain(pending, bar, 2 * workers - 1)
            pending.add(pool.submit(_render_chunk, chunk))
        _drain(pending, bar, 0)


def _drain(pending: set[Future[int]], bar: tqdm, keep: int) -> set[Future[int]]:
    """Wait until at most `keep` futures are pending, counting finished scenes (a worker's error is raised)."""
    while len(pending) > keep:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        bar.update(sum(f.result() for f in done))
    return pending


# ---------------------------------------------------------------------------------------------------- OUT


def task_folders(out: Path, split: str) -> dict[str, Path]:
    """OUT/<split>/<task>/data for each task folder."""
    return {task: out / split / task / "data" for task in TASKS}


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ScenesError(f"{path} is not a readable scenes.json ({err}); choose another OUT") from None
    splits = record.get("splits") if isinstance(record, dict) else None
    if not isinstance(splits, dict) or not all(isinstance(v, dict) for v in splits.values()):
        raise ScenesError(f"{path} is not a scenes.json of {GENERATOR}; choose another OUT")
    return record


def _existing(out: Path) -> dict[str, Any] | None:
    """OUT's scenes.json, None for a new or empty OUT; refuses a file, or a folder of files not ours."""
    if out.exists() and not out.is_dir():
        raise ScenesError(f"OUT {out} is a file, not a folder")
    record = out / "scenes.json"
    if record.is_file():
        return _read_record(record)
    if out.is_dir() and any(out.iterdir()):
        raise ScenesError(f"OUT {out} holds files but no scenes.json (not made by {GENERATOR}); choose an empty folder")
    return None


def _check_same(record: dict[str, Any], cfg: SceneConfig, out: Path) -> None:
    """Two generations never mix: same settings, and a split only grows within its file-name width."""
    ours = cfg.settings()
    differ = [f"{k} {record.get(k)!r} (asked {ours[k]!r})" for k in ours if record.get(k) != ours[k]]
    if differ:
        raise ScenesError(f"OUT {out} holds scenes of other settings: {', '.join(differ)}; choose another OUT")
    before = record["splits"].get(cfg.split, {}).get("n")
    if isinstance(before, int) and (cfg.n < before or len(scene_name(before - 1, before)) != len(scene_name(0, cfg.n))):
        raise ScenesError(
            f"OUT {out} holds {before} scenes of split {cfg.split!r}; n may grow (same name width), asked {cfg.n}"
        )


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def _table_text(table: ClassTable) -> str:
    pairs = enumerate(zip(table.names, table.colors, strict=True))
    rows = [f"{i}\t{name}\t{r}\t{g}\t{b}" for i, (name, (r, g, b)) in pairs]
    return "\n".join(["index\tname\tr\tg\tb", *rows]) + "\n"


def _prepare(out: Path, cfg: SceneConfig, table: ClassTable) -> dict[str, Any]:
    """OUT checked, its record (scenes.json) and class table written, task folders made, stale temps removed."""
    record = _existing(out)
    if record is not None:
        _check_same(record, cfg, out)
    splits = {**(record["splits"] if record else {}), cfg.split: {"n": cfg.n, "complete": False}}
    record = {**cfg.settings(), "class_table": table.name, "class_names": list(table.names), "splits": splits}
    record["files"] = _FILES
    for folder in task_folders(out, cfg.split).values():
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):
            stale.unlink()
    _write_atomic(out / "classes.tsv", _table_text(table))
    _write_atomic(out / "scenes.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


_FILES = {
    "rgb": "8-bit RGB PNG",
    "depth": "16-bit PNG, planar depth (along the viewing axis) in millimetres, 0 = nothing hit",
    "semseg": "8-bit PNG (palette mode), class ids of classes.tsv by shape, 255 = nothing hit",
    "normal": "8-bit RGB PNG, v = round((n + 1) * 127.5), camera frame x right, y down, z towards the camera; "
    "nothing hit = (0, 0, 1)",
}


def _done(out: Path, cfg: SceneConfig) -> set[int]:
    """Indices of the split's scenes whose four files exist (one listing per folder, not 4 n stats)."""
    names = [{entry.name for entry in os.scandir(folder)} for folder in task_folders(out, cfg.split).values()]
    present = set.intersection(*names)
    return {i for i in range(cfg.n) if scene_name(i, cfg.n) in present}


# ---------------------------------------------------------------------------------------------------- API


@dataclass(frozen=True)
class ScenesSummary:
    """What a `render_scenes` call did: scenes rendered now, kept from an earlier run, wall seconds."""

    out: Path
    split: str
    rendered: int
    kept: int
    seconds: float

    @property
    def scenes_per_second(self) -> float:
        return self.rendered / self.seconds if self.seconds > 0 else 0.0


def _chunk_size(todo: int, workers: int) -> int:
    """Big enough to amortise a task's overhead, small enough that every worker gets several."""
    return max(1, min(32, todo // (4 * workers)))


def render_scenes(out: Path, cfg: SceneConfig, *, quiet: bool = False) -> ScenesSummary:
    """Render split `cfg.split` of `cfg.n` scenes into OUT (layout in the module docstring), in parallel on
    `cfg.workers` processes (in this process for 1), keeping scenes an earlier run completed."""
    start, out = time.perf_counter(), Path(out)
    table = class_table(CLASS_SETS[cfg.classes].table)
    record = _prepare(out, cfg, table)
    done = _done(out, cfg)
    todo = [i for i in range(cfg.n) if i not in done]
    if done and not quiet:
        print(f"scenes: kept {len(done)} of {cfg.n} already rendered in {out / cfg.split}", file=sys.stderr)
    _render_all(out, cfg, todo, tuple(table.palette()), quiet)
    record["splits"][cfg.split]["complete"] = True
    _write_atomic(out / "scenes.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
    return ScenesSummary(out, cfg.split, len(todo), len(done), time.perf_counter() - start)


def _render_all(out: Path, cfg: SceneConfig, todo: list[int], palette: tuple[int, ...], quiet: bool) -> None:
    """The scenes `todo` in chunks, here or on a pool, with a progress bar (scenes/s) on stderr."""
    chunks = (_Chunk(out, cfg, palette, c) for c in _chunks(todo, _chunk_size(len(todo), cfg.workers)))
    with tqdm(total=len(todo), desc=f"scenes {cfg.split}", unit="scene", file=sys.stderr, disable=quiet) as bar:
        if cfg.workers == 1 or len(todo) <= 1:
            _in_process(chunks, bar)
        else:
            _in_pool(chunks, min(cfg.workers, len(todo)), bar)

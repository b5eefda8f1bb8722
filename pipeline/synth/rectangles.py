"""Small synthetic datasets for tests and benchmarks, written by the builder's own shard path.

Each sample is a random layout of rectangles: every rectangle has a class id, an RGB colour that depends on
the class (plus noise) and a depth that depends on the class (plus a ramp), so the three modalities are
pixel-aligned and predictable from one another. The RGB images are written as PNG files to a source folder
beside OUT; a plan with the requested (uneven) shard sizes is frozen; then every shard goes through
`pipeline.build.shard.process_shard` (the real reader, encoder, shard sink and stats marker) with a "labeler" that
hands back the generated depth and class maps; the dataset documents come from `pipeline.build.dataset_files`.
The result is an ordinary dataset: `mmforge verify` passes on it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from labelers import LabelerSpec
from labelers.standards import IGNORE_ID
from pipeline.build.dataset_files import write_dataset_files
from pipeline.build.plan import Entry, Plan, ShardSpec, fingerprint, save_plan, walk_images
from pipeline.build.recipe import Recipe
from pipeline.build.shard import Labels, ShardContext, process_shard
from pipeline.format import ownership
from pipeline.format.contract import DatasetPaths
from pipeline.format.stores import location

NUM_CLASSES = 133
CLASSES = ("synthetic",)
_SPEC = {"model_class": "synthetic", "weights": "", "license": "CC0-1.0", "size": 32, "meaningless": True}
LABELERS = (
    LabelerSpec(name="synthetic-depth", modality="depth", output="depth", **_SPEC),  # type: ignore[arg-type]
    LabelerSpec(name="synthetic-semseg", modality="semseg", output="classes", num_classes=NUM_CLASSES, **_SPEC),  # type: ignore[arg-type]
)
RECIPE = Recipe(name="synthetic", description="Generated rectangles with aligned depth and classes.", labelers=LABELERS)


def make_sample(rng: np.random.Generator, h: int, w: int, ignore_border: int = 0) -> dict[str, np.ndarray]:
    """uint8 rgb (H, W, 3), float depth (H, W), uint8 class ids (H, W), all aligned; the outer `ignore_border`
    pixels of the class map are unlabelled (IGNORE_ID, as NYUv2's border), the rgb and depth unchanged."""
    ids = np.full((h, w), rng.integers(NUM_CLASSES), dtype=np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        top, left = int(rng.integers(h)), int(rng.integers(w))
        ids[top : top + int(rng.integers(8, h)), left : left + int(rng.integers(8, w))] = rng.integers(NUM_CLASSES)
    palette = np.random.default_rng(7).integers(0, 256, (NUM_CLASSES, 3))
    rgb = np.clip(palette[ids] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    ramp = np.linspace(0, 4000, w)[None, :]
    depth = ids.astype(np.float64) * 300 + ramp + 1000
    if ignore_border:
        border, b = np.ones((h, w), bool), ignore_border
        border[b:-b, b:-b] = False
        ids[border] = IGNORE_ID
    return {"rgb": rgb, "depth": depth, "semseg": ids}


def _replay(labels: deque[dict[str, np.ndarray]]) -> Callable[[list[np.ndarray]], Callable[[], Labels]]:
    """A labeler that returns the generated maps of the images it is given, in plan order."""

    def submit(images: list[np.ndarray]) -> Callable[[], Labels]:
        batch = [labels.popleft() for _ in images]
        maps = {"depth": [b["depth"] for b in batch], "semseg": [b["semseg"] for b in batch]}
        return lambda: maps

    return submit


def write_dataset(
    root: Path,
    shard_sizes: list[int],
    *,
    seed: int = 0,
    sizes: tuple[tuple[int, int], ...] = ((96, 128), (90, 120)),
    ignore_border: int = 0,
) -> Path:
    """Write a verified dataset with shards of `shard_sizes` samples to `root` (its source images to
    `root`-source beside it); returns `root`. `ignore_border`: see `make_sample`."""
    root = Path(root)
    src = root.with_name(root.name + "-source")
    (src / CLASSES[0]).mkdir(parents=True, exist_ok=True)  # one class folder: the ImageNet layout
    rng, labels, shards = np.random.default_rng(seed), deque[dict[str, np.ndarray]](), []
    for shard, count in enumerate(shard_sizes):
        entries = []
        for pos in range(count):
            h, w = sizes[(shard + pos) % len(sizes)]
            sample = make_sample(rng, h, w, ignore_border)
            name = f"{CLASSES[0]}/img-{shard:03d}-{pos:05d}.png"
            Image.fromarray(sample["rgb"]).save(src / name, compress_level=1)
            labels.append(sample)
            entries.append(Entry(name, 0))
        shards.append(ShardSpec(shard, f"train-{shard:06d}", tuple(entries)))
    files = walk_images(src, RECIPE.source.extensions)
    plan = Plan("train", str(src), fingerprint(files), RECIPE.fingerprint(), CLASSES, tuple(shards))
    return _write(root, src, plan, labels)


def _write(root: Path, src: Path, plan: Plan, labels: deque[dict[str, np.ndarray]]) -> Path:
    paths = DatasetPaths(root)
    ownership.check_ownership(paths)
    ownership.create_folder(paths)
    ownership.claim(paths)
    paths.shards_dir.mkdir(exist_ok=True)
    save_plan(plan, paths)
    ctx = ShardContext(
        src=location(src),
        out=location(root),
        classes=plan.classes,
        image=RECIPE.image,
        encoding=RECIPE.encoding,
        labelers=RECIPE.labelers,
        batch_size=8,
        plan_id=plan.plan_id,
    )
    submit = _replay(labels)
    stats = {s.name: process_shard(s, ctx, submit) for s in plan.shards}
    write_dataset_files(paths, plan, RECIPE, stats, {})
    return root


def write_digit_images(folder: Path, *, per_class: int | None = None, side: int = 64, offset: int = 0) -> Path:
    """scikit-learn's 1,797 handwritten digits (8 x 8, 10 classes; the `dev` extra installs scikit-learn) as
    RGB PNGs of side x side in one folder per class (`0` ... `9`): a small real labelled image set for
    `build-dataset`. `per_class` takes that many of each class, starting at the class's `offset`-th image."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = Path(folder)
    for label in range(10):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        picks = np.flatnonzero(digits.target == label)[offset:]
        for i in picks[:per_class] if per_class is not None else picks:
            grey = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
            image = Image.fromarray(grey).resize((side, side), Image.Resampling.BICUBIC).convert("RGB")
            image.save(folder / str(label) / f"digit-{i:04d}.png", compress_level=1)
    return folder

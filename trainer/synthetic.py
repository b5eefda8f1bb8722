"""Small synthetic datasets in the builder's exact output contract, for tests and benchmarks.

Each sample is a random layout of rectangles: every rectangle has a class id, an RGB colour that depends on
the class (plus noise) and a depth that depends on the class (plus a ramp), so the three modalities are
pixel-aligned and predictable from one another. Shards are written with `tarfile` and `pipeline.codecs`.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np

from pipeline.codecs import CODECS

NUM_CLASSES = 133


def make_sample(rng: np.random.Generator, h: int, w: int) -> dict[str, np.ndarray]:
    """uint8 rgb (H, W, 3), uint16 depth (H, W), uint8 class ids (H, W), all aligned."""
    ids = np.full((h, w), rng.integers(NUM_CLASSES), dtype=np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        top, left = int(rng.integers(h)), int(rng.integers(w))
        ids[top : top + int(rng.integers(8, h)), left : left + int(rng.integers(8, w))] = rng.integers(NUM_CLASSES)
    palette = np.random.default_rng(7).integers(0, 256, (NUM_CLASSES, 3))
    rgb = np.clip(palette[ids] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    ramp = np.linspace(0, 4000, w)[None, :]
    depth = (ids.astype(np.float64) * 300 + ramp + 1000).clip(0, 65535).astype(np.uint16)
    return {"rgb": rgb, "depth": depth, "semseg": ids}


PALETTE = [int(v) for v in np.random.default_rng(7).integers(0, 256, 256 * 3)]


def sample_members(key: str, sample: dict[str, np.ndarray], palette: bool = False) -> list[tuple[str, bytes]]:
    """Tar members of one sample; `palette` stores the class map in palette mode (ids unchanged)."""
    members = [(f"{key}.{CODECS[name].suffix}", CODECS[name].encode(sample[name])) for name in ("rgb", "depth")]
    members.append((f"{key}.semseg.png", CODECS["semseg"].encode(sample["semseg"], PALETTE if palette else None)))
    meta = {"source": f"synthetic/{key}.jpg", "size": list(sample["rgb"].shape[:2])}
    members += [(f"{key}.json", CODECS["json"].encode(meta)), (f"{key}.cls", CODECS["cls"].encode(0))]
    return sorted(members)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))


def write_dataset(
    root: Path, shard_sizes: list[int], *, seed: int = 0, sizes: tuple[tuple[int, int], ...] = ((96, 128), (90, 120))
) -> Path:
    """Write OUT/shards/train-NNNNNN.tar, OUT/index.json and OUT/manifest.json; returns OUT."""
    root = Path(root)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    rng, entries = np.random.default_rng(seed), []
    for shard, count in enumerate(shard_sizes):
        members = []
        for pos in range(count):
            h, w = sizes[(shard + pos) % len(sizes)]
            members += sample_members(str(shard * 10**5 + pos), make_sample(rng, h, w), palette=pos % 2 == 1)
        entries.append(_write_shard(root, f"train-{shard:06d}", members, count))
    index = {"format": 1, "split": "train", "shards": entries, "total_samples": sum(shard_sizes)}
    (root / "index.json").write_text(json.dumps(index, indent=1))
    (root / "manifest.json").write_text(json.dumps(_manifest(), indent=1))
    return root


def _write_shard(root: Path, name: str, members: list[tuple[str, bytes]], count: int) -> dict[str, object]:
    path = root / "shards" / f"{name}.tar"
    write_tar(path, members)
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    return {"name": name, "url": f"shards/{name}.tar", "samples": count, "bytes": len(data), "sha256": sha}


def _manifest() -> dict[str, object]:
    return {
        "recipe": "synthetic",
        "members": ["rgb.jpg", "depth.png", "semseg.png", "json", "cls"],
        "modalities": {
            "depth": {"member": "depth.png", "kind": "depth"},
            "semseg": {"member": "semseg.png", "num_classes": NUM_CLASSES},
        },
    }

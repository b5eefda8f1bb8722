"""Loader benchmark, one thread: the decode floor against the project's loader, on the same samples.

    python -m benchmarks.bench_loader --samples 256

ImageNet-like shards (375 x 500 and 500 x 375: JPEG rgb, 16-bit depth PNG, 8-bit semseg PNG, written by
`pipeline.synth.rectangles`). The raw samples are read from the tars into memory first, so no figure includes tar
I/O. `floor` decodes the three members with the codecs the loader uses and nothing else; `loader` is
`ShardStream.decode` with augment_on = "worker" (decode, the shared random crop and flip, resampling to 224
px, normalisation) and the stacking of each batch of 32; `device_mode_worker` is what a worker does with
augment_on = "device" (decode, cut the crop, pack each batch of 32), the resampling being the training
device's (`device_mode_resample_on_this_cpu`: that part timed on this CPU, for reference). Two alternatives a
user might pick, with the same augmentation (random resized crop, scale 0.2-1, ratio 3/4-4/3, one crop and
flip for all three maps, bilinear for rgb and depth, nearest for semseg, ImageNet normalisation):
`webdataset_v2`, the members decoded with PIL as WebDataset's `.map` stage would and augmented jointly with
torchvision.transforms.v2 (tv_tensors Image, Image and Mask); `loose_files`, the official MultiMAE layout (one
file per modality: rgb/x.jpg, depth/x.png, semseg/x.png) read with PIL from disk (page cache) and the same
transforms. The loader does more per sample than both: the depth standardisation and the 1/4-resolution
semseg target of the model. The passes run in turn, `--repeats` rounds; prints one JSON line: the median
samples/s of each and the ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from labelers.standards import IMAGENET_MEAN, IMAGENET_STD
from pipeline.format.codecs import decode_member
from pipeline.format.samples import read_samples
from pipeline.synth.rectangles import write_dataset
from trainer.config import DataConfig, ModelConfig
from trainer.data.batch_resize import to_device
from trainer.data.dataset import load_dataset
from trainer.data.loader import Cursor, EpochPlan, ShardStream, collate

MEMBERS = ("rgb.jpg", "depth.png", "semseg.png")
BATCH = 32  # samples per batch (stacked or packed), fewer when there are fewer samples
KEPT = 4  # packed batches kept for timing the device side
MEAN, STD = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)


def rates(passes: dict[str, tuple[Callable[[Any], None], list]], repeats: int) -> dict[str, float]:
    """Median samples/s of `repeats` passes of each fn over its items, the passes taken in turn (one of
    each per round), so a machine that slows down mid-run slows every figure alike."""
    seen: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(repeats):
        for name, (fn, items) in passes.items():
            started = time.perf_counter()
            for item in items:
                fn(item)
            seen[name].append(len(items) / (time.perf_counter() - started))
    return {name: float(np.median(r)) for name, r in seen.items()}


def v2_transform(cfg: DataConfig, size: int):
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
            v2.RandomHorizontalFlip(cfg.hflip),
        ]
    )


def v2_sample(rgb: Image.Image, depth: Image.Image, semseg: Image.Image, transform) -> dict[str, torch.Tensor]:
    """PIL images -> the three tensors, augmented together (one crop and flip), rgb normalised."""
    from torchvision import tv_tensors

    img = tv_tensors.Image(torch.from_numpy(np.array(rgb.convert("RGB"))).permute(2, 0, 1))
    dep = tv_tensors.Image(torch.from_numpy(np.array(depth, dtype=np.float32))[None])
    ids = tv_tensors.Mask(torch.from_numpy(np.array(semseg)))
    img, dep, ids = transform(img, dep, ids)
    rgb_t = (img.float() / 255.0 - MEAN) / STD
    return {"rgb": rgb_t, "depth": dep, "semseg": ids.long()}


def write_loose(samples: list[dict], folder: Path) -> list[str]:
    """The samples as loose files, one folder per modality (the official MultiMAE layout); returns the stems."""
    stems = []
    for i, sample in enumerate(samples):
        stem = f"{i:05d}"
        for modality, member in zip(("rgb", "depth", "semseg"), MEMBERS, strict=True):
            (folder / modality).mkdir(parents=True, exist_ok=True)
            (folder / modality / f"{stem}.{member.split('.')[1]}").write_bytes(sample[member])
        stems.append(stem)
    return stems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        half = args.samples // 2
        root = write_dataset(Path(tmp) / "data", [half, args.samples - half], sizes=((375, 500), (500, 375)))
        info = load_dataset(root)
        raw = [sample for shard in info.shards for _, sample in read_samples(shard.path)]
        loose = Path(tmp) / "loose"
        stems = write_loose(raw, loose)
        transform = v2_transform(DataConfig(), ModelConfig().image_size)

        def webdataset_v2(sample: dict) -> None:
            rgb, depth, semseg = (Image.open(io.BytesIO(sample[m])) for m in MEMBERS)
            v2_sample(rgb, depth, semseg, transform)

        def loose_files(stem: str) -> None:
            paths = (loose / "rgb" / f"{stem}.jpg", loose / "depth" / f"{stem}.png", loose / "semseg" / f"{stem}.png")
            rgb, depth, semseg = (Image.open(p) for p in paths)
            v2_sample(rgb, depth, semseg, transform)

        model = ModelConfig()
        plan = EpochPlan(seed=0, epoch=0, rank=0, world=1, workers=1, micro_batches=1)
        streams = [
            ShardStream(info=info, data=DataConfig(workers=0), model=model, plan=plan, cursors=[Cursor()], on_device=on)
            for on in (False, True)
        ]
        rng = np.random.default_rng(0)
        cut_items: list[dict] = []
        packed: list[dict] = []

        def floor(sample: dict) -> None:
            for member in MEMBERS:
                decode_member(member, sample[member])

        finished_items: list[dict] = []
        batch = min(BATCH, len(raw))

        def loader(sample: dict) -> None:  # augment_on = "worker": decode, augment, stack per batch
            finished_items.append(streams[0].decode(sample, rng))
            if len(finished_items) == batch:
                collate(finished_items, 0, Cursor())
                finished_items.clear()

        def device_mode_worker(sample: dict) -> None:  # augment_on = "device": decode, cut, pack per batch
            cut_items.append(streams[1].decode(sample, rng))
            if len(cut_items) == batch:
                packed.append(collate(cut_items, 0, Cursor()))
                del packed[:-KEPT]  # a worker hands its batches on; keep a few for the device-side figure
                cut_items.clear()

        passes = {
            "floor": (floor, raw),
            "loader": (loader, raw),
            "device_mode_worker": (device_mode_worker, raw),
            "webdataset_v2": (webdataset_v2, raw),
            "loose_files": (loose_files, stems),
        }
        for fn, items in passes.values():  # imports, first allocations
            fn(items[0])
        got = rates(passes, args.repeats)
    to_device(packed[0], torch.device("cpu"), model.image_size)  # warm-up
    started = time.perf_counter()
    finished = sum(len(to_device(b, torch.device("cpu"), model.image_size)["rgb"]) for b in packed)
    device_part = finished / (time.perf_counter() - started)
    f, ours, cut = got["floor"], got["loader"], got["device_mode_worker"]
    print(
        json.dumps(
            {
                "samples": len(raw),
                "image_size": model.image_size,
                "threads": 1,
                "floor_samples_per_s": round(f, 1),
                "loader_samples_per_s": round(ours, 1),
                "loader_over_floor": round(ours / f, 3),
                "device_mode_worker_samples_per_s": round(cut, 1),
                "device_mode_worker_over_floor": round(cut / f, 3),
                "device_mode_resample_on_this_cpu_samples_per_s": round(device_part, 1),
                "webdataset_v2_samples_per_s": round(got["webdataset_v2"], 1),
                "loose_files_samples_per_s": round(got["loose_files"], 1),
                "loader_over_webdataset_v2": round(ours / got["webdataset_v2"], 3),
                "loader_over_loose_files": round(ours / got["loose_files"], 3),
                "device_mode_worker_over_webdataset_v2": round(cut / got["webdataset_v2"], 3),
                "device_mode_worker_over_loose_files": round(cut / got["loose_files"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()

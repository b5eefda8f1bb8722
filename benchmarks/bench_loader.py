"""Loader benchmark, one thread: the decode floor against the project's per-sample path, on the same samples.

    python -m benchmarks.bench_loader --samples 256

ImageNet-like shards (375 x 500 and 500 x 375: JPEG rgb, 16-bit depth PNG, 8-bit semseg PNG, written by
`trainer.synthetic`). The raw samples are read from the tars into memory first, so both figures exclude tar
I/O: `floor` decodes the three members with the codecs the loader uses and nothing else; `loader` is
`ShardStream.decode` (decode, the shared random crop and flip, resampling to 224 px, normalisation) on the same
samples, ViT-B's input size. Prints one JSON line: samples/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.codecs import decode_member
from pipeline.wds import read_samples
from trainer.config import DataConfig, ModelConfig
from trainer.data import Cursor, EpochPlan, ShardStream
from trainer.dataset import load_dataset
from trainer.synthetic import write_dataset

MEMBERS = ("rgb.jpg", "depth.png", "semseg.png")


def rate(fn, samples: list[dict], repeats: int) -> float:
    """Median samples/s of `repeats` passes of `fn` over `samples`."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for s in samples:
            fn(s)
        rates.append(len(samples) / (time.perf_counter() - started))
    return float(np.median(rates))


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
    model = ModelConfig()
    plan = EpochPlan(seed=0, epoch=0, rank=0, world=1, workers=1, micro_batches=1)
    stream = ShardStream(info=info, data=DataConfig(workers=0), model=model, plan=plan, cursors=[Cursor()])
    rng = np.random.default_rng(0)

    def floor(sample: dict) -> None:
        for member in MEMBERS:
            decode_member(member, sample[member])

    def loader(sample: dict) -> None:
        stream.decode(sample, rng)

    floor(raw[0]), loader(raw[0])  # imports, first allocations
    f, ours = rate(floor, raw, args.repeats), rate(loader, raw, args.repeats)
    print(
        json.dumps(
            {
                "samples": len(raw),
                "image_size": model.image_size,
                "threads": 1,
                "floor_samples_per_s": round(f, 1),
                "loader_samples_per_s": round(ours, 1),
                "loader_over_floor": round(ours / f, 3),
            }
        )
    )


if __name__ == "__main__":
    main()

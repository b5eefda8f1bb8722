"""Trainer benchmark on CPU: ViT-B MultiMAE training samples/s, and loader samples/s per worker.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_train.py [--steps 3] [--batch-size 8] [--data OUT]

Training uses random tensors of the model's input shapes (the loader is measured separately). The loader
runs one worker's stream in this process (decode + shared crop/flip + resampling of rgb, depth and semseg)
over demo-like shards (synthetic 384 x 512 samples written in the dataset contract) or over `--data`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from pipeline.synth.rectangles import write_dataset
from trainer.config import DataConfig, ModelConfig, OptimConfig
from trainer.data.dataset import load_dataset
from trainer.data.loader import Cursor, EpochPlan, ShardStream
from trainer.engine.optim import build_optimizer
from trainer.model.multimae import MultiMAE


def random_batch(cfg: ModelConfig, batch: int) -> dict[str, torch.Tensor]:
    s = cfg.image_size
    return {
        "rgb": torch.randn(batch, 3, s, s),
        "depth": torch.randn(batch, 1, s, s),
        "semseg": torch.randint(0, cfg.num_classes, (batch, s // 4, s // 4)),
    }


def train_samples_per_s(batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = MultiMAE(ModelConfig())
    optimizer = build_optimizer(model, OptimConfig())
    data = random_batch(model.cfg, batch)
    timings = []
    for i in range(steps + 1):  # the first step warms up allocators and kernels
        started = time.perf_counter()
        preds, masks = model(data)
        loss, _ = model.forward_loss(preds, data, masks)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            timings.append(time.perf_counter() - started)
    return batch * len(timings) / sum(timings)


def loader_samples_per_s(root: Path, samples: int) -> float:
    info = load_dataset(root)
    data = DataConfig(batch_size=8, workers=0, shuffle_buffer=64)
    plan = EpochPlan(seed=0, epoch=0, rank=0, world=1, workers=1, micro_batches=max(1, samples // 8))
    stream = ShardStream(info=info, data=data, model=ModelConfig(), plan=plan, cursors=[Cursor()])
    batches = stream.batches(0)
    next(batches)  # open the shards, fill the shuffle buffer
    started, count = time.perf_counter(), 0
    for batch in batches:
        count += batch["rgb"].shape[0]
    return count / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--loader-samples", type=int, default=160)
    p.add_argument("--data", type=Path, default=None, help="a dataset folder; default: demo-like shards")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or write_dataset(Path(tmp) / "data", [48, 48], sizes=((384, 512), (512, 384)))
        torch.set_num_threads(1)  # a loader worker is one single-threaded process
        loader = loader_samples_per_s(root, args.loader_samples)
    torch.set_num_threads(args.threads)
    train = train_samples_per_s(args.batch_size, args.steps)
    result = {
        "device": "cpu",
        "threads": args.threads,
        "model": "MultiMAE ViT-B (98 visible of 588 tokens)",
        "batch": args.batch_size,
        "train_samples_per_s": round(train, 3),
        "loader_samples_per_s_per_worker": round(loader, 1),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

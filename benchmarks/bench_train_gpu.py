"""Trainer benchmark on one GPU: ViT-B MultiMAE at batch 256 in bf16, and the loader's headroom.

    HF_HUB_OFFLINE=1 python benchmarks/bench_train_gpu.py [--batch-size 256] [--steps 20] [--compile]
        [--workers 8] [--data OUT]

Prints training samples/s (random inputs on the GPU, bf16 autocast, fused AdamW; the step is the trainer's
forward, forward_loss, backward, optimizer step), then the loader's samples/s with `--workers` DataLoader
workers over demo-like shards (or `--data`), and headroom = loader samples/s / training samples/s: above
1 the GPU is never starved; per GPU you need about train_samples_per_s / loader_per_worker workers.
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
from trainer.data.batch_resize import to_device
from trainer.data.dataset import load_dataset
from trainer.data.loader import Cursor, EpochPlan, ShardStream, augment_on_device, make_loader
from trainer.engine.optim import build_optimizer
from trainer.model.modalities import MODALITIES, used_modalities
from trainer.model.multimae import MultiMAE


def random_batch(cfg: ModelConfig, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Inputs of every modality the model reads, at the model's sizes (random: speed only)."""
    out: dict[str, torch.Tensor] = {}
    for name in used_modalities(cfg):
        m, size = MODALITIES[name], cfg.image_size // MODALITIES[name].stride
        if m.channels is None:
            out[name] = torch.randint(0, cfg.num_classes, (batch, size, size), device=device)
        else:
            out[name] = torch.randn(batch, m.channels, size, size, device=device)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_samples_per_s(
    batch: int, steps: int, compile_model: bool, device: torch.device, cfg: ModelConfig | None = None
) -> dict[str, float]:
    """Samples/s of the trainer's step (forward, forward_loss, backward, optimizer step); on CUDA in bf16
    autocast with fused AdamW, on a CPU in fp32 (the --dry-run of benchmarks/gpu_check.py)."""
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    if cuda:  # the memory figure is this run's own, not an earlier stage's peak
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = MultiMAE(cfg or ModelConfig()).to(device)
    optimizer = build_optimizer(model, OptimConfig(), fused=cuda)
    step_model = torch.compile(model) if compile_model else model
    data = random_batch(model.cfg, batch, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            preds, masks = step_model(data)
            loss, _ = model.forward_loss(preds, data, masks)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (and compilation)
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    elapsed = time.perf_counter() - started
    return {
        "train_samples_per_s": batch * steps / elapsed,
        "step_s": elapsed / steps,
        "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0,
    }


MODES = ("worker", "device")  # data.augment_on


def loader_samples_per_s(
    root: Path,
    workers: int,
    batches: int,
    model: ModelConfig | None = None,
    batch_size: int = 32,
    augment_on: str = "worker",
    device: torch.device | None = None,
) -> float:
    """Finished batches per second out of `make_loader` with `workers` workers, moved to `device` (default:
    the GPU if there is one); augment_on="device" includes the resampling there (`trainer.data.batch_resize`)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model or ModelConfig()
    info = load_dataset(root)
    data = DataConfig(batch_size=batch_size, workers=workers, shuffle_buffer=256, augment_on=augment_on)
    plan = EpochPlan(seed=0, epoch=0, rank=0, world=1, workers=workers, micro_batches=batches)
    stream = ShardStream(
        info=info,
        data=data,
        model=model,
        plan=plan,
        cursors=[Cursor() for _ in range(workers)],
        on_device=augment_on_device(data, device, used_modalities(model)),
    )
    it = iter(make_loader(stream, workers, pin_memory=device.type == "cuda"))
    for _ in range(workers):  # every worker has opened its shards and filled its buffer
        to_device(next(it), device, model.image_size)
    _sync(device)
    started, count = time.perf_counter(), 0
    for batch in it:
        count += to_device(batch, device, model.image_size)["rgb"].shape[0]
    _sync(device)
    return count / (time.perf_counter() - started)


def resample_samples_per_s(
    root: Path, batches: int, batch_size: int, model: ModelConfig, device: torch.device
) -> float:
    """The device's share of augment_on = "device" alone: packed batches (cut in this process first) resampled
    and finished on `device`, samples/s. In training this time is spent on the training device, between steps."""
    info = load_dataset(root)
    data = DataConfig(batch_size=batch_size, workers=0, shuffle_buffer=256)
    plan = EpochPlan(seed=0, epoch=0, rank=0, world=1, workers=1, micro_batches=batches + 1)
    stream = ShardStream(info=info, data=data, model=model, plan=plan, cursors=[Cursor()], on_device=True)
    packed = [
        {k: v.pin_memory() if device.type == "cuda" and isinstance(v, torch.Tensor) else v for k, v in b.items()}
        for b in stream.batches(0)
    ]
    to_device(packed[0], device, model.image_size)  # warm-up: kernels, caches
    _sync(device)
    started = time.perf_counter()
    count = sum(to_device(b, device, model.image_size)["rgb"].shape[0] for b in packed[1:])
    _sync(device)
    return count / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--loader-batches", type=int, default=64)
    p.add_argument("--data", type=Path, default=None, help="a dataset folder; default: demo-like shards")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_train_gpu.py needs a CUDA device; use bench_train.py on CPUs")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    result: dict[str, object] = {
        "device": torch.cuda.get_device_name(device),
        "batch": args.batch_size,
        "precision": "bf16 autocast",
        "compile": args.compile,
    }
    result.update(train_samples_per_s(args.batch_size, args.steps, args.compile, device))
    with tempfile.TemporaryDirectory() as tmp:
        shards = [64] * max(args.workers, 2)
        root = args.data or write_dataset(Path(tmp) / "data", shards, sizes=((384, 512), (512, 384)))
        loader = {on: loader_samples_per_s(root, args.workers, args.loader_batches, augment_on=on) for on in MODES}
    train = float(result["train_samples_per_s"])
    result.update(
        {
            "loader_workers": args.workers,
            **{f"loader_{on}_samples_per_s": rate for on, rate in loader.items()},
            **{f"loader_{on}_headroom": rate / train for on, rate in loader.items()},
        }
    )
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()

"""The one GPU check: every figure a lent GPU should record, each printed as one JSON line.

    HF_HUB_OFFLINE=1 python -m benchmarks.gpu_check            # one CUDA GPU; ~5-8 minutes on an H100/H200
    HF_HUB_OFFLINE=1 python -m benchmarks.gpu_check --dry-run  # CPU, tiny sizes: every stage runs (CI)

Lines, in order (`"check"` names each; `"seconds"` is the stage's wall time):
- `labeler`: img/s of each labeler of the paper's recipes (Omnidata DPT-Hybrid depth and normals,
  Mask2Former Swin-S COCO), real architectures with random weights (speed only), bf16, batch 32, on
  ImageNet-like 500x375 / 375x500 images at the recipe geometry; then `imagenet_estimate`: ImageNet-1K train
  with depth + semseg on 8 such GPUs.
- `builder`: the labelers alone vs the whole builder (read, decode, label, encode, write; the Ray executor
  where Ray is installed, else the in-process one) on the same images and batch size; `efficiency` =
  end-to-end img/s / labelers-alone img/s (target >= 0.9).
- `trainer`: ViT-B MultiMAE (rgb + depth + semseg, 98 visible tokens) training samples/s at batch 256, bf16
  autocast, fused AdamW, eager and with torch.compile.
- `loader`: the project's loader with N DataLoader workers over ImageNet-sized synthetic shards, finished
  batches on the device, once per `data.augment_on` ("worker": resampled in the workers; "device": the
  workers cut crops, the GPU resamples them, included in the figure); `headroom` = loader samples/s /
  trainer samples/s (above 1 the GPU is never waiting for data); in the device mode the trainer rate is
  charged with the GPU's resampling time (`resample_samples_per_s`, measured alone).
A stage that fails prints {"check", "error"} and the others still run; the exit status is then 1.
`--dry-run` runs the same code on the CPU with the smoke labelers and tiny sizes; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from benchmarks import bench_build, bench_labelers, bench_train_gpu
from benchmarks.common import make_source
from pipeline.synth.rectangles import write_dataset
from trainer.config import ModelConfig, smoke_config


@dataclass(frozen=True, kw_only=True)
class Sizes:
    device: str
    precision: str
    labelers: tuple[str, ...]
    label_batch: int
    label_images: int
    build_preset: str
    build_images: int
    build_executor: str
    model: ModelConfig
    train_batch: int
    train_steps: int
    compile: bool
    loader_workers: int
    loader_batches: int
    loader_batch: int
    loader_image: tuple[int, int]


def gpu_sizes() -> Sizes:
    return Sizes(
        device="cuda",
        precision="bf16",
        labelers=("omnidata-dpt-hybrid", "omnidata-dpt-hybrid-normal", "mask2former-swin-small-coco-panoptic"),
        label_batch=32,
        label_images=256,
        build_preset="real",
        build_images=512,
        # the Ray executor where Ray is installed; the in-process one otherwise (the line names which ran)
        build_executor="ray" if importlib.util.find_spec("ray") else "local",
        model=ModelConfig(),
        train_batch=256,
        train_steps=20,
        compile=True,
        loader_workers=max(1, min(8, (os.cpu_count() or 2) - 2)),
        loader_batches=64,
        loader_batch=32,
        loader_image=(375, 500),
    )


def dry_run_sizes() -> Sizes:
    return Sizes(
        device="cpu",
        precision="fp32",
        labelers=("dpt-smoke", "omnidata-normal-smoke", "mask2former-smoke"),
        label_batch=2,
        label_images=4,
        build_preset="smoke",
        build_images=8,
        build_executor="local",
        model=smoke_config().model,
        train_batch=4,
        train_steps=2,
        compile=False,  # compiling on a 2-core CPU takes minutes; the GPU run compiles
        loader_workers=2,
        loader_batches=4,
        loader_batch=4,
        loader_image=(96, 128),
    )


class Report:
    """Prints one JSON line per result; remembers whether any stage failed."""

    def __init__(self, sizes: Sizes) -> None:
        self.sizes, self.failed = sizes, False
        self.device_name = torch.cuda.get_device_name() if sizes.device == "cuda" else "cpu"

    def line(self, check: str, **fields: Any) -> None:
        record = {"check": check, "device": self.device_name, **fields}
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in record.items()}), flush=True)

    @contextmanager
    def stage(self, check: str) -> Iterator[Callable[[], float]]:
        started = time.perf_counter()
        try:
            yield lambda: time.perf_counter() - started
        except Exception as err:  # report and go on with the other stages
            self.failed = True
            traceback.print_exc(file=sys.stderr)
            self.line(check, error=f"{type(err).__name__}: {err}", seconds=time.perf_counter() - started)


def check_labelers(report: Report, workdir: Path) -> None:
    s = report.sizes
    images = bench_labelers.imagenet_like(s.label_images)
    results = []
    for name in s.labelers:
        with report.stage("labeler") as elapsed:
            labeler = bench_labelers.load_labeler(name, workdir / "models", s.device, s.precision)
            r = bench_labelers.bench_labeler(
                labeler, images, device=s.device, precision=s.precision, batch_size=s.label_batch, repeats=2
            )
            results.append(r)
            report.line(
                "labeler",
                name=r.name,
                modality=r.modality,
                precision=r.precision,
                batch=r.batch,
                input_sizes=r.input_sizes,
                img_s=r.img_s,
                seconds=elapsed(),
            )
            del labeler
    for estimate in bench_labelers.estimates(results):
        report.line("imagenet_estimate", **{k: v for k, v in estimate.items() if k != "estimate"})


def check_builder(report: Report, workdir: Path) -> None:
    s = report.sizes
    with report.stage("builder") as elapsed:
        recipe = bench_build.recipe_for(s.build_preset, s.label_batch, 64, workdir / "models", s.precision)
        src = make_source(workdir / "build-src", s.build_images)
        alone = bench_build.labelers_alone(recipe, src, s.device)
        bench_build.warm_up(recipe, workdir, s.build_executor)
        e2e = bench_build.end_to_end(recipe, src, workdir / "build-out", s.build_executor)
        report.line(
            "builder",
            executor=s.build_executor,
            labelers=[spec.name for spec in recipe.labelers],
            batch=s.label_batch,
            images=e2e["images"],
            labelers_alone_img_s=alone,
            end_to_end_img_s=e2e["img_s_wall"],
            efficiency=e2e["img_s_wall"] / alone,
            cpu_ms_per_image_outside_models=e2e["cpu_ms_per_image_outside_models"],
            ms_per_image=e2e["ms_per_image"],
            seconds=elapsed(),
        )
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():  # the loader stage forks its workers: not beside Ray's threads
        with report.stage("builder"):
            ray.shutdown()


def check_trainer(report: Report) -> float:
    s, device, best = report.sizes, torch.device(report.sizes.device), 0.0
    for compiled in (False, True) if s.compile else (False,):
        with report.stage("trainer") as elapsed:
            r = bench_train_gpu.train_samples_per_s(s.train_batch, s.train_steps, compiled, device, s.model)
            best = max(best, r["train_samples_per_s"])
            m = s.model
            report.line(
                "trainer",
                model=f"{m.dim}-dim x {m.depth} blocks, {m.image_size} px, {m.num_visible} visible",
                batch=s.train_batch,
                precision="bf16 autocast" if device.type == "cuda" else "fp32",
                optimizer="fused AdamW" if device.type == "cuda" else "AdamW",
                compile=compiled,
                **r,
                seconds=elapsed(),
            )
    return best


def check_loader(report: Report, workdir: Path, train_samples_per_s: float) -> None:
    """One line per augment_on mode. The device mode's resampling runs on the training GPU, so its headroom is
    against the training rate with that time added: 1 / (1 / train + 1 / resample)."""
    s = report.sizes
    with report.stage("loader"):
        shards = [64 if s.device == "cuda" else 8] * max(2, s.loader_workers)
        h, w = s.loader_image
        root = write_dataset(workdir / "loader-data", shards, sizes=((h, w), (w, h)))
        model = dataclasses.replace(ModelConfig(), num_classes=s.model.num_classes)
        device = torch.device(s.device)
        for on in bench_train_gpu.MODES:
            started = time.perf_counter()
            rate = bench_train_gpu.loader_samples_per_s(
                root,
                s.loader_workers,
                s.loader_batches,
                model=model,
                batch_size=s.loader_batch,
                augment_on=on,
                device=device,
            )
            fields: dict[str, Any] = {}
            train = train_samples_per_s
            if on == "device":
                resample = bench_train_gpu.resample_samples_per_s(root, 8, s.loader_batch, model, device)
                train = 1 / (1 / train + 1 / resample) if train else 0.0
                fields = {"resample_samples_per_s": resample, "train_samples_per_s_with_resample": train}
            report.line(
                "loader",
                augment_on=on,
                workers=s.loader_workers,
                image_sizes=[f"{w}x{h}", f"{h}x{w}"],
                crop=model.image_size,
                samples_per_s=rate,
                per_worker=rate / s.loader_workers,
                headroom=rate / train if train else None,
                **fields,
                seconds=time.perf_counter() - started,
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, smoke labelers, tiny sizes (for CI)")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check needs a CUDA device (or --dry-run on CPU)", file=sys.stderr)
        return 2
    sizes = dry_run_sizes() if args.dry_run else gpu_sizes()
    if sizes.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    report = Report(sizes)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        check_labelers(report, workdir)
        check_builder(report, workdir)
        rate = check_trainer(report)
        check_loader(report, workdir, rate)
    report.line("total", dry_run=args.dry_run, failed=report.failed, seconds=time.perf_counter() - started)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())

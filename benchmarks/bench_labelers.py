"""Labeler benchmark: images/s of each labeler at its recipe geometry, real architectures, random weights.

Runs the project's own labeler classes (`labelers.build_labeler`: resize to the spec's geometry, batch,
predict, resize back) on ImageNet-like images (500x375 and 375x500, alternating), after a warm-up, and
prints one JSON line per labeler, then one JSON line per (depth, semseg) pair with the estimated wall time to
label ImageNet-1K train with both labelers on 8 devices. The weights are random (speed only, meaningless
labels); nothing is downloaded.

    python -m benchmarks.bench_labelers                          # CPU, fp32, 4 images, batch 2, 3 repeats
    python -m benchmarks.bench_labelers --device cuda --precision bf16 --batch-size 32 --images 256

`--weights NAME=PATH` loads a labeler from PATH instead (real weights, or another random folder). A failing
labeler prints {"name", "error"}, the others still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

from benchmarks.common import EXAMPLES, real_size_folder
from labelers import build_labeler, resolve_spec
from labelers.geometry import network_size
from labelers.spec import Labeler
from labelers.weights import quiet_transformers

IMAGENET_TRAIN = 1_281_167
DEFAULT_LABELERS = ("omnidata-dpt-hybrid", "dpt-hybrid-midas", "mask2former-swin-small-coco-panoptic")
DEFAULT_SIZES = ((375, 500), (500, 375))  # (height, width): ImageNet's most common landscape and portrait
CPU_DEFAULTS = (2, 4)  # (batch size, images per pass): a real-size DPT-Hybrid takes seconds per image on CPU
CUDA_DEFAULTS = (32, 256)
ASSUMPTION = (
    "both labelers on every device, run one after the other; the pipeline (decode, encode, write on CPU "
    "workers) keeps the device busy; model load and start-up excluded"
)


# labeler name -> random-weight real-size folder maker; labelers not listed (the smoke ones) need no weights
WEIGHTS: dict[str, Callable[[Path], Path]] = {
    "omnidata-dpt-hybrid": lambda cache: real_size_folder("omnidata-dpt-hybrid", cache),
    "omnidata-dpt-hybrid-normal": lambda cache: real_size_folder("omnidata-dpt-hybrid-normal", cache),
    "dpt-hybrid-midas": lambda cache: real_size_folder("dpt-hybrid", cache),
    "mask2former-swin-small-coco-panoptic": lambda cache: real_size_folder("m2f-swin-s", cache),
}


@dataclass(frozen=True)
class LabelerResult:
    name: str
    modality: str
    device: str
    precision: str
    batch: int
    images: int
    repeats: int
    threads: int
    weights: str
    image_sizes: list[str]
    input_sizes: list[str]
    img_s: float
    img_s_runs: list[float]


def imagenet_like(count: int, sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES) -> list[np.ndarray]:
    """`count` uint8 RGB images cut from the bundled photos, cycling through `sizes` (height, width)."""
    photos = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.iterdir()) if p.suffix in (".jpg", ".png")]
    out = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        im = photos[i % len(photos)]
        scale = max(w / im.width, h / im.height)
        im = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))), Image.Resampling.BICUBIC)
        left, top = (im.width - w) // 2, (im.height - h) // 2
        out.append(np.asarray(im.crop((left, top, left + w, top + h))))
    return out


def load_labeler(
    name: str, cache: Path, device: str, precision: str, weights: Mapping[str, str] | None = None
) -> Labeler:
    """The registered labeler `name`, with `weights[name]` if given, else random real-size weights if it needs any."""
    folder = (weights or {}).get(name) or (str(WEIGHTS[name](cache)) if name in WEIGHTS else None)
    overrides = {"weights": folder, "revision": None} if folder else {}
    return build_labeler(resolve_spec(name, overrides), device=device, precision=precision)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed_pass(labeler: Labeler, images: Sequence[np.ndarray], batch_size: int, device: str) -> float:
    _sync(device)
    started = time.perf_counter()
    for i in range(0, len(images), batch_size):
        labeler(images[i : i + batch_size])
    _sync(device)
    return time.perf_counter() - started


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def _sizes(shapes: Sequence[tuple[int, int]]) -> list[str]:
    return [f"{w}x{h}" for h, w in sorted(set(shapes))]  # width x height, as image tools print them


def bench_labeler(
    labeler: Labeler,
    images: Sequence[np.ndarray],
    *,
    device: str,
    precision: str,
    batch_size: int,
    repeats: int = 3,
    warmup_batches: int = 1,
) -> LabelerResult:
    """Median images/s of `labeler` over `repeats` passes on `images` in batches, after a warm-up."""
    if not images or batch_size < 1 or repeats < 1:
        raise ValueError("need images, batch_size >= 1 and repeats >= 1")
    for _ in range(warmup_batches):  # the first batch holds every size when sizes alternate
        labeler(images[:batch_size])
    runs = [len(images) / _timed_pass(labeler, images, batch_size, device) for _ in range(repeats)]
    shapes = [im.shape[:2] for im in images]
    return LabelerResult(
        name=labeler.spec.name,
        modality=labeler.spec.modality,
        device=device,
        precision=precision,
        batch=batch_size,
        images=len(images),
        repeats=repeats,
        threads=torch.get_num_threads(),
        weights=labeler.spec.weights or "(built-in smoke model)",
        image_sizes=_sizes(shapes),
        input_sizes=_sizes([network_size(labeler.spec, h, w) for h, w in shapes]),
        img_s=_sig(statistics.median(runs)),
        img_s_runs=[_sig(r) for r in runs],
    )


def imagenet_estimate(depth: LabelerResult, semseg: LabelerResult, devices: int = 8) -> dict[str, Any]:
    """Wall time to label ImageNet-1K train with both labelers on `devices` devices (ASSUMPTION holds)."""
    per_device = 1.0 / (1.0 / depth.img_s + 1.0 / semseg.img_s)
    total = per_device * devices
    seconds = IMAGENET_TRAIN / total
    return {
        "estimate": "imagenet1k-train",
        "images": IMAGENET_TRAIN,
        "devices": devices,
        "device": depth.device,
        "precision": depth.precision,
        "depth": depth.name,
        "semseg": semseg.name,
        "per_device_img_s": _sig(per_device),
        "total_img_s": _sig(total),
        "hours": round(seconds / 3600, 2),
        "days": round(seconds / 86400, 2),
        "assumes": ASSUMPTION,
    }


def estimates(results: Sequence[LabelerResult], devices: int = 8) -> list[dict[str, Any]]:
    depth = [r for r in results if r.modality == "depth"]
    semseg = [r for r in results if r.modality == "semseg"]
    return [imagenet_estimate(d, s, devices) for d in depth for s in semseg]


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    """'500x375,375x500' (width x height) -> [(375, 500), (500, 375)] (height, width)."""
    out = []
    for part in text.split(","):
        w, h = part.lower().split("x")
        out.append((int(h), int(w)))
    return out


def _parse_weights(items: Sequence[str]) -> dict[str, str]:
    """['name=/folder', ...] -> {name: folder}."""
    pairs = [item.split("=", 1) for item in items]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"--weights takes NAME=PATH, got {items}")
    return {name: path for name, path in pairs}


def run_one(
    name: str,
    images: Sequence[np.ndarray],
    args: argparse.Namespace,
    *,
    precision: str,
    batch_size: int,
    weights: Mapping[str, str],
) -> LabelerResult | None:
    """Benchmark one labeler and print its JSON line; a failure prints {"name", "error"} and returns None."""
    try:
        labeler = load_labeler(name, args.workdir / "models", args.device, precision, weights)
        result = bench_labeler(
            labeler,
            images,
            device=args.device,
            precision=precision,
            batch_size=batch_size,
            repeats=args.repeats,
            warmup_batches=args.warmup,
        )
    except Exception as err:  # report and go on with the other labelers
        print(json.dumps({"name": name, "device": args.device, "error": f"{type(err).__name__}: {err}"}), flush=True)
        return None
    print(json.dumps(asdict(result)), flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default=None,
        help="fp32 | bf16 | fp16 (default bf16 on cuda, fp32 on cpu)",
    )
    ap.add_argument(
        "--batch-size", type=int, default=None, help=f"default {CPU_DEFAULTS[0]} on cpu, {CUDA_DEFAULTS[0]} on cuda"
    )
    ap.add_argument(
        "--images",
        type=int,
        default=None,
        help=f"per timed pass; default {CPU_DEFAULTS[1]} on cpu, {CUDA_DEFAULTS[1]} on cuda",
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed passes; the median images/s is reported")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches before timing (each holds every size)")
    ap.add_argument("--labelers", default=",".join(DEFAULT_LABELERS), help="comma-separated registered names")
    ap.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="weights (folder or file) for a labeler instead of the random real-size model; repeatable",
    )
    ap.add_argument("--sizes", default="500x375,375x500", help="image sizes WxH, cycled through")
    ap.add_argument("--devices", type=int, default=8, help="devices in the ImageNet-1K estimate")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mmforge-bench")
    args = ap.parse_args(argv)
    precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    if args.device == "cpu" and precision != "fp32":
        ap.error("on CPU the labelers run fp32 only (TorchLabeler autocasts on CUDA alone)")
    batch_size, count = CUDA_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS
    batch_size, count = args.batch_size or batch_size, args.images or count
    quiet_transformers()
    images = imagenet_like(count, _parse_sizes(args.sizes))
    weights = _parse_weights(args.weights)
    names = [n.strip() for n in args.labelers.split(",") if n.strip()]
    runs = [run_one(n, images, args, precision=precision, batch_size=batch_size, weights=weights) for n in names]
    results = [r for r in runs if r is not None]
    for est in estimates(results, args.devices):
        print(json.dumps(est), flush=True)
    if len(results) < len(names):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

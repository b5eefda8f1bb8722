"""Builder benchmark: end-to-end images/s vs the labelers alone on the same images, and ms per image spent
outside the models (read+decode, encode, write): wall time, and the CPU time of the shard task's thread
(`time.thread_time`, so a stage that waits for a core it shares with the labelers is not counted as work);
on Ray also the CPU time of every thread of the shard tasks' processes (Ray's object copies and RPCs too).

    python -m benchmarks.bench_build                        # CPU, smoke labelers (tiny models), 240 images
    python -m benchmarks.bench_build --preset real --device cuda --images 2000 --batch-size 32   # GPU

`--preset real` runs the real architectures (DPT-Hybrid, Mask2Former Swin-S) with random weights: speed
only, the labels are meaningless. Prints one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from benchmarks.common import exits_2, make_source, real_size_folder
from labelers import build_labeler, resolve_spec
from pipeline.build.builder import build_dataset
from pipeline.build.images import decode_image
from pipeline.build.recipe import BuildConfig, load_recipe, with_overrides
from pipeline.build.shard import CPU_STAGES, PROCESS_CPU, STAGES

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = ("read", "submit", "encode", "write")  # the shard task's work outside the models


def recipe_for(preset: str, batch_size: int, shard_size: int, cache: Path, precision: str):
    recipe = load_recipe(ROOT / "manifests" / ("demo.toml" if preset == "smoke" else "default.toml"))
    if preset == "real":
        folders = {"depth": real_size_folder("dpt-hybrid", cache), "semseg": real_size_folder("m2f-swin-s", cache)}
        specs = tuple(dataclasses.replace(s, weights=str(folders[s.modality]), revision=None) for s in recipe.labelers)
        recipe = dataclasses.replace(recipe, labelers=specs)
    recipe = dataclasses.replace(recipe, runtime=dataclasses.replace(recipe.runtime, precision=precision))
    return with_overrides(recipe, shard_size=shard_size, batch_size=batch_size)


def decoded_images(recipe, src: Path) -> list[np.ndarray]:
    """The rgb arrays the labelers see for every image of `src`, decoded as the builder decodes them."""
    return [decode_image(p.read_bytes(), max_pixels=recipe.image.max_pixels).rgb for p in sorted(src.glob("*.jpg"))]


def recipe_labelers(recipe, device: str) -> list:
    """The recipe's labelers, built as the builder builds them (local weights where the recipe names them)."""
    return [
        build_labeler(resolve_spec(s.name, _overrides(s)), device=device, precision=recipe.runtime.precision)
        for s in recipe.labelers
    ]


def labelers_alone(recipe, src: Path, device: str) -> float:
    """images/s of the labelers on the decoded images, batched as the builder batches them."""
    images, labelers = decoded_images(recipe, src), recipe_labelers(recipe, device)
    bs = recipe.runtime.batch_size
    for lab in labelers:  # warm-up
        lab(images[:bs])
    _sync(device)
    started = time.perf_counter()
    for i in range(0, len(images), bs):
        for lab in labelers:
            lab(images[i : i + bs])
    _sync(device)
    return len(images) / (time.perf_counter() - started)


def _overrides(spec) -> dict:
    return {"weights": spec.weights, "revision": spec.revision} if spec.weights else {}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def end_to_end(recipe, src: Path, out: Path, executor: str) -> dict:
    """One timed build. The wall time includes creating the labeler actors (loading weights), not starting
    Ray itself: `warm_up` started the session before."""
    result = build_dataset(BuildConfig(src=src, out=out, recipe=recipe, executor=executor, quiet=True, overwrite=True))
    stats = [json.loads(p.read_text()) for p in sorted((out / "shards").glob("*.stats.json"))]
    timings = {k: sum(s["timings"].get(k, 0.0) for s in stats) for k in (*STAGES, *CPU_STAGES, PROCESS_CPU)}
    n = result.manifest.totals.written
    shard_seconds = sum(s["seconds"] for s in stats)
    return {
        "images": n,
        "wall_s": round(result.seconds, 2),
        "img_s_wall": round(n / result.seconds, 2),
        "shard_task_seconds": round(shard_seconds, 2),
        "wall_ms_per_image_outside_models": round(1000 * sum(timings[k] for k in OUTSIDE) / n, 2),
        "cpu_ms_per_image_outside_models": round(1000 * sum(timings[f"{k}_cpu"] for k in OUTSIDE) / n, 2),
        # Ray only (in-process the models run in the same process): every thread of the shard tasks
        "process_cpu_ms_per_image": round(1000 * timings[PROCESS_CPU] / n, 2) if executor == "ray" else None,
        "ms_per_image": {k: round(1000 * v / n, 2) for k, v in timings.items()},
    }


def warm_up(recipe, workdir: Path, executor: str) -> None:
    """A 4-image build: starts the Ray session and fills caches, so the timed build measures the pipeline."""
    end_to_end(recipe, make_source(workdir / "warmup-src", 4), workdir / "warmup-out", executor)


@exits_2
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=["smoke", "real"], default="smoke")
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=40)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", default=None, help="fp32 | bf16 | fp16 (default: bf16 on cuda, fp32 on cpu)")
    ap.add_argument("--executor", choices=["ray", "local"], default="ray")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="photos, models and shards (default: a new temp dir per run)"
    )
    args = ap.parse_args()
    precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    with tempfile.TemporaryDirectory(prefix="mmforge-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        recipe = recipe_for(args.preset, args.batch_size, args.shard_size, workdir / "models", precision)
        src = make_source(workdir / "src", args.images)
        alone = labelers_alone(recipe, src, args.device)
        warm_up(recipe, workdir, args.executor)
        e2e = end_to_end(recipe, src, workdir / "out", args.executor)
    steady = e2e["images"] / e2e["wall_s"]
    print(
        json.dumps(
            {
                "preset": args.preset,
                "device": args.device,
                "precision": precision,
                "executor": args.executor,
                "batch_size": args.batch_size,
                "labelers_alone_img_s": round(alone, 2),
                "end_to_end": e2e,
                "pipeline_efficiency": round(steady / alone, 3),
            }
        )
    )


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()

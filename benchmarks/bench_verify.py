"""Throughput of `mmforge verify`, fast and deep, on CPU.

Builds (once; reused when present) a dataset of the 12 bundled photos replicated to --images images with the
demo recipe and the local executor, then times verify_dataset in fast and deep mode with 1 and N workers.
Shards are in the page cache after the build, so fast mode measures hashing + tar walking, not the disk.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_verify.py --images 768 --shard-size 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

from pipeline.verify.verifier import VerifyConfig, VerifyReport, verify_dataset

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "examples" / "images"
RECIPE = ROOT / "manifests" / "demo.toml"


def make_source(src: Path, images: int) -> None:
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    src.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        photo = photos[i % len(photos)]
        shutil.copy(photo, src / f"c{i // len(photos):03d}_{photo.name}")


def ensure_dataset(work: Path, images: int, shard_size: int) -> Path:
    # imported here: worker processes re-import this script, and must not pay for torch and the labelers
    from pipeline.build.builder import build_dataset
    from pipeline.build.recipe import BuildConfig, load_recipe, with_overrides

    out = work / "out"
    if (out / "manifest.json").is_file():
        print(f"reusing {out}", file=sys.stderr)
        return out
    make_source(work / "src", images)
    recipe = with_overrides(load_recipe(RECIPE), shard_size=shard_size)
    result = build_dataset(BuildConfig(src=work / "src", out=out, recipe=recipe, executor="local", quiet=True))
    print(f"built {out}: {result.manifest.totals} in {result.seconds:.0f} s", file=sys.stderr)
    return out


def timed(out: Path, deep: bool, workers: int, repeats: int) -> tuple[VerifyReport, float]:
    runs = [verify_dataset(VerifyConfig(out=out, deep=deep, workers=workers, quiet=True)) for _ in range(repeats)]
    assert all(r.ok for r in runs), runs[0].defects[:5]
    return runs[0], statistics.median(r.seconds for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="default: /tmp/mmforge-bench-verify-IMAGES-SHARDSIZE")
    args = parser.parse_args()
    work = args.work or Path(f"/tmp/mmforge-bench-verify-{args.images}-{args.shard_size}")
    out = ensure_dataset(work, args.images, args.shard_size)
    cpus = os.cpu_count() or 1
    print(f"| mode | workers | samples | MB | seconds (median of {args.repeats}) | samples/s | MB/s |")
    print("|---|---|---|---|---|---|---|")
    for deep in (False, True):
        for workers in sorted({1, cpus}):
            report, seconds = timed(out, deep, workers, args.repeats)
            mb = report.bytes / 1e6
            print(
                f"| {'deep' if deep else 'fast'} | {workers} | {report.samples} | {mb:.1f} | {seconds:.2f} | "
                f"{report.samples / seconds:.1f} | {mb / seconds:.1f} |"
            )


if __name__ == "__main__":
    main()

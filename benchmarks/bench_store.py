"""Object-store benchmark: the same build and verify on a local folder and through an S3 API (moto's server on
loopback, in a process of its own, so what is measured is this project's staging, listing, reading and one-PUT
publishing, and moto's own cost per request, not a network).

    python -m benchmarks.bench_store --images 240 --shard-size 40

Prints one JSON line per (command, location) with wall seconds and images (or samples) per second.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import exits_2, make_source
from pipeline.build.builder import build_dataset
from pipeline.build.recipe import BuildConfig, load_recipe, with_overrides
from pipeline.format.stores import location
from pipeline.verify.verifier import VerifyConfig, verify_dataset
from tests.s3_server import s3_server

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "mmforge-bench"


def timed_build(recipe, src: str | Path, out: str | Path, executor: str) -> dict:
    cfg = BuildConfig(
        src=location(src), out=location(out), recipe=recipe, executor=executor, quiet=True, overwrite=True
    )
    result = build_dataset(cfg)
    n = result.manifest.totals.written
    return {"images": n, "wall_s": round(result.seconds, 2), "img_s": round(n / result.seconds, 2)}


def timed_verify(out: str | Path) -> dict:
    started = time.perf_counter()
    report = verify_dataset(VerifyConfig(out=location(out), workers=1, quiet=True))
    seconds = time.perf_counter() - started
    assert report.ok, report.defects[:3]
    return {"samples": report.samples, "wall_s": round(seconds, 2), "samples_s": round(report.samples / seconds, 1)}


@exits_2
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--shard-size", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--executor", choices=["ray", "local"], default="local")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mmforge-bench-store")
    args = ap.parse_args()
    os.environ.setdefault("MMFORGE_CACHE", str(args.workdir / "cache"))
    recipe = with_overrides(
        load_recipe(ROOT / "manifests" / "demo.toml"), shard_size=args.shard_size, batch_size=args.batch_size
    )
    src = make_source(args.workdir / "src", args.images)
    with s3_server(BUCKET, own_process=True) as s3:
        s3.fs.put(str(src) + "/", f"{BUCKET}/src/", recursive=True)  # type: ignore[attr-defined]
        timed_build(recipe, src, args.workdir / "warm-up", args.executor)  # model caches, imports
        runs = [
            ("build", "local -> local", lambda: timed_build(recipe, src, args.workdir / "out", args.executor)),
            (
                "build",
                "s3 -> s3",
                lambda: timed_build(recipe, f"s3://{BUCKET}/src", f"s3://{BUCKET}/out", args.executor),
            ),
            ("verify", "local", lambda: timed_verify(args.workdir / "out")),
            ("verify", "s3", lambda: timed_verify(f"s3://{BUCKET}/out")),
        ]
        for command, where, run in runs:
            print(json.dumps({"command": command, "where": where, "executor": args.executor, **run()}), flush=True)


if __name__ == "__main__":
    main()

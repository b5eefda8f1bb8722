"""Label-map PNGs: the project's writer (`pipeline.format.png`, the Up filter) against Pillow's (five filters tried per
row), same maps, same zlib level: CPU ms per map to encode, KB per map, and ms to decode each file with the
codecs' decoders (what verify and the loader run). Both files must decode to the same array.

    python -m benchmarks.bench_png                # smoke-labeler maps of 32 ImageNet-like photos + smooth maps

Maps: the depth and class maps the demo recipe's smoke labelers (tiny random DPT + Mask2Former) give for
photos cut from the bundled ones, and 375 x 500 synthetic maps (a ramp and waves with mild noise, the way a
depth network's maps look; class maps in blocks). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.bench_build import decoded_images, recipe_for, recipe_labelers
from benchmarks.common import exits_2, make_source
from labelers.classes import palette_for
from pipeline.format.codecs import CODECS
from pipeline.format.png import encode_png


def pillow_png(array: np.ndarray, level: int, palette: list[int] | None = None) -> bytes:
    image = Image.fromarray(array, "P" if palette is not None else None)
    if palette is not None:
        image.putpalette(palette)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def cpu_ms(fn: Callable[[np.ndarray], object], items: list, repeats: int) -> float:
    """Best of `repeats` passes, CPU ms per item (this thread only)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time()
        for item in items:
            fn(item)
        best = min(best, time.thread_time() - started)
    return round(1000 * best / len(items), 3)


def smoke_maps(images: int, workdir: Path) -> dict[str, list[np.ndarray]]:
    recipe = recipe_for("smoke", 16, 60, workdir / "models", "fp32")
    rgbs = decoded_images(recipe, make_source(workdir / "src", images))
    return {
        lab.spec.modality: [CODECS[lab.spec.modality].store(m, lab.spec.output)[0] for m in lab(rgbs)]
        for lab in recipe_labelers(recipe, "cpu")
    }


def smooth_maps(count: int) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    depth = [20000 + 30 * yy + 10 * xx + 3000 * np.sin(xx / 40 + k) + rng.normal(0, 5, yy.shape) for k in range(count)]
    return {
        "depth": [np.clip(d, 0, 65535).astype(np.uint16) for d in depth],
        "semseg": [(((yy // (30 + k)) * 7 + (xx // (45 + k)) * 3) % 133).astype(np.uint8) for k in range(count)],
    }


def compare(maps: list[np.ndarray], modality: str, level: int, repeats: int) -> dict[str, float]:
    palette = palette_for(None, 133) if modality == "semseg" else None
    ours, theirs = (lambda m: encode_png(m, level, palette)), (lambda m: pillow_png(m, level, palette))
    decode = CODECS[modality].decode
    ours_files, theirs_files = [ours(m) for m in maps], [theirs(m) for m in maps]
    for m, a, b in zip(maps, ours_files, theirs_files, strict=True):
        if not (np.array_equal(decode(a), m) and np.array_equal(decode(b), m)):
            raise AssertionError(f"{modality}: a PNG did not decode to its map")
    return {
        "encode_ms_pillow": cpu_ms(theirs, maps, repeats),
        "encode_ms_ours": cpu_ms(ours, maps, repeats),
        "kb_pillow": round(sum(map(len, theirs_files)) / len(maps) / 1e3, 1),
        "kb_ours": round(sum(map(len, ours_files)) / len(maps) / 1e3, 1),
        "decode_ms_pillow_file": cpu_ms(decode, theirs_files, repeats),
        "decode_ms_our_file": cpu_ms(decode, ours_files, repeats),
    }


def count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@exits_2
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=count, default=32)
    ap.add_argument("--level", type=int, choices=range(10), default=1, help="zlib level of both writers, 0..9")
    ap.add_argument("--repeats", type=count, default=5)
    ap.add_argument("--workdir", type=Path, default=None, help="where the photos are cut (default: a new temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmforge-bench-png-") as scratch:
        try:
            smoke = smoke_maps(args.images, args.workdir or Path(scratch))
        except OSError as err:
            ap.exit(2, f"bench_png: error: cannot cut the photos into {args.workdir or scratch}: {err}\n")
    sets = {"smoke_labelers": smoke, "smooth_375x500": smooth_maps(16)}
    result = {
        name: {m: compare(maps[m], m, args.level, args.repeats) for m in ("depth", "semseg")}
        for name, maps in sets.items()
    }
    print(json.dumps({"level": args.level, **result}))


if __name__ == "__main__":
    main()

"""Shared helpers of the builder benchmarks: a source folder of N photos and random-weight real-size models."""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"


class Refused(Exception):
    """A benchmark will not touch what it was given; `exits_2` turns it into one line and exit status 2."""


def exits_2(main: Callable[..., Any]) -> Callable[..., Any]:
    """A benchmark's main: a `Refused` becomes "NAME: error: why" on stderr and exit status 2 (as argparse's
    errors), never a traceback."""

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except Refused as err:
            print(f"{Path(sys.argv[0]).stem}: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return run


SCRATCH_MARK = ".mmforge-bench"  # in every folder a benchmark made: the only folders a benchmark empties


def scratch_folder(folder: Path) -> Path:
    """`folder`, empty but for its mark: made when new, emptied when a benchmark made it (its mark is
    there) or when it is empty. A folder holding anything else is `Refused`: a
    benchmark removes only what benchmarks made."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise Refused(f"{folder}: not a folder (a benchmark writes into new or empty folders only)")
    entries = list(folder.iterdir()) if folder.exists() else []
    if entries and not (folder / SCRATCH_MARK).is_file():
        raise Refused(
            f"refusing to empty {folder}: a benchmark did not make it (no {SCRATCH_MARK} in it); "
            "name a new or empty folder"
        )
    for entry in entries:  # the contents only: the folder itself keeps its mode and owner (or mount)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SCRATCH_MARK).write_text("made by a multimae-forge benchmark; the next run empties it\n")
    return folder


def make_source(folder: Path, count: int, max_side: int = 500) -> Path:
    """`count` JPEGs cut from the bundled photos at varied sizes and aspect ratios (ImageNet-like sizes),
    in `folder` (a `scratch_folder`; its mark is a hidden file, which the builder skips)."""
    scratch_folder(folder)
    photos = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.glob("*.*")) if p.suffix != ".md"]
    rng = np.random.default_rng(0)
    for i in range(count):
        im = photos[i % len(photos)]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((x, y, x + cw, y + ch))
        scale = max_side / max(crop.size) * rng.uniform(0.7, 1.0)
        crop = crop.resize((max(32, round(cw * scale)), max(32, round(ch * scale))), Image.Resampling.BICUBIC)
        crop.save(folder / f"img_{i:05d}.jpg", quality=90)
    return folder


def real_size_folder(kind: str, cache: Path) -> Path:
    """Random-weight models with the real architectures, saved as transformers folders (no download)."""
    target = cache / f"random-{kind}"
    if (target / "config.json").is_file():
        return target
    model = _real_size_model(kind)
    model.save_pretrained(target)
    return target


def _real_size_model(kind: str) -> Any:
    import torch
    from transformers import (
        DPTForDepthEstimation,
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        SwinConfig,
    )

    from labelers.dpt_original import dpt_hybrid_config

    torch.manual_seed(0)
    if kind == "omnidata-dpt-hybrid":
        return DPTForDepthEstimation(dpt_hybrid_config())
    if kind == "omnidata-dpt-hybrid-normal":
        from labelers.dpt_normal_model import DPTForSurfaceNormals

        return DPTForSurfaceNormals(dpt_hybrid_config(3))
    if kind == "dpt-hybrid":  # MiDaS v3 DPT-Hybrid: the same network, transformers' LayerNorm eps
        config = dpt_hybrid_config()
        config.layer_norm_eps = 1e-12
        return DPTForDepthEstimation(config)
    swin_small = SwinConfig(
        embed_dim=96,
        depths=[2, 2, 18, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return Mask2FormerForUniversalSegmentation(
        Mask2FormerConfig(backbone_config=swin_small, num_labels=133, num_queries=100)
    )

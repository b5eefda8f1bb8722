"""Tiny random-weight models of the real labeler classes, for the offline demo and the tests.

Their labels are MEANINGLESS (random weights); manifests say so. They go through the same loading code as
real weights: built once from a fixed seed, saved with `save_pretrained` into a cache folder, then loaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from labelers.weights import quiet_transformers

SMOKE_VERSION = 1


def cache_dir() -> Path:
    root = os.environ.get("MMFORGE_CACHE") or os.path.join(Path.home(), ".cache", "multimae-forge")
    return Path(root) / "smoke"


def tiny_dpt_config(hybrid: bool) -> Any:
    from transformers import BitConfig, DPTConfig

    kw: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=64,
        patch_size=16,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        backbone_out_indices=[0, 1, 2, 3],
        head_in_index=-1,
    )
    if hybrid:
        bit = BitConfig(
            global_padding="same",
            layer_type="bottleneck",
            depths=[1, 1, 1],
            num_groups=4,
            out_features=["stage1", "stage2", "stage3"],
            embedding_size=8,
            hidden_sizes=[16, 32, 64],
            embedding_dynamic_padding=True,
        )
        kw.update(
            is_hybrid=True,
            backbone_config=bit,
            backbone_featmap_shape=[1, 64, 4, 4],
            readout_type="project",
            neck_hidden_sizes=[16, 32, 32, 32],
        )
    return DPTConfig(**kw)


def tiny_mask2former_config(num_classes: int) -> Any:
    from transformers import Mask2FormerConfig, SwinConfig

    swin = SwinConfig(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        image_size=64,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return Mask2FormerConfig(
        backbone_config=swin,
        num_labels=num_classes,
        hidden_dim=32,
        mask_feature_size=32,
        feature_size=32,
        num_queries=16,
        encoder_layers=1,
        decoder_layers=2,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        num_attention_heads=2,
        common_stride=4,
    )


def materialize(name: str, build: Callable[[], Any], seed: int = 0) -> Path:
    """Save the seeded tiny model `name` into the cache once (atomic rename) and return its folder."""
    target = cache_dir() / f"{name}-v{SMOKE_VERSION}-seed{seed}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    quiet_transformers()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            build().save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process published it first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target

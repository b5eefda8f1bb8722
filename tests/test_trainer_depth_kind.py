"""Pretraining on inverse-depth labels (MiDaS) is allowed but never silent."""

import warnings
from pathlib import Path

import pytest

from trainer.config import ModelConfig
from trainer.dataset import DatasetInfo, check_manifest


def info(kind: str) -> DatasetInfo:
    manifest = {
        "members": ["rgb.jpg", "depth.png", "semseg.png", "json"],
        "modalities": {
            "depth": {"member": "depth.png", "kind": kind},
            "semseg": {"member": "semseg.png", "num_classes": 133},
        },
    }
    return DatasetInfo(root=Path("OUT"), shards=(), total_samples=0, manifest=manifest)


def test_inverse_depth_warns():
    with pytest.warns(UserWarning, match="INVERSE depth"):
        check_manifest(info("inverse_depth"), ModelConfig())


def test_depth_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_manifest(info("depth"), ModelConfig())

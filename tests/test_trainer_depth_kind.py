"""Pretraining on inverse-depth labels (MiDaS) is allowed but never silent."""

import warnings
from pathlib import Path

import pytest

from pipeline.format.contract import ModalityInfo
from pipeline.synth.rectangles import RECIPE
from trainer.config import ModelConfig
from trainer.data.dataset import DatasetInfo, check_manifest


def info(kind: str, tmp_path: Path) -> DatasetInfo:
    import dataclasses

    from pipeline.build.dataset_files import manifest_doc
    from pipeline.build.plan import Plan

    plan = Plan("train", "SRC", "0" * 64, RECIPE.fingerprint(), None, ())
    manifest = manifest_doc(plan, RECIPE, {}, {})
    depth = ModalityInfo(member="depth.png", labeler="x@local", kind=kind, dtype="uint16")
    manifest = dataclasses.replace(manifest, modalities={**manifest.modalities, "depth": depth})
    return DatasetInfo(root=tmp_path, shards=(), total_samples=0, manifest=manifest)


def test_inverse_depth_warns(tmp_path):
    with pytest.warns(UserWarning, match="INVERSE depth"):
        check_manifest(info("inverse_depth", tmp_path), ModelConfig())


def test_depth_does_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_manifest(info("depth", tmp_path), ModelConfig())

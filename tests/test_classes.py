"""Another segmenter, other classes: a class table travels from the labeler's spec to the manifest, verify
and the trainer's class embedding, with no class count written anywhere else."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from labelers import available, resolve_spec
from labelers.classes import BUNDLED, class_table, full_palette, generated_palette
from pipeline.cli.app import app
from trainer.engine.checkpoint import read_checkpoint
from trainer.train import RunOptions, build_config, pretrain

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "trainer" / "configs" / "smoke.toml"


def test_bundled_tables_and_class_labelers_agree() -> None:
    assert [len(class_table(n)) for n in BUNDLED] == [133, 150, 40, 5]
    assert class_table("scenes-primitives").names == ("floor", "box", "sphere", "cylinder", "capsule")
    assert class_table("ade20k-150").names[:3] == ("wall", "building", "sky")
    assert class_table("nyu40").names[-1] == "otherprop"
    for name in available():
        spec = resolve_spec(name)
        if spec.output == "classes" and spec.classes:
            assert len(class_table(spec.classes)) == spec.num_classes, name
    pal = generated_palette(150)
    colours = {tuple(pal[3 * i : 3 * i + 3]) for i in range(150)}
    assert len(colours) > 100 and pal[3 * 255 :] == [0, 0, 0]  # distinct colours, ignore stays black
    assert full_palette([1, 2, 3])[:6] == [1, 2, 3, 0, 0, 0] and len(full_palette([1, 2, 3])) == 768


def test_own_class_table_from_a_tsv(tmp_path: Path) -> None:
    path = tmp_path / "mine.tsv"
    path.write_text("index\tname\tr\tg\tb\n0\tsea\t0\t0\t255\n1\tland\t0\t255\t0\n")
    assert class_table(str(path)).names == ("sea", "land")
    path.write_text("index\tname\tr\tg\tb\n1\tsea\t0\t0\t255\n")
    class_table.cache_clear()
    with pytest.raises(ValueError, match="index"):
        class_table(str(path))


@pytest.mark.slow
def test_ade20k_segmenter_end_to_end_with_150_classes(tmp_path: Path) -> None:
    recipe = tmp_path / "ade.toml"
    recipe.write_text(
        '[shards]\nsize = 6\n[labelers.depth]\nname = "dpt-smoke"\n'
        '[labelers.semseg]\nname = "mask2former-smoke-ade"\n[runtime]\nbatch_size = 4\nprecision = "fp32"\n'
    )
    out = tmp_path / "ade"
    args = ["build-dataset", str(ROOT / "examples" / "images"), str(out), "--recipe", str(recipe)]
    built = CliRunner().invoke(app, [*args, "--executor", "local", "--quiet"])
    assert built.exit_code == 0, built.output
    semseg = json.loads((out / "manifest.json").read_text())["modalities"]["semseg"]
    assert semseg["num_classes"] == 150 and semseg["classes"][149] == "flag" and len(semseg["palette"]) == 450
    assert CliRunner().invoke(app, ["verify", str(out), "--deep"]).exit_code == 0

    torch.set_num_threads(1)
    cfg = build_config(SMOKE, steps=2)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=0))  # from the manifest
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False, tensorboard=False))
    pretrain(cfg, RunOptions(data=out, out=tmp_path / "run", device="cpu"))
    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint-last.pt")
    assert ckpt.tensors["input_adapters.semseg.class_emb.weight"].shape[0] == 150
    assert ckpt.model_config.num_classes == 150

    fixed = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=133))
    with pytest.raises(Exception, match="150 classes"):
        pretrain(fixed, RunOptions(data=out, out=tmp_path / "run133", device="cpu"))

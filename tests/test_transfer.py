"""Transfer: fine-tuning models in the official layouts, metrics against hand-computed cases, weight
initialisation, the timm export round trip, and fine-tune -> resume -> evaluate on tiny real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.synth.rectangles import write_digit_images
from tests.conftest import DEMO_RECIPE
from trainer.config import ConfigError, ModelConfig, smoke_config
from trainer.model.multimae import MultiMAE
from trainer.transfer.config import FinetuneConfig, TaskConfig, load_finetune_config
from trainer.transfer.init_weights import initialise
from trainer.transfer.metrics import ClassificationMetrics, DepthMetrics, SegmentationMetrics
from trainer.transfer.model import MultiViT

DATA = Path(__file__).parent / "data"
CONFIGS = Path(__file__).resolve().parents[1] / "trainer" / "configs"
OFFICIAL = {
    "in1k-cls": (ModelConfig(inputs=("rgb",), outputs=()), TaskConfig(name="cls"), 1000),
    "ade20k-semseg": (ModelConfig(image_size=512, inputs=("rgb",), outputs=()), TaskConfig(name="semseg"), 150),
    "nyuv2-rgbd-semseg": (
        ModelConfig(image_size=640, inputs=("rgb", "depth"), outputs=()),
        TaskConfig(name="semseg"),
        40,
    ),
    "nyuv2-depth": (ModelConfig(image_size=256, inputs=("rgb",), outputs=()), TaskConfig(name="depth"), 0),
}


def layout(name: str) -> list[tuple[str, str]]:
    text = (DATA / f"multimae-b-finetune-{name}-state-dict.tsv").read_text()
    return [tuple(line.split("\t")) for line in text.splitlines() if line and not line.startswith("#")]  # type: ignore[misc]


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_fine_tuning_models_have_the_official_layout(name: str) -> None:
    model_cfg, task, classes = OFFICIAL[name]
    with torch.device("meta"):
        model = MultiViT(FinetuneConfig(model=model_cfg, task=task), classes)
    ours = [(n, "x".join(map(str, t.shape))) for n, t in model.state_dict().items()]
    assert ours == layout(name)


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_pretraining_weights_load_with_only_documented_changes(name: str, tmp_path: Path) -> None:
    """A state dict in the official ViT-B pretraining layout initialises every fine-tuning model: decoders
    dropped, position embeddings resized, the head (and an input without weights) new."""
    model_cfg, task, classes = OFFICIAL[name]
    source = MultiMAE(ModelConfig()).state_dict()
    path = tmp_path / "official.pth"
    torch.save({"model": source}, path)
    model = MultiViT(FinetuneConfig(model=model_cfg, task=task), classes)
    report = initialise(model, path)
    unused = tuple(f"input_adapters.{n}." for n in ("rgb", "depth", "semseg") if n not in model_cfg.inputs)
    assert all(k.startswith(("output_adapters.", *unused)) for k in report.dropped)
    assert all(k.startswith(f"output_adapters.{task.name}.") for k in report.new)
    if model_cfg.image_size != 224:
        assert any("pos_emb" in r for r in report.resized)
    assert torch.equal(model.state_dict()["encoder.3.mlp.fc1.weight"], source["encoder.3.mlp.fc1.weight"])


def test_classification_metrics_by_hand() -> None:
    m = ClassificationMetrics()
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    m.update(logits, torch.tensor([1, 0, 0, 2]))
    r = m.result()
    assert r["top1"] == 50.0 and r["top5"] == 100.0  # k = 3 classes: every target is in the top 3


def test_segmentation_metrics_by_hand() -> None:
    m = SegmentationMetrics(3, ignore_id=255)
    target = torch.tensor([[[0, 0, 1, 255]]])
    pred = torch.tensor([[[0, 1, 1, 2]]])
    m.update(pred, target)
    r = m.result()
    # class 0: I 1, U 2; class 1: I 1, U 2; class 2: absent (the ignored pixel does not count)
    assert r["miou"] == pytest.approx(50.0) and r["pixel_acc"] == pytest.approx(200 / 3)
    assert r["classes_present"] == 2


def test_depth_metrics_by_hand() -> None:
    m = DepthMetrics()
    target = torch.tensor([[1.0, 2.0, 4.0, 0.0]])  # the last pixel is invalid
    pred = torch.tensor([[1.0, 3.0, 4.0, 9.0]])
    m.update(pred, target)
    r = m.result()
    assert r["delta1"] == pytest.approx(200 / 3) and r["delta2"] == pytest.approx(100.0)
    assert r["rmse"] == pytest.approx((1 / 3) ** 0.5) and r["absrel"] == pytest.approx(0.5 / 3)


def test_timm_export_round_trip(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    from trainer.config import config_to_dict
    from trainer.engine.checkpoint import save_checkpoint

    cfg = smoke_config()
    model = MultiMAE(cfg.model).eval()
    save_checkpoint(tmp_path, 1, {"model": model.state_dict(), "config": config_to_dict(cfg)}, 1)
    out = tmp_path / "timm"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "checkpoint-1.pt"), str(out), "--format", "timm"])
    assert result.exit_code == 0, result.output
    vit = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # strict load
    x = torch.randn(2, 3, 64, 64)
    finetune = MultiViT(load_finetune_config(CONFIGS / "finetune-cls-smoke.toml"), 10).eval()
    initialise(finetune, out)
    with torch.no_grad():
        ours, _, _ = finetune.forward_encoder({"rgb": x})
        theirs = vit.forward_features(x)
    assert torch.allclose(theirs[:, 1:], ours[:, :-1], atol=1e-5)  # patch tokens
    assert torch.allclose(theirs[:, 0], ours[:, -1], atol=1e-5)  # class token = the global token


@pytest.mark.slow
def test_finetune_resume_and_evaluate_on_digits(tmp_path: Path) -> None:
    run = CliRunner().invoke
    write_digit_images(tmp_path / "train-src", per_class=4)
    write_digit_images(tmp_path / "val-src", per_class=2, offset=50)
    for split in ("train", "val"):
        args = ["build-dataset", str(tmp_path / f"{split}-src"), str(tmp_path / split), "--recipe", str(DEMO_RECIPE)]
        assert run(app, [*args, "--split", split, "--shard-size", "10", "--executor", "local"]).exit_code == 0
    common = ["--data", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--out", str(tmp_path / "ft")]
    common += ["--config", str(CONFIGS / "finetune-cls-smoke.toml"), "--device", "cpu", "--no-tensorboard"]
    first = run(app, ["finetune", *common, "--steps", "3"])
    assert first.exit_code == 0, first.output
    again = run(app, ["finetune", *common, "--steps", "5", "--reschedule"])
    assert again.exit_code == 0 and "resuming at step 3" in again.output, again.output
    steps = [json.loads(x)["step"] for x in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    result = run(app, ["evaluate", str(tmp_path / "ft" / "checkpoint-best.pt"), "--data", str(tmp_path / "val")])
    assert result.exit_code == 0 and "top1" in result.output and "samples 20" in result.output
    for config, extra in (("finetune-semseg-smoke.toml", ["--inputs", "rgb,depth"]), ("finetune-depth-smoke.toml", [])):
        args = ["finetune", "--data", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--device", "cpu"]
        args += ["--out", str(tmp_path / config), "--config", str(CONFIGS / config), "--no-tensorboard", *extra]
        done = run(app, [*args, "--steps", "2"])
        assert done.exit_code == 0, done.output
        resumed = run(app, [*args, "--steps", "3", "--reschedule"])
        assert resumed.exit_code == 0 and "resuming at step 2" in resumed.output, resumed.output
        best = tmp_path / config / "checkpoint-best.pt"
        scored = run(app, ["evaluate", str(best), "--data", str(tmp_path / "val"), "--json", str(tmp_path / "m.json")])
        assert scored.exit_code == 0, scored.output
        metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
        wanted = {"miou", "pixel_acc"} if "semseg" in config else {"delta1", "rmse", "absrel"}
        assert wanted <= set(metrics), metrics


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("finetune-*.toml")) + sorted(CONFIGS.glob("probe-*.toml")))
def test_every_fine_tuning_recipe_loads_and_builds_its_model_shape(path: Path) -> None:
    """The paper-size recipes are checked as the smoke ones: they load, and state their paper number."""
    cfg = load_finetune_config(path)
    assert cfg.model.inputs and not cfg.model.outputs
    if "smoke" not in path.name:
        text = path.read_text()
        assert "NOT YET REPRODUCED HERE" in text and "Paper:" in text
        assert (cfg.model.dim, cfg.model.depth, cfg.model.heads) == (768, 12, 12)


def test_device_augmentation_is_refused_for_fine_tuning(tmp_path: Path) -> None:
    """Fine-tuning resamples in the workers; asking for the device path is an error, not silently ignored."""
    path = tmp_path / "ft.toml"
    path.write_text('[data]\naugment_on = "device"\n')
    with pytest.raises(ConfigError, match="augment_on"):
        load_finetune_config(path)
    assert load_finetune_config(None).data.augment_on == "auto"

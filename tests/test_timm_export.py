"""The timm export: a pretrained encoder becomes a timm ViT that makes its own head for N classes, a fine-tuned
classifier (our head, or the linear probe's) a timm classifier whose logits are ours, and a fine-tuning run's
validation metrics reach TensorBoard beside the training curves."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli.app import app
from trainer.config import config_to_dict, smoke_config
from trainer.engine.checkpoint import atomic_save, payload, save_checkpoint
from trainer.engine.logs import RunLog
from trainer.model.multimae import MultiMAE
from trainer.transfer.config import FinetuneConfig, load_finetune_config
from trainer.transfer.init_weights import initialise
from trainer.transfer.model import MultiViT

timm = pytest.importorskip("timm")
CONFIGS = Path(__file__).resolve().parents[1] / "trainer" / "configs"
CLASSES = tuple(f"class-{i}" for i in range(10))


def export(checkpoint: Path, out: Path) -> str:
    result = CliRunner().invoke(app, ["export", str(checkpoint), str(out), "--format", "timm"])
    assert result.exit_code == 0, result.output
    return result.output


def pretrained_export(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    cfg = smoke_config()
    save_checkpoint(tmp_path, 1, {"model": MultiMAE(cfg.model).state_dict(), "config": config_to_dict(cfg)}, 1)
    out = tmp_path / "encoder"
    assert "the encoder (num_classes 0" in export(tmp_path / "checkpoint-1.pt", out)
    return out


def finetuned(tmp_path: Path, *, probe: bool = False, global_tokens: int = 1) -> tuple[MultiViT, Path]:
    """A fine-tuned smoke classifier (10 named classes) with a head that is not its initialisation, saved as
    a fine-tuning run's best checkpoint."""
    torch.manual_seed(0)
    cfg = load_finetune_config(CONFIGS / "finetune-cls-smoke.toml")
    cfg = replace(
        cfg,
        model=replace(cfg.model, num_global_tokens=global_tokens),
        task=replace(cfg.task, classes=CLASSES, num_classes=len(CLASSES), probe=probe),
    )
    model = MultiViT(cfg, len(CLASSES)).eval()
    with torch.no_grad():
        for name, tensor in model.head.named_buffers():
            if name.endswith("running_mean"):
                tensor.normal_()
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
        for p in model.head.parameters():
            p.normal_(0.0, 0.5)
    path = tmp_path / "checkpoint-best.pt"
    atomic_save(payload(cfg, step=5, model=model.state_dict(), metrics={"top1": 10.0}), path)
    return model, path


def test_pretrained_export_names_its_classifier(tmp_path: Path) -> None:
    out = pretrained_export(tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained_cfg"]["classifier"] == "head" and config["num_classes"] == 0
    plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # strict: every tensor in the file
    assert plain.num_classes == 0 and plain(torch.randn(2, 3, 64, 64)).shape == (2, 64)
    vit = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=10).eval()
    assert vit.head.weight.shape == (10, 64)
    for name, tensor in plain.state_dict().items():  # everything but the new head is the export's
        assert torch.equal(vit.state_dict()[name], tensor), name
    assert vit(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_pretrained_export_initialises_a_fine_tuning_model(tmp_path: Path) -> None:
    out = pretrained_export(tmp_path)
    vit = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    model = MultiViT(load_finetune_config(CONFIGS / "finetune-cls-smoke.toml"), 10).eval()
    report = initialise(model, out)
    assert report.kind == "timm" and not any(n.startswith(("encoder.", "global_tokens")) for n in report.new)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, _, _ = model.forward_encoder({"rgb": x})
        theirs = vit.forward_features(x)
    assert torch.allclose(theirs[:, 1:], ours[:, :-1], atol=1e-5) and torch.allclose(
        theirs[:, 0], ours[:, -1], atol=1e-5
    )


@pytest.mark.parametrize(("probe", "global_tokens"), [(False, 1), (True, 1), (False, 3)])
def test_fine_tuned_classifier_exports_with_our_logits(tmp_path: Path, probe: bool, global_tokens: int) -> None:
    model, checkpoint = finetuned(tmp_path, probe=probe, global_tokens=global_tokens)
    out = tmp_path / "classifier"
    assert "a timm classifier, 10 classes" in export(checkpoint, out)
    vit = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # strict, 10 classes from the export
    assert vit.num_classes == 10 and vit.pretrained_cfg["label_names"] == list(CLASSES)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = model({"rgb": x}), vit(x)
    assert theirs.shape == (4, 10)
    assert torch.allclose(theirs, ours, atol=1e-5), (theirs - ours).abs().max()
    other = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=3)  # a new head for other classes
    assert other.head.weight.shape == (3, 64) and torch.equal(
        other.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight
    )


def test_classifier_reading_more_than_rgb_exports_its_encoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = load_finetune_config(CONFIGS / "finetune-cls-smoke.toml")
    cfg = replace(cfg, model=replace(cfg.model, inputs=("rgb", "depth")))
    assert isinstance(cfg, FinetuneConfig)
    atomic_save(payload(cfg, step=1, model=MultiViT(cfg, 10).state_dict()), tmp_path / "best.pt")
    assert "not its classifier, which reads depth, rgb" in export(tmp_path / "best.pt", tmp_path / "out")
    assert timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).num_classes == 0


def test_validation_metrics_reach_tensorboard_and_wandb(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = RunLog(tmp_path, enabled=True, progress=False, total=2, initial=0, tensorboard=True)
    log.wandb = wandb = WandbRecorder()  # what `wandb.init` returns, as far as RunLog uses it
    record = {"step": 2, "loss": 1.5, "losses": {"cls": 1.5}, "lr": 0.1, "grad_norm": 1.0}
    log.write(record | {"data_wait_s": 0.0, "samples_per_s": 8.0})
    log.validation(2, {"top1": 40.0, "top5": 90.0, "samples": 20.0, "per_class": [1.0, 2.0]})
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "val/top1", "val/top5"} <= set(tags) and "val/per_class" not in tags
    assert [(e.step, e.value) for e in events.Scalars("val/top1")] == [(2, 40.0)]
    assert wandb.logged[-1] == (2, {"val/top1": 40.0, "val/top5": 90.0, "val/samples": 20.0})


class WandbRecorder:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log(self, data: dict[str, float], step: int) -> None:
        self.logged.append((step, data))

    def finish(self) -> None:
        pass


@pytest.mark.slow
def test_finetune_logs_validation_to_tensorboard_and_exports_to_timm(tmp_path: Path) -> None:
    """`finetune --val` puts each validation's metrics in TensorBoard (`val/*`) beside val.jsonl, and its best
    checkpoint exports as a timm classifier with its logits and class names."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipeline.synth.rectangles import write_digit_images
    from tests.conftest import DEMO_RECIPE

    run = CliRunner().invoke
    for split, offset in (("train", 0), ("val", 50)):
        write_digit_images(tmp_path / f"{split}-src", per_class=2, offset=offset)
        args = ["build-dataset", str(tmp_path / f"{split}-src"), str(tmp_path / split), "--recipe", str(DEMO_RECIPE)]
        assert run(app, [*args, "--split", split, "--shard-size", "10", "--executor", "local"]).exit_code == 0
    args = [
        "finetune",
        "--data",
        str(tmp_path / "train"),
        "--val",
        str(tmp_path / "val"),
        "--out",
        str(tmp_path / "ft"),
    ]
    args += ["--config", str(CONFIGS / "finetune-cls-smoke.toml"), "--device", "cpu", "--steps", "2"]
    result = run(app, [*args, "--set", "train.progress=false"])
    assert result.exit_code == 0, result.output
    val = [json.loads(line) for line in (tmp_path / "ft" / "val.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "ft" / "tensorboard")).Reload()
    assert {"train/loss", "val/top1", "val/top5"} <= set(events.Tags()["scalars"])
    logged = [(e.step, e.value) for e in events.Scalars("val/top1")]
    assert logged == [(r["step"], pytest.approx(r["val"]["top1"])) for r in val] and logged

    from trainer.transfer.finetune import load_finetuned

    assert "a timm classifier, 10 classes" in export(tmp_path / "ft" / "checkpoint-best.pt", tmp_path / "timm")
    model = load_finetuned(tmp_path / "ft" / "checkpoint-best.pt").eval()
    vit = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    assert vit.pretrained_cfg["label_names"] == list(model.cfg.task.classes)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(vit(x), model({"rgb": x}), atol=1e-5)

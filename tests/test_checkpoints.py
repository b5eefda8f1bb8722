"""The one checkpoint reader: every kind recognised from its bytes and names, checkpoints written by earlier
code (tests/data/checkpoints, see its README) still resume, evaluate, reconstruct, export and initialise,
wrong kinds and broken files are refused in one line, and no other module of the trainer or the pipeline
reads a checkpoint."""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import get_args

import pytest
import torch
from safetensors.torch import save
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.synth.rectangles import write_dataset
from trainer.config import FinetuneConfig, ModelConfig, PretrainConfig
from trainer.engine.checkpoint import (
    RESUME_KEYS,
    Checkpoint,
    from_payload,
    payload,
    read_checkpoint,
)
from trainer.engine.checkpoint_kind import KINDS, Kind, peek
from trainer.engine.run import RunOptions
from trainer.errors import CheckpointError
from trainer.train import build_config, pretrain
from trainer.transfer.config import load_finetune_config
from trainer.transfer.finetune import evaluate, finetune
from trainer.transfer.init_weights import initialise
from trainer.transfer.model import MultiViT

ROOT = Path(__file__).resolve().parents[1]
OLD = Path(__file__).parent / "data" / "checkpoints"  # written by commit 6d9e45f (README there)
REFERENCE = Path(__file__).parent / "data"
PRETRAIN_RUN = OLD / "pretrain-run" / "checkpoint-last.pt"
FINETUNE_RUN = OLD / "finetune-run" / "checkpoint-last.pt"
FINETUNE_BEST = OLD / "finetune-run" / "checkpoint-best.pt"
OFFICIAL = OLD / "official-pretrained.pth"
TIMM = OLD / "timm-export"
FIXTURES: dict[Path, tuple[Kind, type | None, int | None, bool]] = {  # kind, config type, step, resumable
    PRETRAIN_RUN: ("pretrain-run", PretrainConfig, 3, True),
    FINETUNE_RUN: ("finetune-run", FinetuneConfig, 2, True),
    FINETUNE_BEST: ("finetune-run", FinetuneConfig, 2, False),
    OFFICIAL: ("official-pretrained", None, None, False),
    TIMM: ("timm-export", None, None, False),
    TIMM / "model.safetensors": ("timm-export", None, None, False),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset the fixtures were trained on (same call, same bytes)."""
    torch.set_num_threads(1)
    return write_dataset(tmp_path_factory.mktemp("ckpt") / "data", [8, 8])


def load_tiny_pretrain(steps: int) -> PretrainConfig:
    return build_config(OLD / "pretrain-tiny.toml", steps=steps)


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_error(result) -> str:
    """The one line a refused command prints (exit code 2)."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


# ------------------------------------------------------------------------------------------------ kinds


@pytest.mark.parametrize("path", list(FIXTURES), ids=lambda p: str(p.relative_to(OLD)))
def test_every_kind_written_by_earlier_code_is_recognised(path: Path) -> None:
    kind, config_type, step, resumable = FIXTURES[path]
    ckpt = read_checkpoint(path)
    assert (ckpt.kind, ckpt.step, ckpt.resumable, ckpt.source) == (kind, step, resumable, str(path))
    assert type(ckpt.config) is config_type if config_type else ckpt.config is None
    assert ckpt.tensors and all(isinstance(t, torch.Tensor) for t in ckpt.tensors.values())
    if path == FINETUNE_BEST:
        assert set(ckpt.extra) == {"metrics"} and "top1" in ckpt.extra["metrics"]
    if kind == "official-pretrained":
        assert ckpt.model_config == ModelConfig()  # no config: the ViT-B shape, spelled once
    if kind == "timm-export":
        assert "patch_embed.proj.weight" in ckpt.tensors and ckpt.extra["metadata"]["source"] == "multimae-forge"


def test_the_kinds_are_named_once() -> None:
    assert set(KINDS) == set(get_args(Kind))


def reference(name: str) -> dict[str, torch.Tensor]:
    """A state dict with the names and shapes of an official ViT-B model, on the meta device (no memory)."""
    lines = (REFERENCE / f"multimae-b-{name}-state-dict.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in lines if line and not line.startswith("#")]
    return {n: torch.empty([int(d) for d in shape.split("x")], device="meta") for n, shape in rows}


@pytest.mark.parametrize(
    "name, kind",
    [
        ("pretrain", "official-pretrained"),
        ("finetune-in1k-cls", "official-finetuned"),
        ("finetune-ade20k-semseg", "official-finetuned"),
        ("finetune-nyuv2-rgbd-semseg", "official-finetuned"),
        ("finetune-nyuv2-depth", "official-finetuned"),
    ],
)
def test_official_layouts_are_recognised_by_their_names(name: str, kind: Kind) -> None:
    ckpt = from_payload({"model": reference(name)}, "official.pth")
    assert ckpt.kind == kind and ckpt.config is None and ckpt.model_config == ModelConfig()
    encoder = {k: v for k, v in reference("pretrain").items() if not k.startswith("output_adapters.")}
    assert from_payload({"model": encoder}, "encoder.pth").kind == "official-pretrained"


def test_our_fine_tuned_model_without_its_config_is_an_official_fine_tuned_one(tmp_path: Path) -> None:
    path = tmp_path / "fine-tuned.pth"
    torch.save({"model": read_checkpoint(FINETUNE_BEST).tensors}, path)
    assert read_checkpoint(path).kind == "official-finetuned"


# ------------------------------------------------------------------------------------ old checkpoints at work


def test_an_old_pretraining_checkpoint_resumes(data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copyfile(PRETRAIN_RUN, run_dir / "checkpoint-last.pt")
    cfg = load_tiny_pretrain(steps=5)
    summary = pretrain(cfg, RunOptions(data=data, out=run_dir, resume=True, device="cpu", reschedule=True))
    assert summary.steps == 5 and len(summary.losses) == 2  # steps 4 and 5 only
    new = torch.load(run_dir / "checkpoint-last.pt", weights_only=True)
    assert (new["format"], new["kind"], new["step"]) == (2, "pretrain-run", 5) and set(RESUME_KEYS) <= set(new)
    assert read_checkpoint(run_dir / "checkpoint-last.pt").resumable


def test_an_old_fine_tuning_checkpoint_resumes_and_its_best_evaluates(data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "ft"
    run_dir.mkdir()
    shutil.copyfile(FINETUNE_RUN, run_dir / "checkpoint-last.pt")
    cfg = load_finetune_config(OLD / "finetune-tiny.toml", steps=3)
    options = RunOptions(data=data, out=run_dir, resume=True, device="cpu", reschedule=True)  # 2 -> 3 steps
    summary = finetune(cfg, options, None, data)
    assert summary.steps == 3 and len(summary.losses) == 1
    best = torch.load(run_dir / "checkpoint-best.pt", weights_only=True)  # the one payload, without resume state
    assert set(best) == {"format", "kind", "step", "config", "model", "metrics"} and best["kind"] == "finetune-run"
    for path in (FINETUNE_BEST, run_dir / "checkpoint-best.pt"):
        result = evaluate(path, data)
        assert result.task == "cls" and result.metrics["samples"] == 16


def test_an_old_pretraining_checkpoint_reconstructs(data: Path, tmp_path: Path) -> None:
    image = data.with_name(data.name + "-source") / "synthetic" / "img-000-00000.png"
    result = cli("reconstruct", str(PRETRAIN_RUN), "--image", str(image), "--out", str(tmp_path / "r.png"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_old_checkpoints_export_to_what_earlier_code_exported(tmp_path: Path) -> None:
    """Exports of the old pretraining checkpoint equal the exports earlier code made of it (tensor for tensor:
    the order of a safetensors header's metadata is not fixed). The timm export has since gained an identity
    fc_norm and the mean-pooled classifier `head` in its config (`trainer.transfer.export`); the encoder's
    tensors and shape are the same."""
    assert cli("export", str(PRETRAIN_RUN), str(tmp_path / "timm"), "--format", "timm").exit_code == 0
    ours, before = read_checkpoint(tmp_path / "timm"), read_checkpoint(TIMM)
    fc_norm = {k: ours.tensors.pop(k) for k in ("fc_norm.weight", "fc_norm.bias")}
    assert same_tensors(ours.tensors, before.tensors) and ours.extra == before.extra
    assert torch.equal(fc_norm["fc_norm.weight"], torch.ones(8)) and torch.equal(
        fc_norm["fc_norm.bias"], torch.zeros(8)
    )
    config, old = (json.loads((folder / "config.json").read_text()) for folder in (tmp_path / "timm", TIMM))
    shape = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "num_classes")
    assert {k: config["model_args"][k] for k in shape} == {k: old["model_args"][k] for k in shape}
    assert config["pretrained_cfg"] == old["pretrained_cfg"] | {"classifier": "head"}
    assert cli("export", str(PRETRAIN_RUN), str(tmp_path / "o.pth"), "--format", "official").exit_code == 0
    assert same_tensors(read_checkpoint(tmp_path / "o.pth").tensors, read_checkpoint(OFFICIAL).tensors)
    assert cli("export", str(FINETUNE_BEST), str(tmp_path / "ft.pth"), "--format", "official").exit_code == 0
    assert read_checkpoint(tmp_path / "ft.pth").kind == "official-finetuned"


@pytest.mark.parametrize("path", [PRETRAIN_RUN, FINETUNE_BEST, OFFICIAL, TIMM], ids=lambda p: p.name)
def test_fine_tuning_starts_from_every_kind(path: Path) -> None:
    """The same pretrained encoder, read from a run checkpoint, the official layout and the timm export."""
    model = MultiViT(load_finetune_config(OLD / "finetune-tiny.toml"), 2)
    report = initialise(model, path)
    assert report.kind == ("timm" if path == TIMM else "checkpoint") and report.loaded == 16
    name = "encoder.0.attn.qkv.weight"
    source = read_checkpoint(FINETUNE_BEST if path == FINETUNE_BEST else PRETRAIN_RUN).tensors[name]
    assert torch.equal(model.state_dict()[name], source)


# ------------------------------------------------------------------------------------------------ refusals


def test_a_command_refuses_a_kind_it_cannot_use_in_one_line(data: Path, tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "r.png"), "--image", str(ROOT / "examples" / "images" / "missing.jpg")]
    line = one_line_error(cli("reconstruct", str(FINETUNE_BEST), *out))
    assert line == (
        f"error: {FINETUNE_BEST} is a fine-tuning checkpoint; reconstruct needs a pretraining checkpoint or an "
        "official MultiMAE pretrained checkpoint"
    )
    line = one_line_error(cli("evaluate", str(PRETRAIN_RUN), "--data", str(data)))
    assert f"{PRETRAIN_RUN} is a pretraining checkpoint; evaluate needs a fine-tuning checkpoint" in line
    line = one_line_error(cli("export", str(TIMM), str(tmp_path / "again")))
    assert f"{TIMM} is a timm export; export needs a pretraining checkpoint or a fine-tuning checkpoint" in line


def test_resume_refuses_another_kind_and_a_checkpoint_without_training_state(data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copyfile(FINETUNE_RUN, run_dir / "checkpoint-last.pt")
    options = RunOptions(data=data, out=run_dir, resume=True, device="cpu")
    with pytest.raises(CheckpointError, match="is a fine-tuning checkpoint; resuming this run needs a pretraining"):
        pretrain(load_tiny_pretrain(steps=4), options)
    shutil.copyfile(FINETUNE_BEST, run_dir / "checkpoint-last.pt")
    with pytest.raises(CheckpointError, match="holds no training state"):
        finetune(load_finetune_config(OLD / "finetune-tiny.toml", steps=3), options, None, None)


def torch_bytes(value: object) -> bytes:
    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()


BROKEN = {
    "empty.pt": (b"", "the file is empty"),
    "text.pt": (b"not a checkpoint at all\n" * 4, "neither a PyTorch file"),
    "truncated.pt": (PRETRAIN_RUN.read_bytes()[:50_000], "truncated or corrupt"),
    "namespace.pt": (torch_bytes({"args": argparse.Namespace(lr=1.0)}), "never unpickled here"),
    "pickle.pt": (pickle.dumps({"model": {}}, protocol=4), "never unpickled here"),
    "list.pt": (torch_bytes([torch.ones(1)]), "it holds a list, no 'model' state dict"),
    "no-model.pt": (torch_bytes({"state_dict": {}}), "no 'model' state dict"),
    "not-a-state-dict.pt": (torch_bytes({"model": {"a": 1}}), "its 'model' is not a state dict"),
    "unknown-names.pt": (torch_bytes({"model": {"fc.weight": torch.ones(1)}}), "unknown layout"),
    "newer.pt": (torch_bytes({"format": 9, "config": {}, "model": {}}), "checkpoint format 9"),
    "bad-config.pt": (torch_bytes({"config": {"model": {"dim": "wide"}}, "model": {}}), "its config does not load"),
    "lying-kind.pt": (torch_bytes({"kind": "finetune-run", "config": {}, "model": {}}), "says it is 'finetune-run'"),
    "other.safetensors": (save({"weight": torch.ones(2)}), "safetensors without timm ViT names"),
    "short.safetensors": (save({"patch_embed.proj.weight": torch.ones(64)})[:-40], "truncated or corrupt"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_files_are_one_line_checkpoint_errors(name: str, tmp_path: Path) -> None:
    content, fragment = BROKEN[name]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(tmp_path / name)
    assert fragment in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


PEEK_DIFFERS = {  # what peek (no torch) says otherwise than read_checkpoint, and why
    "namespace.pt": "no 'model' state dict",  # torch refuses the Namespace; peek sees a stand-in, no 'model'
    "pickle.pt": None,  # not torch.save's zip: left to torch (None)
    "bad-config.pt": "pretrain-run",  # the kind is known; the config is loaded (and refused) with the tensors
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_peek_without_torch_refuses_what_read_checkpoint_refuses(name: str, tmp_path: Path) -> None:
    content, fragment = BROKEN[name]
    (tmp_path / name).write_bytes(content)
    expected = PEEK_DIFFERS.get(name, fragment)
    if expected is None or expected in KINDS:
        assert peek(tmp_path / name) == expected
        return
    with pytest.raises(CheckpointError) as caught:
        peek(tmp_path / name)
    assert expected in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


@pytest.mark.parametrize("path", list(FIXTURES), ids=lambda p: str(p.relative_to(OLD)))
def test_peek_tells_every_kind_as_read_checkpoint_does(path: Path) -> None:
    assert peek(path) == FIXTURES[path][0]


def test_peek_never_imports_or_calls_what_a_pickle_names(tmp_path: Path) -> None:
    """A zip whose data.pkl calls os.system: peek reads the structure, nothing runs (no file appears)."""
    witness = tmp_path / "ran"

    class Hostile:
        def __reduce__(self):
            return (os.system, (f"touch {witness}",))

    buf = io.BytesIO()
    torch.save({"model": {"a": torch.ones(1)}, "payload": Hostile()}, buf, _use_new_zipfile_serialization=True)
    (tmp_path / "hostile.pt").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="unknown layout"):
        peek(tmp_path / "hostile.pt")
    assert not witness.exists()


def test_missing_files_folders_and_fifos_are_one_line_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"^cannot read checkpoint .*missing\.pt: No such file"):
        read_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"is a folder without model\.safetensors"):
        read_checkpoint(tmp_path)
    os.mkfifo(tmp_path / "fifo.pt")
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_checkpoint(tmp_path / "fifo.pt")  # never opened blocking
    for reader in (read_checkpoint, peek):
        with pytest.raises(CheckpointError, match="not a regular file"):
            reader(tmp_path / "fifo.pt")


def test_a_broken_checkpoint_is_one_line_from_the_command_line(tmp_path: Path, data: Path) -> None:
    (tmp_path / "x.pt").write_bytes(PRETRAIN_RUN.read_bytes()[:1000])
    line = one_line_error(cli("evaluate", str(tmp_path / "x.pt"), "--data", str(data)))
    assert line.startswith(f"error: cannot read checkpoint {tmp_path / 'x.pt'}: truncated or corrupt")


# ------------------------------------------------------------------------------------ one format, one reader


def test_the_one_payload_takes_only_its_documented_entries() -> None:
    cfg = load_finetune_config(OLD / "finetune-tiny.toml")
    best = payload(cfg, step=4, model={"a": torch.ones(1)}, metrics={"top1": 50.0})
    assert best["format"] == 2 and best["kind"] == "finetune-run" and best["config"]["task"]["name"] == "cls"
    ckpt = from_payload(best, "best.pt")
    assert isinstance(ckpt, Checkpoint) and ckpt.config == cfg and ckpt.extra == {"metrics": {"top1": 50.0}}
    with pytest.raises(TypeError, match="not a checkpoint entry"):
        payload(cfg, step=1, model={}, args={})


def test_every_checkpoint_read_goes_through_read_checkpoint() -> None:
    """No module but trainer.engine.checkpoint loads a checkpoint (torch.load, safetensors loading)."""
    readers = re.compile(r"torch\.load\(|safe_open\(|load_file\(|safetensors\.torch import [^\n]*\bload\b")
    reader = ROOT / "trainer" / "engine" / "checkpoint.py"
    found = [
        str(p.relative_to(ROOT))
        for folder in ("trainer", "pipeline")
        for p in sorted((ROOT / folder).rglob("*.py"))
        if p != reader and readers.search(p.read_text())
    ]
    assert found == []
    assert readers.search(reader.read_text())

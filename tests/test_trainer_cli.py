"""`mmforge pretrain`: the option set, bad input -> one-line error and exit 2, a smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.synth.rectangles import write_dataset
from trainer.train import parse_args

SMOKE = Path(__file__).resolve().parents[1] / "trainer" / "configs" / "smoke.toml"
OPTIONS = {
    "--data",
    "--out",
    "--config",
    "--device",
    "--resume",
    "--steps",
    "--epochs",
    "--batch-size",
    "--workers",
    "--allow-defects",
    "--tensorboard",
    "--wandb",
}
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["pretrain", *args])


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), [6, 6])


def test_cli_and_torchrun_entry_share_one_option_set() -> None:
    import typer.main

    command = typer.main.get_command(app).commands["pretrain"]  # type: ignore[attr-defined]
    cli = {opt for p in command.params for opt in p.opts if opt.startswith("--") and opt != "--help"}
    assert cli == OPTIONS
    args = parse_args(["--data", "d", "--out", "o", "--no-resume", "--steps", "3", "--batch-size", "2"])
    assert (args.resume, args.steps, args.batch_size, args.workers) == (False, 3, 2, None)


def test_missing_data_folder(tmp_path: Path) -> None:
    result = invoke("--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), "--config", str(SMOKE))
    assert result.exit_code == 2
    assert error_line(result) == f"error: data folder not found: {tmp_path / 'nope'}"


def test_unknown_config_key(tmp_path: Path, data: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nstepz = 3\n")
    result = invoke("--data", str(data), "--out", str(tmp_path / "run"), "--config", str(bad))
    assert result.exit_code == 2
    assert error_line(result).startswith(f"error: trainer config {bad}: unknown key 'train.stepz'; allowed here:")


def test_index_not_matching_shards(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", [3, 3])
    index = json.loads((root / "index.json").read_text())
    index["total_samples"] = 7
    (root / "index.json").write_text(json.dumps(index))
    result = invoke("--data", str(root), "--out", str(tmp_path / "run"), "--config", str(SMOKE))
    assert result.exit_code == 2
    assert "fails its checks" in error_line(result) and "total_samples 7 != sum 6" in error_line(result)


@pytest.mark.slow
def test_smoke_run_then_checkpoint_from_another_config(tmp_path: Path, data: Path) -> None:
    torch.set_num_threads(1)
    common = ["--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu"]
    ok = invoke(*common, "--config", str(SMOKE), "--steps", "2")
    assert ok.exit_code == 0, ok.output
    assert "pretrained 2 steps" in ok.output
    saved = (tmp_path / "run" / "config.json").read_text()
    other = tmp_path / "other.toml"
    other.write_text(SMOKE.read_text().replace("dim = 64", "dim = 128"))
    result = invoke(*common, "--config", str(other), "--steps", "4")
    assert result.exit_code == 2
    assert error_line(result) == "error: checkpoint is from another config: model.dim is 64 there, 128 here"
    assert (tmp_path / "run" / "config.json").read_text() == saved  # the refused run changed nothing


def test_too_few_shards_for_the_workers(tmp_path: Path, data: Path) -> None:
    result = invoke("--data", str(data), "--out", str(tmp_path / "run"), "--config", str(SMOKE), "--workers", "3")
    assert result.exit_code == 2
    assert error_line(result).startswith("error: 2 shards cannot feed 1 ranks x 3 loader workers")

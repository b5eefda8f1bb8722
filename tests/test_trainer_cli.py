"""`mmforge pretrain | finetune | probe` and the torchrun entry: one option set, `--set KEY=VALUE` and configs
by name, bad input -> one-line error and exit 2, a smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
import torch
import typer.main
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.synth.rectangles import write_dataset
from trainer.config import RUN_KINDS as CONFIG_KINDS
from trainer.config import load_run_config, smoke_config
from trainer.options import RUN_KINDS, options_of
from trainer.train import main, parse_args, parser
from trainer.transfer.config import load_finetune_config

CONFIGS = Path(__file__).resolve().parents[1] / "trainer" / "configs"
SMOKE = CONFIGS / "smoke.toml"
OPTIONS = {
    "--data",
    "--out",
    "--config",
    "--device",
    "--resume",
    "--reschedule",
    "--steps",
    "--epochs",
    "--batch-size",
    "--workers",
    "--allow-defects",
    "--tensorboard",
    "--wandb",
    "--set",
}
TRANSFER_OPTIONS = {
    "finetune": OPTIONS | {"--task", "--inputs", "--init", "--val"},
    "probe": OPTIONS | {"--init", "--val"},
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


def command(name: str) -> click.Command:
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


def typer_flags(name: str) -> set[str]:
    return {opt for p in command(name).params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")}


def test_cli_and_torchrun_entry_share_one_option_set(data: Path) -> None:
    cli = {opt for p in command("pretrain").params for opt in p.opts if opt.startswith("--") and opt != "--help"}
    assert cli == OPTIONS
    args = parse_args(["--data", str(data), "--out", "o", "--no-resume", "--steps", "3", "--batch-size", "2"])
    assert (args.resume, args.steps, args.batch_size, args.workers) == (False, 3, 2, None)


def test_the_torchrun_parser_takes_exactly_the_pretrain_command_flags_and_defaults() -> None:
    actions = [a for a in parser()._actions if a.dest != "help"]
    assert {s for a in actions for s in a.option_strings} == typer_flags("pretrain")
    assert {a.dest: a.default for a in actions} == {p.name: p.default for p in command("pretrain").params}
    assert {a.dest for a in actions if a.required} == {p.name for p in command("pretrain").params if p.required}


@pytest.mark.parametrize("kind", ["finetune", "probe"])
def test_finetune_and_probe_share_the_training_options(kind: str) -> None:
    """Each option is declared once (`trainer.options`): the same flags, help and default in every command."""
    cli = {opt for p in command(kind).params for opt in p.opts if opt.startswith("--")}
    assert cli == TRANSFER_OPTIONS[kind]
    pretrain = {p.name: p for p in command("pretrain").params}
    for param in command(kind).params:
        if param.name in pretrain:
            same = pretrain[param.name]
            assert (param.opts, param.secondary_opts, param.default) == (same.opts, same.secondary_opts, same.default)
            assert param.help == same.help  # type: ignore[attr-defined]


def test_every_declared_option_is_taken_by_its_kinds() -> None:
    for kind in RUN_KINDS:
        assert {o.flag for o in options_of(kind)} == (OPTIONS if kind == "pretrain" else TRANSFER_OPTIONS[kind])
    assert set(RUN_KINDS) == set(CONFIG_KINDS)


def captured(monkeypatch: pytest.MonkeyPatch, module: str, name: str) -> list[tuple]:
    """Calls of the library function `module.name`, recorded instead of run."""
    calls: list[tuple] = []

    class Done:
        def text(self) -> str:
            return "done"

    def record(*args: object) -> Done:
        calls.append(args)
        return Done()

    monkeypatch.setattr(f"{module}.{name}", record)
    return calls


def test_set_and_options_reach_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data: Path) -> None:
    calls = captured(monkeypatch, "trainer.train", "pretrain")
    sets = ["--set", "optim.base_lr=3e-4", "--set", "data.workers=8", "--set", 'train.precision="bf16"']
    sets += ["--set", "data.crop_scale=[0.5, 1]", "--set", "train.compile=true", "--set", "train.steps=7"]
    result = invoke("--data", str(data), "--out", str(tmp_path / "r"), "--config", "smoke", "--steps", "3", *sets)
    assert result.exit_code == 0, result.output
    cfg, run = calls[0]
    assert (cfg.optim.base_lr, cfg.data.workers, cfg.train.precision) == (3e-4, 8, "bf16")
    assert (cfg.data.crop_scale, cfg.train.compile, cfg.train.steps) == ((0.5, 1.0), True, 7)  # --set after --steps
    assert cfg.model == smoke_config().model and run.device == "auto" and run.resume


def test_the_torchrun_entry_takes_set_and_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = captured(monkeypatch, "trainer.train", "pretrain")
    argv = ["--data", "d", "--out", str(tmp_path), "--config", "smoke", "--set", "optim.base_lr=2e-3", "--workers", "1"]
    assert main(argv) == 0
    cfg, run = calls[0]
    assert (cfg.optim.base_lr, cfg.data.workers, cfg.model.dim) == (2e-3, 1, smoke_config().model.dim)
    assert str(run.out) == str(tmp_path)
    assert main([*argv, "--set", "optim.base_lr=0"]) == 2


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["optim.base_lrr=1"],
            "error: options: unknown key 'optim.base_lrr'; allowed here: accum_steps, base_lr, betas, clip_grad, "
            "min_lr, warmup_epochs, weight_decay",
        ),
        (["optimm.base_lr=1"], "error: options: unknown key 'optimm'; allowed here: data, model, optim, train"),
        (["data.workers=-1"], "error: options: data.workers must be >= 0; got -1"),
        (["data.hflip=2"], "error: options: data.hflip must be <= 1; got 2.0"),
        (["train.steps=three"], "error: options: --set train.steps: 'three' is not a TOML value"),
        (["train.steps=1.5"], "error: options: train.steps must be an integer, got 1.5"),
        (["train.steps"], "error: options: --set takes KEY=VALUE with a dotted KEY (e.g. optim.base_lr=3e-4)"),
        (["optim.betas.x=1"], "error: options: optim.betas is a list, not a table: optim.betas.x cannot be set"),
    ],
)
def test_each_bad_set_is_one_line_and_exit_2(sets: list[str], message: str, tmp_path: Path, data: Path) -> None:
    args = [a for item in sets for a in ("--set", item)]
    result = invoke("--data", str(data), "--out", str(tmp_path / "r"), "--config", "smoke", *args)
    assert result.exit_code == 2
    assert error_line(result).startswith(message), error_line(result)
    assert not (tmp_path / "r").exists()


def test_every_bad_set_is_listed_at_once(tmp_path: Path, data: Path) -> None:
    sets = ["--set", "data.workers=-1", "--set", "optim.nope=1", "--set", "x=y", "--steps", "-2"]
    result = invoke("--data", str(data), "--out", str(tmp_path / "r"), "--config", "smoke", *sets)
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert lines[0] == "error: options: 4 problems" and len(lines) == 5, result.output


def test_config_by_name_and_unknown_names(tmp_path: Path, data: Path) -> None:
    assert load_run_config("pretrain", "smoke") == load_run_config("pretrain", SMOKE)
    assert load_run_config("probe", "probe-smoke").task.probe
    result = invoke("--data", str(data), "--out", str(tmp_path / "r"), "--config", "smok")
    assert result.exit_code == 2
    line = error_line(result)
    assert line.startswith("error: trainer config smok is neither a file nor a shipped name; known names: ")
    assert {"smoke", "multimae-b-1600e", "probe-smoke"} <= set(line.split("known names: ")[1].split(", "))


def test_probe_is_a_classification_probe_whatever_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data: Path
) -> None:
    calls = captured(monkeypatch, "trainer.transfer.finetune", "finetune")
    args = [
        "probe",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "r"),
        "--config",
        "finetune-cls-smoke",
        "--steps",
        "2",
    ]
    result = runner.invoke(app, [*args, "--set", "task.layer_decay=0.5"])
    assert result.exit_code == 0, result.output
    cfg, _, weights, val = calls[0]
    assert (cfg.task.name, cfg.task.probe, cfg.task.layer_decay, cfg.train.steps) == ("cls", True, 0.5, 2)
    assert weights is None and val is None


def test_finetune_inputs_and_task_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data: Path) -> None:
    calls = captured(monkeypatch, "trainer.transfer.finetune", "finetune")
    args = ["finetune", "--data", str(data), "--out", str(tmp_path / "r"), "--config", "finetune-semseg-smoke"]
    result = runner.invoke(app, [*args, "--inputs", "rgb, depth", "--set", "task.eval_every=5"])
    assert result.exit_code == 0, result.output
    cfg = calls[0][0]
    assert (cfg.model.inputs, cfg.task.name, cfg.task.eval_every) == (("rgb", "depth"), "semseg", 5)
    by_name = load_finetune_config("finetune-semseg-smoke", inputs="rgb,depth", task="semseg")
    assert by_name == load_finetune_config(CONFIGS / "finetune-semseg-smoke.toml", inputs="rgb, depth")
    assert by_name.model.inputs == cfg.model.inputs and by_name.task.eval_every == 0


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

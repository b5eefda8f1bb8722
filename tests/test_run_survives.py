"""Runs that survive and refuse: the run folder is owned and locked, SIGTERM / SIGINT stop with a checkpoint of
the step and one line, and a resume refuses other data or another schedule unless asked for."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.format.contract import DatasetPaths
from pipeline.format.ownership import BuildLock
from pipeline.format.stores import location
from pipeline.synth.rectangles import write_dataset
from trainer.config import PretrainConfig
from trainer.engine.checkpoint import read_checkpoint
from trainer.engine.run_folder import RUN_MARKER, RunFolder
from trainer.engine.stop import StopSignals
from trainer.errors import CheckpointError, ConfigError, DataError
from trainer.train import RunOptions, build_config, pretrain

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "trainer" / "configs" / "smoke.toml"
QUIET = ["--set", "train.progress=false", "--set", "train.figure_every=0", "--no-tensorboard"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "d", [13, 9, 11, 7])  # 40 samples: 10 steps of 4


def smoke(steps: int, **optim: object) -> PretrainConfig:
    cfg = build_config(SMOKE, steps=steps)
    train = dataclasses.replace(cfg.train, progress=False, tensorboard=False, figure_every=0, checkpoint_every=2)
    return dataclasses.replace(cfg, train=train, optim=dataclasses.replace(cfg.optim, **optim))


def run(cfg: PretrainConfig, data: Path, out: Path, **options: object):
    torch.set_num_threads(1)
    return pretrain(cfg, RunOptions(data=data, out=out, device="cpu", **options))


def steps_logged(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


# ---------------------------------------------------------------------------------------------- ownership


def test_a_folder_of_photos_is_refused_and_left_untouched(dataset: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.jpg", "notes.txt"):
        (photos / name).write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"has no mmforge-run\.json marker.*\(a\.jpg, b\.jpg, notes\.txt\)"):
        run(smoke(2), dataset, photos)
    assert sorted(p.name for p in photos.iterdir()) == ["a.jpg", "b.jpg", "notes.txt"]  # no lock, no marker


@pytest.mark.parametrize("where", ["same", "inside"])
def test_a_run_never_writes_into_its_dataset(dataset: Path, where: str) -> None:
    before = sorted(p.name for p in dataset.iterdir())
    out = dataset if where == "same" else dataset / "run"
    with pytest.raises(ConfigError, match="overlap: a run never writes into its dataset"):
        run(smoke(2), dataset, out)
    assert sorted(p.name for p in dataset.iterdir()) == before


def test_a_dataset_folder_is_named_as_such(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    with pytest.raises(ConfigError, match=r"so it is a dataset \(mmforge\.json\)"):
        run(smoke(2), dataset, copy)


def test_a_run_marks_its_folder_and_another_kind_of_run_is_refused(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(smoke(2), dataset, out)
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker == {"tool": "multimae-forge", "kind": "pretrain-run", "format": 1}
    assert not (out / ".mmforge.lock").exists()  # released at the end
    with pytest.raises(ConfigError, match="holds a pretraining run; a fine-tuning run needs its own folder"):
        RunFolder(location(out), 0).check_owned("finetune-run")
    (out / RUN_MARKER).write_text("{not json")
    with pytest.raises(ConfigError, match=r"mmforge-run\.json"):
        RunFolder(location(out), 0).check_owned("pretrain-run")


def test_a_second_writer_is_refused_with_the_holder_named(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    holder = rf"pid {os.getpid()} on .*mmforge pretrain --out elsewhere"
    with BuildLock(DatasetPaths(out), "mmforge pretrain --out elsewhere"), pytest.raises(ConfigError, match=holder):
        run(smoke(2), dataset, out)  # another run holds the folder
    assert sorted(p.name for p in out.iterdir()) == []  # the refused run wrote nothing


def test_a_lock_left_by_a_killed_run_is_taken_over(dataset: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / ".mmforge.lock").write_text(json.dumps({"pid": 999999, "host": "gone", "command": "killed"}) + "\n")
    assert run(smoke(2), dataset, out).steps == 2
    assert "took over a stale lock" in caplog.text and not (out / ".mmforge.lock").exists()


def test_a_run_of_an_earlier_version_is_taken_on(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(smoke(2), dataset, out)
    (out / RUN_MARKER).unlink()
    assert run(smoke(2), dataset, out).steps == 2  # nothing to do, but not refused
    assert (out / RUN_MARKER).is_file()


def test_a_refused_run_removes_the_folder_it_made(tmp_path: Path) -> None:
    fresh = tmp_path / "new" / "run"
    with pytest.raises(DataError, match="data folder not found"):  # refused after the folder was made and locked
        run(smoke(2), tmp_path / "no-data", fresh)
    assert not fresh.exists()


# ---------------------------------------------------------------------------------------------- resume


def test_another_schedule_is_refused_unless_rescheduled_and_then_recorded(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(smoke(2), dataset, out)
    saved = (out / "config.json").read_bytes()
    with pytest.raises(CheckpointError, match=r"resuming would change the schedule \(train\.steps 2 -> 4; the lea"):
        run(smoke(4), dataset, out)
    with pytest.raises(CheckpointError, match=r"optim\.base_lr 0\.1 -> 0\.2.*pass --reschedule"):
        run(smoke(2, base_lr=0.2), dataset, out)
    assert (out / "config.json").read_bytes() == saved and steps_logged(out) == [1, 2]
    summary = run(smoke(4), dataset, out, reschedule=True)
    assert summary.steps == 4 and steps_logged(out) == [1, 2, 3, 4]
    change = {"step": 2, "changes": {"train.steps": [2, 4]}}
    record = read_checkpoint(out / "checkpoint-last.pt").extra["run"]
    assert len(record["reschedules"]) == 1 and record["reschedules"][0].items() >= change.items()
    document = json.loads((out / "config.json").read_text())
    assert document["step"] == 4 and document["config"]["train"]["steps"] == 4
    assert document["reschedules"] == record["reschedules"]
    with pytest.raises(CheckpointError, match="past the 3 steps of the new schedule"):
        run(smoke(3), dataset, out, reschedule=True)


def test_other_data_is_refused_and_the_same_data_moved_is_not(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(smoke(2), dataset, out)
    other = write_dataset(tmp_path / "other", [13, 9, 11, 7], seed=1)
    with pytest.raises(CheckpointError, match=r"another dataset \(.*\): a run continues on its own data"):
        run(smoke(2), other, out)
    moved = tmp_path / "moved"
    shutil.copytree(dataset, moved)
    assert run(smoke(2), moved, out).steps == 2


def test_a_rerun_with_nothing_to_do_changes_nothing(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(smoke(2), dataset, out)
    document = json.loads((out / "config.json").read_text())
    assert document["step"] == 2 and document["dataset_fingerprint"]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name.endswith((".json", ".jsonl", ".pt"))}
    cfg = smoke(2)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, checkpoint_every=7, keep_last=5))
    assert run(cfg, dataset, out).losses == []
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name.endswith((".json", ".jsonl", ".pt"))}
    assert after == before  # config.json still describes the checkpoint beside it


def test_steps_zero_is_refused_in_one_line(dataset: Path, tmp_path: Path) -> None:
    args = ["pretrain", "--data", str(dataset), "--out", str(tmp_path / "run"), "--config", "smoke", "--steps", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: --steps 0 would train the config's epochs instead: give at least 1, or leave --steps out"]
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- signals


def start(data: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "pipeline.cli.app", "pretrain", "--data", str(data), "--out", str(out)]
    cmd += ["--config", "smoke", "--steps", "100000", "--device", "cpu", *QUIET, *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc: subprocess.Popen[str], out: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(steps_logged(out)) < step:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no step logged in time"
        time.sleep(0.05)


def stopped(proc: subprocess.Popen[str], sig: int, out: Path) -> tuple[int, int]:
    """Send `sig`; returns (exit code, the step of the one line), checking the line and the checkpoint."""
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    name = signal.Signals(sig).name
    line = err.strip().splitlines()[-1]
    found = re.fullmatch(
        rf"stopped by {name} at step (\d+) of 100000: checkpoint (\S+); resume with: python -m pipeline\.cli\.app "
        r"pretrain --data .* --out .*",
        line,
    )
    assert found, err
    step = int(found[1])
    assert found[2] == str(out / f"checkpoint-{step}.pt")
    assert read_checkpoint(out / "checkpoint-last.pt").step == step
    assert steps_logged(out) == list(range(1, step + 1))  # nothing logged past the checkpoint, no repeat
    assert json.loads((out / "config.json").read_text())["step"] == step
    assert not list(out.glob(".*.tmp-*")) and not (out / ".mmforge.lock").exists()
    return proc.returncode, step


@pytest.mark.slow
def test_sigterm_then_sigint_stop_with_a_checkpoint_and_the_resume_continues(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start(dataset, out, "--set", "train.checkpoint_every=1000")
    wait_for_step(proc, out, 2)
    code, first = stopped(proc, signal.SIGTERM, out)
    assert code == 143 and first >= 2

    proc = start(dataset, out, "--set", "train.checkpoint_every=1000")  # the same command resumes
    wait_for_step(proc, out, first + 2)
    code, second = stopped(proc, signal.SIGINT, out)
    assert code == 130 and second >= first + 2


DDP_LAUNCH = """
import os, sys, time
import torch
from trainer.model import multimae
from trainer import train
original = multimae.MultiMAE.forward_loss

def forward_loss(self, *args):
    time.sleep(0.05)  # slow steps, so the signalled rank is some steps ahead of its own check
    return original(self, *args)

multimae.MultiMAE.forward_loss = forward_loss
torch.set_num_threads(1)
sys.exit(train.main(sys.argv[1:]))
"""


def rank_pid(tag: str, rank: int) -> int | None:
    """The pid of the worker of rank `rank` of the torchrun started with MMFORGE_TEST_TAG=tag."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"MMFORGE_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", [11, 9, 12, 8])
    script, out, tag = tmp_path / "launch.py", tmp_path / "run", uuid.uuid4().hex
    script.write_text(DDP_LAUNCH)
    args = ["--data", str(data), "--out", str(out), "--config", str(SMOKE), "--steps", "100000", "--device", "cpu"]
    args += [*QUIET, "--set", "train.checkpoint_every=1000", "--set", "data.batch_size=2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", MMFORGE_TEST_TAG=tag)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(proc, out, 3, timeout=240)
    pid = rank_pid(tag, 1)
    assert pid is not None
    os.kill(pid, signal.SIGTERM)  # rank 1 alone: rank 0 learns it in the step's all-reduce
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("stopped by")]
    assert len(lines) == 1, err  # rank 0's one line
    step = int(re.match(r"stopped by SIGTERM at step (\d+) of 100000", lines[0])[1])  # type: ignore[index]
    ckpt = read_checkpoint(out / "checkpoint-last.pt")
    assert ckpt.step == step and len(ckpt.extra["ranks"]) == 2
    assert steps_logged(out) == list(range(1, step + 1))


def test_a_second_ctrl_c_interrupts_at_once_and_workers_ignore_signals() -> None:
    before = signal.getsignal(signal.SIGINT)  # the default handler, or SIG_IGN in a background job
    with StopSignals(grace_s=60) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT  # a request, no exception
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM changes nothing
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_a_forked_loader_worker_lives_through_the_signals() -> None:
    with StopSignals(grace_s=60) as stop:
        child = os.fork()
        if child == 0:  # as a DataLoader worker is forked: the main process decides, and ends it
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
                os.kill(os.getpid(), sig)
            os._exit(0)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0 and not stop.requested


SLOW_SAVE = """
import dataclasses, sys, time
import torch
from trainer.engine import loop
from trainer.train import RunOptions, build_config, pretrain

original = loop.Trainer.save

def save(self):
    if self.stopping:
        time.sleep(60)  # the checkpoint of the stop cannot be written in time
    original(self)

loop.Trainer.save = save
torch.set_num_threads(1)
cfg = build_config("smoke", steps=100000, tensorboard=False)
cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, checkpoint_every=2, progress=False, figure_every=0))
pretrain(cfg, RunOptions(data=sys.argv[1], out=sys.argv[2], device="cpu", stop_grace_s=1.0))
"""


@pytest.mark.slow
def test_the_grace_time_bounds_a_stop_that_cannot_save(dataset: Path, tmp_path: Path) -> None:
    script, out = tmp_path / "slow_save.py", tmp_path / "run"
    script.write_text(SLOW_SAVE)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(dataset), str(out)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    wait_for_step(proc, out, 3)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and time.monotonic() - started < 15
    line = err.strip().splitlines()[-1]
    found = re.fullmatch(
        r"stopped by SIGTERM at step (\d+): no checkpoint of it within the 1 s grace time; the last checkpoint is "
        r"(\S+); resume with: python .*slow_save\.py .*",
        line,
    )
    assert found, err
    last = read_checkpoint(out / "checkpoint-last.pt").step
    assert found[2] == str(out / f"checkpoint-{last}.pt") and last is not None and last <= int(found[1])

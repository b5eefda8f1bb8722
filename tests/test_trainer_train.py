"""The training loop: smoke pretraining lowers the loss, exact resume, checkpoints, non-finite policy."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.synth.rectangles import write_dataset
from pipeline.verify.verifier import VerifyConfig, verify_dataset
from trainer.config import PretrainConfig
from trainer.engine import checkpoint
from trainer.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError
from trainer.model.multimae import MultiMAE
from trainer.train import RunOptions, build_config, pretrain

SMOKE = Path(__file__).resolve().parents[1] / "trainer" / "configs" / "smoke.toml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), [13, 9, 11, 7])  # 40 samples: 10 steps of 4


def smoke(**train: object) -> PretrainConfig:
    cfg = build_config(SMOKE)
    data = {k: v for k, v in train.items() if k in ("workers", "augment_on")}
    fields = {k: v for k, v in train.items() if k not in data}
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False, **fields))
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data))


def run(cfg: PretrainConfig, data: Path, out: Path, resume: bool = True):
    torch.set_num_threads(1)  # tiny model: threads only add overhead on a shared 2-core box
    return pretrain(cfg, RunOptions(data=data, out=out, resume=resume, device="cpu"))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_smoke_pretraining_lowers_the_loss_and_writes_the_run_folder(dataset: Path, tmp_path: Path) -> None:
    summary = run(smoke(steps=40, checkpoint_every=5, keep_last=2), dataset, tmp_path / "run")
    first, last = sum(summary.losses[:8]) / 8, sum(summary.losses[-8:]) / 8
    assert last < first - 0.5, summary.losses
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == [
        "checkpoint-35.pt",
        "checkpoint-40.pt",
        "checkpoint-last.pt",
        "config.json",
        "encoder-timm.safetensors",
        "figures",
        "metrics.jsonl",
        "mmforge-run.json",
        "tensorboard",
    ]
    assert sorted(p.name for p in (tmp_path / "run" / "figures").iterdir()) == [
        "step-0000010.png",
        "step-0000020.png",
        "step-0000030.png",
        "step-0000040.png",
    ]
    record = metrics(tmp_path / "run")[-1]
    assert set(record) >= {"step", "loss", "losses", "lr", "grad_norm", "data_wait_s", "samples_per_s"}
    assert set(record["losses"]) == {"rgb", "depth", "semseg", "norm_rgb"}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["model"]["dim"] == 64


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "augment_on"), [(0, "worker"), (2, "worker"), (2, "device")])
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(
    dataset: Path, tmp_path: Path, workers: int, augment_on: str
) -> None:
    """Step-exact for both loader modes (device: the workers cut crops, the loop resamples them)."""
    cfg = smoke(steps=14, checkpoint_every=4, keep_last=5, workers=workers, augment_on=augment_on)
    full = run(cfg, dataset, tmp_path / "full")
    interrupted = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full", interrupted)  # as if killed after step 9: last checkpoint at 8
    for name in ("checkpoint-12.pt", "checkpoint-14.pt", "metrics.jsonl"):
        (interrupted / name).unlink()
    shutil.copyfile(interrupted / "checkpoint-8.pt", interrupted / "checkpoint-last.pt")
    resumed = run(cfg, dataset, interrupted)  # crosses the epoch boundary at step 10
    assert resumed.steps == 14 and [r["step"] for r in metrics(interrupted)] == list(range(9, 15))
    assert resumed.losses == pytest.approx(full.losses[8:], rel=1e-5, abs=1e-6)
    a = torch.load(tmp_path / "full" / "checkpoint-14.pt", weights_only=True)["model"]
    b = torch.load(interrupted / "checkpoint-14.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_device_augmentation_trains_as_the_worker_path(dataset: Path, tmp_path: Path) -> None:
    """The same run with the resampling in the loop instead of the workers: the same losses (the inputs
    differ by at most one rgb level)."""
    worker = run(smoke(steps=3, augment_on="worker"), dataset, tmp_path / "worker")
    device = run(smoke(steps=3, augment_on="device"), dataset, tmp_path / "device")
    assert device.losses == pytest.approx(worker.losses, rel=1e-3)


@pytest.mark.parametrize("augment_on", ["worker", "device"])
def test_a_dataset_with_unlabelled_pixels_pretrains_without_skipping_samples(tmp_path: Path, augment_on: str) -> None:
    """Class maps with the ignore id (255, a 24 px void border, as NYUv2's) verify, stream without a corrupt
    sample (max_corrupt 0), and train with finite losses; the figure of the last step draws them."""
    root = write_dataset(tmp_path / "d", [4, 4], ignore_border=24)
    assert verify_dataset(VerifyConfig(out=root, deep=True, workers=1, quiet=True)).ok
    cfg = smoke(steps=4, checkpoint_every=100, augment_on=augment_on)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_corrupt=0))
    summary = run(cfg, root, tmp_path / "run")
    records = metrics(tmp_path / "run")
    assert summary.steps == 4 and [r["corrupt_samples"] for r in records] == [0, 0, 0, 0]
    assert all(math.isfinite(v) for r in records for v in (r["loss"], *r["losses"].values()))
    assert (tmp_path / "run" / "figures" / "step-0000004.png").is_file()


def test_checkpoints_are_plain_atomic_and_pruned(dataset: Path, tmp_path: Path) -> None:
    run(smoke(steps=6, checkpoint_every=2, keep_last=2), dataset, tmp_path / "run")
    files = sorted(p.name for p in (tmp_path / "run").glob("*.pt"))
    assert files == ["checkpoint-4.pt", "checkpoint-6.pt", "checkpoint-last.pt"]
    assert not list((tmp_path / "run").glob(".*tmp"))
    ckpt = torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=True)
    checkpoint.assert_plain(ckpt)
    assert ckpt["step"] == 6 and ckpt["world_size"] == 1 and isinstance(ckpt["config"], dict)
    assert set(ckpt) >= {"model", "optimizer", "scaler", "ranks", "config", "epoch", "micro"}
    assert isinstance(ckpt["ranks"][0]["rng_cpu"], torch.Tensor)
    with pytest.raises(TypeError, match="numpy"):
        import numpy as np

        checkpoint.assert_plain({"x": np.float32(1.0)})


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "checkpoint-1.pt"
    checkpoint.atomic_save({"model": {"a": torch.ones(2)}}, target)

    def broken(obj, f):  # writes half a file, then dies
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*disk full"):  # one line, not a traceback
        checkpoint.atomic_save({"model": {"a": torch.zeros(2)}}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-1.pt"]
    assert torch.equal(torch.load(target, weights_only=True)["model"]["a"], torch.ones(2))


def nan_on_call(monkeypatch, bad_calls: set[int]) -> None:
    original, calls = MultiMAE.forward_loss, {"n": 0}

    def patched(self, preds, targets, masks):
        total, per_task = original(self, preds, targets, masks)
        calls["n"] += 1
        return (total * float("nan"), per_task) if calls["n"] in bad_calls else (total, per_task)

    monkeypatch.setattr(MultiMAE, "forward_loss", patched)


def test_nonfinite_loss_skips_the_step(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    nan_on_call(monkeypatch, {3})
    summary = run(smoke(steps=5, checkpoint_every=100), dataset, tmp_path / "run")
    assert summary.steps == 5 and summary.skipped_nonfinite == 1
    assert [r["skipped"] for r in metrics(tmp_path / "run")] == [False, False, True, False, False]


def test_nonfinite_loss_stops_under_the_stop_policy(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    nan_on_call(monkeypatch, {2})
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        run(smoke(steps=5, nonfinite="stop"), dataset, tmp_path / "run")


def test_checkpoint_from_another_config_is_refused(dataset: Path, tmp_path: Path) -> None:
    run(smoke(steps=2), dataset, tmp_path / "run")
    other = smoke(steps=4)
    other = dataclasses.replace(other, model=dataclasses.replace(other.model, dim=32))
    with pytest.raises(CheckpointError, match="model"):
        run(other, dataset, tmp_path / "run")
    with pytest.raises(CheckpointError, match="--resume"):
        run(smoke(steps=4), dataset, tmp_path / "run", resume=False)


def test_gradient_accumulation_runs_and_counts_steps(dataset: Path, tmp_path: Path) -> None:
    cfg = smoke(steps=3, checkpoint_every=100)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, accum_steps=2))
    summary = run(cfg, dataset, tmp_path / "run")
    assert summary.steps == 3
    ckpt = torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=True)
    assert ckpt["micro"] == 6 and sum(c["batches"] for c in ckpt["ranks"][0]["cursors"]) == 6


def test_tensorboard_without_the_package_is_a_config_error(dataset: Path, tmp_path: Path) -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="tensorboard"):
            run(smoke(steps=1, tensorboard=True), dataset, tmp_path / "run")
    else:
        run(smoke(steps=1, tensorboard=True), dataset, tmp_path / "run")
        assert (tmp_path / "run" / "tensorboard").is_dir()


def test_a_loader_worker_error_reaches_the_caller_as_one_line(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", [4, 4])
    (root / "shards" / "train-000001.tar").write_bytes(b"\0" * (root / "shards" / "train-000001.tar").stat().st_size)
    cfg = smoke(steps=2, workers=2)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_corrupt=0, batch_size=2))
    with pytest.raises(DataError) as info:
        run(cfg, root, tmp_path / "run")
    message = str(info.value)  # raised in a DataLoader worker, unwrapped from its traceback text
    assert message == "shards ['train-000001'] gave no samples (empty or unreadable tar files)"


def test_resume_with_another_worker_count_continues(dataset: Path, tmp_path: Path, caplog) -> None:
    run(smoke(steps=3, workers=0), dataset, tmp_path / "run")
    torch.set_num_threads(1)
    options = RunOptions(data=dataset, out=tmp_path / "run", device="cpu", reschedule=True)  # 3 -> 5 steps
    summary = pretrain(smoke(steps=5, workers=2), options)
    assert summary.steps == 5 and [r["step"] for r in metrics(tmp_path / "run")] == [1, 2, 3, 4, 5]
    assert "loader workers changed (1 -> 2)" in caplog.text

"""The pretraining loop: `pretrain(config, options)`; under torchrun: `torchrun ... -m trainer.train ...`.

One step = `accum_steps` micro-batches per rank. Each micro-batch's losses are summed over ranks together
with a non-finite flag (one all-reduce), so every rank skips the step, or stops, together. Checkpoints are
step-granular: model, optimizer, scaler, every rank's RNG state and loader cursors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline import fs
from trainer.checkpoint import LAST, load_checkpoint
from trainer.config import PretrainConfig, apply_overrides, config_to_dict, load_config
from trainer.data import Cursor, EpochPlan, check_enough_shards, make_loader
from trainer.dataset import load_dataset
from trainer.distributed import DistInfo, gather_objects, init_distributed, nonfinite_anywhere, shutdown
from trainer.errors import USER_ERRORS, CheckpointError, DataError, NonFiniteLossError, PretrainError
from trainer.logs import RunLog
from trainer.optim import build_optimizer, lr_at, set_lr
from trainer.resume import restore, write_checkpoint
from trainer.run import Job, RunOptions, RunSummary, Schedule, Trainer, TrainState, fresh_cursors, precision

log = logging.getLogger(__name__)


def pretrain(config: PretrainConfig, options: RunOptions) -> RunSummary:
    """Pretrain MultiMAE on the shards in `options.data`, writing the run folder `options.out`."""
    from trainer.jobs import PretrainJob

    return run(PretrainJob(), config, options)


def run(job: Job, config: Any, options: RunOptions) -> RunSummary:
    """The one loop: pretraining, fine-tuning and probing differ only in their `job`."""
    dist = init_distributed(options.device)
    try:
        trainer = setup(job, config, options, dist)
        run_loop(trainer)
        return finish(trainer)
    finally:
        shutdown()


def setup(job: Job, cfg: Any, options: RunOptions, dist: DistInfo) -> Trainer:
    info = load_dataset(options.data, verify_checksums=cfg.data.verify_checksums, allow_defects=options.allow_defects)
    job.check(info, cfg)
    check_enough_shards(len(info.shards), dist.world, max(1, cfg.data.workers))
    schedule = Schedule.build(cfg, info.total_samples, dist.world)
    run_dir = prepare_run_dir(options, cfg, dist)
    torch.manual_seed(cfg.train.seed)
    model = job.build_model(cfg, info).to(dist.device)
    groups = job.param_groups(model, cfg)
    optimizer = build_optimizer(model, cfg.optim, fused=dist.device.type == "cuda", groups=groups)
    scaler = torch.amp.GradScaler(dist.device.type) if precision(cfg, dist) == torch.float16 else None
    torch.manual_seed(cfg.train.seed * 1000 + dist.rank + 1)  # masking streams differ per rank
    state = TrainState(cursors=fresh_cursors(cfg))
    trainer = Trainer(
        cfg=cfg,
        dist=dist,
        info=info,
        schedule=schedule,
        run_dir=run_dir,
        model=model,
        wrapped=model,
        optimizer=optimizer,
        scaler=scaler,
        state=state,
        job=job,
        task_names=job.task_names(model),
    )
    error = None
    if options.resume and (run_dir / LAST).exists():
        try:
            restore(trainer, load_checkpoint(run_dir / LAST))
        except CheckpointError as err:
            error = str(err)
    agree_on_start(trainer, error)
    if dist.is_main:  # only now: a refused resume leaves the folder's config and metrics as they were
        save_run_config(run_dir, options, cfg, dist)
        trim_metrics(run_dir / "metrics.jsonl", trainer.state.step)
    trainer.wrapped = wrap_model(job.objective(model), cfg, dist)
    return trainer


def agree_on_start(t: Trainer, error: str | None) -> None:
    """Every rank starts at the same step or none starts: a rank that cannot see or load the checkpoint
    (a run folder that is not on a filesystem all nodes share) would otherwise train on alone and hang."""
    outcomes = gather_objects((t.state.step, error), t.dist.world)
    errors = [e for _, e in outcomes if e]
    if errors:
        raise CheckpointError(errors[0])
    steps = sorted({step for step, _ in outcomes})
    if len(steps) > 1:
        raise CheckpointError(
            f"ranks would resume at different steps {steps}: the run folder must be on a filesystem every node sees"
        )


def trim_metrics(path: Path, step: int) -> None:
    """Drop records of steps after the checkpoint (they are about to be trained and logged again) and any
    line that is not a whole record (a kill mid-write leaves a torn last line); rewritten atomically."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(errors="replace").splitlines() if _step_of(line) <= step]
    fs.write_bytes_atomic(path, "".join(line + "\n" for line in kept).encode())


def _step_of(line: str) -> float:
    """The step of one metrics.jsonl line; infinity (never kept) for a torn or foreign line."""
    try:
        record = json.loads(line)
    except ValueError:
        return math.inf
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else math.inf


def prepare_run_dir(options: RunOptions, cfg: PretrainConfig, dist: DistInfo) -> Path:
    """Create the run folder (rank 0); refuse one with checkpoints unless resuming."""
    run_dir = Path(options.out)
    if not options.resume and (run_dir / LAST).exists():
        raise CheckpointError(f"{run_dir} already holds checkpoints; pass --resume or choose another --out")
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def save_run_config(run_dir: Path, options: RunOptions, cfg: PretrainConfig, dist: DistInfo) -> None:
    resolved = {"config": config_to_dict(cfg), "data": str(options.data), "world_size": dist.world}
    fs.write_json_atomic(run_dir / "config.json", resolved)


def wrap_model(model: nn.Module, cfg: Any, dist: DistInfo) -> nn.Module:
    wrapped: nn.Module = model
    if dist.world > 1:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    if cfg.train.compile:
        wrapped = torch.compile(wrapped)  # type: ignore[assignment]
    return wrapped


def run_loop(t: Trainer) -> None:
    main, train = t.dist.is_main, t.cfg.train
    t.log = RunLog(
        t.run_dir,
        enabled=main,
        progress=train.progress,
        total=t.schedule.total_steps,
        initial=t.state.step,
        tensorboard=train.tensorboard,
        wandb=train.wandb,
        config=config_to_dict(t.cfg),
    )
    t.log.announce(start_summary(t))
    t.started = time.perf_counter()
    try:
        while t.state.step < t.schedule.total_steps:
            run_epoch(t)
    finally:
        t.log.close()


def start_summary(t: Trainer) -> str:
    """A few lines a person reads at the start: model, data, batch, schedule, device, where it writes."""
    s, info = t.schedule, t.info
    warmup = f"{s.warmup_steps} warmup steps" + (f" ({s.warmup_note})" if s.warmup_note else "")
    resumed = f", resuming at step {t.state.step}" if t.state.step else ""
    return "\n".join(
        [
            t.job.describe(t),
            f"data {info.root}: {info.total_samples} samples in {len(info.shards)} shards; global batch "
            f"{s.global_batch} ({t.cfg.data.batch_size} per rank x {t.dist.world} ranks x {t.cfg.optim.accum_steps} "
            f"accumulation), {s.steps_per_epoch} steps per epoch",
            f"{s.total_steps} steps{resumed}; {warmup}; peak lr {s.peak_lr:.3g}; device {t.dist.device}, "
            f"precision {str(precision(t.cfg, t.dist)).removeprefix('torch.')}",
            f"run folder {t.run_dir} (the resolved config: config.json)",
        ]
    )


def run_epoch(t: Trainer) -> None:
    """Steps of the current epoch from the saved position, until the epoch or the run ends."""
    micro_per_epoch = t.schedule.steps_per_epoch * t.cfg.optim.accum_steps
    batches = epoch_batches(t, micro_per_epoch)
    while t.state.step < t.schedule.total_steps and t.state.micro < micro_per_epoch:
        started = time.perf_counter()
        micro = [next_batch(batches) for _ in range(t.cfg.optim.accum_steps)]
        record = train_step(t, micro, data_wait=time.perf_counter() - started)
        record["step_s"] = time.perf_counter() - started
        record["samples_per_s"] = t.schedule.global_batch / record["step_s"]
        after_step(t, record)
    if t.state.micro >= micro_per_epoch:
        t.state.epoch, t.state.micro, t.state.cursors = t.state.epoch + 1, 0, fresh_cursors(t.cfg)


def epoch_batches(t: Trainer, micro_per_epoch: int) -> Iterator[dict[str, Any]]:
    cfg, dist = t.cfg, t.dist
    plan = EpochPlan(
        seed=cfg.train.seed,
        epoch=t.state.epoch,
        rank=dist.rank,
        world=dist.world,
        workers=max(1, cfg.data.workers),
        micro_batches=micro_per_epoch,
    )
    stream = t.job.stream(t, plan, t.state.micro % plan.workers)
    return iter(make_loader(stream, cfg.data.workers, pin_memory=dist.device.type == "cuda"))


def next_batch(batches: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """The next micro-batch; an error raised in a loader worker comes back as its own one-line message."""
    try:
        return next(batches)
    except StopIteration:
        raise DataError("the loader ended before its epoch quota (internal error)") from None
    except PretrainError as exc:
        raise type(exc)(worker_message(str(exc))) from None


def worker_message(text: str) -> str:
    """DataLoader wraps a worker's exception in a traceback text; keep the original message line."""
    last = text.strip().splitlines()[-1] if text.strip() else text
    name, sep, message = last.partition(": ")
    return message if sep and name.rsplit(".", 1)[-1].endswith("Error") else last


def train_step(t: Trainer, micro: Sequence[dict[str, Any]], data_wait: float) -> dict[str, Any]:
    """Forward/backward over the micro-batches, agreed non-finite check, then clip, step, zero."""
    t.wrapped.train()
    sums, skipped = torch.zeros(len(t.task_names) + 2), False
    for i, batch in enumerate(micro):
        t.state.cursors[batch["__cursor__"]["worker"]] = cursor_of(batch)
        no_sync = getattr(t.wrapped, "no_sync", contextlib.nullcontext)
        with contextlib.nullcontext() if i == len(micro) - 1 else no_sync():
            bad, values = micro_step(t, batch, skip_backward=skipped)
        skipped = skipped or bad
        sums[:-1] += values[:-1].cpu()
        sums[-1] = values[-1].cpu()  # corrupt samples so far, summed over ranks
    grad_norm = float("nan") if skipped else optimizer_step(t)
    skipped = skipped or not math.isfinite(grad_norm)
    if skipped:
        t.optimizer.zero_grad(set_to_none=True)
    sums[:-1] /= len(micro) * t.dist.world
    return step_record(t, sums, grad_norm, skipped, data_wait)


def micro_step(t: Trainer, batch: dict[str, Any], skip_backward: bool) -> tuple[bool, torch.Tensor]:
    """One micro-batch: loss, agreed non-finite flag, backward unless any rank's loss is non-finite."""
    device, dtype = t.dist.device, precision(t.cfg, t.dist)
    data = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss, per_task = t.wrapped(data)  # the objective computes its loss in its forward
    corrupt = loss.new_tensor(float(sum(c.corrupt for c in t.state.cursors)))
    values = torch.stack([loss.detach(), *(v.detach() for v in per_task.values()), corrupt]).float()
    bad, summed = nonfinite_anywhere(values)
    if not (bad or skip_backward):
        scaled = loss / t.cfg.optim.accum_steps
        (t.scaler.scale(scaled) if t.scaler else scaled).backward()
    return bad, summed


def cursor_of(batch: dict[str, Any]) -> Cursor:
    c = batch["__cursor__"]
    return Cursor(raw=int(c["raw"]), batches=int(c["batches"]), corrupt=int(c["corrupt"]))


def optimizer_step(t: Trainer) -> float:
    """Set the step's lr, clip (or just measure) the grad norm, step when it is finite. Returns the norm."""
    set_lr(t.optimizer, current_lr(t))
    if t.scaler:
        t.scaler.unscale_(t.optimizer)
    clip = t.cfg.optim.clip_grad or float("inf")
    norm = float(torch.nn.utils.clip_grad_norm_(t.model.parameters(), clip))
    if math.isfinite(norm):
        (t.scaler.step(t.optimizer) if t.scaler else t.optimizer.step())
    if t.scaler:
        t.scaler.update()
    t.optimizer.zero_grad(set_to_none=True)
    return norm


def current_lr(t: Trainer) -> float:
    s, floor = t.schedule, t.cfg.optim.min_lr
    return lr_at(t.state.step, peak=s.peak_lr, warmup_steps=s.warmup_steps, total_steps=s.total_steps, min_lr=floor)


def step_record(t: Trainer, means: torch.Tensor, grad_norm: float, skipped: bool, wait: float) -> dict[str, Any]:
    names = t.task_names
    return {
        "step": t.state.step + 1,
        "epoch": t.state.epoch,
        "loss": float(means[0]),
        "losses": {n: float(v) for n, v in zip(names, means[1:-1], strict=True)},
        "lr": current_lr(t),
        "grad_norm": grad_norm,
        "data_wait_s": wait,
        "skipped": skipped,
        "corrupt_samples": int(means[-1]),
    }


def after_step(t: Trainer, record: dict[str, Any]) -> None:
    """Advance the state, apply the non-finite policy, log, checkpoint."""
    s = t.state
    s.step, s.micro = s.step + 1, s.micro + t.cfg.optim.accum_steps
    check_nonfinite(t, record["skipped"])
    record["nonfinite_total"] = s.nonfinite_total
    t.losses.append(record["loss"])
    for name, value in record["losses"].items():
        t.task_losses.setdefault(name, []).append(value)
    if t.log is not None:
        t.log.write(record)
    t.job.on_step(t)
    if s.step % t.cfg.train.checkpoint_every == 0 or s.step == t.schedule.total_steps:
        write_checkpoint(t)


def check_nonfinite(t: Trainer, skipped: bool) -> None:
    s, cfg = t.state, t.cfg.train
    s.nonfinite_streak = s.nonfinite_streak + 1 if skipped else 0
    s.nonfinite_total += int(skipped)
    if skipped and (cfg.nonfinite == "stop" or s.nonfinite_streak > cfg.max_nonfinite):
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {s.step} ({s.nonfinite_streak} in a row, policy "
            f"{cfg.nonfinite!r}); stopped on every rank. Last good checkpoint: {t.run_dir / LAST}"
        )
    if skipped:
        log.warning("step %d skipped on every rank: non-finite loss or gradient", s.step)


def finish(t: Trainer) -> RunSummary:
    export = t.job.finish(t)
    seconds = time.perf_counter() - t.started if t.started else 0.0
    steps_run = len(t.losses)
    return RunSummary(
        run_dir=t.run_dir,
        steps=t.state.step,
        losses=t.losses,
        skipped_nonfinite=t.state.nonfinite_total,
        export=export,
        seconds=seconds,
        samples_per_s=steps_run * t.schedule.global_batch / seconds if seconds > 0 else 0.0,
        task_losses=t.task_losses,
        checkpoint=t.run_dir / LAST if (t.run_dir / LAST).exists() else None,
        verb=getattr(t.job, "verb", "pretrained"),
        export_label=getattr(t.job, "export_label", "timm export"),
    )


def build_config(config: Path | None, **overrides: Any) -> PretrainConfig:
    """The TOML recipe (defaults: ViT-B 1600 epochs) with command-line overrides applied."""
    return apply_overrides(load_config(config), **overrides)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer.train", description="MultiMAE pretraining (torchrun)")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (index.json, manifest.json, shards/)")
    p.add_argument("--config", type=Path, default=None, help="TOML recipe, e.g. trainer/configs/smoke.toml")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, metrics.jsonl, config.json)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--allow-defects", action="store_true", help="train on a dataset that fails its checks")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None, help="TensorBoard logs")
    p.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None, help="Weights & Biases logs")
    for name in ("steps", "epochs", "batch-size", "workers"):
        p.add_argument(f"--{name}", type=int, default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = build_config(
            args.config,
            steps=args.steps,
            epochs=args.epochs,
            batch_size=args.batch_size,
            workers=args.workers,
            tensorboard=args.tensorboard,
            wandb=args.wandb,
        )
        options = RunOptions(
            data=args.data, out=args.out, resume=args.resume, device=args.device, allow_defects=args.allow_defects
        )
        pretrain(cfg, options)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The one training loop, as an object: `Trainer.start(job, cfg, options, dist)`, then `train()`, `close()`.

`pretrain`, `finetune` and `probe` differ only in their `Job` (trainer.engine.run): model, objective (the loss is
computed in its forward), stream, per-step hooks. Everything else comes with every command:
- `step(micro_batches)`: forward and backward of `accum_steps` micro-batches per rank; each micro-batch's
  losses are summed over ranks with a non-finite flag (one all-reduce), so every rank skips the step, or
  stops, together; then clip, optimizer step, metrics, hooks and a checkpoint when one is due;
- `state_dict()` / `load_state_dict()`: step-granular checkpoints (model, optimizer, scaler, every rank's RNG
  state and loader cursors), so a resumed run draws the same masks and reads the same batches;
- DDP and torch.compile around the objective, progress and TensorBoard / wandb logs, run summaries.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.format import fs
from trainer.config import RunConfig, config_to_dict
from trainer.data import batch_resize
from trainer.data.dataset import DatasetInfo, load_dataset
from trainer.data.loader import Cursor, EpochPlan, check_enough_shards, make_loader
from trainer.engine.checkpoint import (
    LAST,
    Checkpoint,
    first_sentence,
    payload,
    read_checkpoint,
    run_kind,
    save_checkpoint,
)
from trainer.engine.distributed import DistInfo, gather_objects, init_distributed, nonfinite_anywhere, shutdown
from trainer.engine.logs import RunLog
from trainer.engine.optim import build_optimizer, lr_at, set_lr
from trainer.engine.resume import check_compatible, rank_state, restore_rng, restored_cursors
from trainer.engine.run import C, Job, RunOptions, RunSummary, Schedule, TrainState, fresh_cursors, precision
from trainer.engine.run_folder import RunFolder
from trainer.errors import CheckpointError, DataError, NonFiniteLossError, PretrainError

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Trainer(Generic[C]):
    """One run: what it trains, where it is, and the loop's methods."""

    cfg: C  # PretrainConfig or FinetuneConfig: model, data, optim, train (and task)
    dist: DistInfo
    info: DatasetInfo
    schedule: Schedule
    run_dir: Path
    model: nn.Module  # what checkpoints hold (official layout)
    wrapped: nn.Module  # the job's objective (batch -> loss, per-task losses), under DDP / compile
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    state: TrainState
    job: Job[C]
    task_names: list[str] = field(default_factory=list)
    log: RunLog | None = None
    losses: list[float] = field(default_factory=list)
    task_losses: dict[str, list[float]] = field(default_factory=dict)
    started: float = 0.0
    store_folder: RunFolder | None = None  # `--out` (on an object store, run_dir is this rank's stage of it)

    # ------------------------------------------------------------------------------------------ start

    @classmethod
    def start(cls, job: Job[C], cfg: C, options: RunOptions, dist: DistInfo) -> Trainer[C]:
        """Data, model, optimizer; the last checkpoint of `options.out` loaded when resuming (all ranks agree)."""
        info = load_dataset(
            options.data, verify_checksums=cfg.data.verify_checksums, allow_defects=options.allow_defects
        )
        cfg = job.check(info, cfg)  # e.g. the class count from the manifest
        check_enough_shards(len(info.shards), dist.world, max(1, cfg.data.workers))
        schedule = Schedule.build(cfg, info.total_samples, dist.world)
        run_dir, store_folder = prepare_run_dir(options, dist)
        torch.manual_seed(cfg.train.seed)
        model = job.build_model(cfg, info).to(dist.device)
        groups = job.param_groups(model, cfg)
        optimizer = build_optimizer(model, cfg.optim, fused=dist.device.type == "cuda", groups=groups)
        scaler = torch.amp.GradScaler(dist.device.type) if precision(cfg, dist) == torch.float16 else None
        torch.manual_seed(cfg.train.seed * 1000 + dist.rank + 1)  # masking streams differ per rank
        t = cls(
            cfg=cfg,
            dist=dist,
            info=info,
            schedule=schedule,
            run_dir=run_dir,
            model=model,
            wrapped=model,
            optimizer=optimizer,
            scaler=scaler,
            state=TrainState(cursors=fresh_cursors(cfg)),
            job=job,
            task_names=job.task_names(model),
            store_folder=store_folder,
        )
        error = None
        if options.resume and (run_dir / LAST).exists():
            try:
                t.load_state_dict(read_checkpoint(run_dir / LAST).require(run_kind(cfg), use="resuming this run"))
            except CheckpointError as err:
                error = str(err)
        t._agree_on_start(error)
        if dist.is_main:  # only now: a refused resume leaves the folder's config and metrics as they were
            fs.write_json_atomic(
                run_dir / "config.json",
                {"config": config_to_dict(cfg), "data": str(options.data), "world_size": dist.world},
            )
            trim_metrics(run_dir / "metrics.jsonl", t.state.step)
        t.wrapped = wrap_model(job.objective(model), cfg, dist)
        return t

    def _agree_on_start(self, error: str | None) -> None:
        """Every rank starts at the same step or none starts: a rank that cannot see or load the checkpoint
        (a run folder that is not on a filesystem all nodes share) would otherwise train on alone and hang."""
        outcomes = gather_objects((self.state.step, error), self.dist.world)
        errors = [e for _, e in outcomes if e]
        if errors:
            raise CheckpointError(errors[0])
        steps = sorted({step for step, _ in outcomes})
        if len(steps) > 1:
            raise CheckpointError(
                f"ranks would resume at different steps {steps}: the run folder must be on a filesystem every node sees"
            )

    # ------------------------------------------------------------------------------------------ loop

    def train(self) -> None:
        """Steps until `schedule.total_steps`, epoch by epoch, from where the state says."""
        main, train = self.dist.is_main, self.cfg.train
        self.log = RunLog(
            self.run_dir,
            enabled=main,
            progress=train.progress,
            total=self.schedule.total_steps,
            initial=self.state.step,
            tensorboard=train.tensorboard,
            wandb=train.wandb,
            config=config_to_dict(self.cfg),
        )
        self.log.announce(self.start_summary())
        self.started = time.perf_counter()
        try:
            while self.state.step < self.schedule.total_steps:
                self._epoch()
        finally:
            self.log.close()

    def start_summary(self) -> str:
        """A few lines a person reads at the start: model, data, batch, schedule, device, where it writes."""
        s, info, cfg = self.schedule, self.info, self.cfg
        warmup = f"{s.warmup_steps} warmup steps" + (f" ({s.warmup_note})" if s.warmup_note else "")
        resumed = f", resuming at step {self.state.step}" if self.state.step else ""
        return "\n".join(
            [
                self.job.describe(self),
                f"data {info.root}: {info.total_samples} samples in {len(info.shards)} shards; global batch "
                f"{s.global_batch} ({cfg.data.batch_size} per rank x {self.dist.world} ranks x "
                f"{cfg.optim.accum_steps} accumulation), {s.steps_per_epoch} steps per epoch",
                f"{s.total_steps} steps{resumed}; {warmup}; peak lr {s.peak_lr:.3g}; device {self.dist.device}, "
                f"precision {str(precision(cfg, self.dist)).removeprefix('torch.')}",
                f"run folder {self.run_dir} (the resolved config: config.json)",
            ]
        )

    def _epoch(self) -> None:
        """Steps of the current epoch from the saved position, until the epoch or the run ends."""
        micro_per_epoch = self.schedule.steps_per_epoch * self.cfg.optim.accum_steps
        batches = self._batches(micro_per_epoch)
        while self.state.step < self.schedule.total_steps and self.state.micro < micro_per_epoch:
            started = time.perf_counter()
            micro = [next_batch(batches) for _ in range(self.cfg.optim.accum_steps)]
            self.step(micro, data_wait=time.perf_counter() - started, started=started)
        if self.state.micro >= micro_per_epoch:
            self.state.epoch, self.state.micro, self.state.cursors = self.state.epoch + 1, 0, fresh_cursors(self.cfg)

    def _batches(self, micro_per_epoch: int) -> Iterator[dict[str, Any]]:
        cfg, dist = self.cfg, self.dist
        plan = EpochPlan(
            seed=cfg.train.seed,
            epoch=self.state.epoch,
            rank=dist.rank,
            world=dist.world,
            workers=max(1, cfg.data.workers),
            micro_batches=micro_per_epoch,
        )
        names = [[s.name for s in plan.shards(self.info.shards, w)] for w in range(plan.workers)]
        log.info(
            "rank %d of %d, epoch %d: %d micro-batches from shards %s",
            dist.rank,
            dist.world,
            self.state.epoch,
            micro_per_epoch,
            " | ".join(",".join(n) for n in names),
        )
        stream = self.job.stream(self, plan, self.state.micro % plan.workers)
        return iter(make_loader(stream, cfg.data.workers, pin_memory=dist.device.type == "cuda"))

    # ------------------------------------------------------------------------------------------ step

    def step(self, micro: Sequence[dict[str, Any]], data_wait: float = 0.0, started: float | None = None) -> dict:
        """One optimizer step over `micro` (accum_steps micro-batches): forward/backward, the agreed
        non-finite check, clip, step; then the state advances, the record is logged, the job's hook runs and
        a checkpoint is written when one is due. Returns the step's record (as in metrics.jsonl)."""
        started = time.perf_counter() if started is None else started
        self.wrapped.train()
        sums, skipped = torch.zeros(len(self.task_names) + 2), False
        for i, batch in enumerate(micro):
            self.state.cursors[batch["__cursor__"]["worker"]] = cursor_of(batch)
            no_sync = getattr(self.wrapped, "no_sync", contextlib.nullcontext)
            with contextlib.nullcontext() if i == len(micro) - 1 else no_sync():
                bad, values = self._micro_step(batch, skip_backward=skipped)
            skipped = skipped or bad
            sums[:-1] += values[:-1].cpu()
            sums[-1] = values[-1].cpu()  # corrupt samples so far, summed over ranks
        grad_norm = float("nan") if skipped else self._optimizer_step()
        skipped = skipped or not math.isfinite(grad_norm)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
        sums[:-1] /= len(micro) * self.dist.world
        record = self._record(sums, grad_norm, skipped, data_wait)
        record["step_s"] = time.perf_counter() - started
        record["samples_per_s"] = self.schedule.global_batch / record["step_s"]
        self._after_step(record)
        return record

    def _micro_step(self, batch: dict[str, Any], skip_backward: bool) -> tuple[bool, torch.Tensor]:
        """One micro-batch: loss, agreed non-finite flag, backward unless any rank's loss is non-finite."""
        device, dtype = self.dist.device, precision(self.cfg, self.dist)
        loss: torch.Tensor
        per_task: dict[str, torch.Tensor]
        data = batch_resize.to_device(batch, device, self.cfg.model.image_size)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss, per_task = self.wrapped(data)  # the objective computes its loss in its forward
        corrupt = loss.new_tensor(float(sum(c.corrupt for c in self.state.cursors)))
        values = torch.stack([loss.detach(), *(v.detach() for v in per_task.values()), corrupt]).float()
        bad, summed = nonfinite_anywhere(values)
        if not (bad or skip_backward):
            scaled = loss / self.cfg.optim.accum_steps
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return bad, summed

    def _optimizer_step(self) -> float:
        """Set the step's lr, clip (or just measure) the grad norm, step when it is finite. Returns the norm."""
        set_lr(self.optimizer, self.lr())
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.clip_grad or float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if math.isfinite(norm):
            (self.scaler.step(self.optimizer) if self.scaler else self.optimizer.step())
        if self.scaler:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def lr(self) -> float:
        """The learning rate of the current step (warmup, then cosine)."""
        s, floor = self.schedule, self.cfg.optim.min_lr
        return lr_at(
            self.state.step, peak=s.peak_lr, warmup_steps=s.warmup_steps, total_steps=s.total_steps, min_lr=floor
        )

    def _record(self, means: torch.Tensor, grad_norm: float, skipped: bool, wait: float) -> dict[str, Any]:
        return {
            "step": self.state.step + 1,
            "epoch": self.state.epoch,
            "loss": float(means[0]),
            "losses": {n: float(v) for n, v in zip(self.task_names, means[1:-1], strict=True)},
            "lr": self.lr(),
            "grad_norm": grad_norm,
            "data_wait_s": wait,
            "skipped": skipped,
            "corrupt_samples": int(means[-1]),
        }

    def _after_step(self, record: dict[str, Any]) -> None:
        """Advance the state, apply the non-finite policy, log, run the job's hook, checkpoint."""
        s = self.state
        s.step, s.micro = s.step + 1, s.micro + self.cfg.optim.accum_steps
        self._check_nonfinite(record["skipped"])
        record["nonfinite_total"] = s.nonfinite_total
        self.losses.append(record["loss"])
        for name, value in record["losses"].items():
            self.task_losses.setdefault(name, []).append(value)
        if self.log is not None:
            self.log.write(record)
        self.job.on_step(self)
        if s.step % self.cfg.train.checkpoint_every == 0 or s.step == self.schedule.total_steps:
            self.save()

    def _check_nonfinite(self, skipped: bool) -> None:
        s, cfg = self.state, self.cfg.train
        s.nonfinite_streak = s.nonfinite_streak + 1 if skipped else 0
        s.nonfinite_total += int(skipped)
        if skipped and (cfg.nonfinite == "stop" or s.nonfinite_streak > cfg.max_nonfinite):
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {s.step} ({s.nonfinite_streak} in a row, policy "
                f"{cfg.nonfinite!r}); stopped on every rank. Last good checkpoint: {self.run_dir / LAST}"
            )
        if skipped:
            log.warning("step %d skipped on every rank: non-finite loss or gradient", s.step)

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any] | None:
        """The checkpoint of this step (a collective: every rank calls it; rank 0 gets the payload, others None)."""
        ranks = gather_objects(rank_state(self.dist, self.state.cursors), self.dist.world)
        if not self.dist.is_main:
            return None
        s = self.state
        return payload(
            self.cfg,
            step=s.step,
            model=self.model.state_dict(),
            epoch=s.epoch,
            micro=s.micro,
            world_size=self.dist.world,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler else {},
            ranks=ranks,
            nonfinite={"total": s.nonfinite_total, "streak": s.nonfinite_streak},
        )

    def load_state_dict(self, ckpt: Checkpoint) -> None:
        """Continue exactly where the checkpoint left off, or refuse one written by another config."""
        check_compatible(ckpt, self.cfg, self.dist)
        state = ckpt.extra
        try:
            self.model.load_state_dict(ckpt.tensors, strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint does not fit this model: {first_sentence(str(exc))}") from exc
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        mine = state["ranks"][self.dist.rank]
        restore_rng(mine, self.dist)
        self.state = TrainState(
            step=ckpt.step or 0,
            epoch=state["epoch"],
            micro=state["micro"],
            cursors=restored_cursors(mine, self.state.cursors, self.cfg),
            nonfinite_total=state["nonfinite"]["total"],
            nonfinite_streak=state["nonfinite"]["streak"],
        )

    def save(self) -> None:
        """Write `checkpoint-<step>.pt` atomically and point `checkpoint-last.pt` at it (rank 0)."""
        payload = self.state_dict()
        if payload is not None:
            save_checkpoint(self.run_dir, self.state.step, payload, self.cfg.train.keep_last)
            self.publish()

    def publish(self) -> None:
        """Rank 0 of a run on an object store: upload what changed in the stage (see trainer.engine.run_folder)."""
        if self.store_folder is not None and self.dist.is_main:
            self.store_folder.publish(self.cfg.train.keep_last)

    def close(self) -> RunSummary:
        """The job's last word (an export, the best checkpoint) and the run's summary."""
        export = self.job.finish(self)
        self.publish()
        seconds = time.perf_counter() - self.started if self.started else 0.0
        return RunSummary(
            run_dir=self.run_dir,
            steps=self.state.step,
            losses=self.losses,
            skipped_nonfinite=self.state.nonfinite_total,
            export=export,
            seconds=seconds,
            samples_per_s=len(self.losses) * self.schedule.global_batch / seconds if seconds > 0 else 0.0,
            task_losses=self.task_losses,
            checkpoint=self.run_dir / LAST if (self.run_dir / LAST).exists() else None,
            verb=getattr(self.job, "verb", "pretrained"),
            export_label=getattr(self.job, "export_label", "timm export"),
            published=self.store_folder.published_to if self.store_folder is not None else "",
        )


# ---------------------------------------------------------------------------------------------- helpers


def prepare_run_dir(options: RunOptions, dist: DistInfo) -> tuple[Path, RunFolder]:
    """Create the run folder (rank 0); refuse one with checkpoints unless resuming. The run folder is this
    rank's stage of `--out`: on an object store, holding the store's last checkpoint (trainer.engine.run_folder)."""
    store_folder = RunFolder(options.out, dist.rank)
    try:
        store_folder.pull()
    except OSError as err:
        raise CheckpointError(f"cannot read the run folder {options.out}: {err}") from None
    run_dir = store_folder.local
    if not options.resume and (run_dir / LAST).exists():
        raise CheckpointError(f"{options.out} already holds checkpoints; pass --resume or choose another --out")
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, store_folder


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


def wrap_model(model: nn.Module, cfg: RunConfig, dist: DistInfo) -> nn.Module:
    wrapped: nn.Module = model
    if dist.world > 1:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    if cfg.train.compile:
        wrapped = torch.compile(wrapped)  # type: ignore[assignment]
    return wrapped


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


def cursor_of(batch: dict[str, Any]) -> Cursor:
    c = batch["__cursor__"]
    return Cursor(raw=int(c["raw"]), batches=int(c["batches"]), corrupt=int(c["corrupt"]))


def run(job: Job[C], config: C, options: RunOptions) -> RunSummary:
    """The one loop (`trainer.engine.loop.Trainer`): pretraining, fine-tuning and probing differ only in their `job`."""
    dist = init_distributed(options.device)
    try:
        trainer = Trainer.start(job, config, options, dist)
        trainer.train()
        return trainer.close()
    finally:
        shutdown()

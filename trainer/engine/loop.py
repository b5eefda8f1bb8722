"""The one training loop, as an object: `Trainer.start(job, cfg, options, dist)`, then `train()`, `close()`.

`pretrain`, `finetune` and `probe` differ only in their `Job` (trainer.engine.run): model, objective (the loss is
computed in its forward), stream, per-step hooks. Everything else comes with every command:
- `step(micro_batches)`: forward and backward of `accum_steps` micro-batches per rank; each micro-batch's
  losses are summed over ranks with a non-finite flag (one all-reduce), so every rank skips the step, or
  stops, together; then clip, optimizer step, metrics, hooks and a checkpoint when one is due;
- `state_dict()` / `load_state_dict()`: step-granular checkpoints (model, optimizer, scaler, every rank's RNG
  state and loader cursors), so a resumed run draws the same masks and reads the same batches;
- DDP and torch.compile around the objective, progress and TensorBoard / wandb logs, run summaries.

`run(job, config, options)` wraps it: the run folder is owned and locked for the whole run
(`trainer.engine.run_folder.claimed`), a resume refuses what would silently change the run
(`trainer.engine.resume.check_resume`), `config.json` is written with every checkpoint (so it always describes the
one beside it), and SIGTERM / SIGINT stop every rank after the same step with a checkpoint of it
(`trainer.engine.stop`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import signal
import sys
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
from trainer.engine.distributed import (
    DistInfo,
    all_sum,
    gather_objects,
    init_distributed,
    nonfinite_anywhere,
    shutdown,
)
from trainer.engine.logs import RunLog
from trainer.engine.optim import build_optimizer, lr_at, set_lr
from trainer.engine.resume import RunRecord, check_resume, rank_state, restore_rng, restored_cursors
from trainer.engine.run import C, Job, RunOptions, RunSummary, Schedule, TrainState, fresh_cursors, precision
from trainer.engine.run_folder import RunFolder, claimed
from trainer.engine.stop import RunStopped, StopSignals, resume_command, signal_name
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
    folder: RunFolder  # `--out` (on an object store, run_dir is this rank's stage of it)
    record: RunRecord  # the data it trains on and its schedule changes: in every checkpoint and config.json
    stop: StopSignals | None = None  # SIGTERM / SIGINT received (agreed across ranks every step: `stopping`)
    task_names: list[str] = field(default_factory=list)
    log: RunLog | None = None
    losses: list[float] = field(default_factory=list)
    task_losses: dict[str, list[float]] = field(default_factory=dict)
    started: float = 0.0
    split_logged: bool = False  # this process has shown its ranks' shard split (INFO once, then DEBUG)
    saved_step: int | None = None  # the step of the last checkpoint there is (written or resumed from)
    stopping: bool = False

    # ------------------------------------------------------------------------------------------ start

    @classmethod
    def start(
        cls, job: Job[C], cfg: C, options: RunOptions, dist: DistInfo, folder: RunFolder, stop: StopSignals | None
    ) -> Trainer[C]:
        """Data, model, optimizer; the last checkpoint of the run folder (owned: `claimed`) loaded and checked
        when resuming (all ranks agree). Only then is the folder marked and written."""
        info = load_dataset(
            options.data, verify_checksums=cfg.data.verify_checksums, allow_defects=options.allow_defects
        )
        cfg = job.check(info, cfg)  # e.g. the class count from the manifest
        check_enough_shards(len(info.shards), dist.world, max(1, cfg.data.workers))
        schedule = Schedule.build(cfg, info.total_samples, dist.world)
        run_dir = folder.local
        if not options.resume and (run_dir / LAST).exists():
            raise CheckpointError(f"{options.out} already holds checkpoints; pass --resume or choose another --out")
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
            folder=folder,
            record=RunRecord.of(info),
            stop=stop,
        )
        error = None
        if options.resume and (run_dir / LAST).exists():
            try:
                ckpt = read_checkpoint(run_dir / LAST).require(run_kind(cfg), use="resuming this run")
                t.record = check_resume(ckpt, cfg, dist, t.record, info.total_samples, options.reschedule)
                t.load_state_dict(ckpt)
            except CheckpointError as err:
                error = str(err)
        t._agree_on_start(error)
        if dist.is_main:  # only now: a refused resume leaves the folder as it was
            folder.claim(run_kind(cfg))
            fs.remove_temps(run_dir)  # what a killed writer left (no other writer: the folder is locked)
            if t.saved_step is None:  # a new run: config.json describes it; later, the checkpoint beside it
                t.write_config()
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
            self.stopping = self._agree_to_stop()  # a signal while the run started
            while self.state.step < self.schedule.total_steps and not self.stopping:
                self._epoch()
        finally:
            self.log.close()
        if self.stopping and self.state.step != (self.saved_step or 0):  # (the last step is always saved)
            self.save()  # the checkpoint of the step every rank stopped after

    def start_summary(self) -> str:
        """A few lines a person reads at the start: model, data, batch, schedule, device, where it writes."""
        s, info, cfg = self.schedule, self.info, self.cfg
        warmup = f"{s.warmup_steps} warmup steps" + (f" ({s.warmup_note})" if s.warmup_note else "")
        resumed = f", resuming at step {self.state.step}" if self.state.step else ""
        for change in self.record.reschedules:
            listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in change["changes"].items())
            resumed += f"; rescheduled at step {change['step']} (--reschedule: {listed})"
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
        while self.state.step < self.schedule.total_steps and self.state.micro < micro_per_epoch and not self.stopping:
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
        log.log(  # the first epoch this process reads shows each rank's share; later ones (reshuffles) at DEBUG
            logging.DEBUG if self.split_logged else logging.INFO,
            "rank %d of %d, epoch %d: %d micro-batches from shards %s",
            dist.rank,
            dist.world,
            self.state.epoch,
            micro_per_epoch,
            " | ".join(",".join(n) for n in names),
        )
        self.split_logged = True
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
            values = values.cpu()
            sums[:-1] += values[:-2]
            sums[-1] = values[-2]  # corrupt samples so far, summed over ranks
            self.stopping = self.stopping or bool(values[-1] > 0)  # a rank was signalled: all stop after this step
        loss_finite = not skipped  # the sums leave non-finite values out: they would read as a loss of 0.0
        grad_norm = float("nan") if skipped else self._optimizer_step()
        skipped = skipped or not math.isfinite(grad_norm)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
        sums[:-1] /= len(micro) * self.dist.world
        record = self._record(sums, grad_norm, skipped, data_wait, loss_finite)
        record["step_s"] = time.perf_counter() - started
        record["samples_per_s"] = self.schedule.global_batch / record["step_s"]
        self._after_step(record)
        return record

    def _micro_step(self, batch: dict[str, Any], skip_backward: bool) -> tuple[bool, torch.Tensor]:
        """One micro-batch: loss, agreed non-finite flag, backward unless any rank's loss is non-finite. The
        one all-reduce also sums the corrupt-sample counts and the ranks' stop requests (the last two values)."""
        device, dtype = self.dist.device, precision(self.cfg, self.dist)
        loss: torch.Tensor
        per_task: dict[str, torch.Tensor]
        data = batch_resize.to_device(batch, device, self.cfg.model.image_size)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss, per_task = self.wrapped(data)  # the objective computes its loss in its forward
        corrupt = loss.new_tensor(float(sum(c.corrupt for c in self.state.cursors)))
        signalled = loss.new_tensor(float(self.stop is not None and self.stop.requested))
        values = torch.stack([loss.detach(), *(v.detach() for v in per_task.values()), corrupt, signalled]).float()
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

    def _record(
        self, means: torch.Tensor, grad_norm: float, skipped: bool, wait: float, loss_finite: bool
    ) -> dict[str, Any]:
        """The step's line of metrics.jsonl: a loss or grad norm that was not finite is null (JSON has no NaN)."""
        return {
            "step": self.state.step + 1,
            "epoch": self.state.epoch,
            "loss": float(means[0]) if loss_finite else None,
            "losses": {n: float(v) if loss_finite else None for n, v in zip(self.task_names, means[1:-1], strict=True)},
            "lr": self.lr(),
            "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
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
        self.losses.append(math.nan if record["loss"] is None else record["loss"])  # the summary leaves NaN out
        for name, value in record["losses"].items():
            self.task_losses.setdefault(name, []).append(math.nan if value is None else value)
        if self.log is not None:
            self.log.write(record)
        self.job.on_step(self)
        if s.step % self.cfg.train.checkpoint_every == 0 or s.step == self.schedule.total_steps:
            self.save()

    def _agree_to_stop(self) -> bool:
        """Whether any rank has been signalled (a collective: every rank calls it and gets the same answer)."""
        mine = float(self.stop is not None and self.stop.requested)
        return bool(all_sum(torch.tensor([mine], device=self.dist.device))[0].item() > 0)

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
            run=self.record.plain(),
        )

    def load_state_dict(self, ckpt: Checkpoint) -> None:
        """Continue exactly where the checkpoint left off (checked first: `trainer.engine.resume.check_resume`)."""
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
        self.saved_step = self.state.step

    def save(self) -> None:
        """Write `checkpoint-<step>.pt` atomically, point `checkpoint-last.pt` at it, and write config.json of
        it (rank 0)."""
        payload = self.state_dict()
        if payload is not None:
            save_checkpoint(self.run_dir, self.state.step, payload, self.cfg.train.keep_last)
            self.write_config()
            self.publish()
        self.saved_step = self.state.step

    def write_config(self) -> None:
        """config.json: the resolved config, the data and the schedule changes of the last checkpoint (of the
        run about to start while there is none); `step` is the checkpoint's."""
        document = {
            "config": config_to_dict(self.cfg),
            "step": self.state.step or None,
            "data": self.record.data,
            "dataset_fingerprint": self.record.fingerprint,
            "reschedules": [dict(r) for r in self.record.reschedules],
            "world_size": self.dist.world,
        }
        fs.write_json_atomic(self.run_dir / "config.json", document)

    def publish(self) -> None:
        """Rank 0 of a run on an object store: upload what changed in the stage (see trainer.engine.run_folder)."""
        if self.folder.published_to and self.dist.is_main:
            self.folder.publish(self.cfg.train.keep_last)

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
            published=self.folder.published_to,
        )

    # ------------------------------------------------------------------------------------------ stopping

    def checkpoint_name(self, step: int | None) -> str:
        """Where the checkpoint of `step` is, as the user named the run folder."""
        return "none yet" if step is None else str(self.folder.out.join(f"checkpoint-{step}.pt"))

    def stopped_line(self, signum: int) -> str:
        """The one line of a run stopped after its step was saved: the step, the checkpoint, the command."""
        how = f"stopped by {signal_name(signum)}"
        if self.saved_step is None:
            return f"{how} before the first step: nothing to save; start again with: {resume_command()}"
        return (
            f"{how} at step {self.state.step} of {self.schedule.total_steps}: checkpoint "
            f"{self.checkpoint_name(self.saved_step)}; resume with: {resume_command()}"
        )

    def unsaved_line(self, signum: int, why: str) -> str:
        """The one line of a run that ended without a checkpoint of its current step."""
        return (
            f"stopped by {signal_name(signum)} at step {self.state.step}: {why}; the last checkpoint is "
            f"{self.checkpoint_name(self.saved_step)}; resume with: {resume_command()}"
        )


# ---------------------------------------------------------------------------------------------- helpers


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
        wrapped = DistributedDataParallel(model, device_ids=ids, **_no_buffer_sync())
    if cfg.train.compile:
        wrapped = torch.compile(wrapped)  # type: ignore[assignment]
    return wrapped


def _no_buffer_sync() -> dict[str, Any]:
    """DDP without a buffer broadcast before each forward, as before (fixed position embeddings need none; a
    probe's BatchNorm statistics stay per rank): `forward_sync_buffers=False` where torch has it (it deprecates
    `broadcast_buffers`; it still broadcasts the buffers once, at the start)."""
    known = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in known else {"broadcast_buffers": False}


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
    """The one loop (`trainer.engine.loop.Trainer`): pretraining, fine-tuning and probing differ only in their `job`.

    Raises `RunStopped` (a SystemExit: 143 / 130) when SIGTERM / SIGINT stopped the run, after rank 0 printed
    its one line (the step, its checkpoint, the command that resumes)."""
    dist = init_distributed(options.device)
    main = dist.is_main
    trainer: Trainer[C] | None = None

    def expired(signum: int) -> str:  # the grace time ran out (the timer thread): rank 0's line
        why = f"no checkpoint of it within the {options.stop_grace_s:g} s grace time"
        if not main:
            return ""
        if trainer is None:
            return f"stopped by {signal_name(signum)} before the run started; start again with: {resume_command()}"
        return trainer.unsaved_line(signum, why)

    stop = StopSignals(options.stop_grace_s, on_expiry=expired)
    try:
        with stop, claimed(options.out, options.data, run_kind(config), dist) as folder:
            trainer = Trainer.start(job, config, options, dist, folder, stop)
            trainer.train()
            if trainer.stopping and trainer.state.step < trainer.schedule.total_steps:  # else: complete
                stop.done()
                raise _stopped(trainer.stopped_line(stop.signum or signal.SIGTERM), stop.signum, main)
            return trainer.close()
    except KeyboardInterrupt:  # Ctrl-C twice: at once, without a checkpoint of the step
        line = trainer.unsaved_line(signal.SIGINT, "interrupted again") if trainer else "interrupted"
        raise _stopped(line, signal.SIGINT, main) from None
    finally:
        shutdown()


def _stopped(line: str, signum: int, main: bool) -> RunStopped:
    if main:
        print(line, file=sys.stderr, flush=True)
    return RunStopped(signum or signal.SIGTERM, line)

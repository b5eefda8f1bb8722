"""`mmforge finetune`, `mmforge probe`, `mmforge evaluate`: transfer of a pretrained MultiMAE, on the shared
loop of `trainer.train` (DDP, step-exact resume, atomic checkpoints, non-finite handling, metrics, progress).

Data are shards too: the inputs (`model.inputs`) and the task's target member (`.cls`, a class map, a depth
map: the task's registry entry, `trainer.transfer.tasks`, names it and prepares it), with the pretraining
loader's shared crop and flip for training and a centre square crop for evaluation. The built-in map targets
are resampled with nearest-exact (class maps and depth alike: no label is blended with an invalid pixel);
depth targets are the decoded values (the sample json's encoding) x `task.depth_scale`, 0 = invalid.
Evaluation runs over the whole split on rank 0 (`metrics.py`: summed over the split, not averaged over
batches); `checkpoint-best.pt` keeps the best main metric (top-1, mIoU, delta1: the task's).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.format import fs
from pipeline.format.codecs import CODECS, decode_member
from pipeline.format.samples import Sample, read_samples
from pipeline.format.stores import Location
from trainer.data.augment import Crop, augment, center_square, sample_crop
from trainer.data.dataset import DatasetInfo, load_dataset
from trainer.data.loader import EpochPlan, ShardStream, check_arrays, decode_modalities
from trainer.engine.checkpoint import atomic_save, first_sentence, payload, read_checkpoint
from trainer.engine.distributed import pick_device
from trainer.engine.optim import layer_decay_groups
from trainer.engine.run import RunOptions, RunSummary, RunView
from trainer.errors import CheckpointError, DataError
from trainer.model.modalities import MODALITIES
from trainer.transfer.config import FinetuneConfig
from trainer.transfer.init_weights import initialise
from trainer.transfer.model import FinetuneObjective, MultiViT, make_mixup, predict
from trainer.transfer.tasks import TargetSample, TransferTask, transfer_task

log = logging.getLogger(__name__)
BEST = "checkpoint-best.pt"


def num_classes_of(info: DatasetInfo, cfg: FinetuneConfig) -> int:
    """The task's classes: the config's, else found in the manifest as the task says (class folders, a class
    map's table); 0 for a task without classes."""
    t, manifest, spec = cfg.task, info.manifest, transfer_task(cfg.task.name)
    if t.num_classes:
        return t.num_classes
    if manifest is None:
        raise DataError(f"{info.root}: no manifest to take the number of classes from; set task.num_classes")
    return 0 if spec.class_count is None else spec.class_count(manifest, f"{info.root}", spec.target)


# ------------------------------------------------------------------------------------------------ data


def _target(sample: Sample, spec: TransferTask, cfg: FinetuneConfig, crop: Crop) -> Tensor:
    """The task's member, decoded by its codec and prepared as the task says."""
    suffix = CODECS[spec.codec].suffix
    value = decode_member(suffix, sample[suffix])
    size = cfg.model.image_size
    return spec.prepare_target(
        TargetSample(member=spec.target, value=value, sample=sample, crop=crop, size=size, task=cfg.task)
    )


def decode_sample(sample: Sample, cfg: FinetuneConfig, num_classes: int, rng: Any) -> dict[str, Tensor]:
    """Raw sample -> the inputs (shared crop and flip when `rng`, else the centre square) and the target."""
    arrays = decode_modalities(sample, cfg.model.inputs)
    h, w = check_arrays(arrays, cfg.model)
    d = cfg.data
    crop = sample_crop(h, w, rng, d.crop_scale, d.crop_ratio, d.hflip) if rng is not None else center_square(h, w)
    out = augment(arrays, crop, cfg.model.image_size)
    spec = transfer_task(cfg.task.name)
    target = _target(sample, spec, cfg, crop)
    if spec.has_classes and target.numel():
        top = int(target[target != cfg.task.ignore_id].max()) if (target != cfg.task.ignore_id).any() else -1
        if top >= num_classes:
            raise ValueError(f"target class {top} >= the task's {num_classes} classes")
    out[spec.target] = target
    return out


class FinetuneStream(ShardStream):
    """The pretraining stream (epoch quotas, cursors, shuffle) with the fine-tuning sample decoding."""

    def __init__(self, *, cfg: FinetuneConfig, num_classes: int, **kw: Any) -> None:
        super().__init__(model=cfg.model, data=cfg.data, **kw)
        self.cfg, self.num_classes = cfg, num_classes

    def decode(self, sample: Sample, rng: np.random.Generator) -> dict[str, Tensor]:
        return decode_sample(sample, self.cfg, self.num_classes, rng)


def eval_batches(info: DatasetInfo, cfg: FinetuneConfig, num_classes: int, batch: int) -> Iterator[dict[str, Tensor]]:
    """Every sample of every shard once, in order, centre-cropped (the last batch may be smaller)."""
    items: list[dict[str, Tensor]] = []
    for shard in info.shards:
        for _, sample in read_samples(shard.path):
            items.append(decode_sample(sample, cfg, num_classes, None))
            if len(items) == batch:
                yield {k: torch.stack([it[k] for it in items]) for k in items[0]}
                items = []
    if items:
        yield {k: torch.stack([it[k] for it in items]) for k in items[0]}


def evaluate_model(model: MultiViT, info: DatasetInfo, batch: int, device: torch.device) -> dict[str, float]:
    """The task's metrics over the whole split."""
    cfg, spec = model.cfg, model.spec
    metric = spec.metrics(model.num_classes, cfg.task)
    was_training = model.training
    model.eval()
    try:
        for b in eval_batches(info, cfg, model.num_classes, batch):
            b = {k: v.to(device) for k, v in b.items()}
            metric.update(predict(model, b).cpu(), b[spec.target].cpu())
    finally:
        model.train(was_training)
    return metric.result()


# ------------------------------------------------------------------------------------------------ the job


@dataclass
class FinetuneJob:
    init: Path | None = None
    val: Location | None = None
    num_classes: int = 0
    val_info: DatasetInfo | None = None
    verb: str = "fine-tuned"
    export_label: str = "best checkpoint"
    best: float | None = None  # the best value of the main validation metric so far

    def check(self, info: DatasetInfo, cfg: FinetuneConfig) -> FinetuneConfig:
        self.num_classes = num_classes_of(info, cfg)
        members = set(info.manifest.members) if info.manifest else set()
        needed = [CODECS[MODALITIES[n].codec].suffix for n in cfg.model.inputs]
        needed.append(CODECS[transfer_task(cfg.task.name).codec].suffix)
        missing = [m for m in needed if members and m not in members]
        if missing:
            raise DataError(f"dataset {info.root} lacks the members {missing} this task needs")
        if self.val is not None:
            self.val_info = load_dataset(self.val)
        return cfg

    def build_model(self, cfg: FinetuneConfig, info: DatasetInfo) -> nn.Module:
        model = MultiViT(cfg, self.num_classes)
        report = initialise(model, self.init)
        log.info("%s", report.text())
        self.report = report.text()
        return model

    def param_groups(self, model: nn.Module, cfg: FinetuneConfig) -> list[dict] | None:
        return layer_decay_groups(model, cfg.optim.weight_decay, cfg.task.layer_decay, cfg.model.depth)

    def objective(self, model: nn.Module) -> nn.Module:
        assert isinstance(model, MultiViT)
        return FinetuneObjective(model, make_mixup(model.cfg, self.num_classes))

    def task_names(self, model: nn.Module) -> list[str]:
        assert isinstance(model, MultiViT)
        return [model.cfg.task.name]

    def stream(self, t: RunView[FinetuneConfig], plan: EpochPlan, rotation: int) -> ShardStream:
        return FinetuneStream(
            cfg=t.cfg, num_classes=self.num_classes, info=t.info, plan=plan, cursors=t.state.cursors, rotation=rotation
        )

    def describe(self, t: RunView[FinetuneConfig]) -> str:
        m, task = t.cfg.model, t.cfg.task
        params = sum(p.numel() for p in t.model.parameters())
        trainable = sum(p.numel() for p in t.model.parameters() if p.requires_grad)
        kind = "linear probe" if task.probe else f"{task.name} head"
        classes = f", {self.num_classes} classes" if self.num_classes else ""
        return (
            f"fine-tuning ViT {m.dim}-dim x {m.depth} blocks + {kind}{classes}: {params / 1e6:.2f} M parameters "
            f"({trainable / 1e6:.2f} M trained); inputs {', '.join(m.inputs)} at {m.image_size} px; "
            f"layer decay {task.layer_decay:g}; {self.report}"
        )

    def on_step(self, t: RunView[FinetuneConfig]) -> None:
        every = t.cfg.task.eval_every
        if self.val_info is not None and (
            (every and t.state.step % every == 0) or t.state.step == t.schedule.total_steps
        ):
            self.validate(t)

    def validate(self, t: RunView[FinetuneConfig]) -> None:
        if not t.dist.is_main or self.val_info is None:
            return
        assert isinstance(t.model, MultiViT)
        result = evaluate_model(t.model, self.val_info, t.cfg.data.batch_size, t.dist.device)
        main = result[t.model.spec.main_metric]
        record = {"step": t.state.step, "val": result}
        with (t.run_dir / "val.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        if t.log is not None:
            t.log.announce(f"step {t.state.step}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
        if t.model.spec.improves(main, self.best):
            self.best = main
            atomic_save(payload(t.cfg, step=t.state.step, model=t.model.state_dict(), metrics=result), t.run_dir / BEST)

    def finish(self, t: RunView[FinetuneConfig]) -> Path | None:
        return (t.run_dir / BEST) if (t.run_dir / BEST).exists() else None


# ------------------------------------------------------------------------------------------------ commands


def finetune(cfg: FinetuneConfig, options: RunOptions, init: Path | None, val: Location | None) -> RunSummary:
    from trainer.engine.loop import run

    return run(FinetuneJob(init=init, val=val), cfg, options)


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    checkpoint: Path
    data: Location
    task: str
    metrics: dict[str, float]


def load_finetuned(path: Path, device: str = "cpu") -> MultiViT:
    """A fine-tuning checkpoint of ours (`checkpoint-*.pt`, `checkpoint-best.pt`) with its config."""
    ckpt = read_checkpoint(path).require("finetune-run", use="evaluate")
    cfg = ckpt.config
    assert isinstance(cfg, FinetuneConfig)  # what a fine-tuning checkpoint holds
    key = _class_key(cfg)
    head = ckpt.tensors.get(key) if key is not None else None
    model = MultiViT(cfg, int(head.shape[0]) if head is not None else 0)
    try:
        model.load_state_dict(ckpt.tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: {first_sentence(str(err))}") from None
    return model.to(pick_device(str(device), 0)).eval()  # a bad or absent device: one line


def _class_key(cfg: FinetuneConfig) -> str | None:
    """The head tensor whose rows are the task's classes (None: a task without classes)."""
    spec = transfer_task(cfg.task.name)
    return None if spec.class_tensor is None else f"output_adapters.{spec.name}.{spec.class_tensor}"


def evaluate(
    checkpoint: Path,
    data: Location,
    json_path: Path | None = None,
    device: str = "cpu",
    batch: int = 16,
    source: str | None = None,
) -> EvalResult:
    """The task's metrics of `checkpoint` over `data`; `source`: where the checkpoint came from, for the JSON
    record (a store URL, when `checkpoint` is its local copy)."""
    where = pick_device(str(device), 0)  # checked before the checkpoint is read ("auto" included)
    model = load_finetuned(checkpoint, str(where))
    info = load_dataset(data)
    metrics = evaluate_model(model, info, batch, where)
    result = EvalResult(checkpoint=checkpoint, data=data, task=model.cfg.task.name, metrics=metrics)
    if json_path is not None:
        doc = {"checkpoint": source or str(checkpoint), "data": str(data), "task": result.task, "metrics": metrics}
        fs.write_json_atomic(Path(json_path), doc)
    return result

"""`mmforge finetune`, `mmforge probe`, `mmforge evaluate`: transfer of a pretrained MultiMAE, on the shared
loop of `trainer.train` (DDP, step-exact resume, atomic checkpoints, non-finite handling, metrics, progress).

Data are shards too: the inputs (`model.inputs`) and the task's target member (`.cls`, a class map, a depth
map: the task's registry entry, `trainer.transfer.tasks`, names it and prepares it), with the pretraining
loader's shared crop and flip for training; evaluation places each image by the run's evaluation protocol
(`task.eval_protocol`, `evaluate --protocol`: `trainer.transfer.protocols`). The built-in map targets
are resampled with nearest-exact (class maps and depth alike: no label is blended with an invalid pixel);
depth targets are the decoded values (the sample json's encoding) x `task.depth_scale`, 0 = invalid.
Evaluation runs over the whole split on rank 0 (`metrics.py`: summed over the split, not averaged over
batches); `checkpoint-best.pt` keeps the best main metric (top-1, mIoU, delta1: the task's). `evaluate --json`
records the protocol, the samples scored and, for tasks with per-class metrics, each class's IoU and accuracy
by name, with the confusion matrix beside it (`<json stem>.confusion.csv`).

Class ids follow names (`trainer.transfer.classes`): a run records the names of the classes it learns in its
config (`task.classes`, in every checkpoint), and every split it reads is mapped onto them by name. Every
check runs before the first step (`finetune`: the training split and `--val`) or before the first forward
(`evaluate`: device, output file, checkpoint kind, members, classes); each failure is one line.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.format import fs
from pipeline.format.codecs import CODECS, decode_member
from pipeline.format.outputs import check_output
from pipeline.format.samples import Sample, read_samples
from pipeline.format.stores import Location
from trainer.data.augment import View, place_arrays, sample_crop
from trainer.data.dataset import DatasetInfo, load_dataset
from trainer.data.loader import EpochPlan, ShardStream, check_arrays, decode_modalities
from trainer.engine.checkpoint import Checkpoint, atomic_save, first_sentence, payload, read_checkpoint
from trainer.engine.distributed import pick_device
from trainer.engine.optim import layer_decay_groups
from trainer.engine.run import RunOptions, RunSummary, RunView
from trainer.errors import CheckpointError, ConfigError, DataError
from trainer.model.modalities import MODALITIES
from trainer.preflight import check_output_file
from trainer.transfer.classes import (
    ClassIds,
    ModelClasses,
    SplitClasses,
    match,
    shown_names,
    split_classes,
    training_classes,
)
from trainer.transfer.config import FinetuneConfig
from trainer.transfer.init_weights import initialise
from trainer.transfer.model import FinetuneObjective, MultiViT, make_mixup, predict
from trainer.transfer.protocols import EVAL_PROTOCOLS, SLIDE, EvalProtocol, eval_protocol, slide
from trainer.transfer.tasks import Metrics, PerClassMetrics, TargetSample, TransferTask, transfer_task

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


def require_members(info: DatasetInfo, cfg: FinetuneConfig) -> None:
    """The split holds every member the run reads (its inputs and the task's target): a DataError otherwise."""
    if info.manifest is None:
        raise DataError(f"dataset {info.root}: manifest.json is missing or invalid")
    present = set(info.manifest.members) | {m.member for m in info.manifest.modalities.values()}
    needed = {n: CODECS[MODALITIES[n].codec].suffix for n in cfg.model.inputs}
    spec = transfer_task(cfg.task.name)
    needed[f"the {spec.name} target"] = CODECS[spec.codec].suffix
    missing = [f"{what} ({suffix})" for what, suffix in needed.items() if suffix not in present]
    if missing:
        raise DataError(
            f"dataset {info.root} lacks {', '.join(missing)}, which this {spec.name} model reads "
            f"(its members: {', '.join(sorted(present))})"
        )


def split_ids(info: DatasetInfo, cfg: FinetuneConfig, model: ModelClasses) -> tuple[ClassIds | None, str]:
    """How the split `info`'s class ids become the model's (None: the same) and a note where they are only
    positions; a DataError when the split holds classes the model does not have. Tasks without classes: None."""
    spec = transfer_task(cfg.task.name)
    if not spec.has_classes:
        return None, ""
    return match(spec, model, split_classes(spec, info), cfg.task.ignore_id)


# ------------------------------------------------------------------------------------------------ data


def _target(sample: Sample, spec: TransferTask, cfg: FinetuneConfig, view: View) -> Tensor:
    """The task's member, decoded by its codec and prepared as the task says, where the inputs landed."""
    suffix = CODECS[spec.codec].suffix
    value = decode_member(suffix, sample[suffix])
    size, crop = cfg.model.image_size, view.crop
    return spec.prepare_target(
        TargetSample(member=spec.target, value=value, sample=sample, crop=crop, size=size, task=cfg.task, view=view)
    )


def decode_sample(
    sample: Sample,
    cfg: FinetuneConfig,
    num_classes: int,
    rng: Any,
    ids: ClassIds | None = None,
    protocol: EvalProtocol | None = None,
) -> dict[str, Tensor]:
    """Raw sample -> the inputs (shared crop and flip when `rng`, else placed by `protocol`, by default the
    config's `task.eval_protocol`) and the target (its class ids translated to the model's by `ids`, when given)."""
    arrays = decode_modalities(sample, cfg.model.inputs)
    h, w = check_arrays(arrays, cfg.model)
    d, size = cfg.data, cfg.model.image_size
    if rng is not None:
        view = View.square(sample_crop(h, w, rng, d.crop_scale, d.crop_ratio, d.hflip), size)
    else:
        view = (protocol or eval_protocol(cfg.task.eval_protocol)).view(h, w, size)
    out = place_arrays(arrays, view)
    spec = transfer_task(cfg.task.name)
    target = _target(sample, spec, cfg, view)
    if ids is not None:
        target = ids.apply(target)
    if spec.has_classes and target.numel():
        top = int(target[target != cfg.task.ignore_id].max()) if (target != cfg.task.ignore_id).any() else -1
        if top >= num_classes:
            raise ValueError(f"target class {top} >= the task's {num_classes} classes")
    out[spec.target] = target
    return out


class FinetuneStream(ShardStream):
    """The pretraining stream (epoch quotas, cursors, shuffle) with the fine-tuning sample decoding."""

    def __init__(self, *, cfg: FinetuneConfig, num_classes: int, ids: ClassIds | None = None, **kw: Any) -> None:
        super().__init__(model=cfg.model, data=cfg.data, **kw)
        self.cfg, self.num_classes, self.ids = cfg, num_classes, ids

    def decode(self, sample: Sample, rng: np.random.Generator) -> dict[str, Tensor]:
        return decode_sample(sample, self.cfg, self.num_classes, rng, self.ids)


_UNREADABLE = (KeyError, ValueError, OSError, EOFError, tarfile.TarError)  # a sample or shard that breaks the contract


def eval_batches(
    info: DatasetInfo,
    cfg: FinetuneConfig,
    num_classes: int,
    batch: int,
    ids: ClassIds | None = None,
    protocol: EvalProtocol | None = None,
) -> Iterator[dict[str, Tensor]]:
    """Every sample of every shard once, in order, placed by `protocol` (default: the config's; the last batch
    may be smaller; a sliding window's: one image a batch, images differ in size). Every sample counts: one
    that cannot be read or decoded is a DataError of one line, never skipped."""
    protocol = protocol or eval_protocol(cfg.task.eval_protocol)
    batch = 1 if protocol.layout == SLIDE else batch
    items: list[dict[str, Tensor]] = []
    for shard in info.shards:
        try:
            for key, sample in read_samples(shard.path):
                try:
                    items.append(decode_sample(sample, cfg, num_classes, None, ids, protocol))
                except _UNREADABLE as err:
                    raise _unreadable(info, f"shard {shard.name}, sample {key}", err) from None
                if len(items) == batch:
                    yield {k: torch.stack([it[k] for it in items]) for k in items[0]}
                    items = []
        except _UNREADABLE as err:  # the shard's tar itself
            raise _unreadable(info, f"shard {shard.name}", err) from None
    if items:
        yield {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _unreadable(info: DatasetInfo, where: str, err: Exception) -> DataError:
    return DataError(
        f"dataset {info.root}: {where}: {type(err).__name__}: {err} (every sample of a split is scored; see "
        f"`mmforge verify --deep {info.root}`)"
    )


@dataclass(frozen=True, kw_only=True)
class Scored:
    """A split scored under one protocol: the task's metrics object (summed over the split) and its samples."""

    metric: Metrics
    samples: int
    protocol: EvalProtocol


def score_split(
    model: MultiViT,
    info: DatasetInfo,
    batch: int,
    device: torch.device,
    ids: ClassIds | None = None,
    protocol: EvalProtocol | None = None,
) -> Scored:
    """The task's metrics over every sample of the split (class ids translated to the model's by `ids`), each
    image placed by `protocol` (default: the model config's `task.eval_protocol`)."""
    cfg, spec = model.cfg, model.spec
    protocol = protocol or eval_protocol(cfg.task.eval_protocol)
    metric, samples = spec.metrics(model.num_classes, cfg.task), 0
    was_training = model.training
    model.eval()
    try:
        for b in eval_batches(info, cfg, model.num_classes, batch, ids, protocol):
            b = {k: v.to(device) for k, v in b.items()}
            metric.update(predict_placed(model, b, protocol).cpu(), b[spec.target].cpu())
            samples += int(b[spec.target].shape[0])
    finally:
        model.train(was_training)
    return Scored(metric=metric, samples=samples, protocol=protocol)


def predict_placed(model: MultiViT, batch: dict[str, Tensor], protocol: EvalProtocol) -> Tensor:
    """`predict`, or under a sliding window the outputs of the windows averaged, then the task's prediction."""
    if protocol.layout != SLIDE:
        return predict(model, batch)
    inputs = {n: batch[n] for n in model.cfg.model.inputs}
    strides = {n: MODALITIES[n].stride for n in inputs}
    with torch.no_grad():
        out = slide(lambda x: model(x).float(), inputs, strides, protocol.side_for(model.cfg.model.image_size))
    return model.spec.predict(out)


def evaluate_model(
    model: MultiViT, info: DatasetInfo, batch: int, device: torch.device, ids: ClassIds | None = None
) -> dict[str, float]:
    """The task's metrics over the whole split under the model config's protocol (`task.eval_protocol`)."""
    return score_split(model, info, batch, device, ids).metric.result()


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
    best_record: dict[str, Any] | None = None  # {"step", "val", "protocol"} of the best validation so far
    train_ids: ClassIds | None = None  # the training split's class ids -> the model's
    val_ids: ClassIds | None = None  # the validation split's

    def check(self, info: DatasetInfo, cfg: FinetuneConfig) -> FinetuneConfig:
        """The training split and `--val` hold what the run reads, their classes are the model's (by name);
        the config comes back with the names of the classes it learns (`task.classes`), before any step."""
        require_members(info, cfg)
        spec = transfer_task(cfg.task.name)
        if spec.has_classes:
            split = _training_split(spec, info, cfg)
            classes = training_classes(spec, cfg.task, split)
            self.train_ids = match(spec, classes, split, cfg.task.ignore_id)[0] if split is not None else None
            self.num_classes = classes.count
            cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, classes=classes.names))
        elif cfg.task.classes or cfg.task.num_classes:
            raise ConfigError(f"task.classes and task.num_classes: the {spec.name} task has no classes")
        if self.val is not None:
            self.val_info = load_dataset(self.val)
            require_members(self.val_info, cfg)
            self.val_ids, note = split_ids(
                self.val_info, cfg, ModelClasses(count=self.num_classes, names=cfg.task.classes)
            )
            if note:
                log.warning("--val: %s", note)
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
            cfg=t.cfg,
            num_classes=self.num_classes,
            ids=self.train_ids,
            info=t.info,
            plan=plan,
            cursors=t.state.cursors,
            rotation=rotation,
        )

    def describe(self, t: RunView[FinetuneConfig]) -> str:
        m, task = t.cfg.model, t.cfg.task
        params = sum(p.numel() for p in t.model.parameters())
        trainable = sum(p.numel() for p in t.model.parameters() if p.requires_grad)
        kind = "linear probe" if task.probe else f"{task.name} head"
        named = f" ({shown_names(task.classes)})" if task.classes else ""
        classes = f", {self.num_classes} classes{named}" if self.num_classes else ""
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
        result = evaluate_model(t.model, self.val_info, t.cfg.data.batch_size, t.dist.device, self.val_ids)
        main = result[t.model.spec.main_metric]
        record = {"step": t.state.step, "val": result, "protocol": t.cfg.task.eval_protocol}
        with (t.run_dir / "val.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        if t.log is not None:
            t.log.announce(f"step {t.state.step}: " + t.model.spec.metric_text(result))
            t.log.validation(t.state.step, result)
        if t.model.spec.improves(main, self.best):
            self.best, self.best_record = main, record
            atomic_save(payload(t.cfg, step=t.state.step, model=t.model.state_dict(), metrics=result), t.run_dir / BEST)

    def finish(self, t: RunView[FinetuneConfig]) -> Path | None:
        return (t.run_dir / BEST) if (t.run_dir / BEST).exists() else None


def _training_split(spec: TransferTask, info: DatasetInfo, cfg: FinetuneConfig) -> SplitClasses | None:
    """The training split's classes; None where it records none and `task.num_classes` gives the count."""
    try:
        return split_classes(spec, info)
    except DataError:
        if cfg.task.num_classes:
            return None
        raise


@dataclass(kw_only=True)
class FinetuneSummary(RunSummary):
    """The loop's summary plus the best validation of this run (main rank; None without `--val`)."""

    task: str = ""
    best_val: dict[str, Any] | None = None  # {"step", "val"}

    def text(self) -> str:
        if self.best_val is None:
            return super().text()
        spec = transfer_task(self.task)
        shown = spec.metric_text(self.best_val["val"])
        return f"{super().text()}\n  best validation (by {spec.main_metric}, step {self.best_val['step']}): {shown}"


# ------------------------------------------------------------------------------------------------ commands


def finetune(cfg: FinetuneConfig, options: RunOptions, init: Path | None, val: Location | None) -> FinetuneSummary:
    from trainer.engine.loop import run

    job = FinetuneJob(init=init, val=val)
    summary = run(job, cfg, options)
    loop_fields = {f.name: getattr(summary, f.name) for f in dataclasses.fields(summary) if f.init}
    return FinetuneSummary(**loop_fields, task=cfg.task.name, best_val=job.best_record)


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    checkpoint: Path
    data: Location
    task: str
    metrics: dict[str, float]
    protocol: str = "center"
    samples: int = 0  # every sample of the split
    notes: tuple[str, ...] = ()  # what a person should know about the numbers (ids taken by position)

    def metrics_text(self) -> str:
        return transfer_task(self.task).metric_text(self.metrics)


def read_finetuned(path: Path, use: str = "evaluate") -> tuple[Checkpoint, FinetuneConfig, ModelClasses]:
    """A fine-tuning checkpoint of ours (`checkpoint-*.pt`, `checkpoint-best.pt`): the checkpoint, its config and
    the classes its head predicts (their count from the head, their names from the config); no model built.
    `use`: the command named when the checkpoint is of another kind."""
    ckpt = read_checkpoint(path).require("finetune-run", use=use)
    cfg = ckpt.config
    assert isinstance(cfg, FinetuneConfig)  # what a fine-tuning checkpoint holds
    key = _class_key(cfg)
    head = ckpt.tensors.get(key) if key is not None else None
    count = int(head.shape[0]) if head is not None else 0
    if len(cfg.task.classes) > count:
        raise CheckpointError(f"{path}: its config names {len(cfg.task.classes)} classes, its head has {count}")
    return ckpt, cfg, ModelClasses(count=count, names=cfg.task.classes)


def build_finetuned(ckpt: Checkpoint, cfg: FinetuneConfig, classes: ModelClasses, device: torch.device) -> MultiViT:
    model = MultiViT(cfg, classes.count)
    try:
        model.load_state_dict(ckpt.tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{ckpt.source}: {first_sentence(str(err))}") from None
    return model.to(device).eval()


def load_finetuned(path: Path, device: str = "cpu") -> MultiViT:
    """A fine-tuning checkpoint of ours (`checkpoint-*.pt`, `checkpoint-best.pt`) with its config."""
    where = pick_device(str(device), 0)  # a bad or absent device: one line
    return build_finetuned(*read_finetuned(path), where)


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
    protocol: str | None = None,
) -> EvalResult:
    """The task's metrics of `checkpoint` over `data`, each image placed by `protocol` (None: the checkpoint's
    `task.eval_protocol`); `source`: where the checkpoint came from, for the JSON record (a store URL, when
    `checkpoint` is its local copy). Every check comes before the first forward, as `finetune`'s before its
    first step: the options (`check_evaluate_options`), the checkpoint's kind, the split's members and classes
    (mapped onto the model's by name)."""
    where = check_evaluate_options(device, json_path, batch, protocol)
    if json_path is not None:
        for written in (Path(json_path), confusion_path(Path(json_path))):
            check_output(written, "--json", (checkpoint, data))
    ckpt, cfg, classes = read_finetuned(checkpoint)
    info = load_dataset(data)
    require_members(info, cfg)
    ids, note = split_ids(info, cfg, classes)
    model = build_finetuned(ckpt, cfg, classes, where)
    scored = score_split(model, info, batch, where, ids, eval_protocol(protocol or cfg.task.eval_protocol))
    metrics, notes = scored.metric.result(), (note,) if note else ()
    result = EvalResult(
        checkpoint=checkpoint,
        data=data,
        task=cfg.task.name,
        metrics=metrics,
        protocol=scored.protocol.name,
        samples=scored.samples,
        notes=notes,
    )
    if json_path is not None:
        write_metrics(Path(json_path), result, scored, cfg, source or str(checkpoint))
    return result


def write_metrics(path: Path, result: EvalResult, scored: Scored, cfg: FinetuneConfig, source: str) -> None:
    """The metrics JSON: checkpoint, data, task, protocol, samples, metrics with units, notes; per class (by the
    checkpoint's class names, NaN as null) and the confusion matrix file beside it, for tasks that have them."""
    units = {k: u for k, u in transfer_task(result.task).units.items() if k in result.metrics}
    doc: dict[str, Any] = {
        "checkpoint": source,
        "data": str(result.data),
        "task": result.task,
        "protocol": scored.protocol.record(cfg.model.image_size),
        "samples": result.samples,
        "metrics": result.metrics,
        "units": units,
        "notes": list(result.notes),
    }
    if isinstance(scored.metric, PerClassMetrics):
        names = class_labels(cfg.task.classes, scored.metric.confusion.shape[0])
        per = {k: v.tolist() for k, v in scored.metric.per_class().items()}
        doc["per_class"] = [{"class": n} | {k: _percent(v[i]) for k, v in per.items()} for i, n in enumerate(names)]
        doc["units"] = units | {f"per_class.{k}": "%" for k in per}
        confusion = confusion_path(path)
        fs.write_bytes_atomic(confusion, confusion_csv(scored.metric.confusion, names))
        doc["confusion"] = confusion.name
    fs.write_json_atomic(path, doc)


def confusion_path(path: Path) -> Path:
    """The confusion matrix file written beside the metrics JSON at `path`."""
    return path.with_name(f"{path.stem}.confusion.csv")


def class_labels(names: tuple[str, ...], count: int) -> list[str]:
    """The name of each class id: the checkpoint's `task.classes`, `class N` for an id it does not name."""
    return [names[i] if i < len(names) else f"class {i}" for i in range(count)]


def _percent(value: float) -> float | None:
    return None if math.isnan(value) else 100.0 * value


def confusion_csv(confusion: Tensor, names: list[str]) -> bytes:
    """Pixels counted by target class (rows) and predicted class (columns), both labelled by name."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["target \\ prediction", *names])
    for name, row in zip(names, confusion.long().tolist(), strict=True):
        writer.writerow([name, *row])
    return out.getvalue().encode()


def check_evaluate_options(
    device: str, json_path: Path | None, batch: int, protocol: str | None = None
) -> torch.device:
    """`evaluate`'s options, each a ConfigError of one line: the device ("auto" included; CUDA present), the
    JSON file's folder (present and writable), the batch size, the protocol's name; the device is returned."""
    where = pick_device(str(device), 0)
    if batch < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch}")
    if protocol is not None and protocol not in EVAL_PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r}: known protocols are {', '.join(EVAL_PROTOCOLS)}")
    check_output_file(json_path, "--json")
    return where

"""The transfer-task registry: everything fine-tuning, probing and evaluation need to know about each task.

A `TransferTask` is a dataclass of builders (as torchtitan's `TrainSpec`): the sample member it learns, how
that member becomes a training target, how many classes it has and where that count is found, its head (and
the linear probe's, where a probe means something), how the head reads the encoder, its loss, its metrics
with the main one, and what a prediction is. `trainer.transfer` looks tasks up here and never names them;
the config checks a task's name against this table when it is validated.

Built in (the official fine-tuning recipes of MultiMAE; each names its shipped recipe, which `finetune` reads
when given no `--config`):
- `cls`: the `.cls` class index; mean of all tokens -> LayerNorm -> Linear; cross-entropy with label smoothing
  (soft targets under mixup / cutmix); top-1 / top-5; classes from the dataset's class folders, a split
  mapped onto the model's classes by folder name (a subset is fine); the linear probe (BatchNorm without
  affine + Linear, frozen encoder).
- `semseg`: the class map; ConvNeXt head on the read inputs' tokens (`task.readout`, else the main input's);
  cross-entropy with the ignore id; mIoU, mean and pixel accuracy (per class in the metrics JSON); classes
  from the manifest's class table of the map, which every split must share.
- `depth`: metric depth (the sample json's encoding x `task.depth_scale`, 0 = invalid); DPT head on the read
  inputs' tokens after the hooked blocks; berHu (or the masked L1: `task.depth_loss = "l1"`) over valid
  pixels; delta1-3, AbsRel, SqRel, RMSE, RMSE-log.
- The dense tasks' linear probe (`task.probe`): BatchNorm without affine + Linear per patch token (depth: the
  last hooked block's), upsampled bilinearly; the encoder frozen.

A package of your own adds a task without editing this one: expose a module under the entry-point group
`multimae_forge.transfer_tasks` whose import calls `register_transfer_task(...)` (its target member comes
from a `multimae_forge.codecs` entry point, and a map's modality from `multimae_forge.modalities`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelers.plugins import load_entry_points, registry, unavailable
from pipeline.format.codecs import CODECS, decode_member, dequantize_depth
from pipeline.format.contract import Manifest
from trainer.data.augment import Crop, View
from trainer.errors import DataError
from trainer.model.losses import berhu, valid_l1
from trainer.model.modalities import MODALITIES, ModelShape
from trainer.transfer.heads import ConvNeXtHead, DenseProbeHead, DPTHead, LinearHead, ProbeHead
from trainer.transfer.metrics import ClassificationMetrics, DepthMetrics, SegmentationMetrics
from trainer.transfer.rules import GROUP, convnext_problems, dpt_problems, no_problems

JSON = CODECS["json"].suffix  # the sample json: per-sample encodings of the value maps


class TaskSettings(Protocol):
    """What the registry reads of a task's config (`trainer.config.TaskConfig` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def main_input(self) -> str: ...

    @property
    def probe(self) -> bool: ...

    @property
    def ignore_id(self) -> int: ...

    @property
    def label_smoothing(self) -> float: ...

    @property
    def head_embed_dim(self) -> int: ...

    @property
    def preds_per_patch(self) -> int: ...

    @property
    def head_depth(self) -> int: ...

    @property
    def hooks(self) -> tuple[int, ...]: ...

    @property
    def layer_dims(self) -> tuple[int, ...]: ...

    @property
    def features(self) -> int: ...

    @property
    def depth_scale(self) -> float: ...

    @property
    def depth_loss(self) -> str: ...


class FinetuneShape(Protocol):
    """What a head factory reads of a run's config (`trainer.config.FinetuneConfig` is one)."""

    @property
    def model(self) -> ModelShape: ...

    @property
    def task(self) -> TaskSettings: ...


class Metrics(Protocol):
    """Metrics summed over a whole split: `update` per batch of predictions, `result` once at the end."""

    def update(self, pred: Tensor, target: Tensor) -> None: ...

    def result(self) -> dict[str, float]: ...


@runtime_checkable
class PerClassMetrics(Protocol):
    """Metrics with a class table too (`evaluate --json` writes it): per-class values by id, (K,) each (NaN
    where undefined), and the confusion matrix (K, K), rows target, columns prediction."""

    confusion: Tensor

    def per_class(self) -> dict[str, Tensor]: ...


@dataclass(frozen=True, kw_only=True)
class MainInput:
    """Where the main input (`task.main_input`) sits in the encoder's output."""

    span: slice  # its patch tokens in `Encoded.tokens`
    grid: tuple[int, int]  # its token grid (rows, columns)
    size: tuple[int, int]  # its size in pixels: a dense prediction's size


@dataclass(frozen=True, kw_only=True)
class Encoded:
    """What the encoder hands a task's head (`TransferTask.readout`)."""

    tokens: Tensor  # (B, N + G, D) after the last block: every input's patch tokens, the global tokens last
    hooked: list[Tensor]  # the same after each block of `task.hooks` (tasks with `hooked`; else empty)
    main: MainInput | None  # tasks with `reads_main_input`; else None

    def main_input(self) -> MainInput:
        if self.main is None:
            raise ValueError("this task's head reads no main input (TransferTask.reads_main_input is false)")
        return self.main


@dataclass(frozen=True, kw_only=True)
class TargetSample:
    """One sample's target member on its way to a training target (`TransferTask.prepare_target`)."""

    member: str  # the task's target: the batch key, and the key of its encoding in the sample json
    value: Any  # the member as its codec decodes it
    sample: Mapping[str, bytes]  # the whole raw sample (its json member holds the encodings)
    crop: Crop  # the inputs' crop (and flip)
    size: int  # the model's image size: the side the crop is resampled to in training
    task: TaskSettings
    view: View | None = None  # where the inputs landed (an evaluation protocol's); None: the crop at `size`

    def place(self, x: Tensor, mode: str, fill: float) -> Tensor:
        """(C, H, W) -> the target where the inputs are: cropped, resized and flipped as they were, and padded
        with `fill` (a value the task's metrics ignore) where an evaluation protocol pads them."""
        return (self.view or View.square(self.crop, self.size)).place(x, mode, fill)


HeadFactory = Callable[[FinetuneShape, int], nn.Module]  # (config, classes) -> head
Readout = Callable[[nn.Module, Encoded], Tensor]  # (head, encoder output) -> the model's output
TaskLoss = Callable[[Tensor, Tensor, TaskSettings, bool], Tensor]  # (fp32 output, target, task, training)
ClassCount = Callable[[Manifest, str, str], int]  # (manifest, dataset shown in errors, target) -> classes
ClassNames = Callable[[Manifest, str], tuple[str, ...] | None]  # (manifest, target) -> names by id, if recorded
PERCENT, COUNT = "%", "count"  # the units of `TransferTask.units` that printing knows


@dataclass(frozen=True, kw_only=True)
class TransferTask:
    """One fine-tuning task, from the shard member it learns to the metric that picks the best checkpoint.

    target: the sample member it learns, also its batch key (a modality's name for a map); codec: that member's codec
    (`pipeline.format.codecs.CODECS`). prepare_target: the decoded member -> the training target under the inputs' crop.
    class_count: how the number of classes is found when `task.num_classes` is 0 (`class_folders`, `class_map_classes`),
    None for a task without classes (then no class-id check); class_tensor: the head's tensor whose rows are the classes
    (read back from a checkpoint), with class_count or neither; class_names: the names a split records for its class ids
    (None: it records none, then ids are positions); subset_by_name: a split may hold some of the model's classes, its
    ids translated by name (class folders), else a split's classes must be the model's, the same names in the same order
    (a class map's table; `trainer.transfer.classes`). head: (config, classes) -> the head, stored at
    `output_adapters.<name>`; readout: how it reads the encoder (`Encoded`); reads_main_input: the head reads
    `task.main_input`'s tokens (which must then be an input); hooked: it reads the blocks `task.hooks` too. loss: on the
    model's fp32 output; mixup: its batches may be mixed (mixup / cutmix, class-index targets; the loss is then the
    soft-target cross-entropy). predict: the model's fp32 output -> what `metrics` scores (logits, classes, depth);
    metrics: (classes, task) -> whole-split metrics, main_metric the one the best checkpoint keeps, higher_is_better its
    direction. probe: the linear probe's head (frozen encoder, called as `head` is), None where a probe means nothing.
    config_problems: the task's rules on its config. recipe, probe_recipe: the run config `finetune` (`probe`) reads
    when given no `--config`, a shipped name (`trainer/configs`) or a TOML path; None: the command asks for one. units:
    each metric's unit as printed (`PERCENT`, `COUNT`, or any text; a metric without one is printed as a bare number).
    output: what the model's output is for `mmforge predict` (`trainer.transfer.predict`): "scores" (class scores per
    image), "class_map" (class scores per pixel) or "value_map" (one value per pixel); None: the task is not predicted.
    """

    name: str
    target: str
    codec: str
    prepare_target: Callable[[TargetSample], Tensor]
    head: HeadFactory
    readout: Readout
    loss: TaskLoss
    predict: Callable[[Tensor], Tensor]
    metrics: Callable[[int, TaskSettings], Metrics]
    main_metric: str
    higher_is_better: bool = True
    class_count: ClassCount | None = None
    class_tensor: str | None = None
    class_names: ClassNames | None = None
    subset_by_name: bool = False
    reads_main_input: bool = False
    hooked: bool = False
    mixup: bool = False
    probe: HeadFactory | None = None
    config_problems: Callable[[TaskSettings], list[str]] = field(default=no_problems)
    recipe: str | None = None
    probe_recipe: str | None = None
    units: Mapping[str, str] = field(default_factory=dict)
    output: str | None = None

    def __post_init__(self) -> None:
        if (self.class_count is None) != (self.class_tensor is None):
            raise ValueError(f"transfer task {self.name}: class_count and class_tensor go together")
        if not self.main_metric:
            raise ValueError(f"transfer task {self.name}: main_metric must name one of its metrics")
        if self.class_names is not None and self.class_count is None:
            raise ValueError(f"transfer task {self.name}: class_names needs class_count")

    @property
    def has_classes(self) -> bool:
        return self.class_count is not None

    def improves(self, value: float, best: float | None) -> bool:
        """Whether `value` of the main metric beats `best` (None: nothing yet)."""
        return best is None or (value > best if self.higher_is_better else value < best)

    def metric_text(self, metrics: Mapping[str, float]) -> str:
        """The metrics for a person, each with its unit: `top1 83.12%, top5 96.40%, samples 50000`."""
        return ", ".join(f"{name} {_with_unit(value, self.units.get(name))}" for name, value in metrics.items())


def _with_unit(value: float, unit: str | None) -> str:
    if unit == PERCENT:
        return f"{value:.2f}%"
    if unit == COUNT:
        return f"{value:.0f}"
    return f"{value:.4g}" + (f" {unit}" if unit else "")


# ------------------------------------------------------------------------------------------------ targets


def class_index(s: TargetSample) -> Tensor:
    return torch.tensor(s.value, dtype=torch.long)  # () class id


def class_map(s: TargetSample) -> Tensor:
    """Class ids resampled nearest-exact (no label is blended), padding the ignore id: (h, w) long."""
    ids = torch.from_numpy(np.array(s.value, dtype=np.uint8)).float().unsqueeze(0)
    return s.place(ids, "nearest-exact", s.task.ignore_id)[0].long()


def metric_depth(s: TargetSample) -> Tensor:
    """The decoded depth (the sample json's encoding) x `task.depth_scale`, nearest-exact, 0 = invalid (padding)."""
    raw, meta = s.value, decode_member(JSON, s.sample[JSON])
    values = dequantize_depth(raw, meta[s.member]) * s.task.depth_scale if s.member in meta else raw.astype(np.float32)
    depth = torch.from_numpy(np.asarray(values, dtype=np.float32)).unsqueeze(0)
    return s.place(depth, "nearest-exact", 0.0)[0].clamp_min(0)


# ------------------------------------------------------------------------------------------------ classes


def class_folders(manifest: Manifest, where: str, target: str) -> int:
    if not manifest.classes:
        raise DataError(f"{where} has no class folders (.cls); a classification task needs them")
    return len(manifest.classes)


def class_map_classes(manifest: Manifest, where: str, target: str) -> int:
    info = manifest.modalities.get(target)
    if info is None or not info.num_classes:
        raise DataError(f"{where} has no {target!r} class map to learn")
    return info.num_classes


def folder_names(manifest: Manifest, target: str) -> tuple[str, ...] | None:
    return manifest.classes  # the sorted class folders: a `.cls` id is a position in them


def class_table_names(manifest: Manifest, target: str) -> tuple[str, ...] | None:
    info = manifest.modalities.get(target)
    return info.classes if info is not None and info.classes else None  # the class map's table, if it has one


# ------------------------------------------------------------------------------------------------ heads


def linear_head(cfg: FinetuneShape, classes: int) -> nn.Module:
    return LinearHead(cfg.model.dim, classes)


def probe_head(cfg: FinetuneShape, classes: int) -> nn.Module:
    return ProbeHead(cfg.model.dim, classes)


def dense_probe_head(cfg: FinetuneShape, classes: int) -> nn.Module:
    """The dense tasks' linear probe: `classes` channels per pixel (depth: 0 classes -> 1 channel)."""
    return DenseProbeHead(cfg.model.dim, max(classes, 1), cfg.model.patch_size)


def convnext_head(cfg: FinetuneShape, classes: int) -> nn.Module:
    t = cfg.task
    return ConvNeXtHead(
        cfg.model.dim, classes, embed_dim=t.head_embed_dim, preds_per_patch=t.preds_per_patch, depth=t.head_depth
    )


def dpt_head(cfg: FinetuneShape, classes: int) -> nn.Module:
    t = cfg.task
    return DPTHead(cfg.model.dim, hooks=t.hooks, layer_dims=t.layer_dims, features=t.features)


def all_tokens(head: nn.Module, e: Encoded) -> Tensor:
    return head(e.tokens)  # the head pools them


def main_tokens(head: nn.Module, e: Encoded) -> Tensor:
    main = e.main_input()
    return head(e.tokens[:, main.span], main.grid, main.size)


def hooked_main_tokens(head: nn.Module, e: Encoded) -> Tensor:
    main = e.main_input()
    return head([h[:, main.span] for h in e.hooked], main.grid)


# ------------------------------------------------------------------------------------------------ losses


def classification_loss(out: Tensor, target: Tensor, t: TaskSettings, training: bool) -> Tensor:
    return F.cross_entropy(out, target, label_smoothing=t.label_smoothing if training else 0.0)


def segmentation_loss(out: Tensor, target: Tensor, t: TaskSettings, training: bool) -> Tensor:
    return F.cross_entropy(out, target, ignore_index=t.ignore_id)


def depth_loss(out: Tensor, target: Tensor, t: TaskSettings, training: bool) -> Tensor:
    """berHu (the official NYUv2 recipe's) or the official masked L1, over the valid pixels (depth > 0)."""
    return (valid_l1 if t.depth_loss == "l1" else berhu)(out[:, 0], target, target > 0)


# ------------------------------------------------------------------------------------------------ predictions


def scores(out: Tensor) -> Tensor:
    return out  # top-k reads the scores


def class_ids(out: Tensor) -> Tensor:
    return out.argmax(dim=1)  # (B, K, H, W) -> (B, H, W)


def first_channel(out: Tensor) -> Tensor:
    return out[:, 0]  # (B, 1, H, W) -> (B, H, W)


def classification_metrics(classes: int, t: TaskSettings) -> Metrics:
    return ClassificationMetrics()


def segmentation_metrics(classes: int, t: TaskSettings) -> Metrics:
    return SegmentationMetrics(classes, t.ignore_id)


def depth_metrics(classes: int, t: TaskSettings) -> Metrics:
    return DepthMetrics()


# ------------------------------------------------------------------------------------------------ the table

_BUILT_IN = (
    TransferTask(
        name="cls",
        target="cls",
        codec="cls",
        prepare_target=class_index,
        class_count=class_folders,
        class_tensor="head.bias",  # the probe's head names it alike
        class_names=folder_names,
        subset_by_name=True,
        head=linear_head,
        readout=all_tokens,
        loss=classification_loss,
        mixup=True,
        predict=scores,
        metrics=classification_metrics,
        main_metric="top1",
        probe=probe_head,
        recipe="finetune-in1k-cls",
        units={"top1": PERCENT, "top5": PERCENT, "samples": COUNT},
        output="scores",
    ),
    TransferTask(
        name="semseg",
        target="semseg",
        codec="semseg",
        prepare_target=class_map,
        class_count=class_map_classes,
        class_tensor="final_layer.bias",
        class_names=class_table_names,
        head=convnext_head,
        readout=main_tokens,
        reads_main_input=True,
        loss=segmentation_loss,
        predict=class_ids,
        metrics=segmentation_metrics,
        main_metric="miou",
        probe=dense_probe_head,
        config_problems=convnext_problems,
        recipe="finetune-ade20k-semseg",
        units={"miou": PERCENT, "mean_acc": PERCENT, "pixel_acc": PERCENT, "classes_present": COUNT},
        output="class_map",
    ),
    TransferTask(
        name="depth",
        target="depth",
        codec="depth",
        prepare_target=metric_depth,
        head=dpt_head,
        readout=hooked_main_tokens,
        reads_main_input=True,
        hooked=True,
        loss=depth_loss,
        predict=first_channel,
        metrics=depth_metrics,
        main_metric="delta1",
        probe=dense_probe_head,
        config_problems=dpt_problems,
        recipe="finetune-nyuv2-depth",
        units={"delta1": PERCENT, "delta2": PERCENT, "delta3": PERCENT, "pixels": COUNT},
        output="value_map",
    ),
)

_TABLE: dict[str, TransferTask] = registry({t.name: t for t in _BUILT_IN})
TRANSFER_TASKS: Mapping[str, TransferTask] = MappingProxyType(_TABLE)


def register_transfer_task(task: TransferTask) -> TransferTask:
    """Add a task (a plugin's); its target's codec (and a map's modality) must be registered first."""
    if task.name in _TABLE and _TABLE[task.name] is not task:
        raise ValueError(f"transfer task {task.name!r} is registered twice")
    problems = target_problems(task)
    if problems:
        raise ValueError(f"transfer task {task.name!r}: {'; '.join(problems)}")
    _TABLE[task.name] = task
    return task


def target_problems(task: TransferTask) -> list[str]:
    """The target must be a registered member: its codec exists, and a modality's target uses that codec."""
    if task.codec not in CODECS:
        return [f"codec {task.codec!r} is not registered"]
    modality = MODALITIES.get(task.target)
    if modality is not None and modality.codec != task.codec:
        return [f"target {task.target!r} is the modality of codec {modality.codec!r}, not {task.codec!r}"]
    return []


def transfer_task(name: str) -> TransferTask:
    """The registered task `name` (a config is checked against this table before it gets here)."""
    try:
        return TRANSFER_TASKS[name]
    except KeyError:
        known = ", ".join(TRANSFER_TASKS)
        raise KeyError(f"unknown transfer task {name!r}; known: {known}{unavailable(GROUP)}") from None


def _load_plugins() -> None:
    load_entry_points(GROUP)


_load_plugins()

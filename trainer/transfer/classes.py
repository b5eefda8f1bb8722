"""Class identity by name: what a fine-tuned model's class ids mean, and how a split's ids become them.

A split records the names of its class ids in its manifest (`manifest.json`: `classes`, the sorted class
folders whose positions are the `.cls` ids; a class map's table, `modalities.<map>.classes`); the task's
registry entry says where (`TransferTask.class_names`). A fine-tuning run records the names it trains on in
its config (`task.classes`, the training split's when not set), and so in every checkpoint it writes.
Every split a model reads (the training split, `--val`, `evaluate`'s) is matched against them before any
compute:
- a task whose splits may hold some of the classes (`TransferTask.subset_by_name`: class folders): each of
  the split's classes must be one the model knows; the split's ids are translated to the model's
  (`ClassIds`), so a validation split of some of the class folders scores against the right classes;
- any other (a class map's table): the split's classes must be the model's, the same names in the same
  order and the same count.
Where either side records no names (a checkpoint written before names were recorded, a class map without a
table), ids are positions: the counts are checked, and a note says so. A refusal is a `DataError` of one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from trainer.config import TaskConfig
from trainer.data.dataset import DatasetInfo
from trainer.errors import DataError
from trainer.transfer.tasks import TransferTask

_SHOWN = 4  # names shown in a message


@dataclass(frozen=True, kw_only=True)
class SplitClasses:
    """The classes one split records for the task's target."""

    where: str  # the split, as messages name it
    count: int
    names: tuple[str, ...] | None  # by id; None: the split records no names


@dataclass(frozen=True, kw_only=True)
class ModelClasses:
    """The classes a model predicts: `count` ids, the first `len(names)` of them named."""

    count: int
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassIds:
    """A split's class ids -> the model's: `table[i]` is the model's id of the split's class i; the ignore id
    stays itself where it is no class of the split; any other id is refused (a ValueError: corrupt data)."""

    table: tuple[int, ...]
    ignore_id: int

    @cached_property
    def lut(self) -> Tensor:
        lut = torch.full((max(len(self.table), self.ignore_id + 1),), -1, dtype=torch.long)
        lut[self.ignore_id] = self.ignore_id
        lut[: len(self.table)] = torch.tensor(self.table, dtype=torch.long)
        return lut

    def apply(self, target: Tensor) -> Tensor:
        inside = (target >= 0) & (target < self.lut.numel())
        mapped = torch.where(inside, self.lut[target.clamp(0, self.lut.numel() - 1)], -1)
        if (mapped < 0).any():
            bad = int(target[mapped < 0].flatten()[0])
            raise ValueError(f"class id {bad} is not one of the split's {len(self.table)} classes")
        return mapped


def split_classes(spec: TransferTask, info: DatasetInfo) -> SplitClasses:
    """The classes `info` records for `spec`'s target (a DataError when it records none)."""
    if info.manifest is None:
        raise DataError(f"dataset {info.root}: manifest.json is missing or invalid; its classes cannot be known")
    assert spec.class_count is not None  # a task with classes
    where = f"dataset {info.root}"
    count = spec.class_count(info.manifest, where, spec.target)
    names = spec.class_names(info.manifest, spec.target) if spec.class_names is not None else None
    return SplitClasses(where=where, count=count, names=tuple(names) if names else None)


def training_classes(spec: TransferTask, task: TaskConfig, split: SplitClasses | None) -> ModelClasses:
    """The classes a run learns: `task.classes` and `task.num_classes` where set, else the training split's."""
    names = tuple(task.classes) or (split.names if split is not None and split.names else ())
    count = task.num_classes or len(task.classes)
    if not count:
        if split is None:
            raise DataError("no manifest to take the number of classes from; set task.num_classes")
        count = split.count
    if split is not None and not task.classes and split.names and len(split.names) > count:
        raise DataError(f"{split.where} has {len(split.names)} {spec.target} classes, task.num_classes is {count}")
    return ModelClasses(count=count, names=names[:count])


def match(spec: TransferTask, model: ModelClasses, split: SplitClasses, ignore_id: int) -> tuple[ClassIds | None, str]:
    """How `split`'s ids become the model's (None: they are the same) and a note where ids are only positions;
    a DataError of one line where the split holds classes the model does not have."""
    positional = not (model.names and split.names)
    note = "" if not positional else _positional_note(model, split)
    if not spec.subset_by_name:
        if not positional and split.names != model.names:
            raise DataError(
                f"{split.where}: its {spec.target} classes are another table than the model's: {split.count} "
                f"({shown_names(split.names)}) here, {model.count} ({shown_names(model.names)}) in the model"
            )
        if split.count != model.count:
            raise DataError(f"{split.where} has {split.count} {spec.target} classes, the model {model.count}")
        return None, note
    if positional:
        if split.count > model.count:
            raise DataError(f"{split.where} has {split.count} {spec.target} classes, the model {model.count}")
        return None, note
    assert split.names is not None
    known = {name: i for i, name in enumerate(model.names)}
    unknown = [name for name in split.names if name not in known]
    if unknown:
        raise DataError(
            f"{split.where}: {len(unknown)} of its {split.count} {spec.target} classes are not the model's "
            f"({shown_names(tuple(unknown))}); the model knows {model.count} ({shown_names(model.names)})"
        )
    table = tuple(known[name] for name in split.names)
    return (None if table == tuple(range(len(table))) else ClassIds(table, ignore_id)), note


def _positional_note(model: ModelClasses, split: SplitClasses) -> str:
    side = "the checkpoint" if not model.names else split.where
    return f"{side} records no class names: the split's class ids are taken as the model's, by position"


def shown_names(names: tuple[str, ...] | None) -> str:
    """The first names and how many more, for a message."""
    if not names:
        return "no names"
    more = f", ... {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more

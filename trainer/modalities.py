"""The modality registry: everything the model, loader and losses need to know about each modality.

Adding a modality = one `Modality` entry (+ an adapter class if no existing one fits); adding an output =
one `Task` entry. The model, loader and trainer look modalities up here and never name them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from labelers.standards import IMAGENET_MEAN, IMAGENET_STD
from trainer import losses
from trainer.adapters import ClassMapInputAdapter, PatchInputAdapter

if TYPE_CHECKING:
    from trainer.config import ModelConfig

LossFn = Callable[[Tensor, Tensor, Tensor, tuple[int, int]], Tensor]

DEPTH_SCALE = 2.0**16
TRIM = (0.1, 0.9)


@dataclass(frozen=True, kw_only=True)
class Modality:
    """One member of a sample, from shard bytes to encoder tokens.

    codec: key of `pipeline.codecs.CODECS` that decodes the member; channels: tensor channels (None for a
    class-id map, whose classes come from `ModelConfig.num_classes`); stride: 1 = full resolution, 4 = a
    quarter (56 x 56 at 224 px); interpolation of the shared crop; to_tensor: decoded array -> (C, H, W)
    tensor, uint8 where the interpolation allows (cheaper to resample); finish: after crop, flip and resize
    -> the model's input and target.
    """

    name: str
    codec: str
    channels: int | None
    stride: int
    interpolation: str
    to_tensor: Callable[[np.ndarray], Tensor]
    finish: Callable[[Tensor], Tensor]
    build_input: Callable[[Modality, ModelConfig], nn.Module]

    def out_channels(self, model: ModelConfig) -> int:
        return self.channels if self.channels is not None else model.num_classes


@dataclass(frozen=True, kw_only=True)
class Task:
    """One decoder output: predicts `source` (target, mask and queries come from it) under `loss`."""

    name: str
    source: str
    loss: LossFn
    fp32: bool = False


def _rgb_to_tensor(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1)  # (3, H, W) uint8: resampled as bytes


def _rgb_finish(x: Tensor) -> Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def _depth_to_tensor(a: np.ndarray) -> Tensor:
    return torch.from_numpy(a.astype(np.float32)).unsqueeze(0) / DEPTH_SCALE  # (1, H, W) in [0, 1)


def standardize_depth(x: Tensor) -> Tensor:
    """Per-sample standardisation on the 10-90 % trimmed range (mean and unbiased std of the middle 80 %).

    The kept values are those of sorted(x)[int(0.1 n) : int(0.9 n)], found by a partial sort (np.partition).
    """
    values = x.flatten().numpy()
    lo, hi = int(TRIM[0] * values.size), int(TRIM[1] * values.size)
    kept = np.partition(values, (lo, hi - 1))[lo:hi].astype(np.float64)
    return (x - float(kept.mean())) / float(np.sqrt(kept.var(ddof=1) + 1e-6))


def _ids_to_tensor(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(a, dtype=np.uint8)).unsqueeze(0)  # (1, H, W) uint8 ids


def _ids_finish(x: Tensor) -> Tensor:
    return x.squeeze(0).long()  # (h, w) class ids


def _patch_input(m: Modality, cfg: ModelConfig) -> nn.Module:
    grid = cfg.image_size // cfg.patch_size
    return PatchInputAdapter(channels=m.out_channels(cfg), patch=cfg.patch_size // m.stride, grid=grid, dim=cfg.dim)


def _class_map_input(m: Modality, cfg: ModelConfig) -> nn.Module:
    grid, patch = cfg.image_size // cfg.patch_size, cfg.patch_size // m.stride
    return ClassMapInputAdapter(
        classes=cfg.num_classes, class_dim=cfg.class_emb_dim, patch=patch, grid=grid, dim=cfg.dim
    )


_MODALITIES = (
    Modality(
        name="rgb",
        codec="rgb",
        channels=3,
        stride=1,
        interpolation="bilinear",
        to_tensor=_rgb_to_tensor,
        finish=_rgb_finish,
        build_input=_patch_input,
    ),
    Modality(
        name="depth",
        codec="depth",
        channels=1,
        stride=1,
        interpolation="bilinear",
        to_tensor=_depth_to_tensor,
        finish=standardize_depth,
        build_input=_patch_input,
    ),
    Modality(
        name="semseg",
        codec="semseg",
        channels=None,
        stride=4,
        interpolation="nearest-exact",  # centre-aligned: plain "nearest" shifts labels against rgb
        to_tensor=_ids_to_tensor,
        finish=_ids_finish,
        build_input=_class_map_input,
    ),
)

_TASKS = (
    Task(name="rgb", source="rgb", loss=losses.masked_mse),
    Task(name="depth", source="depth", loss=losses.masked_l1),
    Task(name="semseg", source="semseg", loss=losses.masked_cross_entropy, fp32=True),
    Task(name="norm_rgb", source="rgb", loss=losses.masked_norm_mse),
)

MODALITIES: Mapping[str, Modality] = MappingProxyType({m.name: m for m in _MODALITIES})
TASKS: Mapping[str, Task] = MappingProxyType({t.name: t for t in _TASKS})


def used_modalities(cfg: ModelConfig) -> tuple[str, ...]:
    """Modalities a run reads: its inputs and the sources of its outputs, inputs first."""
    names = list(cfg.inputs) + [TASKS[t].source for t in cfg.outputs]
    return tuple(dict.fromkeys(names))

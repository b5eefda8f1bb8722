"""The modality registry: everything the model, loader and losses need to know about each modality.

Adding a modality = one `Modality` entry (+ an adapter class if no existing one fits); adding an output =
one `Task` entry. The model, loader and trainer look modalities up here and never name them.

A package of your own adds them without editing this one: expose a module under the entry-point group
`multimae_forge.modalities` whose import calls `register_modality(...)` and `register_task(...)` (its
member type comes from a `multimae_forge.codecs` entry point, see `pipeline.format.codecs`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from labelers.plugins import load_entry_points, registry
from labelers.standards import IMAGENET_MEAN, IMAGENET_STD
from trainer.model import losses
from trainer.model.adapters import ClassMapInputAdapter, PatchInputAdapter
from trainer.model.builtins import GROUP


class ModelShape(Protocol):
    """What the registry reads of a model's config (`trainer.config.ModelConfig` is one)."""

    @property
    def image_size(self) -> int: ...

    @property
    def patch_size(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def class_emb_dim(self) -> int: ...

    @property
    def inputs(self) -> tuple[str, ...]: ...

    @property
    def outputs(self) -> tuple[str, ...]: ...


LossFn = Callable[[Tensor, Tensor, Tensor, tuple[int, int]], Tensor]

DEPTH_SCALE = 2.0**16
TRIM = (0.1, 0.9)


@dataclass(frozen=True, kw_only=True)
class Modality:
    """One member of a sample, from shard bytes to encoder tokens.

    codec: key of `pipeline.format.codecs.CODECS` that decodes the member; channels: tensor channels (None for a
    class-id map, whose classes come from `ModelShape.num_classes`); stride: 1 = full resolution, 4 = a
    quarter (56 x 56 at 224 px); interpolation of the shared crop; to_tensor: decoded array -> (C, H, W)
    tensor, uint8 where the interpolation allows (cheaper to resample); finish: after crop, flip and resize
    -> the model's input and target; mirror: per-channel signs a horizontal flip applies (vector maps: the
    x component of a normal changes sign when the picture is mirrored), None for none; finish_batch: `finish`
    of a (B, C, h, w) batch on any device (`trainer.data.batch_resize`), None: `finish` sample by sample.
    `to_tensor` must be per pixel (the loader applies it to the crop's window only). The device path's
    compact form (`trainer.data.batch_resize`), both or neither: to_packed, a decoded window -> the H x W (x C)
    array a worker hands over (a view where it can be, integers where the values are); from_packed, on the
    training device, those values as a tensor of any shape -> `to_tensor`'s values, element by element (the
    same float operations, so the same numbers). Neither: the worker packs `to_tensor`'s tensor. pad: the
    `to_tensor` value of pixels outside the image where an evaluation pads it (rgb: 128, the official one's).
    """

    name: str
    codec: str
    channels: int | None
    stride: int
    interpolation: str
    to_tensor: Callable[[np.ndarray], Tensor]
    finish: Callable[[Tensor], Tensor]
    build_input: Callable[[Modality, ModelShape], nn.Module]
    mirror: tuple[float, ...] | None = None
    finish_batch: Callable[[Tensor], Tensor] | None = None
    to_packed: Callable[[np.ndarray], np.ndarray] | None = None
    from_packed: Callable[[Tensor], Tensor] | None = None
    pad: float = 0.0

    def __post_init__(self) -> None:
        if (self.to_packed is None) != (self.from_packed is None):
            raise ValueError(f"modality {self.name}: to_packed and from_packed go together")
        if self.mirror is not None and len(self.mirror) != self.channels:
            raise ValueError(f"modality {self.name}: mirror needs one sign per channel ({self.channels})")

    def out_channels(self, model: ModelShape) -> int:
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


def _as_decoded(x: Any) -> Any:
    """The packed form of maps whose `to_tensor` only reorders them (uint8 rgb, class ids): unchanged."""
    return x


def _rgb_finish(x: Tensor) -> Tensor:
    """uint8 (3, h, w) or (B, 3, h, w), any device -> ImageNet-normalised float."""
    mean = device_constant(IMAGENET_MEAN, x.device).view(3, 1, 1)
    std = device_constant(IMAGENET_STD, x.device).view(3, 1, 1)
    return (x.float() / 255.0 - mean) / std


@functools.lru_cache(maxsize=64)
def device_constant(values: tuple[float, ...], device: torch.device) -> Tensor:
    """A small float32 constant, copied to `device` once (a copy per step would wait for the device)."""
    return torch.tensor(values, dtype=torch.float32, device=device)


def _depth_to_tensor(a: np.ndarray) -> Tensor:
    # (1, H, W) in [0, 1), one pass: 1 / 2**16 is a power of two, so the product is the exact quotient
    return torch.from_numpy(np.multiply(a, 1.0 / DEPTH_SCALE, dtype=np.float32)).unsqueeze(0)


def _depth_bits(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.dtype(np.uint16):  # native uint16 (decode_depth's); a byte-swapped view would be misread
        raise ValueError(f"depth levels must be native uint16, got {a.dtype.str}")
    return a.view(np.int16)  # the uint16 levels' bits as int16, a dtype every device copies


def _depth_from_bits(x: Tensor) -> Tensor:
    return (x.to(torch.int32) & 0xFFFF).to(torch.float32) * (1.0 / DEPTH_SCALE)  # = _depth_to_tensor's


def standardize_depth(x: Tensor) -> Tensor:
    """Per-sample standardisation on the 10-90 % trimmed range of the valid pixels (depth > 0; 0 = invalid: the
    sky of a rendered scene, a sensor's holes): mean and unbiased std of the middle 80 % of the valid values,
    found by a partial sort (np.partition); invalid pixels are 0 afterwards, as the official fine-tuning sets
    them. A map without an invalid pixel (the official pretraining data) is standardised exactly as the
    official code does; one without a valid pixel is all 0.
    """
    flat = x.flatten().numpy()
    values = flat[flat > 0]
    if values.size == 0:
        return torch.zeros_like(x)
    lo, hi = int(TRIM[0] * values.size), int(TRIM[1] * values.size)
    kept = np.partition(values, (lo, hi - 1))[lo:hi].astype(np.float64)
    var = kept.var(ddof=1) if kept.size > 1 else 0.0
    return ((x - float(kept.mean())) / float(np.sqrt(var + 1e-6))).masked_fill(x <= 0, 0.0)


def standardize_depth_batch(x: Tensor) -> Tensor:
    """`standardize_depth` of every sample of a (B, 1, h, w) batch, on its device (a sort per sample)."""
    values = x.flatten(1)
    valid = values > 0
    n = valid.sum(dim=1, keepdim=True)  # (B, 1) valid pixels per sample
    ordered = values.masked_fill(~valid, float("inf")).sort(dim=1).values.double()  # valid values first
    rank = torch.arange(values.shape[1], device=x.device).unsqueeze(0)
    lo, hi = (n * TRIM[0]).floor().long(), (n * TRIM[1]).floor().long()  # = int(0.1 n), int(0.9 n): n >= 0
    kept = (rank >= lo) & (rank < hi)  # (B, N) the trimmed middle of each sample's valid values
    count = kept.sum(dim=1).double()
    mean = torch.where(kept, ordered, 0.0).sum(dim=1) / count.clamp(min=1)
    squares = torch.where(kept, (ordered - mean.unsqueeze(1)) ** 2, 0.0).sum(dim=1)
    var = torch.where(count > 1, squares / (count - 1).clamp(min=1), 0.0)
    out = (x - mean.view(-1, 1, 1, 1)) / (var + 1e-6).sqrt().view(-1, 1, 1, 1)
    return out.float().masked_fill(x <= 0, 0.0)


def _normal_to_tensor(a: np.ndarray) -> Tensor:
    """uint8 H x W x 3 (Omnidata's 0..255 of [-1, 1]) -> float (3, H, W) vectors."""
    return torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1).float() * (2.0 / 255.0) - 1.0


def _normal_from_bytes(x: Tensor) -> Tensor:
    return x.float() * (2.0 / 255.0) - 1.0  # = _normal_to_tensor's


def unit_length(x: Tensor) -> Tensor:
    """(3, H, W) vectors -> unit length (bilinear resampling shortens them; a zero vector stays zero)."""
    return x / x.norm(dim=0, keepdim=True).clamp(min=1e-6)


def _unit_length_batch(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-6)


def _ids_to_tensor(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(a, dtype=np.uint8)).unsqueeze(0)  # (1, H, W) uint8 ids


def _ids_finish(x: Tensor) -> Tensor:
    return x.squeeze(0).long()  # (h, w) class ids


def _ids_finish_batch(x: Tensor) -> Tensor:
    return x.squeeze(1).long()  # (B, h, w) class ids


def patch_input(m: Modality, cfg: ModelShape) -> nn.Module:
    grid = cfg.image_size // cfg.patch_size
    return PatchInputAdapter(channels=m.out_channels(cfg), patch=cfg.patch_size // m.stride, grid=grid, dim=cfg.dim)


def _class_map_input(m: Modality, cfg: ModelShape) -> nn.Module:
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
        pad=128.0,
        finish_batch=_rgb_finish,
        build_input=patch_input,
        to_packed=_as_decoded,
        from_packed=_as_decoded,
    ),
    Modality(
        name="depth",
        codec="depth",
        channels=1,
        stride=1,
        interpolation="bilinear",
        to_tensor=_depth_to_tensor,
        finish=standardize_depth,
        finish_batch=standardize_depth_batch,
        build_input=patch_input,
        to_packed=_depth_bits,
        from_packed=_depth_from_bits,
    ),
    Modality(
        name="semseg",
        codec="semseg",
        channels=None,
        stride=4,
        interpolation="nearest-exact",  # centre-aligned: plain "nearest" shifts labels against rgb
        to_tensor=_ids_to_tensor,
        finish=_ids_finish,
        finish_batch=_ids_finish_batch,
        build_input=_class_map_input,
        to_packed=_as_decoded,
        from_packed=_as_decoded,
    ),
    Modality(
        name="normal",
        codec="normal",
        channels=3,
        stride=1,
        interpolation="bilinear",
        to_tensor=_normal_to_tensor,
        finish=unit_length,
        finish_batch=_unit_length_batch,
        build_input=patch_input,
        mirror=(-1.0, 1.0, 1.0),
        to_packed=_as_decoded,
        from_packed=_normal_from_bytes,
    ),
)

_TASKS = (
    Task(name="rgb", source="rgb", loss=losses.masked_mse),
    Task(name="depth", source="depth", loss=losses.masked_l1),
    Task(name="semseg", source="semseg", loss=losses.masked_cross_entropy, fp32=True),
    Task(name="norm_rgb", source="rgb", loss=losses.masked_norm_mse),
    Task(name="normal", source="normal", loss=losses.masked_l1),  # L1 on unit vectors, as depth's
)

_MODALITY_TABLE: dict[str, Modality] = registry({m.name: m for m in _MODALITIES})
_TASK_TABLE: dict[str, Task] = registry({t.name: t for t in _TASKS})
MODALITIES: Mapping[str, Modality] = MappingProxyType(_MODALITY_TABLE)
TASKS: Mapping[str, Task] = MappingProxyType(_TASK_TABLE)


def register_modality(modality: Modality) -> Modality:
    """Add a modality (a plugin's); its codec must be registered first (`pipeline.format.codecs.register_codec`)."""
    from pipeline.format.codecs import CODECS

    if modality.name in _MODALITY_TABLE and _MODALITY_TABLE[modality.name] is not modality:
        raise ValueError(f"modality {modality.name!r} is registered twice")
    if modality.codec not in CODECS or not CODECS[modality.codec].is_map:
        raise ValueError(f"modality {modality.name!r}: codec {modality.codec!r} is not a registered map codec")
    _MODALITY_TABLE[modality.name] = modality
    return modality


def register_task(task: Task) -> Task:
    """Add a decoder output predicting a registered modality."""
    if task.name in _TASK_TABLE and _TASK_TABLE[task.name] is not task:
        raise ValueError(f"task {task.name!r} is registered twice")
    if task.source not in _MODALITY_TABLE:
        raise ValueError(f"task {task.name!r}: source {task.source!r} is not a registered modality")
    _TASK_TABLE[task.name] = task
    return task


def used_modalities(cfg: ModelShape) -> tuple[str, ...]:
    """Modalities a run reads: its inputs and the sources of its outputs, inputs first."""
    names = list(cfg.inputs) + [TASKS[t].source for t in cfg.outputs]
    return tuple(dict.fromkeys(names))


def _load_plugins() -> None:
    load_entry_points(GROUP)


_load_plugins()

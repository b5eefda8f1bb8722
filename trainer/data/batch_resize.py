"""The augmentation's resampling for a whole batch of crops, on the training device.

With `data.augment_on = "device"` a loader worker only decodes and cuts the shared crop (`windows`: the
window of each decoded array, in its stored dtype, packed per modality into one flat tensor: `pack`; depth
stays 2 bytes a pixel, normals 1); the training loop moves the packed batch to the device, turns the stored
values into `Modality.to_tensor`'s (`Modality.from_packed`), and resizes, flips and finishes it there
(`to_device`). That takes the per-sample conversion and resampling, the bulk of a worker's work after
decoding, off the CPU, as NVIDIA DALI does.

A resize is linear and separable: the resize of a (C, h, w) crop to (S, S) is `R_h @ x @ R_w^T`, with R_h
(S x h) and R_w (S x w) the 1-D weights of `torch.nn.functional.interpolate` for that length (computed for
the whole batch at once by `resize_weights`, equal to interpolate's own within 3e-7, nearest exactly). The
crops are zero-padded to the batch's largest and the weights padded with zero columns, so a chunk of the
batch is two batched matrix products; a flip reverses the rows of R_w. Class maps stay exact (one-hot
weights select source pixels); uint8 images are rounded to integers after resampling, as the per-sample
uint8 resampling does; the stride step (class maps 224 -> 56) is the per-sample call itself, on the batch.
Tolerance against the per-sample path, `trainer.data.augment.augment` (tests/test_batch_resize.py): float maps
within 1e-4, uint8 images within one intensity level, class maps equal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.data.augment import Crop, cut
from trainer.model.modalities import MODALITIES, device_constant

CROPS = "__crops__"  # (B, 3) int64: crop height, width and flip of every sample
INTERPOLATIONS = ("bilinear", "nearest-exact")
CHUNK = 32  # samples resampled together (bounds the padded copy: 32 x 3 x 500 x 500 floats = 96 MB)


def windows(arrays: Mapping[str, np.ndarray], crop: Crop) -> dict[str, np.ndarray]:
    """Worker side: decoded arrays -> the crop's window of each, H x W (x C), in the form it is packed in
    (`Modality.to_packed`: views of the decoded arrays for the built-in modalities; else `to_tensor`'s
    values, channels last)."""
    out = {}
    for name, array in arrays.items():
        spec, window = MODALITIES[name], cut(array, crop)
        out[name] = spec.to_packed(window) if spec.to_packed else spec.to_tensor(window).permute(1, 2, 0).numpy()
    return out


def pack(items: Sequence[Mapping[str, np.ndarray]], crops: Sequence[Crop]) -> dict[str, Tensor]:
    """Worker side: the samples' windows (`windows`) -> one flat tensor per modality, each crop channels
    last (the decoded layout: one copy per crop, straight into its place), + the crop table."""
    batch = {}
    for name in items[0]:
        parts = [it[name] for it in items]
        flat = np.empty(sum(p.size for p in parts), dtype=parts[0].dtype)
        start = 0
        for p in parts:
            flat[start : start + p.size].reshape(p.shape)[...] = p
            start += p.size
        batch[name] = torch.from_numpy(flat)
    batch[CROPS] = torch.tensor([[c.height, c.width, int(c.flip)] for c in crops], dtype=torch.int64)
    return batch


def to_device(batch: Mapping[str, Any], device: torch.device, image_size: int) -> dict[str, Tensor]:
    """A batch from the loader -> its tensors on `device`; a packed one (`pack`) resampled and finished
    there: the tensors `trainer.data.augment.augment` gives per sample, stacked."""
    tensors = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, Tensor) and k != CROPS}
    if CROPS not in batch:
        return tensors
    sizes = [(h, w) for h, w, _ in batch[CROPS].tolist()]  # the host's copy: shapes without a device sync
    table = batch[CROPS].to(device, non_blocking=True)  # the device's: heights, widths and flips as tensors
    out = {k: v for k, v in tensors.items() if k not in MODALITIES}
    for name in (k for k in tensors if k in MODALITIES):
        spec = MODALITIES[name]
        flat = spec.from_packed(tensors[name]) if spec.from_packed else tensors[name]
        crops = _unpack(flat, spec.channels or 1, sizes)
        parts = [
            _resample(crops[i : i + CHUNK], sizes[i : i + CHUNK], table[i : i + CHUNK], image_size, name)
            for i in range(0, len(crops), CHUNK)
        ]
        x = torch.cat(parts)
        out[name] = spec.finish_batch(x) if spec.finish_batch else torch.stack([spec.finish(s) for s in x])
    return out


def _unpack(flat: Tensor, channels: int, sizes: list[tuple[int, int]]) -> list[Tensor]:
    counts = [channels * h * w for h, w in sizes]
    if sum(counts) != flat.numel():
        raise ValueError(f"packed tensor holds {flat.numel()} values, the crop table says {sum(counts)}")
    return [part.view(h, w, channels).permute(2, 0, 1) for part, (h, w) in zip(flat.split(counts), sizes, strict=True)]


def _resample(crops: list[Tensor], sizes: list[tuple[int, int]], table: Tensor, size: int, name: str) -> Tensor:
    """(C, h_i, w_i) crops -> (b, C, size, size) at the modality's stride, as `augment.resample` per sample;
    `table`: the chunk's rows of the crop table, on the device."""
    spec, device, dtype = MODALITIES[name], crops[0].device, crops[0].dtype
    heights, widths = table[:, 0], table[:, 1]
    top_h, top_w = max(h for h, _ in sizes), max(w for _, w in sizes)
    x = torch.zeros(len(crops), crops[0].shape[0], top_h, top_w, device=device)
    for i, crop in enumerate(crops):
        x[i, :, : crop.shape[1], : crop.shape[2]] = crop
    rows = resize_weights(heights, x.shape[2], size, spec.interpolation)
    cols = resize_weights(widths, x.shape[3], size, spec.interpolation).transpose(1, 2)
    flip = table[:, 2].bool().view(-1, 1, 1)
    cols = torch.where(flip, cols.flip(-1), cols)
    with full_fp32_matmul():
        y = torch.matmul(torch.matmul(rows.unsqueeze(1), x), cols.unsqueeze(1))
    if dtype == torch.uint8:
        y = y.round_().clamp_(0, 255).to(torch.uint8)  # the per-sample path resamples uint8 as bytes
    if spec.mirror is not None:
        mirror = device_constant(spec.mirror, device).view(1, -1, 1, 1)
        y = torch.where(flip.view(-1, 1, 1, 1), y.float() * mirror, y.float())
    if spec.stride > 1:  # the same call as per sample, on the batch
        y = F.interpolate(y, size=(size // spec.stride,) * 2, mode=spec.interpolation)
    return y


def supported(name: str) -> bool:
    """Whether modality `name` can be resampled here (its interpolation has batched weights)."""
    return MODALITIES[name].interpolation in INTERPOLATIONS


@contextlib.contextmanager
def full_fp32_matmul() -> Iterator[None]:
    """float32 matrix products at full precision here, even where the run allows TF32 (its 10-bit mantissa
    would move rgb by more than a level and depth by ~1e-3); the run's setting is restored after. Works with
    either of torch's two precision APIs (mixing them is an error in torch, so the one in use is kept)."""
    matmul = torch.backends.cuda.matmul
    try:
        saved = torch.get_float32_matmul_precision()
    except RuntimeError:  # the run set the per-backend API (fp32_precision): use that one
        backend = matmul.fp32_precision
        matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = backend
        return
    if saved == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def resize_weights(lengths: Tensor, width: int, size: int, mode: str) -> Tensor:
    """(b, size, width) float32 on lengths' device: row i of sample k weighs the first lengths[k] input
    pixels for output pixel i (zero beyond), the 1-D resize of `augment.resample` for that length:
    antialiased bilinear (half-pixel centres, triangle filter widened by the scale when downsampling,
    normalised per output pixel) or nearest-exact (the pixel under the output's centre)."""
    n = lengths.to(torch.float32).view(-1, 1, 1)
    scale = n / size
    i = torch.arange(size, device=lengths.device, dtype=torch.float32).view(1, -1, 1)
    j = torch.arange(width, device=lengths.device, dtype=torch.float32).view(1, 1, -1)
    centre = scale * (i + 0.5)
    if mode == "nearest-exact":
        source = torch.minimum(torch.floor(centre), n - 1)
        return (j == source).to(torch.float32)
    if mode != "bilinear":
        raise ValueError(f"no batched resize for interpolation {mode!r}")
    support = torch.clamp(scale, min=1.0)
    lo = torch.clamp(torch.floor(centre - support + 0.5), min=0.0)
    hi = torch.minimum(torch.floor(centre + support + 0.5), n)
    w = torch.clamp(1.0 - ((j - centre + 0.5) / support).abs(), min=0.0)
    w = torch.where((j >= lo) & (j < hi), w, torch.zeros_like(w))
    total = w.sum(-1, keepdim=True)
    return w / torch.where(total == 0, torch.ones_like(total), total)

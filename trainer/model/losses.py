"""Masked losses: computed only on masked patches, averaged per sample, then over samples.

`mask` is (B, nh * nw) with 1 = masked (hidden from the encoder), 0 = visible. A sample with no masked
patch does not count (the official code's nan-mean, without its NaN gradient); a batch with none gives 0.

Class-map targets may hold the ignore id (`IGNORE_ID`, 255: unlabelled pixels): the cross-entropy leaves
those pixels out, so a sample's loss is its mean over the pixels that are both masked and labelled, and a
sample with none of those does not count, as one with no masked patch. (The official pretraining loss has
no ignore id; its fine-tuning loss, `CrossEntropyLoss(ignore_index=255)`, averages over the batch's
labelled pixels at once: ours keeps the per-sample mean of every other pretraining loss.)

Fine-tuning's dense regression losses (`valid_l1`, `berhu`) are the official depth fine-tuning's: `valid` is
(B, H, W) bool, True where the target has a value; the loss sums over valid pixels and divides by their count
over the whole batch (not per sample). A batch without a valid pixel gives 0 (the official code's 0 / 0 NaN,
made finite), with a zero gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from labelers.standards import IGNORE_ID

NORM_EPS = 1e-6


def pixel_mask(mask: Tensor, size: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """(B, nh*nw) token mask -> (B, H, W) float pixel mask (each token covers an H/nh x W/nw patch)."""
    (nh, nw), (h, w) = grid, size
    m = mask.reshape(-1, nh, nw).to(torch.float32)
    return m.repeat_interleave(h // nh, dim=1).repeat_interleave(w // nw, dim=2)


def masked_mean(pixel_loss: Tensor, mask: Tensor, grid: tuple[int, int], valid: Tensor | None = None) -> Tensor:
    """pixel_loss (B, H, W) -> scalar mean over masked pixels of each sample, then over samples.

    valid: optional (B, H, W) bool, False where a pixel has no target (ignored): such pixels count neither in
    the sum nor in the sample's pixel count. Samples without a masked (valid) pixel are left out of the mean
    over samples (and get no gradient: no 0 / 0 anywhere in the graph).
    """
    m = pixel_mask(mask, (pixel_loss.shape[-2], pixel_loss.shape[-1]), grid)
    if valid is not None:
        m = m * valid.to(m.dtype)
    count = m.flatten(1).sum(1)  # (B,) masked (valid) pixels per sample
    per_sample = (pixel_loss * m).flatten(1).sum(1) / count.clamp(min=1)
    counted = (count > 0).to(per_sample.dtype)
    return (per_sample * counted).sum() / counted.sum().clamp(min=1)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor, grid: tuple[int, int]) -> Tensor:
    return masked_mean(((pred - target) ** 2).mean(dim=1), mask, grid)  # (B, C, H, W) -> (B, H, W)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor, grid: tuple[int, int]) -> Tensor:
    return masked_mean((pred - target).abs().mean(dim=1), mask, grid)


def masked_cross_entropy(pred: Tensor, target: Tensor, mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """pred (B, classes, H, W) logits, target (B, H, W) ids; pixels with IGNORE_ID are left out (see above)."""
    pixel_loss = F.cross_entropy(pred, target, reduction="none", ignore_index=IGNORE_ID)  # 0 where ignored
    return masked_mean(pixel_loss, mask, grid, valid=target != IGNORE_ID)


def masked_norm_mse(pred: Tensor, target: Tensor, mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """MSE against the target normalised per patch (mean 0, unbiased variance 1 over its C x p x p values)."""
    return masked_mse(pred, normalize_patches(target, grid), mask, grid)


def normalize_patches(x: Tensor, grid: tuple[int, int]) -> Tensor:
    b, c, h, w = x.shape
    (nh, nw), ph, pw = grid, h // grid[0], w // grid[1]
    patches = x.reshape(b, c, nh, ph, nw, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, nh, nw, -1)
    mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
    patches = (patches - mean) / torch.sqrt(var + NORM_EPS)
    return patches.reshape(b, nh, nw, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def valid_l1(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean |pred - target| over the batch's valid pixels (the official `masked_l1_loss`)."""
    err = (pred - target).abs()[valid]
    return err.mean() if err.numel() else pred.sum() * 0.0


def berhu(pred: Tensor, target: Tensor, valid: Tensor, threshold: float = 0.2) -> Tensor:
    """Reverse Huber over the batch's valid pixels (the official `masked_berhu_loss`): |e| below
    c = max(threshold x the batch's max |e|, 1e-5) (no gradient through c), (e^2 + c^2) / 2c from c on."""
    err = (pred - target).abs()[valid]
    if err.numel() == 0:
        return pred.sum() * 0.0
    c = (threshold * err.max()).detach().clamp_min(1e-5)
    return torch.where(err < c, err, (err**2 + c**2) / (2 * c)).mean()

"""Evaluation metrics, accumulated over a whole split (sums, never means of per-batch means); each transfer
task names its own and the main one (`trainer.transfer.tasks`). The formulas are the official MultiMAE
fine-tuning code's (`utils/semseg_metrics.py`, `run_finetuning_depth.py`); the official code averages its
depth metrics over batches, ours over the pixels of the whole split (one batch: the same numbers).

- classification: top-1 and top-5 accuracy (%).
- semantic segmentation: a confusion matrix summed over the split (`confusion`: rows target, columns
  prediction; pixels with the ignore id are not counted). Per class (`per_class`): IoU = intersection / union,
  accuracy = intersection / the class's target pixels, NaN where the denominator is 0. mIoU and mean accuracy
  (%) are the means over the classes where they are defined (the official nan-mean: a class that occurs only
  in the predictions counts in the mIoU with IoU 0); pixel accuracy (%) = correct / counted pixels.
- depth: over the valid pixels (target > 0, or the `valid` mask given) of the whole split, with p the
  prediction and t the target: delta1/2/3 (% with max(p / t, t / p) < 1.25^k), AbsRel (mean |p - t| / t),
  SqRel (mean (p - t)^2 / t), RMSE, and RMSE-log (sqrt of the mean (ln p - ln t)^2; the official code reports
  it as `log10`). As the official code, p and t are clamped to at least 1e-6 where they divide or take a log.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

EPS = 1e-6  # the official clamp of depth values that divide or take a log


class ClassificationMetrics:
    def __init__(self) -> None:
        self.n = self.top1 = self.top5 = 0

    def update(self, logits: Tensor, target: Tensor) -> None:
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices  # (B, k)
        hit = top == target[:, None]
        self.top1 += int(hit[:, 0].sum())
        self.top5 += int(hit.any(dim=1).sum())
        self.n += int(target.numel())

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"top1": 100.0 * self.top1 / n, "top5": 100.0 * self.top5 / n, "samples": float(self.n)}


class SegmentationMetrics:
    def __init__(self, num_classes: int, ignore_id: int = 255) -> None:
        self.k, self.ignore = num_classes, ignore_id
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)  # rows target, cols pred

    def update(self, logits: Tensor, target: Tensor) -> None:
        """logits (B, K, H, W), or class ids (B, H, W); target (B, H, W) ids."""
        pred = logits.argmax(dim=1) if logits.ndim == 4 else logits
        valid = target != self.ignore
        t, p = target[valid].long(), pred[valid].long()
        if t.numel() and int(t.max()) >= self.k:
            raise ValueError(f"target class {int(t.max())} >= num_classes {self.k}")
        self.confusion += torch.bincount(t * self.k + p, minlength=self.k * self.k).reshape(self.k, self.k).double()

    def per_class(self) -> dict[str, Tensor]:
        """{"iou": (K,), "acc": (K,)} float64, NaN for a class where it is undefined (no union, no target)."""
        c = self.confusion
        inter, target, pred = c.diag(), c.sum(1), c.sum(0)
        return {"iou": inter / (target + pred - inter), "acc": inter / target}  # 0 / 0 = NaN

    def result(self) -> dict[str, float]:
        per, c = self.per_class(), self.confusion
        iou, acc = per["iou"], per["acc"]
        present = ~iou.isnan()
        return {
            "miou": 100.0 * _nanmean(iou),
            "mean_acc": 100.0 * _nanmean(acc),
            "pixel_acc": 100.0 * float(c.diag().sum() / c.sum()) if c.sum() > 0 else 0.0,
            "classes_present": float(present.sum()),
        }


def _nanmean(x: Tensor) -> float:
    """Mean over the defined (not NaN) entries; 0 when there are none."""
    defined = x[~x.isnan()]
    return float(defined.mean()) if defined.numel() else 0.0


class DepthMetrics:
    def __init__(self) -> None:
        self.n = 0
        self.sums = dict.fromkeys(("delta1", "delta2", "delta3", "sq", "absrel", "sqrel", "sq_log"), 0.0)

    def update(self, pred: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        """pred, target (B, H, W) depth; valid: (B, H, W) bool, default target > 0."""
        valid = target > 0 if valid is None else valid.bool()
        p, t = pred[valid].double(), target[valid].double()
        p_pos, t_pos = p.clamp_min(EPS), t.clamp_min(EPS)
        ratio = torch.maximum(p / t_pos, t / p_pos)
        for k in (1, 2, 3):
            self.sums[f"delta{k}"] += float((ratio < 1.25**k).sum())
        err = p - t
        self.sums["sq"] += float((err**2).sum())
        self.sums["absrel"] += float((err.abs() / t_pos).sum())
        self.sums["sqrel"] += float((err**2 / t_pos).sum())
        self.sums["sq_log"] += float(((p_pos.log() - t_pos.log()) ** 2).sum())
        self.n += int(valid.sum())

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        out = {f"delta{k}": 100.0 * self.sums[f"delta{k}"] / n for k in (1, 2, 3)}
        return out | {
            "rmse": math.sqrt(self.sums["sq"] / n),
            "absrel": self.sums["absrel"] / n,
            "sqrel": self.sums["sqrel"] / n,
            "rmse_log": math.sqrt(self.sums["sq_log"] / n),
            "pixels": float(self.n),
        }

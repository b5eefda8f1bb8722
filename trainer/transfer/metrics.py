"""Evaluation metrics, accumulated over a whole split (sums, never means of per-batch means); each transfer
task names its own and the main one (`trainer.transfer.tasks`).

- classification: top-1 and top-5 accuracy (%).
- semantic segmentation: a confusion matrix summed over the split; mIoU = mean over the classes that occur
  (in the targets or the predictions) of intersection / union; pixel accuracy; pixels with the ignore id
  are not counted.
- depth: over valid pixels (target > 0) of the whole split: delta1/2/3 (% with max(p/t, t/p) < 1.25^k),
  RMSE, AbsRel (mean |p - t| / t).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


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
        pred = logits.argmax(dim=1) if logits.ndim == 4 else logits
        valid = target != self.ignore
        t, p = target[valid].long(), pred[valid].long()
        if t.numel() and int(t.max()) >= self.k:
            raise ValueError(f"target class {int(t.max())} >= num_classes {self.k}")
        self.confusion += torch.bincount(t * self.k + p, minlength=self.k * self.k).reshape(self.k, self.k).double()

    def result(self) -> dict[str, float]:
        c = self.confusion
        inter, union = c.diag(), c.sum(0) + c.sum(1) - c.diag()
        present = union > 0
        miou = float((inter[present] / union[present]).mean()) if present.any() else 0.0
        acc = float(inter.sum() / c.sum()) if c.sum() > 0 else 0.0
        return {"miou": 100.0 * miou, "pixel_acc": 100.0 * acc, "classes_present": float(present.sum())}


class DepthMetrics:
    def __init__(self) -> None:
        self.n = 0
        self.sums = {"delta1": 0.0, "delta2": 0.0, "delta3": 0.0, "sq": 0.0, "absrel": 0.0}

    def update(self, pred: Tensor, target: Tensor) -> None:
        valid = target > 0
        p, t = pred[valid].double().clamp_min(1e-6), target[valid].double()
        ratio = torch.maximum(p / t, t / p)
        for k in (1, 2, 3):
            self.sums[f"delta{k}"] += float((ratio < 1.25**k).sum())
        self.sums["sq"] += float(((p - t) ** 2).sum())
        self.sums["absrel"] += float(((p - t).abs() / t).sum())
        self.n += int(valid.sum())

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        out = {f"delta{k}": 100.0 * self.sums[f"delta{k}"] / n for k in (1, 2, 3)}
        return out | {
            "rmse": math.sqrt(self.sums["sq"] / n),
            "absrel": self.sums["absrel"] / n,
            "pixels": float(self.n),
        }

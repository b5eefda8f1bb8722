"""The shared body of torch labelers: resize to the network's geometry, normalise, batch, resize back."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from labelers.geometry import group_by_size
from labelers.spec import LabelerSpec
from labelers.standards import FACING, torch_dtype


def unit_normals(pred: torch.Tensor) -> np.ndarray:
    """(3, H, W) network output in Omnidata's scale ([0, 1] = [-1, 1], clamped as its reference does) ->
    float32 H x W x 3 unit vectors; a zero vector becomes FACING."""
    n = pred.clamp(0.0, 1.0) * 2.0 - 1.0
    length = n.norm(dim=0, keepdim=True)
    facing = torch.tensor(FACING, device=n.device).view(3, 1, 1).expand_as(n)
    n = torch.where(length > 1e-6, n / length.clamp(min=1e-6), facing)
    return n.permute(1, 2, 0).contiguous().cpu().numpy().astype(np.float32)


class TorchLabeler:
    """Subclasses implement `predict(pixels) -> (B, h, w)` float maps, (B, C, h, w) class scores, or
    (B, 3, h, w) surface normals in Omnidata's [0, 1] scale (output `normal`)."""

    def __init__(self, spec: LabelerSpec, model: Any, *, device: str = "cpu", precision: str = "fp32") -> None:
        torch_dtype(precision)  # refuses an unknown precision
        self.spec = spec
        self.device = torch.device(device)
        self.precision = precision
        self.model = model.to(self.device).eval()
        self._mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type != "cuda" or self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch_dtype(self.precision))

    def _pixels(self, images: Sequence[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
        """uint8 HxWx3 images -> normalised float (B, 3, h, w) at the network size."""
        resized = []
        for im in images:
            t = torch.from_numpy(np.array(im, copy=True)).to(self.device).permute(2, 0, 1)[None].float()
            if t.shape[-2:] != size:
                t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
            resized.append(t)
        x = torch.cat(resized) / 255.0
        return (x - self._mean) / self._std

    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _to_image(self, pred: torch.Tensor, height: int, width: int) -> np.ndarray:
        """One prediction back at the image's size: bilinear for maps, argmax then nearest for classes."""
        if self.spec.output == "classes":
            ids = pred.argmax(0, keepdim=True)[None].to(torch.uint8)
            ids = F.interpolate(ids, size=(height, width), mode="nearest-exact")
            return ids[0, 0].cpu().numpy()
        if self.spec.output == "normal":
            return unit_normals(F.interpolate(pred[None].float(), size=(height, width), mode="bilinear")[0])
        m = F.interpolate(pred[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)
        return m[0, 0].cpu().numpy().astype(np.float32)

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(images)
        groups = group_by_size(self.spec, [im.shape[:2] for im in images])
        for size, idx in groups.items():
            with self._autocast():
                preds = self.predict(self._pixels([images[i] for i in idx], size))
            for j, i in enumerate(idx):
                out[i] = self._to_image(preds[j], *images[i].shape[:2])
        return [o for o in out if o is not None]

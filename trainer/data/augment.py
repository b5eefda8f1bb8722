"""The shared augmentation: one random-resized crop and one horizontal flip applied to every modality.

The crop is cut from the decoded arrays before `Modality.to_tensor` (a per-pixel conversion), so only the
crop's pixels are converted. `trainer.data.batch_resize` does the same resampling for a whole batch of crops on the
training device; this module is the per-sample path of CPU runs and the reference it is tested against.

Each modality is resampled with its own interpolation (bilinear for images, depth and normals, nearest-exact
for class maps), then brought to its stride's resolution (class maps: 224 -> 56, nearest-exact) and finished
(normalised; normals back to unit length). A flip mirrors vector maps too: the x component of a normal
changes sign.

Evaluation places a sample by a `View` (`trainer.transfer.protocols` makes one per evaluation protocol): the
window `crop`, resized to `size` (h, w; any aspect), padded at the bottom and right to `canvas` with each
modality's `pad` value (rgb 128, as the official ADE20K evaluation; targets with a value the metrics ignore).
Training's square is the view whose size and canvas are both (image_size, image_size).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.model.modalities import MODALITIES


@dataclass(frozen=True, kw_only=True)
class Crop:
    top: int
    left: int
    height: int
    width: int
    flip: bool


def sample_crop(
    h: int,
    w: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: float,
) -> Crop:
    """Random area fraction in `scale`, log-uniform aspect ratio in `ratio`; center crop after 10 misses."""
    flip = bool(rng.random() < hflip)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return Crop(top=top, left=left, height=ch, width=cw, flip=flip)
    return _center_crop(h, w, ratio, flip)


def center_square(h: int, w: int) -> Crop:
    """The largest centred square, unflipped (figures and evaluation: no randomness)."""
    return _center_crop(h, w, (1.0, 1.0), False)


def _center_crop(h: int, w: int, ratio: tuple[float, float], flip: bool) -> Crop:
    aspect = w / h
    cw, ch = w, h
    if aspect < ratio[0]:
        ch = round(w / ratio[0])
    elif aspect > ratio[1]:
        cw = round(h * ratio[1])
    return Crop(top=(h - ch) // 2, left=(w - cw) // 2, height=ch, width=cw, flip=flip)


def resample(
    x: Tensor, crop: Crop, size: int | tuple[int, int], mode: str, mirror: tuple[float, ...] | None = None
) -> Tensor:
    """(C, H, W) float -> (C, size, size) (or (C, h, w) for `size` (h, w)): crop, resize with `mode`, then flip
    if the crop says so; a flip also multiplies the channels by `mirror` (vector maps: x -> -x)."""
    x = x[:, crop.top : crop.top + crop.height, crop.left : crop.left + crop.width]
    smooth = mode in ("bilinear", "bicubic")
    kwargs = {"align_corners": False, "antialias": True} if smooth else {}
    shape = (size, size) if isinstance(size, int) else size
    x = F.interpolate(x.unsqueeze(0), size=shape, mode=mode, **kwargs).squeeze(0)
    if not crop.flip:
        return x
    x = torch.flip(x, dims=[-1])
    if mirror is None:
        return x
    return x.float() * torch.tensor(mirror, dtype=torch.float32).view(-1, 1, 1)  # signs need a signed type


def cut(array: np.ndarray, crop: Crop) -> np.ndarray:
    """The crop's window of an H x W (x C) array (a view)."""
    return array[crop.top : crop.top + crop.height, crop.left : crop.left + crop.width]


def cropped_tensors(arrays: Mapping[str, np.ndarray], crop: Crop) -> dict[str, Tensor]:
    """Decoded arrays -> each modality's `to_tensor` of the crop's window, (C, height, width)."""
    return {name: MODALITIES[name].to_tensor(cut(array, crop)) for name, array in arrays.items()}


@dataclass(frozen=True, kw_only=True)
class View:
    """Where a sample lands in the model's input: the window `crop` (flipped as it says) resized to `size`
    (h, w), then padded at the bottom and right to `canvas` (h, w). `smooth`: the resampling of the modalities
    that resample bilinearly (images, depth), None keeps theirs (ImageNet's evaluation: "bicubic")."""

    crop: Crop
    size: tuple[int, int]
    canvas: tuple[int, int]
    smooth: str | None = None

    @classmethod
    def square(cls, crop: Crop, side: int) -> View:
        return cls(crop=crop, size=(side, side), canvas=(side, side))

    def place(self, x: Tensor, mode: str, fill: float, mirror: tuple[float, ...] | None = None) -> Tensor:
        """(C, H, W) -> (C, *canvas): resampled with `mode` (bilinear -> `smooth`, when set), `fill` outside
        the image."""
        if self.smooth is not None and mode == "bilinear":
            mode = self.smooth
        x = resample(x, self.crop, self.size, mode, mirror)
        return pad_to(x, self.canvas, fill)


def pad_to(x: Tensor, canvas: tuple[int, int], fill: float) -> Tensor:
    """(C, h, w) -> (C, *canvas): `x` at the top left, `fill` below and to the right (unchanged when it fits)."""
    h, w = x.shape[-2:]
    if (h, w) == canvas:
        return x
    if h > canvas[0] or w > canvas[1]:
        raise ValueError(f"a {h}x{w} image does not fit a {canvas[0]}x{canvas[1]} canvas")
    return F.pad(x, (0, canvas[1] - w, 0, canvas[0] - h), value=fill)


def augment(arrays: Mapping[str, np.ndarray], crop: Crop, image_size: int) -> dict[str, Tensor]:
    """Decoded arrays (all H x W, pixel-aligned) -> finished tensors at each modality's resolution."""
    return place_arrays(arrays, View.square(crop, image_size))


def place_arrays(arrays: Mapping[str, np.ndarray], view: View) -> dict[str, Tensor]:
    """Decoded arrays (all H x W, pixel-aligned) -> finished tensors laid out by `view`, each at its modality's
    resolution (the canvas / its stride)."""
    out, window = {}, dataclasses.replace(view, crop=dataclasses.replace(view.crop, top=0, left=0))
    for name, x in cropped_tensors(arrays, view.crop).items():
        spec = MODALITIES[name]
        x = window.place(x, spec.interpolation, spec.pad, spec.mirror)
        if spec.stride > 1:
            shape = (view.canvas[0] // spec.stride, view.canvas[1] // spec.stride)
            x = F.interpolate(x.unsqueeze(0), size=shape, mode=spec.interpolation).squeeze(0)
        out[name] = spec.finish(x)
    return out

"""Evaluation protocols: where an evaluated image lands in the model's input, and how many forwards score it.

A protocol is chosen by name (`task.eval_protocol` of a run, which its validation uses; `evaluate --protocol`
overrides the checkpoint's), recorded in the metrics JSON, and scores every sample of the split. The official
MultiMAE evaluations (DESIGN.md section 11) and the shipped recipes that use them:

- `ade20k`: longest side 512, padded to 512 x 512 at the top left (rgb 128; label: the ignore id, so the pad
  counts nowhere in the metrics); one forward per image (`finetune-ade20k-semseg`).
- `nyuv2-semseg`: the same at 640 (`finetune-nyuv2-semseg-rgbd`).
- `nyuv2-depth`: shortest side 256, centre crop 256 x 256 (`finetune-nyuv2-depth`).
- `imagenet`: resize 256 (bicubic), centre crop 224: the centred square of 224 / 256 of the shortest side,
  resampled bicubically to 224 (`finetune-in1k-cls`).

And at the model's size (`model.image_size`, S):
- `center`: the largest centred square resized to S (the default; what evaluation did before protocols).
- `pad`: the full image, longest side S, padded to S x S as `ade20k`.
- `slide`: the BEiT / MAE / mmseg tables' sliding window: shortest side S, windows S x S every 2/3 S (512:
  stride 341, as mmseg; the last window of a row or column ends at the image's edge), every pixel covered,
  the model's outputs (logits, depth) averaged where windows overlap; a class-map input's window starts at its
  nearest cell. One image per batch (images differ in size), its windows batched.

Metrics are computed at the resolution of the forward (the resized image, as the official evaluation), not
resampled back to the original image's (mmseg's tables are); targets are resampled nearest-exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from trainer.data.augment import Crop, View, center_square

CENTER, PAD, SLIDE = "center", "pad", "slide"  # the layouts


@dataclass(frozen=True, kw_only=True)
class EvalProtocol:
    """One evaluation protocol. layout: `center` (a centred square, `crop_fraction` of the shortest side),
    `pad` (the whole image, longest side `side`, padded to a square) or `slide` (shortest side `side`, sliding
    windows); side: the forward's side in pixels (None: the model's image size); smooth: the images'
    resampling (None: each modality's own); about: one line for a person (help, the metrics JSON)."""

    name: str
    layout: str
    about: str
    side: int | None = None
    crop_fraction: float = 1.0
    smooth: str | None = None

    def __post_init__(self) -> None:
        if self.layout not in (CENTER, PAD, SLIDE):
            raise ValueError(f"evaluation protocol {self.name}: unknown layout {self.layout!r}")

    def side_for(self, image_size: int) -> int:
        return self.side or image_size

    def view(self, h: int, w: int, image_size: int) -> View:
        """Where an h x w sample lands: the crop, the resized size and the canvas."""
        s = self.side_for(image_size)
        whole = Crop(top=0, left=0, height=h, width=w, flip=False)
        if self.layout == PAD:
            return View(crop=whole, size=_scaled(h, w, s / max(h, w)), canvas=(s, s), smooth=self.smooth)
        if self.layout == SLIDE:
            size = _scaled(h, w, s / min(h, w))
            return View(crop=whole, size=size, canvas=size, smooth=self.smooth)
        crop = center_square(h, w) if self.crop_fraction == 1.0 else _centred(h, w, self.crop_fraction)
        return View(crop=crop, size=(s, s), canvas=(s, s), smooth=self.smooth)

    def record(self, image_size: int) -> dict[str, object]:
        """The protocol as the metrics JSON records it."""
        return {"name": self.name, "layout": self.layout, "side": self.side_for(image_size), "about": self.about}


def _scaled(h: int, w: int, scale: float) -> tuple[int, int]:
    return max(1, round(h * scale)), max(1, round(w * scale))


def _centred(h: int, w: int, fraction: float) -> Crop:
    side = max(1, round(min(h, w) * fraction))
    return Crop(top=(h - side) // 2, left=(w - side) // 2, height=side, width=side, flip=False)


# ------------------------------------------------------------------------------------------------ sliding window


def windows(h: int, w: int, side: int) -> list[tuple[int, int]]:
    """The (top, left) corners of the side x side windows over an h x w image (h, w >= side), every 2/3 side
    apart, the last of each row and column ending at the edge (mmseg's `slide_inference`)."""
    step = side * 2 // 3
    return [(top, left) for top in _starts(h, side, step) for left in _starts(w, side, step)]


def _starts(n: int, side: int, step: int) -> list[int]:
    count = max(n - side + step - 1, 0) // step + 1
    return [max(min(i * step + side, n) - side, 0) for i in range(count)]


def slide(
    forward: Callable[[dict[str, Tensor]], Tensor], inputs: Mapping[str, Tensor], strides: Mapping[str, int], side: int
) -> Tensor:
    """One image's inputs (1, C, H, W) or (1, h, w) ids at 1 / stride -> the model's output averaged over the
    windows: (1, K, H, W) where `forward` gives (n, K, side, side), else (1, K) (the mean over windows)."""
    first = next(iter(inputs))
    h, w = (n * strides[first] for n in inputs[first].shape[-2:])
    corners = windows(h, w, side)
    cut = {
        name: torch.cat([_window(x, top, left, side, strides[name]) for top, left in corners])
        for name, x in inputs.items()
    }
    out = forward(cut)
    if out.ndim != 4:
        return out.mean(dim=0, keepdim=True)
    total = out.new_zeros((1, out.shape[1], h, w))
    count = out.new_zeros((1, 1, h, w))
    for i, (top, left) in enumerate(corners):
        total[..., top : top + side, left : left + side] += out[i]
        count[..., top : top + side, left : left + side] += 1
    return total / count  # every pixel is covered by at least one window


def _window(x: Tensor, top: int, left: int, side: int, stride: int) -> Tensor:
    row, col, n = top // stride, left // stride, side // stride
    return x[..., row : row + n, col : col + n]


# ------------------------------------------------------------------------------------------------ the table

_PROTOCOLS = (
    EvalProtocol(name=CENTER, layout=CENTER, about="the largest centred square, resized to the model's size"),
    EvalProtocol(name=PAD, layout=PAD, about="the full image, longest side = the model's size, padded (pad ignored)"),
    EvalProtocol(
        name=SLIDE,
        layout=SLIDE,
        about="shortest side = the model's size; sliding windows of that size every 2/3 of it, outputs averaged",
    ),
    EvalProtocol(
        name="ade20k", layout=PAD, side=512, about="ADE20K official: longest side 512, padded to 512 x 512 (ignored)"
    ),
    EvalProtocol(
        name="nyuv2-semseg", layout=PAD, side=640, about="NYUv2 semseg official: longest side 640, padded (ignored)"
    ),
    EvalProtocol(
        name="nyuv2-depth", layout=CENTER, side=256, about="NYUv2 depth official: shortest side 256, centre crop 256"
    ),
    EvalProtocol(
        name="imagenet",
        layout=CENTER,
        side=224,
        crop_fraction=224 / 256,
        smooth="bicubic",
        about="ImageNet official: resize 256 (bicubic), centre crop 224",
    ),
)
EVAL_PROTOCOLS: Mapping[str, EvalProtocol] = MappingProxyType({p.name: p for p in _PROTOCOLS})


def eval_protocol(name: str) -> EvalProtocol:
    """The protocol `name` (a config is checked against this table before it gets here)."""
    try:
        return EVAL_PROTOCOLS[name]
    except KeyError:
        raise KeyError(f"unknown evaluation protocol {name!r}; known: {', '.join(EVAL_PROTOCOLS)}") from None

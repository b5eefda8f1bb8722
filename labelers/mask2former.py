"""Semantic segmentation: Mask2Former (`transformers.Mask2FormerForUniversalSegmentation`), COCO panoptic.

Label = argmax over the classes of the semantic score map sum_q softmax(class_q)[c] * sigmoid(mask_q), with
the "no object" column dropped, so no pixel is void. RGB channel order, as the transformers models expect.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from labelers import builtin
from labelers.registry import register_labeler
from labelers.smoke import materialize, tiny_mask2former_config
from labelers.spec import LabelerSpec
from labelers.torch_labeler import TorchLabeler
from labelers.weights import load_pretrained


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, Q, C+1) class logits, (B, Q, h, w) mask logits -> (B, C, H, W) scores at `size`, in fp32 (also
    under the labeler's bf16 autocast, which would otherwise run the einsum in bf16 and flip argmaxes)."""
    with torch.autocast(mask_logits.device.type, enabled=False):
        probs = class_logits.float().softmax(-1)[..., :-1]
        masks = F.interpolate(mask_logits.float(), size=size, mode="bilinear", align_corners=False).sigmoid()
        return torch.einsum("bqc,bqhw->bchw", probs, masks)


class Mask2FormerSemsegLabeler(TorchLabeler):
    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels)
        return semantic_scores(out.class_queries_logits, out.masks_queries_logits, (pixels.shape[-2], pixels.shape[-1]))


def _build(spec: LabelerSpec, *, device: str = "cpu", precision: str = "fp32") -> Mask2FormerSemsegLabeler:
    from transformers import Mask2FormerForUniversalSegmentation

    model = load_pretrained(Mask2FormerForUniversalSegmentation, spec.weights, spec.revision)
    return Mask2FormerSemsegLabeler(spec, _checked(model, spec), device=device, precision=precision)


def _build_smoke(spec: LabelerSpec, *, device: str = "cpu", precision: str = "fp32") -> Mask2FormerSemsegLabeler:
    from transformers import Mask2FormerForUniversalSegmentation

    n = spec.num_classes or 1
    folder = spec.weights or str(
        materialize(f"mask2former-smoke-{n}", lambda: Mask2FormerForUniversalSegmentation(tiny_mask2former_config(n)))
    )
    model = load_pretrained(Mask2FormerForUniversalSegmentation, folder, None)
    return Mask2FormerSemsegLabeler(spec, _checked(model, spec), device=device, precision=precision)


def _checked(model: Any, spec: LabelerSpec) -> Any:
    if model.config.num_labels != spec.num_classes:
        raise ValueError(f"{spec.name}: weights have {model.config.num_labels} classes, spec says {spec.num_classes}")
    return model


register_labeler(builtin.COCO_PANOPTIC)(_build)
register_labeler(builtin.ADE_SEMANTIC)(_build)
register_labeler(builtin.MASK2FORMER_SMOKE)(_build_smoke)
register_labeler(builtin.MASK2FORMER_SMOKE_ADE)(_build_smoke)

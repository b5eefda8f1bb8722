"""Semantic segmentation: Mask2Former (`transformers.Mask2FormerForUniversalSegmentation`), COCO panoptic.

Label = argmax over the classes of the semantic score map sum_q softmax(class_q)[c] * sigmoid(mask_q), with
the "no object" column dropped, so no pixel is void. RGB channel order, as the transformers models expect.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from labelers.registry import register_labeler
from labelers.smoke import materialize, tiny_mask2former_config
from labelers.spec import LabelerSpec
from labelers.standards import IMAGENET_MEAN, IMAGENET_STD
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


COCO_PANOPTIC = LabelerSpec(
    name="mask2former-swin-small-coco-panoptic",
    modality="semseg",
    model_class="Mask2FormerForUniversalSegmentation",
    weights="facebook/mask2former-swin-small-coco-panoptic",
    revision="main",
    license="CC-BY-NC-4.0 (Mask2Former model zoo weights)",
    size=384,
    geometry="short_side",
    max_side=1024,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    output="classes",
    num_classes=133,
    classes="coco-panoptic-133",
    notes="COCO panoptic, 133 classes (80 things + 53 stuff) in Mask2Former's contiguous order.",
)
ADE_SEMANTIC = dataclasses.replace(
    COCO_PANOPTIC,
    name="mask2former-swin-small-ade-semantic",
    weights="facebook/mask2former-swin-small-ade-semantic",
    size=512,
    max_side=2048,
    num_classes=150,
    classes="ade20k-150",
    notes="ADE20K semantic, 150 classes (wall ... flag) in the benchmark's order.",
)


def smoke_of(spec: LabelerSpec, name: str) -> LabelerSpec:
    """A tiny random-weight model of `spec`'s class and classes: MEANINGLESS labels, for demos and tests."""
    return dataclasses.replace(
        spec,
        name=name,
        weights="",
        revision=None,
        license="n/a (random weights)",
        size=64,
        min_side=32,
        max_side=128,
        meaningless=True,
        notes=f"Tiny random-weight Mask2Former with {spec.name}'s classes: MEANINGLESS labels, for demos and tests.",
    )


register_labeler(COCO_PANOPTIC)(_build)
register_labeler(ADE_SEMANTIC)(_build)
register_labeler(smoke_of(COCO_PANOPTIC, "mask2former-smoke"))(_build_smoke)
register_labeler(smoke_of(ADE_SEMANTIC, "mask2former-smoke-ade"))(_build_smoke)

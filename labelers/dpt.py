"""Depth labelers: DPT (`transformers.DPTForDepthEstimation`), ViT and hybrid (ResNet-50 stem) variants.

transformers' own forward assumes square inputs for these backbones; `dpt_forward` runs the same modules with
the patch grid of any input whose sides are multiples of the patch size (what the paper's geometry needs).
"""

from __future__ import annotations

from typing import Any

import torch

from labelers import builtin
from labelers.registry import register_labeler
from labelers.smoke import materialize, tiny_dpt_config
from labelers.spec import LabelerSpec
from labelers.torch_labeler import TorchLabeler
from labelers.weights import load_pretrained


def dpt_forward(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) normalised -> (B, h, w) prediction, for any h, w divisible by the patch size."""
    cfg = model.config
    _, _, h, w = pixels.shape
    if cfg.is_hybrid:
        emb = model.dpt.embeddings(pixels, interpolate_pos_encoding=True)
    else:
        emb = model.dpt.embeddings(pixels)
    tokens, hidden = emb.last_hidden_states, []
    for layer in model.dpt.encoder.layer:
        tokens = layer(tokens)
        hidden.append(tokens)
    if cfg.is_hybrid:
        feats = list(emb.intermediate_activations) + [hidden[i] for i in cfg.backbone_out_indices[2:]]
    else:
        feats = [hidden[i] for i in cfg.backbone_out_indices]
    patch = cfg.patch_size
    return model.head(model.neck(feats, h // patch, w // patch))


class DPTDepthLabeler(TorchLabeler):
    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        return dpt_forward(self.model, pixels).float()


def _load(spec: LabelerSpec) -> Any:
    from transformers import DPTForDepthEstimation

    return load_pretrained(DPTForDepthEstimation, spec.weights, spec.revision)


def _build(spec: LabelerSpec, *, device: str = "cpu", precision: str = "fp32") -> DPTDepthLabeler:
    return DPTDepthLabeler(spec, _load(spec), device=device, precision=precision)


def _build_smoke(spec: LabelerSpec, *, device: str = "cpu", precision: str = "fp32") -> DPTDepthLabeler:
    from transformers import DPTForDepthEstimation

    folder = spec.weights or str(materialize("dpt-hybrid-smoke", lambda: DPTForDepthEstimation(tiny_dpt_config(True))))
    return DPTDepthLabeler(
        spec, load_pretrained(DPTForDepthEstimation, folder, None), device=device, precision=precision
    )


register_labeler(builtin.DPT_HYBRID_MIDAS)(_build)
register_labeler(builtin.DPT_LARGE)(_build)
register_labeler(builtin.DPT_SMOKE)(_build_smoke)

"""Export the MultiMAE encoder as a timm ViT checkpoint (`vit_base_patch16_224` keys) in safetensors.

Mapping (MultiMAE -> timm):
- `input_adapters.<rgb>.proj.{weight,bias}` -> `patch_embed.proj.{weight,bias}` (the RGB patch embedding);
- `global_tokens` (1, 1, D) -> `cls_token`: the global token plays the class token;
- `input_adapters.<rgb>.pos_emb` (1, D, 14, 14) -> `pos_embed` (1, 1 + 196, D): a zero row for the class
  token (the sin-cos embedding has none) followed by the 196 patch positions in row-major order;
- `encoder.N.*` -> `blocks.N.*` (same names below: norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2).

Not exported, because MultiMAE pretraining has no such parameters: `norm.weight`, `norm.bias` (the
pretraining encoder has no final norm) and `head.weight`, `head.bias` (no classifier). Load with
`model.load_state_dict(tensors, strict=False)`: exactly those four keys are reported missing and keep
timm's initialisation (norm = identity-initialised LayerNorm, head = fresh classifier) for fine-tuning.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save
from torch import Tensor

from pipeline import fs

MISSING_IN_MULTIMAE = ("norm.weight", "norm.bias", "head.weight", "head.bias")


def encoder_to_timm(state: Mapping[str, Tensor], rgb: str = "rgb") -> dict[str, Tensor]:
    """MultiMAE state dict -> timm VisionTransformer state dict (without norm and head)."""
    prefix = f"input_adapters.{rgb}."
    pos = state[prefix + "pos_emb"]  # (1, D, h, w)
    patch_pos = pos.flatten(2).transpose(1, 2)  # (1, h*w, D), row-major like timm's patch order
    out = {
        "cls_token": state["global_tokens"][:, :1].clone(),
        "pos_embed": torch.cat([torch.zeros_like(patch_pos[:, :1]), patch_pos], dim=1),
        "patch_embed.proj.weight": state[prefix + "proj.weight"],
        "patch_embed.proj.bias": state[prefix + "proj.bias"],
    }
    for name, value in state.items():
        if name.startswith("encoder."):
            out["blocks." + name.removeprefix("encoder.")] = value
    return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}


def export_timm(state: Mapping[str, Tensor], path: Path) -> Path:
    """Write the timm-keyed encoder to `path` (safetensors); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fs.write_bytes_atomic(path, save(encoder_to_timm(state), metadata={"format": "pt", "source": "multimae-forge"}))
    return path

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

from pipeline.format import fs
from trainer.config import ModelConfig
from trainer.engine.checkpoint import Kind, read_checkpoint

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


def encoder_state(path: Path) -> tuple[dict[str, Tensor], ModelConfig, Kind]:
    """(tensors in MultiMAE names, the model's shape, kind) of our pretraining or fine-tuning checkpoint or an
    official MultiMAE one (ViT-B without a config of ours: `Checkpoint.model_config`)."""
    kinds: tuple[Kind, ...] = ("pretrain-run", "finetune-run", "official-pretrained", "official-finetuned")
    ckpt = read_checkpoint(path).require(*kinds, use="export")
    return ckpt.tensors, ckpt.model_config, ckpt.kind


def export_timm_folder(state: Mapping[str, Tensor], shape: ModelConfig, out: Path) -> Path:
    """A folder timm loads strictly: `timm.create_model("local-dir:OUT", pretrained=True)`.

    config.json names a timm ViT with this encoder's shape (no final norm, as pretrained; class token = the
    global token; no classifier: `num_classes = 0`) and the mean/std the model was trained with (ImageNet).
    """
    import json

    from labelers.standards import IMAGENET_MEAN, IMAGENET_STD

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = shape.image_size
    config = {
        "architecture": "vit_base_patch16_224",
        "num_classes": 0,
        "num_features": shape.dim,
        "global_pool": "token",
        "model_args": {
            "img_size": size,
            "patch_size": shape.patch_size,
            "embed_dim": shape.dim,
            "depth": shape.depth,
            "num_heads": shape.heads,
            "mlp_ratio": float(shape.mlp_ratio),
            "num_classes": 0,
            "global_pool": "token",
            "final_norm": False,
            "fc_norm": False,
        },
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "num_classes": 0,
        },
    }
    fs.write_bytes_atomic(out / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    tensors = encoder_to_timm(state)
    fs.write_bytes_atomic(
        out / "model.safetensors", save(tensors, metadata={"format": "pt", "source": "multimae-forge"})
    )
    return out


def export_official(state: Mapping[str, Tensor], out: Path) -> Path:
    """The official MultiMAE `.pth` layout: {"model": state_dict}, plain tensors (weights_only loadable)."""
    import io

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"model": {k: v.detach().cpu().contiguous() for k, v in state.items()}}, buf)
    fs.write_bytes_atomic(out, buf.getvalue())
    return out

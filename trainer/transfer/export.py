"""Export the MultiMAE encoder (and a fine-tuned classifier) as a timm ViT in safetensors.

Mapping (MultiMAE -> timm `VisionTransformer`):
- `input_adapters.<rgb>.proj.{weight,bias}` -> `patch_embed.proj.{weight,bias}` (the RGB patch embedding);
- `global_tokens` (1, G, D) -> `cls_token` (the first) and `reg_token` (the other G - 1, timm's register
  tokens): timm's prefix tokens. Our encoder puts them last, timm first; attention without position bias and
  the mean are blind to the order, so every token comes out the same;
- `input_adapters.<rgb>.pos_emb` (1, D, h, w) -> `pos_embed` (1, G + h*w, D): zero rows for the prefix
  tokens (the sin-cos embedding has none) followed by the patch positions in row-major order;
- `encoder.N.*` -> `blocks.N.*` (same names below: norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2);
- the classification head (`transfer.heads.LinearHead`: mean of ALL tokens, global ones included -> LayerNorm
  -> Linear) -> `global_pool="avg"` with `pool_include_prefix=True` (the mean over every token, prefix tokens
  included), `fc_norm.*` (the LayerNorm), `head.*`; timm's `final_norm=True` with an `avg` pool puts its one
  norm after the pool (`fc_norm`) and none after the blocks, as ours. Logits equal ours (float rounding).
  The linear probe's head (`ProbeHead`: BatchNorm without affine -> Linear) is folded into `head.*`
  (W / sqrt(var + eps), b - W mean / sqrt(var + eps)) with no `fc_norm`.

`export_timm_folder` writes what `timm.create_model("local-dir:OUT", pretrained=True)` loads strictly: a
fine-tuned classifier with its head (`num_classes` = its classes, `label_names` = its class names), or the
encoder with `num_classes = 0` and an identity `fc_norm` (1 / 0, the LayerNorm a fresh head starts from):
`pretrained_cfg.classifier = "head"`, so `create_model(..., pretrained=True, num_classes=N)` loads every
other tensor and initialises `head` for N classes; the model is then our classification recipe's. It needs a
timm whose `VisionTransformer` takes `pool_include_prefix` (1.0.31 is tested). A classifier that reads inputs
other than RGB (its mean pools their tokens too) cannot be a timm ViT: its encoder is exported alone, and the
returned line says so.

`export_timm` writes the encoder's tensors alone as one file (`vit_base_patch16_224` keys, the pretraining
run's `encoder-timm.safetensors`). Not in it, because MultiMAE pretraining has no such parameters:
`norm.weight`, `norm.bias` (the pretraining encoder has no final norm) and `head.weight`, `head.bias` (no
classifier): `model.load_state_dict(tensors, strict=False)` reports exactly those four keys missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor

from pipeline.format import fs
from pipeline.format.outputs import check_output
from trainer.config import FinetuneConfig, ModelConfig
from trainer.engine.checkpoint import read_checkpoint
from trainer.engine.checkpoint_kind import EXPORTABLE, Kind
from trainer.transfer.heads import PROBE_BN_EPS

MISSING_IN_MULTIMAE = ("norm.weight", "norm.bias", "head.weight", "head.bias")
CLS_HEAD = "output_adapters.cls."  # the classification head's tensors (the official fine-tuning layout)
METADATA = {"format": "pt", "source": "multimae-forge"}


def encoder_to_timm(state: Mapping[str, Tensor], rgb: str = "rgb") -> dict[str, Tensor]:
    """MultiMAE state dict -> timm VisionTransformer state dict (without norm and head)."""
    prefix = f"input_adapters.{rgb}."
    pos = state[prefix + "pos_emb"]  # (1, D, h, w)
    patch_pos = pos.flatten(2).transpose(1, 2)  # (1, h*w, D), row-major like timm's patch order
    tokens = state["global_tokens"]  # (1, G, D): timm's class token, then its register tokens
    out = {
        "pos_embed": torch.cat([patch_pos.new_zeros(1, tokens.shape[1], patch_pos.shape[2]), patch_pos], dim=1),
        "patch_embed.proj.weight": state[prefix + "proj.weight"],
        "patch_embed.proj.bias": state[prefix + "proj.bias"],
    }
    if tokens.shape[1] >= 1:
        out["cls_token"] = tokens[:, :1].clone()
    if tokens.shape[1] > 1:
        out["reg_token"] = tokens[:, 1:].clone()
    for name, value in state.items():
        if name.startswith("encoder."):
            out["blocks." + name.removeprefix("encoder.")] = value
    return _plain(out)


def classifier_to_timm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The classification head in `state`, in timm names: the LayerNorm -> `fc_norm.*` and the Linear ->
    `head.*`, or the linear probe's BatchNorm folded into `head.*`; {} without a classification head."""
    if CLS_HEAD + "norm.weight" in state:
        names = {"fc_norm.weight": "norm.weight", "fc_norm.bias": "norm.bias"}
        names |= {"head.weight": "head.weight", "head.bias": "head.bias"}
        return _plain({theirs: state[CLS_HEAD + ours] for theirs, ours in names.items()})
    if CLS_HEAD + "bn.running_var" in state:
        w, b = state[CLS_HEAD + "head.weight"].double(), state[CLS_HEAD + "head.bias"].double()
        scale = (state[CLS_HEAD + "bn.running_var"].double() + PROBE_BN_EPS).rsqrt()  # (D,)
        folded = w * scale  # (K, D)
        bias = b - folded @ state[CLS_HEAD + "bn.running_mean"].double()
        return _plain({"head.weight": folded.to(w.dtype), "head.bias": bias.to(b.dtype)})
    return {}


def export_timm(state: Mapping[str, Tensor], path: Path) -> Path:
    """Write the timm-keyed encoder to `path` (safetensors); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fs.write_bytes_atomic(path, save(encoder_to_timm(state), metadata=METADATA))
    return path


def encoder_state(path: Path) -> tuple[dict[str, Tensor], ModelConfig, Kind]:
    """(tensors in MultiMAE names, the model's shape, kind) of our pretraining or fine-tuning checkpoint or an
    official MultiMAE one (ViT-B without a config of ours: `Checkpoint.model_config`)."""
    ckpt = read_checkpoint(path).require(*EXPORTABLE, use="export")
    return ckpt.tensors, ckpt.model_config, ckpt.kind


def export_timm_checkpoint(path: Path, out: Path) -> str:
    """`export_timm_folder` of the checkpoint at `path` (its class names from a fine-tuning run's config)."""
    check_output(out, "OUT", (path,))
    ckpt = read_checkpoint(path).require(*EXPORTABLE, use="export")
    classes = ckpt.config.task.classes if isinstance(ckpt.config, FinetuneConfig) else ()
    return export_timm_folder(ckpt.tensors, ckpt.model_config, out, classes=classes)


def export_timm_folder(
    state: Mapping[str, Tensor], shape: ModelConfig, out: Path, *, classes: tuple[str, ...] = ()
) -> str:
    """The folder `timm.create_model("local-dir:OUT", pretrained=True)` loads strictly (config.json and
    model.safetensors, see above); returns a line saying what it holds."""
    head, line = _timm_head(state)
    num_classes = head["head.weight"].shape[0] if "head.weight" in head else 0
    config = timm_config(state, shape, num_classes=num_classes, fc_norm="fc_norm.weight" in head)
    if num_classes and len(classes) == num_classes:
        config["label_names"] = list(classes)
    tensors = save(encoder_to_timm(state) | head, metadata=METADATA)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty folder named for it: replaced by the whole export
    with fs.atomic_folder(out) as tmp:  # all or nothing: a failed export leaves no half folder to block a rerun
        fs.write_bytes_atomic(tmp / "config.json", (json.dumps(config, indent=2) + "\n").encode())
        fs.write_bytes_atomic(tmp / "model.safetensors", tensors)
    return line


def _timm_head(state: Mapping[str, Tensor], rgb: str = "rgb") -> tuple[dict[str, Tensor], str]:
    """(the exported head's tensors, a line naming it): the classifier when timm's ViT computes it, else an
    identity `fc_norm` for a head timm makes (`num_classes=N`)."""
    head = classifier_to_timm(state)
    inputs = sorted({k.split(".")[1] for k in state if k.startswith("input_adapters.")})
    dim = state["global_tokens"].shape[-1]
    identity = _plain({"fc_norm.weight": torch.ones(dim), "fc_norm.bias": torch.zeros(dim)})
    if head and inputs == [rgb]:
        kind = "the linear probe's (BatchNorm folded into head)" if "fc_norm.weight" not in head else "fc_norm + head"
        return head, f"a timm classifier, {head['head.weight'].shape[0]} classes: mean of all tokens, {kind}"
    encoder = "the encoder (num_classes 0: create_model(..., num_classes=N) makes a new head)"
    if head:
        return identity, f"{encoder}; not its classifier, which reads {', '.join(inputs)} and a timm ViT reads {rgb}"
    return identity, encoder


def timm_config(state: Mapping[str, Tensor], shape: ModelConfig, *, num_classes: int, fc_norm: bool) -> dict:
    """config.json of a timm export: a ViT of this encoder's shape, the global tokens as class + register
    tokens, the mean of every token (`pool_include_prefix`), `fc_norm` when the head has a LayerNorm, no norm
    after the blocks; the classifier named `head`; the mean/std the model was trained with (ImageNet)."""
    from labelers.standards import IMAGENET_MEAN, IMAGENET_STD

    size, prefix = shape.image_size, state["global_tokens"].shape[1]
    head: dict[str, Any] = {"num_classes": num_classes, "global_pool": "avg"}
    model_args = {
        "img_size": size,
        "patch_size": shape.patch_size,
        "embed_dim": shape.dim,
        "depth": shape.depth,
        "num_heads": shape.heads,
        "mlp_ratio": float(shape.mlp_ratio),
        "class_token": prefix >= 1,
        "reg_tokens": max(prefix - 1, 0),
        "pool_include_prefix": True,
        "final_norm": fc_norm,  # with an avg pool, timm's final norm is fc_norm after the pool (none if False)
        "fc_norm": fc_norm,
        **head,
    }
    pretrained_cfg = {
        "input_size": [3, size, size],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "classifier": "head",
        "num_classes": num_classes,
    }
    return {
        "architecture": "vit_base_patch16_224",
        "num_features": shape.dim,
        **head,
        "model_args": model_args,
        "pretrained_cfg": pretrained_cfg,
    }


def _plain(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def export_official(state: Mapping[str, Tensor], out: Path) -> Path:
    """The official MultiMAE `.pth` layout: {"model": state_dict}, plain tensors (weights_only loadable)."""
    import io

    out = Path(out)
    check_output(out, "OUT")
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"model": {k: v.detach().cpu().contiguous() for k, v in state.items()}}, buf)
    fs.write_bytes_atomic(out, buf.getvalue())
    return out

"""Original-DPT-layout DPT-Hybrid checkpoints (Omnidata depth and normals) -> transformers DPT models.

The Omnidata depth weights MultiMAE labelled ImageNet with (`omnidata_rgb2depth_dpt_hybrid.pth`, and the v2
Lightning `.ckpt` whose keys carry a `model.` prefix) are state dicts of the reference DPT code
(github.com/isl-org/DPT, `DPTDepthModel(backbone="vitb_rn50_384", non_negative=True)`): a timm ViT-B/16 hybrid
(BiT ResNet-50 stem, StdConv + GroupNorm) under `pretrained.`, the reassemble/fusion neck and head under
`scratch.`. Omnidata's surface-normal checkpoints (`omnidata_rgb2normal_dpt_hybrid.pth`, v2
`omnidata_dpt_normal_v2.ckpt`) have the same layout with 3 output channels in the head's last conv
(`DPTDepthModel(..., num_channels=3)`); they load into `labelers.dpt_normal_model.DPTForSurfaceNormals`.
This module renames those keys to transformers' DPT-hybrid layout at load time, splits timm's
fused qkv, and loads strictly: any missing, unexpected or mis-shaped key is an error that lists them.

Key mapping (original -> transformers), after stripping any checkpoint prefix (P = pretrained.model):
    P.{cls_token,pos_embed}               -> dpt.embeddings.{cls_token,position_embeddings}
    P.patch_embed.proj                    -> dpt.embeddings.projection
    P.patch_embed.backbone.stem.conv|norm -> dpt.embeddings.backbone.bit.embedder.convolution|norm
    P.patch_embed.backbone.stages.S.blocks.B.*  -> dpt.embeddings.backbone.bit.encoder.stages.S.layers.B.*
    P.blocks.i.norm1|norm2                -> dpt.encoder.layer.i.layernorm_before|layernorm_after
    P.blocks.i.attn.qkv (fused q|k|v)     -> dpt.encoder.layer.i.attention.attention.query|key|value
    P.blocks.i.attn.proj                  -> dpt.encoder.layer.i.attention.output.dense
    P.blocks.i.mlp.fc1|fc2                -> dpt.encoder.layer.i.intermediate|output.dense
    P.norm                                -> dpt.layernorm
    P.head                                -> dropped (ImageNet classifier; DPT never runs it)
    pretrained.act_postprocess{3,4}.0.project.0 -> neck.reassemble_stage.readout_projects.{2,3}.0
    pretrained.act_postprocess{3,4}.3     -> neck.reassemble_stage.layers.{2,3}.projection
    pretrained.act_postprocess4.4         -> neck.reassemble_stage.layers.3.resize
    scratch.layer{1..4}_rn                -> neck.convs.{0..3}
    scratch.refinenet{4,3,2,1}            -> neck.fusion_stage.layers.{0,1,2,3}
        .out_conv | .resConfUnitU.convC   -> .projection | .residual_layerU.convolutionC
    scratch.output_conv.{0,2,4}           -> head.head.{0,2,4}
(act_postprocess{1,2} are parameter-free on a hybrid: the R50 stage-1/2 maps feed the neck directly.)
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import DPTConfig, DPTForDepthEstimation

StateDict = dict[str, torch.Tensor]
Source = str | Path | Mapping[str, torch.Tensor]

ANCHOR_KEY = "pretrained.model.cls_token"
HEAD_KEY = "scratch.output_conv.4.weight"  # (out_channels, 32, 1, 1): 1 for depth, 3 for surface normals
IGNORED_KEYS = frozenset({"pretrained.model.head.weight", "pretrained.model.head.bias"})
_QKV = re.compile(r"pretrained\.model\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)")
_LIST_LIMIT = 20


class CheckpointLayoutError(ValueError):
    """The checkpoint is not (only) a DPT-Hybrid state dict in the original DPT layout."""


def dpt_hybrid_config(out_channels: int = 1) -> DPTConfig:
    """DPT-Hybrid as the original `vitb_rn50_384` builds it: ViT-B/16 on a BiT R50 stem, features 256;
    `out_channels` maps from the head (1 = depth; more are read by `DPTForSurfaceNormals`)."""
    from transformers import DPTConfig

    return DPTConfig(
        num_output_channels=out_channels,
        is_hybrid=True,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",  # exact GELU, as timm's Mlp and DPT's ProjectReadout
        layer_norm_eps=1e-6,  # timm ViT; transformers' own hybrid conversion keeps the 1e-12 default
        qkv_bias=True,
        image_size=384,  # the 24 x 24 position grid; other sizes interpolate it (labelers.dpt.dpt_forward)
        patch_size=16,
        backbone_out_indices=[2, 5, 8, 11],  # only 8 and 11 are read: DPT's hooks [0, 1, 8, 11] on a hybrid
        backbone_featmap_shape=[1, 1024, 24, 24],
        readout_type="project",
        reassemble_factors=[1, 1, 1, 0.5],
        neck_hidden_sizes=[256, 512, 768, 768],
        fusion_hidden_size=256,
        head_in_index=-1,
        use_batch_norm_in_fusion_residual=False,
        use_bias_in_fusion_residual=True,
        add_projection=False,
        backbone_config={
            "model_type": "bit",
            "global_padding": "same",
            "layer_type": "bottleneck",
            "depths": [3, 4, 9],
            "out_features": ["stage1", "stage2", "stage3"],
            "embedding_dynamic_padding": True,
        },
    )


_M = r"pretrained\.model\."
_BIT = "dpt.embeddings.backbone.bit"
_LAYER = r"dpt.encoder.layer.\1"
# (pattern on the prefix-free original key, template for Match.expand). Loose on purpose where names carry
# over: every result is checked against the model's own keys and shapes before loading.
_RULE_TEXT: tuple[tuple[str, str], ...] = (
    (_M + r"cls_token", "dpt.embeddings.cls_token"),
    (_M + r"pos_embed", "dpt.embeddings.position_embeddings"),
    (_M + r"patch_embed\.proj\.(\w+)", r"dpt.embeddings.projection.\1"),
    (_M + r"patch_embed\.backbone\.stem\.conv\.(\w+)", _BIT + r".embedder.convolution.\1"),
    (_M + r"patch_embed\.backbone\.stem\.norm\.(\w+)", _BIT + r".embedder.norm.\1"),
    (
        _M + r"patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.(.+)",
        _BIT + r".encoder.stages.\1.layers.\2.\3",
    ),
    (_M + r"blocks\.(\d+)\.norm1\.(\w+)", _LAYER + r".layernorm_before.\2"),
    (_M + r"blocks\.(\d+)\.norm2\.(\w+)", _LAYER + r".layernorm_after.\2"),
    (_M + r"blocks\.(\d+)\.attn\.proj\.(\w+)", _LAYER + r".attention.output.dense.\2"),
    (_M + r"blocks\.(\d+)\.mlp\.fc1\.(\w+)", _LAYER + r".intermediate.dense.\2"),
    (_M + r"blocks\.(\d+)\.mlp\.fc2\.(\w+)", _LAYER + r".output.dense.\2"),
    (_M + r"norm\.(\w+)", r"dpt.layernorm.\1"),
    (r"pretrained\.act_postprocess3\.0\.project\.0\.(\w+)", r"neck.reassemble_stage.readout_projects.2.0.\1"),
    (r"pretrained\.act_postprocess4\.0\.project\.0\.(\w+)", r"neck.reassemble_stage.readout_projects.3.0.\1"),
    (r"pretrained\.act_postprocess3\.3\.(\w+)", r"neck.reassemble_stage.layers.2.projection.\1"),
    (r"pretrained\.act_postprocess4\.3\.(\w+)", r"neck.reassemble_stage.layers.3.projection.\1"),
    (r"pretrained\.act_postprocess4\.4\.(\w+)", r"neck.reassemble_stage.layers.3.resize.\1"),
    *((rf"scratch\.layer{n}_rn\.weight", f"neck.convs.{n - 1}.weight") for n in range(1, 5)),
    # DPT fuses deepest first (refinenet4); transformers counts its fusion layers in that order
    *(
        (rf"scratch\.refinenet{n}\.out_conv\.(\w+)", rf"neck.fusion_stage.layers.{4 - n}.projection.\1")
        for n in range(1, 5)
    ),
    *(
        (
            rf"scratch\.refinenet{n}\.resConfUnit([12])\.conv([12])\.(\w+)",
            rf"neck.fusion_stage.layers.{4 - n}.residual_layer\1.convolution\2.\3",
        )
        for n in range(1, 5)
    ),
    (r"scratch\.output_conv\.([024])\.(\w+)", r"head.head.\1.\2"),
)
_RULES = tuple((re.compile(pattern), template) for pattern, template in _RULE_TEXT)


def rename_key(key: str) -> str | None:
    """The transformers name of one original (prefix-free, non-qkv) key, or None if no rule knows it."""
    for pattern, template in _RULES:
        m = pattern.fullmatch(key)
        if m:
            return m.expand(template)
    return None


def _split_qkv(block: str, kind: str, tensor: torch.Tensor) -> StateDict:
    """timm's fused qkv (rows q | k | v) -> transformers' separate query / key / value projections."""
    q, k, v = tensor.chunk(3, dim=0)
    base = f"dpt.encoder.layer.{block}.attention.attention"
    return {
        f"{base}.{name}.{kind}": part.clone() for name, part in zip(("query", "key", "value"), (q, k, v), strict=True)
    }


def convert_state_dict(original: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """(transformers state dict, original keys no rule knows). Prefix-free keys in; IGNORED_KEYS dropped."""
    converted: StateDict = {}
    unknown: list[str] = []
    for key, tensor in original.items():
        if key in IGNORED_KEYS:
            continue
        qkv = _QKV.fullmatch(key)
        if qkv:
            converted.update(_split_qkv(qkv[1], qkv[2], tensor))
            continue
        new = rename_key(key)
        if new is None:
            unknown.append(key)
        else:
            converted[new] = tensor
    return converted, unknown


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: object, source: str) -> Mapping[str, torch.Tensor]:
    """The tensor dict inside a plain state dict, a Lightning checkpoint (`state_dict`) or a `model` entry."""
    if _is_state_dict(obj):
        return obj  # type: ignore[return-value]
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if _is_state_dict(obj.get(wrapper)):
                return obj[wrapper]  # type: ignore[no-any-return]
        keys = sorted(map(str, obj))[:_LIST_LIMIT]
        raise CheckpointLayoutError(f"{source}: no tensor state dict found (top-level keys: {keys})")
    raise CheckpointLayoutError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")


def strip_prefix(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> StateDict:
    """Remove the prefix (e.g. Lightning's `model.`, DDP's `module.`) found in front of `pretrained.model.`.

    Keys without that prefix are kept unchanged, so strict loading reports them as unexpected.
    """
    anchors = [k for k in state if k.endswith(ANCHOR_KEY)]
    if len(anchors) != 1:
        raise CheckpointLayoutError(
            f"{source}: not a DPT-Hybrid state dict in the original DPT layout: expected exactly one key "
            f"ending in {ANCHOR_KEY!r}, found {anchors[:_LIST_LIMIT]}"
        )
    prefix = anchors[0][: -len(ANCHOR_KEY)]
    return {(k[len(prefix) :] if prefix and k.startswith(prefix) else k): v for k, v in state.items()}


def read_original_state_dict(path: str | Path) -> StateDict:
    """Prefix-free tensors of an original-layout checkpoint: `.pth`/`.pt`, Lightning `.ckpt`, `.safetensors`.

    Pickled checkpoints are read with `torch.load(weights_only=True)` only: a file holding other Python
    objects (e.g. hyper-parameters as custom classes) is refused, never unpickled.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"DPT-Hybrid checkpoint not found: {path}")
    obj = _load_file(path)
    return strip_prefix(_unwrap(obj, str(path)), str(path))


def _load_file(path: Path) -> object:
    """What a `.safetensors` or `torch.save` file holds; a file that is neither, truncated or holding other
    Python objects is a one-line CheckpointLayoutError (torch's own messages run to paragraphs)."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as err:
        raise CheckpointLayoutError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not head:
        raise CheckpointLayoutError(f"{path}: the file is empty")
    if path.suffix != ".safetensors" and not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save: zip or pickle
        raise CheckpointLayoutError(f"{path}: not a PyTorch file (torch.save) nor .safetensors")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise CheckpointLayoutError(f"{path}: truncated or not a checkpoint ({_first_line(err)})") from None
        raise CheckpointLayoutError(
            f"{path}: holds Python objects beyond tensors and plain containers, and is only read with "
            f"torch.load(weights_only=True). Where you trust the file, re-save its state dict alone: "
            f"torch.save(ckpt['state_dict'], 'weights.pth')"
        ) from None
    except OSError as err:
        raise CheckpointLayoutError(f"{path}: cannot be read ({err.strerror or err})") from None
    except Exception as err:  # a truncated zip, a broken pickle or safetensors header: many kinds
        raise CheckpointLayoutError(f"{path}: truncated or not a checkpoint ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    """The first sentence of a library's message, on one line."""
    text = re.split(r"(?<=[a-z0-9)])\. ", " ".join(str(err).split()), maxsplit=1)[0] or "no message"
    return f"{type(err).__name__}: {text[:200]}"


def _listing(title: str, keys: list[str]) -> str:
    more = f", ... (+{len(keys) - _LIST_LIMIT})" if len(keys) > _LIST_LIMIT else ""
    return f"{len(keys)} {title}: {', '.join(keys[:_LIST_LIMIT])}{more}"


def check_layout(
    converted: Mapping[str, torch.Tensor], unknown: list[str], expected: Mapping[str, torch.Tensor]
) -> None:
    """Raise CheckpointLayoutError listing missing, unexpected and mis-shaped keys (strict loading)."""
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(unknown + [k for k in converted if k not in expected])
    shapes = sorted(
        f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
        for k, v in converted.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    )
    found = (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes))
    problems = "; ".join(_listing(title, keys) for title, keys in found if keys)
    if problems:
        raise CheckpointLayoutError(f"DPT-Hybrid checkpoint does not match the original layout: {problems}")


def dpt_model_class(out_channels: int) -> type[DPTForDepthEstimation]:
    """transformers' depth DPT for one output map, `DPTForSurfaceNormals` for several."""
    if out_channels == 1:
        from transformers import DPTForDepthEstimation

        return DPTForDepthEstimation
    from labelers.dpt_normal_model import DPTForSurfaceNormals

    return DPTForSurfaceNormals  # type: ignore[no-any-return]


def head_channels(state: Mapping[str, torch.Tensor]) -> int:
    """Output maps of an original-layout checkpoint, read off its head's last conv (1 where it has none:
    strict loading then lists the key as missing)."""
    head = state.get(HEAD_KEY)
    return int(head.shape[0]) if head is not None and head.ndim == 4 else 1


def _empty_model(out_channels: int) -> DPTForDepthEstimation:
    """The architecture on the meta device: no time spent on a random init that loading overwrites."""
    with torch.device("meta"):
        return dpt_model_class(out_channels)(dpt_hybrid_config(out_channels))


def _materialized(model: DPTForDepthEstimation) -> DPTForDepthEstimation:
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"DPT-Hybrid: tensors the checkpoint does not provide stayed empty: {left[:_LIST_LIMIT]}")
    return model


def load_dpt_hybrid_original(source: Source, out_channels: int | None = None) -> DPTForDepthEstimation:
    """An eval-mode fp32 DPT from an original-layout DPT-Hybrid checkpoint (path or dict).

    `out_channels`: the maps the caller needs (1 = depth, 3 = normals); a checkpoint with another head is a
    shape mismatch. None takes the checkpoint's own (`head_channels`).
    Raises CheckpointLayoutError listing every missing / unexpected / mis-shaped key; nothing is guessed.
    A dict given in is copied, never shared with the model.
    """
    if isinstance(source, Mapping):
        state = strip_prefix(_unwrap(source, "state dict"), "state dict")
    else:
        state = read_original_state_dict(source)
    converted, unknown = convert_state_dict(state)
    model = _empty_model(out_channels if out_channels is not None else head_channels(state))
    check_layout(converted, unknown, model.state_dict())
    copy = isinstance(source, Mapping)
    tensors = {k: v.detach().to(torch.float32, copy=copy).contiguous() for k, v in converted.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return _materialized(model).eval()


def convert_weights(src: Source, dst: str | Path) -> Path:
    """`mmforge convert-weights SRC DST`: write an original-layout checkpoint as a transformers folder.

    DST (must not exist) gets config.json + model.safetensors (load a depth network with
    `DPTForDepthEstimation.from_pretrained(DST)`, a normal network with `DPTForSurfaceNormals`; run either
    with `labelers.dpt.dpt_forward` for sizes other than 384 x 384, which transformers' own forward refuses
    for hybrids) and a preprocessor config with Omnidata's input normalisation ([-1, 1] for depth, [0, 1]
    for normals). Written to a temporary sibling folder and renamed, so DST is complete or absent.
    """
    from transformers import DPTImageProcessor

    dst = Path(dst).expanduser()
    if dst.exists():
        raise FileExistsError(f"{dst} exists; convert-weights writes a new folder")
    model = load_dpt_hybrid_original(src)
    tail = f".tmp-{os.getpid()}"  # a legal temp name beside a DST whose name is long but legal (255 bytes)
    tmp = dst.with_name(f".{os.fsencode(dst.name)[: 254 - len(tail)].decode('utf-8', 'ignore')}{tail}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    mean, std = ([0.5] * 3, [0.5] * 3) if model.config.num_output_channels == 1 else ([0.0] * 3, [1.0] * 3)
    processor = DPTImageProcessor(
        size={"height": 384, "width": 384},
        keep_aspect_ratio=True,
        ensure_multiple_of=32,
        image_mean=mean,
        image_std=std,
    )
    processor.save_pretrained(tmp)
    tmp.rename(dst)
    return dst

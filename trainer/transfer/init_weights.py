"""Initialising a fine-tuning model: from our pretraining checkpoint, an official MultiMAE checkpoint (same
layout), a timm export (`mmforge export --format timm`, or its safetensors file), or random (the baseline).

What is done to the weights, every step reported in `InitReport`:
- the pretraining decoders (`output_adapters.*`) and input adapters of modalities this run does not read are
  dropped; the fine-tuning head is new (random);
- position embeddings are resized bicubically to this run's token grid (e.g. 14 x 14 at 224 px -> 32 x 32
  at 512 px);
- a class-map input's class embedding is padded with zero rows when this run has more classes (e.g. one
  more for an ignore class), and refused when it has fewer;
- an input this run reads that the checkpoint has no adapter for starts random (and is listed);
- a kept tensor holding NaN or inf is refused (a fine-tune from it would skip every step and still "succeed").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.engine.checkpoint import read_checkpoint
from trainer.errors import CheckpointError
from trainer.transfer.model import MultiViT

KEEP = ("global_tokens", "input_adapters.", "encoder.")


@dataclass(kw_only=True)
class InitReport:
    source: str
    kind: str  # random | checkpoint | timm
    loaded: int = 0
    dropped: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # parameters that start random
    resized: list[str] = field(default_factory=list)
    padded: list[str] = field(default_factory=list)

    def text(self) -> str:
        if self.kind == "random":
            return "initialised at random (no --init)"
        parts = [f"initialised from {self.source} ({self.kind}): {self.loaded} tensors"]
        if self.resized:
            parts.append(f"position embeddings resized: {', '.join(self.resized)}")
        if self.padded:
            parts.append(f"class embeddings padded: {', '.join(self.padded)}")
        parts.append(f"{len(self.dropped)} dropped (pretraining decoders, unused inputs)")
        parts.append(f"{len(self.new)} new (the head{', inputs without weights' if _has_inputs(self.new) else ''})")
        return "; ".join(parts)


def _has_inputs(names: list[str]) -> bool:
    return any(n.startswith("input_adapters.") for n in names)


def timm_to_multimae(state: dict[str, Tensor], rgb: str = "rgb") -> dict[str, Tensor]:
    """timm ViT keys (an export of ours) -> MultiMAE encoder keys (the inverse of `export.encoder_to_timm`);
    a missing tensor is a KeyError, one of the wrong rank or size a ValueError."""
    _check_ranks(state)
    prefix = f"input_adapters.{rgb}."
    prefix_tokens = [state[k] for k in ("cls_token", "reg_token") if k in state]  # timm's prefix = our global tokens
    tokens = torch.cat(prefix_tokens, dim=1) if prefix_tokens else state["pos_embed"][:, :0]  # (1, G, D)
    pos = state["pos_embed"][:, tokens.shape[1] :]  # (1, h*w, D), the prefix tokens' rows dropped
    side = int(pos.shape[1] ** 0.5)
    if side == 0 or side * side != pos.shape[1]:
        raise ValueError(
            f"pos_embed has {pos.shape[1]} patch rows after {tokens.shape[1]} prefix rows: not a square grid"
        )
    out = {
        "global_tokens": tokens,
        prefix + "pos_emb": pos.transpose(1, 2).reshape(1, -1, side, side),
        prefix + "proj.weight": state["patch_embed.proj.weight"],
        prefix + "proj.bias": state["patch_embed.proj.bias"],
    }
    out.update({"encoder." + k.removeprefix("blocks."): v for k, v in state.items() if k.startswith("blocks.")})
    return out


_TIMM_RANKS = {"pos_embed": 3, "cls_token": 3, "reg_token": 3, "patch_embed.proj.weight": 4, "patch_embed.proj.bias": 1}


def _check_ranks(state: dict[str, Tensor]) -> None:
    """Each tensor `timm_to_multimae` slices has timm's rank and one batch row (a forged file may not)."""
    for name, rank in _TIMM_RANKS.items():
        value = state.get(name)
        if value is None:
            continue
        if value.dim() != rank or (rank == 3 and value.shape[0] != 1):
            raise ValueError(f"{name} has shape {tuple(value.shape)}, timm's has {rank} dimensions")


def read_weights(path: Path) -> tuple[dict[str, Tensor], str]:
    """(state dict in MultiMAE names, "checkpoint" or "timm") from a checkpoint of any kind."""
    ckpt = read_checkpoint(path)
    if ckpt.kind != "timm-export":
        return ckpt.tensors, "checkpoint"
    try:
        return timm_to_multimae(ckpt.tensors), "timm"
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path} is not a timm ViT export of this project: {err}") from None


def adapt(state: dict[str, Tensor], model: MultiViT, report: InitReport) -> dict[str, Tensor]:
    """Keep the encoder's tensors, fit position and class embeddings to `model`, record the rest."""
    target = model.state_dict()
    out = {}
    for name, value in state.items():
        if not name.startswith(KEEP) or name not in target:
            report.dropped.append(name)
            continue
        want = target[name]
        if name.endswith("pos_emb") and value.shape != want.shape and value.dim() == want.dim() == 4:
            value = F.interpolate(value.float(), size=want.shape[-2:], mode="bicubic", align_corners=False)
            report.resized.append(f"{name} {tuple(state[name].shape[-2:])} -> {tuple(want.shape[-2:])}")
        elif name.endswith("class_emb.weight") and value.shape != want.shape and value.dim() == want.dim():
            if value.shape[0] > want.shape[0] or value.shape[1] != want.shape[1]:
                raise CheckpointError(f"{name}: the checkpoint has {value.shape[0]} classes, this run {want.shape[0]}")
            value = torch.cat([value, value.new_zeros(want.shape[0] - value.shape[0], value.shape[1])])
            report.padded.append(f"{name} {state[name].shape[0]} -> {want.shape[0]} rows")
        if value.shape != want.shape:
            raise CheckpointError(f"{name}: shape {tuple(value.shape)} in the checkpoint, {tuple(want.shape)} here")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{report.source}: {name} holds {bad} non-finite values (NaN or inf); every step from these weights "
                "would be skipped as non-finite"
            )
        out[name] = value.to(want.dtype)
    return out


def initialise(model: MultiViT, source: Path | None) -> InitReport:
    """Load `source` into `model` as described above; only the documented keys may differ."""
    if source is None:
        return InitReport(source="", kind="random", new=sorted(model.state_dict()))
    state, kind = read_weights(Path(source))
    report = InitReport(source=str(source), kind=kind)
    fitted = adapt(state, model, report)
    missing, unexpected = model.load_state_dict(fitted, strict=False)
    if unexpected:
        raise CheckpointError(f"unexpected tensors after adapting {source}: {unexpected[:5]}")
    wrong = [k for k in missing if not k.startswith(("output_adapters.", "input_adapters."))]
    if wrong:
        raise CheckpointError(f"{source} lacks encoder tensors of this model: {wrong[:5]} (another size?)")
    report.loaded, report.new = len(fitted), sorted(missing)
    return report

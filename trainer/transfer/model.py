"""The fine-tuning model: the pretraining encoder (`trainer.model.encoder.MultiModalEncoder`, the class MultiMAE
builds on) without masking, plus one task head (as the official MultiViT).

Reads top to bottom: `build_head` -> `MultiViT`: every token of every chosen input (plus the global token, last)
-> the encoder blocks (with stochastic depth) -> the head: `cls` (mean of all tokens, LayerNorm, Linear),
`semseg` (ConvNeXt head on the main input's tokens), `depth` (DPT head on the main input's tokens after the
hooked blocks), or the linear probe (BatchNorm without affine + Linear on the mean token, the encoder frozen).
The state dict has the official names: `global_tokens`, `input_adapters.*`, `output_adapters.<task>.*`,
`encoder.N.*`.

`FinetuneObjective` wraps it for the shared loop: batch -> (loss, {task: loss}), the loss as the paper's
recipes (soft-target cross-entropy under mixup / cutmix, else label smoothing; cross-entropy with the ignore
id; berHu on valid depth).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.model.encoder import MultiModalEncoder
from trainer.model.modalities import MODALITIES
from trainer.transfer.config import FinetuneConfig
from trainer.transfer.heads import ConvNeXtHead, DPTHead, LinearHead, berhu


class ProbeHead(nn.Module):
    """Linear probe as MAE: BatchNorm1d without affine on the mean token, then Linear."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.bn(tokens.mean(dim=1)))


def build_head(cfg: FinetuneConfig, classes: int) -> nn.Module:
    """The task's head: the linear probe, `cls` (LinearHead), `semseg` (ConvNeXtHead) or `depth` (DPTHead)."""
    m, t = cfg.model, cfg.task
    if t.probe:
        return ProbeHead(m.dim, classes)
    if t.name == "cls":
        return LinearHead(m.dim, classes)
    if t.name == "semseg":
        return ConvNeXtHead(
            m.dim, classes, embed_dim=t.head_embed_dim, preds_per_patch=t.preds_per_patch, depth=t.head_depth
        )
    return DPTHead(m.dim, hooks=t.hooks, layer_dims=t.layer_dims, features=t.features)


class MultiViT(MultiModalEncoder):
    def __init__(self, cfg: FinetuneConfig, num_classes: int) -> None:
        task = cfg.task
        super().__init__(
            cfg.model,
            lambda: nn.ModuleDict({task.name: build_head(cfg, num_classes)}),
            drop_path=0.0 if task.probe else task.drop_path,
        )
        self.cfg, self.num_classes = cfg, num_classes
        if task.probe:
            for name, p in self.named_parameters():
                p.requires_grad_(name.startswith("output_adapters."))

    @property
    def head(self) -> nn.Module:
        return self.output_adapters[self.cfg.task.name]

    def train(self, mode: bool = True) -> MultiViT:
        super().train(mode)
        if self.cfg.task.probe:  # a probe never changes its encoder, dropout and norm statistics included
            for name, module in self.named_children():
                if name != "output_adapters":
                    module.eval()
        return self

    def forward_encoder(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, list[Tensor], dict[str, slice]]:
        """inputs -> (tokens after the last block (B, N + G, D), outputs of the hooked blocks, token spans)."""
        hooks = self.cfg.task.hooks if self.cfg.task.name == "depth" else ()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.task.probe):
            tokens, spans = self.tokenize({n: inputs[n] for n in self.cfg.model.inputs})  # every token, no mask
            x, hooked = self.encode(tokens, hooks)
        return x, hooked, spans

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """inputs: modality -> (B, C, H, W) or (B, h, w) ids. Returns logits (B, K), (B, K, H, W) or (B, 1, H, W)."""
        m, t = self.cfg.model, self.cfg.task
        x, hooked, spans = self.forward_encoder(inputs)
        if t.name == "cls":
            return self.head(x)
        main = inputs[t.main_input]
        grid = (main.shape[-2] * MODALITIES[t.main_input].stride // m.patch_size,) * 2
        size = (main.shape[-2] * MODALITIES[t.main_input].stride, main.shape[-1] * MODALITIES[t.main_input].stride)
        own = spans[t.main_input]
        if t.name == "semseg":
            return self.head(x[:, own], grid, size)
        return self.head([h[:, own] for h in hooked], grid)


class FinetuneObjective(nn.Module):
    """batch -> (loss, {task: loss}) for the shared loop; `mixup` (timm's Mixup) is applied to cls batches."""

    def __init__(self, model: MultiViT, mixup: Any = None) -> None:
        super().__init__()
        self.model, self.mixup = model, mixup

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        t = self.model.cfg.task
        inputs = {n: batch[n] for n in self.model.cfg.model.inputs}
        target = batch[t.target]
        if t.name == "cls" and self.mixup is not None and self.model.training:
            inputs, soft = self._mix(inputs, target)
            loss = torch.sum(-soft * F.log_softmax(self.model(inputs).float(), dim=-1), dim=-1).mean()
        elif t.name == "cls":
            smoothing = t.label_smoothing if self.model.training else 0.0
            loss = F.cross_entropy(self.model(inputs).float(), target, label_smoothing=smoothing)
        elif t.name == "semseg":
            loss = F.cross_entropy(self.model(inputs).float(), target, ignore_index=t.ignore_id)
        else:
            pred = self.model(inputs).float()[:, 0]
            loss = berhu(pred, target, target > 0)
        return loss, {t.name: loss.detach()}

    def _mix(self, inputs: dict[str, Tensor], target: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """timm's Mixup on rgb; the same permutation and box on every other input (RGB-D stays aligned)."""
        names = list(inputs)
        stacked = torch.cat(
            [inputs[n].float() if inputs[n].ndim == 4 else inputs[n][:, None].float() for n in names], 1
        )
        mixed, soft = self.mixup(stacked, target)
        out, start = {}, 0
        for n in names:
            c = inputs[n].shape[1] if inputs[n].ndim == 4 else 1
            piece = mixed[:, start : start + c]
            out[n] = piece if inputs[n].ndim == 4 else piece[:, 0].round().long()
            start += c
        return out, soft


def make_mixup(cfg: FinetuneConfig, num_classes: int) -> Any:
    """timm's Mixup with the recipe's mixup / cutmix alphas and label smoothing (None when both are 0)."""
    t = cfg.task
    if t.name != "cls" or (t.mixup <= 0 and t.cutmix <= 0):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, label_smoothing=t.label_smoothing, num_classes=num_classes)


def predict(model: MultiViT, batch: Mapping[str, Tensor]) -> Tensor:
    """Evaluation forward (no grad): logits, class maps' logits, or depth (B, H, W)."""
    with torch.no_grad():
        out = model({n: batch[n] for n in model.cfg.model.inputs}).float()
    return out[:, 0] if model.cfg.task.name == "depth" else out

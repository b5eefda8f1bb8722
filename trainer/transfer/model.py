"""The fine-tuning model: the pretraining encoder (`trainer.model.encoder.MultiModalEncoder`, the class MultiMAE
builds on) without masking, plus one task head (as the official MultiViT).

Reads top to bottom: `MultiViT`: every token of every chosen input (plus the global token, last) -> the
encoder blocks (with stochastic depth; the outputs of the hooked blocks kept for tasks that read them) -> the
task's head, built and read as its registry entry says (`trainer.transfer.tasks`: `cls` mean-pools all tokens,
`semseg` and `depth` read the tokens of `task.read_inputs`), or the task's linear probe with the encoder frozen.
The state dict has the official names: `global_tokens`, `input_adapters.*`, `output_adapters.<task>.*`,
`encoder.N.*`.

A dense head reads one input's tokens (`task.main_input`, the default) or several inputs' concatenated on
channels (`task.readout = ["rgb", "depth"]`, the official `main_tasks`): the read inputs are tokenized first,
in that order, so their tokens are one span (`MainInput.span`), which the head lays side by side
(`heads.concat_inputs`); the head is built for tokens k x `model.dim` wide (`head_shape`). The encoder treats
its tokens as a set (no mask, position embeddings added per input, global tokens last), so this order changes
no token's value. Every read input has the same token grid, rows and columns each from its own side.

`FinetuneObjective` wraps it for the shared loop: batch -> (loss, {task: loss}), the task's loss (the paper's
recipes: cross-entropy with label smoothing, or the ignore id; berHu on valid depth), or the soft-target
cross-entropy under mixup / cutmix for tasks whose batches may be mixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.model.encoder import MultiModalEncoder
from trainer.model.modalities import MODALITIES
from trainer.transfer.config import FinetuneConfig
from trainer.transfer.tasks import Encoded, MainInput, transfer_task


def build_head(cfg: FinetuneConfig, classes: int) -> nn.Module:
    """The task's head, or its linear probe's (the config refuses a probe of a task without one)."""
    spec = transfer_task(cfg.task.name)
    factory = spec.probe if cfg.task.probe else spec.head
    if factory is None:
        raise ValueError(f"the {spec.name} task has no linear probe")
    return factory(head_shape(cfg), classes)


def head_shape(cfg: FinetuneConfig) -> FinetuneConfig:
    """The config a head is built from: a dense head reading k inputs concatenated on channels reads tokens
    k x `model.dim` wide, and is built as for an encoder that wide (the official adapters do the same)."""
    k = len(cfg.task.read_inputs) if transfer_task(cfg.task.name).reads_main_input else 1
    return cfg if k == 1 else replace(cfg, model=replace(cfg.model, dim=k * cfg.model.dim))


class MultiViT(MultiModalEncoder):
    def __init__(self, cfg: FinetuneConfig, num_classes: int) -> None:
        task = cfg.task
        super().__init__(
            cfg.model,
            lambda: nn.ModuleDict({task.name: build_head(cfg, num_classes)}),
            drop_path=0.0 if task.frozen else task.drop_path,
        )
        self.cfg, self.num_classes, self.spec = cfg, num_classes, transfer_task(task.name)
        if task.frozen:
            for name, p in self.named_parameters():
                p.requires_grad_(name.startswith("output_adapters."))

    @property
    def head(self) -> nn.Module:
        return self.output_adapters[self.cfg.task.name]

    def train(self, mode: bool = True) -> MultiViT:
        super().train(mode)
        if self.cfg.task.frozen:  # a frozen encoder never changes, dropout and norm statistics included
            for name, module in self.named_children():
                if name != "output_adapters":
                    module.eval()
        return self

    def forward_encoder(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, list[Tensor], dict[str, slice]]:
        """inputs -> (tokens after the last block (B, N + G, D), outputs of the hooked blocks, token spans)."""
        hooks = self.cfg.task.hooks if self.spec.hooked else ()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.task.frozen):
            tokens, spans = self.tokenize({n: inputs[n] for n in self.token_order})  # every token, no mask
            x, hooked = self.encode(tokens, hooks)
        return x, hooked, spans

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """inputs: modality -> (B, C, H, W) or (B, h, w) ids. Returns the head's output: logits (B, K),
        (B, K, H, W) or a (B, 1, H, W) map for the built-in tasks."""
        x, hooked, spans = self.forward_encoder(inputs)
        main = self._main_input(inputs, spans) if self.spec.reads_main_input else None
        return self.spec.readout(self.head, Encoded(tokens=x, hooked=hooked, main=main))

    @property
    def token_order(self) -> tuple[str, ...]:
        """The inputs in the order they are tokenized: a dense head's read inputs first (one span), then the rest."""
        read = self.cfg.task.read_inputs if self.spec.reads_main_input else ()
        return (*read, *(n for n in self.cfg.model.inputs if n not in read))

    def _main_input(self, inputs: Mapping[str, Tensor], spans: Mapping[str, slice]) -> MainInput:
        """The read inputs' span of tokens, their (common) token grid and the image size in pixels."""
        read = self.cfg.task.read_inputs
        sizes = {n: _pixel_size(inputs[n], MODALITIES[n].stride) for n in read}
        grids = {n: (h // self.cfg.model.patch_size, w // self.cfg.model.patch_size) for n, (h, w) in sizes.items()}
        if len(set(grids.values())) > 1:
            raise ValueError(f"the inputs a head reads concatenated need one token grid, got {grids}")
        span = slice(spans[read[0]].start, spans[read[-1]].stop)
        return MainInput(span=span, grid=grids[read[0]], size=sizes[read[0]])


def _pixel_size(x: Tensor, stride: int) -> tuple[int, int]:
    """An input's size in image pixels: (B, C, H, W) or (B, h, w) ids at 1 / stride."""
    return x.shape[-2] * stride, x.shape[-1] * stride


class FinetuneObjective(nn.Module):
    """batch -> (loss, {task: loss}) for the shared loop; `mixup` (timm's Mixup, made only for tasks whose
    batches may be mixed) is applied in training."""

    def __init__(self, model: MultiViT, mixup: Any = None) -> None:
        super().__init__()
        self.model, self.mixup = model, mixup

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        t, spec = self.model.cfg.task, self.model.spec
        inputs = {n: batch[n] for n in self.model.cfg.model.inputs}
        target = batch[spec.target]
        if self.mixup is not None and self.model.training:
            inputs, soft = self._mix(inputs, target)
            loss = torch.sum(-soft * F.log_softmax(self.model(inputs).float(), dim=-1), dim=-1).mean()
        else:
            loss = spec.loss(self.model(inputs).float(), target, t, self.model.training)
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
    """timm's Mixup with the recipe's mixup / cutmix alphas and label smoothing (None when both are 0, or when
    the task's batches are not mixed)."""
    t = cfg.task
    if not transfer_task(t.name).mixup or (t.mixup <= 0 and t.cutmix <= 0):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, label_smoothing=t.label_smoothing, num_classes=num_classes)


def predict(model: MultiViT, batch: Mapping[str, Tensor]) -> Tensor:
    """Evaluation forward (no grad) -> what the task's metrics score: logits (B, K), classes (B, H, W) or
    depth (B, H, W) for the built-in tasks."""
    with torch.no_grad():
        out = model({n: batch[n] for n in model.cfg.model.inputs}).float()
    return model.spec.predict(out)

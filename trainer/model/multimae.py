"""MultiMAE: multi-modal multi-task masked autoencoder (Bachmann et al., ECCV 2022), pretraining model.

Reads top to bottom: tokenize inputs (`MultiModalEncoder.tokenize`) -> draw or accept masks -> forward_encoder
on the visible tokens plus the global token -> forward_decoder, one cross-attention decoder per output ->
forward_loss on masked patches. The encoder (global tokens, input adapters, blocks) is the one fine-tuning
uses (`trainer.model.encoder`); this file adds the decoders. The state dict matches the official release
(`global_tokens`, `input_adapters.*`, `output_adapters.*`, `encoder.N.*`); modalities come from
`trainer.model.modalities`, never named here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from trainer.config import ModelConfig
from trainer.model.adapters import SpatialOutputAdapter, gather_tokens
from trainer.model.encoder import MultiModalEncoder
from trainer.model.masking import draw_masks, keep_and_restore
from trainer.model.modalities import MODALITIES, TASKS


def output_adapter(cfg: ModelConfig, task_name: str) -> SpatialOutputAdapter:
    """The cross-attention decoder of one task, predicting its source modality's pixels or classes."""
    task = TASKS[task_name]
    source = MODALITIES[task.source]
    return SpatialOutputAdapter(
        channels=source.out_channels(cfg),
        patch=cfg.patch_size // source.stride,
        grid=cfg.image_size // cfg.patch_size,
        dim_enc=cfg.dim,
        dim=cfg.decoder_dim,
        depth=cfg.decoder_depth,
        heads=cfg.decoder_heads,
        context=cfg.inputs,
        query_from=task.source,
        mlp_ratio=cfg.mlp_ratio,
    )


class MultiMAE(MultiModalEncoder):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(
            cfg,
            lambda: nn.ModuleDict({n: output_adapter(cfg, n) for n in cfg.outputs}),  # the decoders
            init_outputs=True,  # the decoders' linears and norms initialised as the encoder's (as released)
        )
        self.cfg = cfg
        for name, p in self.output_adapters.named_parameters():
            if name.endswith("mask_token") or ".task_embeddings." in name:
                nn.init.trunc_normal_(p, std=0.02)

    def forward(
        self,
        inputs: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        num_visible: int | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """inputs: modality -> (B, C, H, W) image or (B, h, w) class ids. Returns (predictions, masks).

        masks: optional modality -> (B, N) with 1 = masked; drawn from Dirichlet budgets when absent.
        """
        tokens, spans = self.tokenize(inputs)  # (B, N_all, D), modality -> its tokens' slice
        layout = [(n, s.stop - s.start) for n, s in spans.items()]  # token order of the encoder input
        visible = None
        if masks is None:
            b, device = tokens.shape[0], self.global_tokens.device
            visible = num_visible or self.cfg.num_visible
            masks = draw_masks(dict(layout), b, visible, self.cfg.dirichlet_alpha, device)
        ids_keep, ids_restore = keep_and_restore(masks, [n for n, _ in layout], visible)  # (B, V), (B, N_all)
        encoded = self.forward_encoder(tokens, ids_keep)
        preds = self.forward_decoder(encoded, layout, ids_keep, ids_restore, self._grid(inputs))
        return preds, dict(masks)

    def forward_encoder(self, tokens: Tensor, ids_keep: Tensor) -> Tensor:
        """tokens (B, N_all, D), ids_keep (B, V) -> encoded (B, V + G, D); no final norm (as released)."""
        encoded, _ = self.encode(gather_tokens(tokens, ids_keep))  # (B, V, D) visible -> (B, V + G, D)
        return encoded

    def forward_decoder(
        self,
        encoded: Tensor,
        layout: list[tuple[str, int]],
        ids_keep: Tensor,
        ids_restore: Tensor,
        grid: tuple[int, int],
    ) -> dict[str, Tensor]:
        """encoded (B, V + G, D) -> task -> (B, C, H, W) prediction at the task's resolution."""
        g = self.cfg.num_global_tokens
        preds = {}
        for name, adapter in self.output_adapters.items():
            if TASKS[name].fp32:
                with torch.autocast(device_type=encoded.device.type, enabled=False):
                    preds[name] = adapter(encoded.float(), layout, ids_keep, ids_restore, grid, g)
            else:
                preds[name] = adapter(encoded, layout, ids_keep, ids_restore, grid, g)
        return preds

    def forward_loss(
        self, preds: Mapping[str, Tensor], targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Sum of the per-task losses on masked patches (unweighted), and each of them (fp32). A target whose
        modality is not an input (`model.outputs` beyond `model.inputs`) is predicted at every patch."""
        per_task = {}
        for name, pred in preds.items():
            task = TASKS[name]
            grid = self._grid({task.source: targets[task.source]})
            mask = masks.get(task.source)
            if mask is None:
                mask = pred.new_ones((pred.shape[0], grid[0] * grid[1]), dtype=torch.long)
            per_task[name] = task.loss(pred.float(), targets[task.source], mask, grid)
        return torch.stack(list(per_task.values())).sum(), per_task

    def _grid(self, inputs: Mapping[str, Tensor]) -> tuple[int, int]:
        """Token grid (nh, nw) from any input: its size times its stride, over the patch size."""
        name, x = next(iter(inputs.items()))
        stride, p = MODALITIES[name].stride, self.cfg.patch_size
        return x.shape[-2] * stride // p, x.shape[-1] * stride // p

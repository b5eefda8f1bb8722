"""Input adapters (pixels or class maps -> tokens) and the spatial cross-attention output adapter.

Names of parameters and buffers follow the official release (`pos_emb`, `proj`, `class_emb`, `mask_token`,
`task_embeddings`, `decoder`, `context_norm`, ...), so released checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from labelers.standards import IGNORE_ID
from trainer.model.layers import Block, CrossAttention, Mlp, layer_norm, resize_pos, sincos_2d

Layout = Sequence[tuple[str, int]]  # the encoder's input modalities in token order, with token counts


def _tokens(grid_map: Tensor) -> Tensor:
    return grid_map.flatten(2).transpose(1, 2)  # (B, D, nh, nw) -> (B, nh*nw, D)


class PatchInputAdapter(nn.Module):
    """Image-like input: Conv2d patch embedding plus the fixed sin-cos position embedding."""

    no_weight_decay = ("pos_emb",)
    pos_emb: Tensor

    def __init__(self, *, channels: int, patch: int, grid: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("pos_emb", sincos_2d(grid, grid, dim))  # (1, D, grid, grid)
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # (B, C, H, W) -> (B, D, nh, nw)
        return _tokens(x + resize_pos(self.pos_emb, x.shape[-2:], "bicubic"))  # (B, nh*nw, D)


class ClassMapInputAdapter(nn.Module):
    """Class-id map input: Embedding(classes, class_dim) per pixel, then a Conv2d over patches of the map.

    A pixel with the ignore id (`IGNORE_ID`, unlabelled) embeds as the zero vector: it carries no class, and
    the embedding keeps the official `classes` rows (no extra row for it)."""

    no_weight_decay = ("pos_emb", "class_emb.weight")
    pos_emb: Tensor

    def __init__(self, *, classes: int, class_dim: int, patch: int, grid: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("pos_emb", sincos_2d(grid, grid, dim))
        self.class_emb = nn.Embedding(classes, class_dim)
        self.proj = nn.Conv2d(class_dim, dim, kernel_size=patch, stride=patch)
        nn.init.trunc_normal_(self.class_emb.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        ignored = x == IGNORE_ID  # (B, h, w)
        x = self.class_emb(x.masked_fill(ignored, 0))  # (B, h, w, class_dim); ignored pixels looked up as 0 ...
        x = x.masked_fill(ignored.unsqueeze(-1), 0.0).permute(0, 3, 1, 2)  # ... then zeroed; (B, class_dim, h, w)
        x = self.proj(x)  # (B, D, nh, nw)
        return _tokens(x + resize_pos(self.pos_emb, x.shape[-2:], "bilinear"))


class SpatialOutputAdapter(nn.Module):
    """Decoder of one output: queries cross-attend to the visible tokens, then 2 self-attention blocks.

    Queries are the decoder tokens of the `query_from` input (its visible tokens and mask tokens, with
    position and task embeddings); without that input, mask tokens plus position embeddings.
    """

    no_weight_decay = ("mask_token", "task_embeddings", "pos_emb")
    pos_emb: Tensor

    def __init__(
        self,
        *,
        channels: int,
        patch: int,
        grid: int,
        dim_enc: int,
        dim: int,
        depth: int,
        heads: int,
        context: Sequence[str],
        query_from: str,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.channels, self.patch, self.query_from = channels, patch, query_from
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_emb", sincos_2d(grid, grid, dim))
        self.task_embeddings = nn.ParameterDict({n: nn.Parameter(torch.zeros(1, 1, dim)) for n in sorted(context)})
        self.decoder = CrossAttention(dim, heads)
        self.context_norm, self.query_norm, self.out_norm = layer_norm(dim), layer_norm(dim), layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.decoder_transformer = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.out_proj = nn.Linear(dim, channels * patch * patch)
        self.proj_context = nn.Linear(dim_enc, dim)

    def forward(
        self,
        encoded: Tensor,
        layout: Layout,
        ids_keep: Tensor,
        ids_restore: Tensor,
        grid: tuple[int, int],
        num_global: int,
    ) -> Tensor:
        context = self.proj_context(encoded)  # (B, V + G, D_enc) -> (B, V + G, d)
        visible, global_tokens = context[:, :-num_global], context[:, -num_global:]
        full = self._with_mask_tokens(visible, ids_restore)  # (B, N_all, d), input token order
        full = full + self._context_embeddings(layout, grid)
        queries = self._queries(full, layout, grid)  # (B, nh*nw, d)
        context = torch.cat([gather_tokens(full, ids_keep), global_tokens], dim=1)  # (B, V + G, d)
        x = self.decoder(self.query_norm(queries), self.context_norm(context))
        x = x + self.mlp(self.out_norm(x))
        x = self.out_proj(self.decoder_transformer(x))  # (B, nh*nw, C * p * p)
        return self._to_image(x, grid)  # (B, C, nh*p, nw*p)

    def _with_mask_tokens(self, visible: Tensor, ids_restore: Tensor) -> Tensor:
        b, v, d = visible.shape
        masked = self.mask_token.expand(b, ids_restore.shape[1] - v, d)
        return gather_tokens(torch.cat([visible, masked], dim=1), ids_restore)

    def _context_embeddings(self, layout: Layout, grid: tuple[int, int]) -> Tensor:
        pos = _tokens(resize_pos(self.pos_emb, grid, "bilinear"))  # (1, nh*nw, d)
        parts = []
        for name, count in layout:
            if count != pos.shape[1]:
                raise ValueError(f"input {name!r} has {count} tokens, the decoder grid {pos.shape[1]}")
            task = self.task_embeddings[name] if name in self.task_embeddings else torch.zeros_like(pos[:, :1])
            parts.append(pos + task)
        return torch.cat(parts, dim=1)  # (1, N_all, d)

    def _queries(self, full: Tensor, layout: Layout, grid: tuple[int, int]) -> Tensor:
        start = 0
        for name, count in layout:
            if name == self.query_from:
                return full[:, start : start + count]
            start += count
        pos = _tokens(resize_pos(self.pos_emb, grid, "bilinear"))
        queries = self.mask_token + pos
        if self.query_from in self.task_embeddings:
            queries = queries + self.task_embeddings[self.query_from]
        return queries.expand(full.shape[0], -1, -1)

    def _to_image(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        (nh, nw), p, c = grid, self.patch, self.channels
        x = x.reshape(x.shape[0], nh, nw, c, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, nh, p, nw, p)
        return x.reshape(x.shape[0], c, nh * p, nw * p)


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """tokens (B, N, D), index (B, K) -> (B, K, D)."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))

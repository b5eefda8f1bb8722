"""Transformer pieces with the official MultiMAE parameter names (qkv, proj, norm1, mlp.fc1, ...).

Attention runs through `F.scaled_dot_product_attention` (flash / memory-efficient kernels where available).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-6


class DropPath(nn.Module):
    """Stochastic depth: in training, each sample's residual branch is zeroed with probability `drop_prob`
    and the kept ones scaled by 1 / (1 - drop_prob); the identity in evaluation. (timm's `DropPath` computes
    the same, from the same random draws; importing timm for it would add seconds to every trainer command.)"""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob  # timm's name for it

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        draws = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * (draws / keep if keep > 0 else draws)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=LN_EPS)


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sin-cos position embedding, (1, dim, h, w), in the layout of the released checkpoints.

    Channels are four blocks [sin(a), cos(a), sin(b), cos(b)] with frequencies 1 / T^(k / (dim/4)); the
    official grid is a (w, h) meshgrid with 'ij' indexing read back as (h, w), reproduced here.
    """
    if dim % 4:
        raise ValueError(f"sin-cos embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    grid_a, grid_b = torch.meshgrid(
        torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32), indexing="ij"
    )
    angle_a = grid_a.reshape(-1, 1) * omega  # (w*h, dim/4)
    angle_b = grid_b.reshape(-1, 1) * omega
    emb = torch.cat([angle_a.sin(), angle_a.cos(), angle_b.sin(), angle_b.cos()], dim=1)  # (w*h, dim)
    return emb.T.reshape(1, dim, h, w)


def resize_pos(pos: Tensor, size: Sequence[int], mode: str) -> Tensor:
    """(1, D, h, w) -> (1, D, H, W); the identity when the grid already fits."""
    if tuple(pos.shape[-2:]) == tuple(size):
        return pos
    return F.interpolate(pos, size=(size[0], size[1]), mode=mode, align_corners=False)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, n, d = x.shape  # (B, N, D) -> (B, heads, N, D / heads)
    return x.reshape(b, n, heads, d // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    b, h, n, dh = x.shape  # (B, heads, N, Dh) -> (B, N, heads * Dh)
    return x.transpose(1, 2).reshape(b, n, h * dh)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (bias on)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, N, D)
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))  # 3 x (B, heads, N, Dh)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(_merge_heads(out))


class CrossAttention(nn.Module):
    """Queries attend to a context: q from the queries, k and v from one fused kv projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, context: Tensor) -> Tensor:
        k, v = self.kv(context).chunk(2, dim=-1)  # 2 x (B, M, D)
        q = _split_heads(self.q(queries), self.heads)  # (B, h, N, Dh)
        out = F.scaled_dot_product_attention(q, _split_heads(k, self.heads), _split_heads(v, self.heads))
        return self.proj(_merge_heads(out))  # (B, N, D)


class Block(nn.Module):
    """Pre-norm ViT block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()  # stochastic depth (fine-tuning)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_weights(module: nn.Module, name: str = "") -> None:
    """Xavier-uniform linears (a fused qkv / kv: q, k and v each on its own), zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        parts = 3 if name.endswith("qkv") else 2 if name.endswith(".kv") else 1
        _xavier_split(module.weight, parts)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _xavier_split(weight: Tensor, parts: int) -> None:
    with torch.no_grad():
        for chunk in weight.chunk(parts, dim=0):
            nn.init.xavier_uniform_(chunk)

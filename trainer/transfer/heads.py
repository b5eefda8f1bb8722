"""Fine-tuning heads on the encoder's tokens, named and shaped as MultiMAE's official output adapters so
official fine-tuned weights load both ways (`tests/data/multimae-b-finetune-*-state-dict.tsv`).

- `LinearHead` (classification, `cls`): mean of all tokens (the global token included) -> LayerNorm -> Linear.
- `ProbeHead` (the linear probe, as MAE's): mean of all tokens -> BatchNorm without affine -> Linear.
- `DenseProbeHead` (the linear probe of a dense task, semseg or depth): each patch token of the read inputs
  (the last hooked block's for depth) -> BatchNorm without affine -> Linear to C values -> the (C, nh, nw) map
  upsampled bilinearly to the image: what the frozen features say per patch, with no capacity of its own to
  learn the task (a DPT or ConvNeXt head on a frozen random encoder still learns much of it from the pixels).
- `ConvNeXtHead` (semantic segmentation): the read inputs' patch tokens -> Linear to `preds_per_patch` x C
  values per patch (4 x 4 sub-patches of C = embed_dim / 16 channels) -> `depth` ConvNeXt blocks at 1/4
  resolution -> 1x1 conv to the classes -> bilinear upsampling to the image size.
- `DPTHead` (dense regression, depth): the read inputs' tokens after the encoder blocks `hooks`, reassembled
  at 1/4, 1/8, 1/16 and 1/32, fused by RefineNet blocks, and a conv head to one channel (no final ReLU).

The dense heads read one input's tokens, or several inputs' concatenated on channels (the official
`main_tasks = ["rgb", "depth"]`): they receive the read inputs' tokens one input after another, (B, k x nh*nw, D),
and `concat_inputs` lays them side by side, (B, nh*nw, k x D); `dim` is then the width k x D (as the official
adapters' `init(dim_tokens_enc)` multiplies by the number of main tasks).

Initialisation is the official fine-tuning model's: its constructor re-initialises every Linear of the heads
xavier-uniform with zero bias and every LayerNorm to 1 / 0 (`init_linears`); convolutions keep PyTorch's
default. The probe keeps MAE's (truncated normal, std 0.01).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from trainer.model.layers import DropPath, layer_norm

PROBE_BN_EPS = 1e-6  # the linear probe's BatchNorm (MAE's); the timm export folds it into the Linear with this eps


def init_linears(module: nn.Module) -> None:
    """Every Linear xavier-uniform with zero bias, every LayerNorm 1 / 0 (the official MultiViT's init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def concat_inputs(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, k x nh*nw, D): k inputs' tokens one after another -> (B, nh*nw, k x D), concatenated on channels
    in the same order (k = 1: unchanged)."""
    b, n, d = tokens.shape
    cells = grid[0] * grid[1]
    if n % cells:
        raise ValueError(f"{n} tokens are not whole {grid[0]}x{grid[1]} grids of the read inputs")
    return tokens.reshape(b, n // cells, cells, d).transpose(1, 2).reshape(b, cells, n // cells * d)


class LinearHead(nn.Module):
    """tokens (B, N, D) -> logits (B, classes)."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.norm = layer_norm(dim)
        self.head = nn.Linear(dim, classes)
        init_linears(self)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.norm(tokens.mean(dim=1)))


class ProbeHead(nn.Module):
    """tokens (B, N, D) -> logits (B, classes): BatchNorm1d without affine on the mean token, then Linear."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=PROBE_BN_EPS)
        self.head = nn.Linear(dim, classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.bn(tokens.mean(dim=1)))


class DenseProbeHead(nn.Module):
    """tokens (B, k x nh*nw, D) of the read inputs (or the hooked blocks' list: the last one is read) ->
    (B, C, H, W), H x W = `size` or the grid x `patch`."""

    def __init__(self, dim: int, channels: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.final_layer = nn.Linear(dim, channels)  # named as the ConvNeXt head's classifier (its rows: classes)
        nn.init.trunc_normal_(self.final_layer.weight, std=0.01)
        nn.init.zeros_(self.final_layer.bias)

    def forward(
        self, tokens: Tensor | Sequence[Tensor], grid: tuple[int, int], size: tuple[int, int] | None = None
    ) -> Tensor:
        x = tokens if isinstance(tokens, Tensor) else tokens[-1]
        x = concat_inputs(x, grid)  # (B, nh*nw, k x D)
        x = self.final_layer(self.bn(x.transpose(1, 2)).transpose(1, 2))  # (B, nh*nw, C)
        x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)
        out = size or (grid[0] * self.patch, grid[1] * self.patch)
        return F.interpolate(x, size=out, mode="bilinear", align_corners=False)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, channels-last LayerNorm, Linear 4x expansion, GELU, Linear back; residual."""

    def __init__(self, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = layer_norm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + self.drop_path(y)


class ConvNeXtHead(nn.Module):
    """patch tokens of the read inputs (B, k x nh*nw, D), `dim` = k x D -> logits (B, classes, H, W)."""

    def __init__(
        self, dim: int, classes: int, *, embed_dim: int = 6144, preds_per_patch: int = 16, depth: int = 4
    ) -> None:
        super().__init__()
        self.side = int(preds_per_patch**0.5)
        if self.side**2 != preds_per_patch or embed_dim % preds_per_patch:
            raise ValueError("preds_per_patch must be a square dividing embed_dim")
        self.channels = embed_dim // preds_per_patch
        self.blocks = nn.Sequential(*(ConvNeXtBlock(self.channels) for _ in range(depth)))
        self.final_layer = nn.Conv2d(self.channels, classes, kernel_size=1)
        self.proj_dec = nn.Linear(dim, embed_dim)
        init_linears(self)

    def forward(self, tokens: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
        b, (nh, nw), s, c = tokens.shape[0], grid, self.side, self.channels
        x = self.proj_dec(concat_inputs(tokens, grid))  # (B, nh*nw, p*c), p = s*s sub-patches: index p*c + channel
        x = x.reshape(b, nh, nw, s, s, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, nh * s, nw * s)
        x = self.final_layer(self.blocks(x))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _Interpolate(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=True)


class _ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _FusionBlock(nn.Module):
    """RefineNet fusion: (the deeper path [+ a skip]) -> residual unit -> x2 upsampling -> 1x1 conv."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = _ResidualConvUnit(features)
        self.resConfUnit2 = _ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = F.interpolate(self.resConfUnit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Scratch(nn.Module):
    """layerN_rn (3x3, no bias) to `features` channels, and the four fusion blocks (second names kept)."""

    def __init__(self, dims: Sequence[int], features: int) -> None:
        super().__init__()
        for i, d in enumerate(dims, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(d, features, 3, padding=1, bias=False))
        self.layer_rn = nn.ModuleList([getattr(self, f"layer{i}_rn") for i in range(1, len(dims) + 1)])
        self.refinenet1, self.refinenet2 = _FusionBlock(features), _FusionBlock(features)
        self.refinenet3, self.refinenet4 = _FusionBlock(features), _FusionBlock(features)


class DPTHead(nn.Module):
    """tokens of the read inputs after each hooked block, `dim` = k x D -> (B, 1, H, W) prediction."""

    def __init__(self, dim: int, *, hooks: Sequence[int], layer_dims: Sequence[int], features: int = 256) -> None:
        super().__init__()
        if len(hooks) != 4 or len(layer_dims) != 4:
            raise ValueError("the DPT head takes 4 hooks and 4 layer dims")
        self.hooks = tuple(hooks)
        d1, d2, d3, d4 = layer_dims
        self.scratch = _Scratch(layer_dims, features)
        self.head = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1),
            _Interpolate(2),
            nn.Conv2d(features // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 1),
        )
        self.act_1_postprocess = nn.Sequential(nn.Conv2d(dim, d1, 1), nn.ConvTranspose2d(d1, d1, 4, stride=4))
        self.act_2_postprocess = nn.Sequential(nn.Conv2d(dim, d2, 1), nn.ConvTranspose2d(d2, d2, 2, stride=2))
        self.act_3_postprocess = nn.Sequential(nn.Conv2d(dim, d3, 1))
        self.act_4_postprocess = nn.Sequential(nn.Conv2d(dim, d4, 1), nn.Conv2d(d4, d4, 3, stride=2, padding=1))
        self.act_postprocess = nn.ModuleList(
            [self.act_1_postprocess, self.act_2_postprocess, self.act_3_postprocess, self.act_4_postprocess]
        )

    def forward(self, hooked: Sequence[Tensor], grid: tuple[int, int]) -> Tensor:
        """hooked: 4 x (B, k x nh*nw, D) tokens of the read inputs."""
        tokens = [concat_inputs(t, grid) for t in hooked]  # (B, nh*nw, k x D)
        maps = [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid) for t in tokens]  # (B, k x D, nh, nw)
        layers = [post(m) for post, m in zip(self.act_postprocess, maps, strict=True)]
        l1, l2, l3, l4 = (rn(x) for rn, x in zip(self.scratch.layer_rn, layers, strict=True))
        s = self.scratch
        path = s.refinenet4(l4)
        path = s.refinenet3(_fit(path, l3), l3)
        path = s.refinenet2(_fit(path, l2), l2)
        path = s.refinenet1(_fit(path, l1), l1)
        return self.head(path)


def _fit(x: Tensor, like: Tensor) -> Tensor:
    """Odd token grids make the 1/32 path one pixel off: bring it to the skip's size."""
    return x if x.shape[-2:] == like.shape[-2:] else F.interpolate(x, size=like.shape[-2:], mode="bilinear")

"""The multi-modal ViT encoder that pretraining (`MultiMAE`) and fine-tuning (`MultiViT`) share.

Reads top to bottom: global tokens, one input adapter per input modality and the block stack (with optional
stochastic depth) are built and initialised once -> `tokenize` turns the inputs into one token sequence and
says where each input's tokens sit -> `encode` appends the global tokens and runs the blocks, optionally
returning the outputs of chosen blocks (the DPT head's hooks). No final norm (as released).

The models subclass `MultiModalEncoder`, so the official names stay at the top of their state dicts:
`global_tokens`, `input_adapters.<input>.*`, `output_adapters.<output>.*`, `encoder.<i>.*`. The output adapters
(decoders or a head) are built by the subclass's callable between the input adapters and the blocks: the
official state dicts list them there, and a seeded model draws its random numbers in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from trainer.config import ModelConfig
from trainer.model.layers import Block, init_weights
from trainer.model.modalities import MODALITIES


def drop_path_rates(drop_path: float, depth: int) -> list[float]:
    """Stochastic depth rising linearly from 0 at the first block to `drop_path` at the last."""
    return [drop_path * i / max(1, depth - 1) for i in range(depth)]


class MultiModalEncoder(nn.Module):
    """Global tokens + input adapters + ViT blocks; the subclass supplies `output_adapters` and the forward.

    init_outputs: the output adapters' linears, convs and norms get the encoder's initialisation too (the
    pretraining decoders, as the official code); False leaves them as built (fine-tuning heads own theirs).
    """

    def __init__(
        self,
        shape: ModelConfig,
        output_adapters: Callable[[], nn.ModuleDict],
        *,
        drop_path: float = 0.0,
        init_outputs: bool = False,
    ) -> None:
        super().__init__()
        self.global_tokens = nn.Parameter(torch.zeros(1, shape.num_global_tokens, shape.dim))
        inputs = {n: MODALITIES[n].build_input(MODALITIES[n], shape) for n in shape.inputs}
        self.input_adapters = nn.ModuleDict(inputs)
        self.output_adapters = output_adapters()  # here: the official key order and the seeded RNG stream
        rates = drop_path_rates(drop_path, shape.depth)
        self.encoder = nn.Sequential(*[Block(shape.dim, shape.heads, shape.mlp_ratio, drop_path=r) for r in rates])
        for name, module in self.named_modules():
            if init_outputs or not name.startswith("output_adapters"):
                init_weights(module, name)
        nn.init.trunc_normal_(self.global_tokens, std=0.02)

    def tokenize(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, slice]]:
        """inputs: modality -> (B, C, H, W) or (B, h, w) ids, in the order given; inputs without an adapter are
        skipped. Returns (tokens (B, N_all, D), modality -> the slice of its tokens along N_all)."""
        tokens, spans, start = [], {}, 0
        for name, x in inputs.items():
            if name in self.input_adapters:
                tokens.append(self.input_adapters[name](x))  # (B, N_name, D)
                spans[name] = slice(start, start + tokens[-1].shape[1])
                start += tokens[-1].shape[1]
        return torch.cat(tokens, dim=1), spans

    def encode(self, tokens: Tensor, hooks: Sequence[int] = ()) -> tuple[Tensor, list[Tensor]]:
        """tokens (B, N, D) -> (output of the last block (B, N + G, D), global tokens last; the outputs of the
        blocks in `hooks`, in that order, each (B, N + G, D))."""
        x = torch.cat([tokens, self.global_tokens.expand(tokens.shape[0], -1, -1)], dim=1)  # (B, N + G, D)
        hooked: dict[int, Tensor] = {}
        for i, block in enumerate(self.encoder):
            x = block(x)
            if i in hooks:
                hooked[i] = x
        return x, [hooked[i] for i in hooks]

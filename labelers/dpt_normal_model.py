"""transformers' DPT with a head of several output channels: Omnidata's surface-normal network (3 channels).

The original DPT code builds depth and normal networks from one class whose head ends in a 1 x 1 conv of
`num_channels` outputs; transformers' `DPTForDepthEstimation` fixes that conv at 1. This subclass reads the
count from `config.num_output_channels`, so `save_pretrained` / `from_pretrained` round-trip it.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import DPTForDepthEstimation

HEAD_CONV = 4  # index of the final 1 x 1 conv in DPTDepthEstimationHead.head (after it: the non-negative ReLU)


class DPTForSurfaceNormals(DPTForDepthEstimation):  # type: ignore[misc]
    """DPT whose head predicts `config.num_output_channels` maps (default 3) instead of one."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        channels = int(getattr(config, "num_output_channels", 3))
        config.num_output_channels = channels
        final = self.head.head[HEAD_CONV]
        assert isinstance(final, nn.Conv2d)
        self.head.head[HEAD_CONV] = nn.Conv2d(final.in_channels, channels, kernel_size=1)

"""Numeric conventions shared by labelers, the data contract and the trainer (defined once, here at the bottom
of the import graph: `labelers` imports nothing of `pipeline` or `trainer`).

- `PRECISIONS`: the names of the float precisions a model may run in, and their torch dtypes.
- `IMAGENET_MEAN` / `IMAGENET_STD`: RGB normalisation of ImageNet-trained networks (Mask2Former, MultiMAE).
- `IGNORE_ID`: the class id of "no label" in every class map (so a class table has at most 255 classes).
- `FACING`: the surface normal stored where none is known (a zero or non-finite vector): facing the camera.
"""

from __future__ import annotations

from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_ID = 255
FACING = (0.0, 0.0, 1.0)


def torch_dtype(precision: str) -> Any:
    """'fp32' | 'bf16' | 'fp16' -> the torch dtype (torch imported only here, when asked)."""
    import torch

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return dtypes[precision]

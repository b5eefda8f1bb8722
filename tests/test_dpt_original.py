"""Original-layout DPT-Hybrid (Omnidata depth) -> transformers: conversion proven without the real weights.

Weights are generated from the published key names and shapes (tests/data/dpt-hybrid-original-state-dict.tsv,
a copy of ../shared/reference/), one deterministic stream per key:

    seed(key) = int.from_bytes(sha256(key.encode("utf-8")).digest()[:8], "little")
    u         = numpy.random.Generator(numpy.random.PCG64(seed)).random(numel)   # float64 in [0, 1)
    tensor    = float32(lo + (hi - lo) * u).reshape(shape)                       # C order
    [lo, hi]  = [-1, 1]       for cls_token, pos_embed and the input (key "input", 1 x 3 x 128 x 160)
                [-a, a]       for conv / linear weights (ndim >= 2): a = sqrt(3 / prod(shape[1:]))
                [0.5, 1.5]    for 1-D weights (LayerNorm / GroupNorm scales)
                [-0.1, 0.1]   for 1-D biases

Golden (tests/data/dpt_hybrid_golden.npz): computed once, outside this repository, with the public reference
implementation github.com/isl-org/DPT at commit cd3fe90bb4c48577535cc4d51b602acca688a2ee, unmodified, with
timm 1.0.31 and torch 2.14.1 (CPU, fp32): `DPTDepthModel(path=None, backbone="vitb_rn50_384",
non_negative=True)`, `load_state_dict(weights above, strict=True)`, eval, forward on the input above.
Stored: the full 128 x 160 output map, and a fingerprint of the generated weights so that a changed random
stream is told apart from a broken conversion. No reference code is in this repository.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from labelers.dpt import dpt_forward
from labelers.dpt_original import (
    CheckpointLayoutError,
    convert_state_dict,
    convert_weights,
    load_dpt_hybrid_original,
    read_original_state_dict,
)

DATA = Path(__file__).parent / "data"
LAYOUT_TSV = DATA / "dpt-hybrid-original-state-dict.tsv"
GOLDEN = DATA / "dpt_hybrid_golden.npz"
INPUT_SHAPE = (1, 3, 128, 160)
FINGERPRINT_KEYS = (
    "pretrained.model.pos_embed",
    "pretrained.model.blocks.5.attn.qkv.weight",
    "scratch.refinenet2.resConfUnit1.conv2.bias",
    "scratch.output_conv.4.weight",
)


def read_layout(path: Path = LAYOUT_TSV) -> dict[str, tuple[int, ...]]:
    """name -> shape, in the order of the TSV (`name<TAB>AxBxC`, `#` lines are comments)."""
    rows = [line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {name: tuple(int(d) for d in shape.split("x")) for name, shape in rows}


def key_seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")


def value_range(key: str, shape: tuple[int, ...]) -> tuple[float, float]:
    if key in ("input", "pretrained.model.cls_token", "pretrained.model.pos_embed"):
        return -1.0, 1.0
    if len(shape) >= 2:
        a = math.sqrt(3.0 / math.prod(shape[1:]))
        return -a, a
    return (0.5, 1.5) if key.endswith(".weight") else (-0.1, 0.1)


def synthetic_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    lo, hi = value_range(key, shape)
    u = np.random.Generator(np.random.PCG64(key_seed(key))).random(math.prod(shape))
    return torch.from_numpy((lo + (hi - lo) * u).astype(np.float32).reshape(shape))


def synthetic_state_dict() -> dict[str, torch.Tensor]:
    return {key: synthetic_tensor(key, shape) for key, shape in read_layout().items()}


def synthetic_input() -> torch.Tensor:
    return synthetic_tensor("input", INPUT_SHAPE)


def fingerprint(state: dict[str, torch.Tensor]) -> np.ndarray:
    """Sum and first element of a few generated tensors, float64."""
    rows = [(float(state[k].double().sum()), float(state[k].flatten()[0])) for k in FINGERPRINT_KEYS]
    return np.array(rows)


@pytest.fixture(scope="module")
def original() -> dict[str, torch.Tensor]:
    return synthetic_state_dict()


def test_every_original_key_has_a_rule() -> None:
    layout = {k: torch.empty(shape, device="meta") for k, shape in read_layout().items()}
    converted, unknown = convert_state_dict(layout)
    assert unknown == []
    # 368 original keys - 2 classifier keys + 12 blocks x (6 split qkv - 2 fused) = 414
    assert len(converted) == 414
    assert sum(v.numel() for v in converted.values()) == 123_146_985 - 1000 * 768 - 1000


@pytest.mark.slow
def test_converted_model_matches_reference_dpt(original: dict[str, torch.Tensor]) -> None:
    golden = np.load(GOLDEN)
    changed = "the generated weights changed (numpy PCG64 stream?), not the conversion"
    np.testing.assert_allclose(fingerprint(original), golden["fingerprint"], rtol=1e-6, err_msg=changed)
    model = load_dpt_hybrid_original(original)  # strict: raises on any missing / unexpected key
    with torch.inference_mode():  # the labeler's forward: any multiple-of-32 size, as the paper's geometry needs
        depth = dpt_forward(model, synthetic_input())[0].numpy()
    expected = golden["depth"]
    assert depth.shape == expected.shape == INPUT_SHAPE[2:]
    assert float((expected > 0).mean()) > 0.2  # the golden is a real map, not the non-negative head's zeros
    # Tolerance 2e-4 of the map's largest value. Both sides run fp32 on CPU and differ at most in summation
    # order (fused vs split qkv, conv / GEMM kernels of another CPU), ~1e-6 relative per op over ~70 layers;
    # on the machine that made the golden the maps are bit-identical. A wrong mapping is far above it
    # (measured: q/k swapped in one block 3e-2, readout halves swapped 0.45, refinenet 2 <-> 3 0.71).
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(depth, expected, rtol=0, atol=2e-4 * scale)


@pytest.mark.slow
def test_convert_weights_folder_round_trip(tmp_path: Path, original: dict[str, torch.Tensor]) -> None:
    from transformers import DPTForDepthEstimation

    folder = convert_weights(original, tmp_path / "omnidata-dpt-hybrid")
    assert (folder / "preprocessor_config.json").is_file()
    with pytest.raises(FileExistsError):
        convert_weights(original, folder)
    reloaded = DPTForDepthEstimation.from_pretrained(folder).eval()
    with torch.inference_mode():
        depth = dpt_forward(reloaded, synthetic_input())[0].numpy()
    expected = np.load(GOLDEN)["depth"]
    np.testing.assert_allclose(depth, expected, rtol=0, atol=2e-4 * float(np.abs(expected).max()))


def test_lightning_prefix_and_extra_key(tmp_path: Path) -> None:
    small = {k: synthetic_tensor(k, (2,)) for k in list(read_layout())[:3]}
    ckpt = tmp_path / "omnidata_v2.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in small.items()}, "epoch": 3}, ckpt)
    assert read_original_state_dict(ckpt).keys() == small.keys()
    with pytest.raises(CheckpointLayoutError, match=r"missing.*unexpected: extra\.thing.*shape mismatches"):
        load_dpt_hybrid_original({**small, "extra.thing": torch.zeros(1)})


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"pretrained.model.cls_token": torch.zeros(1)}, "hparams": _Opaque()}, path)
    with pytest.raises(CheckpointLayoutError, match="weights_only"):
        read_original_state_dict(path)


class _Opaque:
    pass


def test_missing_file_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_original_state_dict(tmp_path / "omnidata_rgb2depth_dpt_hybrid.pth")


def test_omnidata_entry_fails_fast_without_weights(tmp_path: Path) -> None:
    import labelers.omnidata  # noqa: F401  (registers the entry)
    from labelers.registry import build_labeler, resolve_spec
    from labelers.weights import WeightsUnavailableError

    spec = resolve_spec("omnidata-dpt-hybrid", {"weights": str(tmp_path / "omnidata_rgb2depth_dpt_hybrid.pth")})
    assert (spec.output, spec.mean, spec.std, spec.size) == ("depth", (0.5,) * 3, (0.5,) * 3, 384)
    assert "CC-BY-NC-4.0" in spec.license
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=r"omnidata_rgb2depth_dpt_hybrid\.pth.*weights = "):
        build_labeler(spec)
    assert time.perf_counter() - start < 10  # fails at once: before any model is built

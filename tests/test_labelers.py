"""Every registry entry: a valid spec; smoke entries label aligned maps; real entries fail fast offline."""

import time

import numpy as np
import pytest

from labelers import available, build_labeler, resolve_spec
from labelers.geometry import network_size
from labelers.weights import WeightsUnavailableError
from pipeline.format.codecs import CODECS

ODD_SIZES = [(333, 500), (500, 281), (37, 45)]


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for hw in ODD_SIZES]


@pytest.mark.parametrize("name", available())
def test_spec_is_complete(name):
    spec = resolve_spec(name)
    assert spec.modality in CODECS and spec.license and spec.model_class
    assert spec.meaningless == (not spec.weights)


SMOKE = [n for n in available() if resolve_spec(n).meaningless]


@pytest.mark.parametrize("name", SMOKE)
def test_smoke_labelers_return_maps_aligned_with_the_image(name):
    spec = resolve_spec(name)
    maps = build_labeler(spec)(_images())
    for m, hw in zip(maps, ODD_SIZES, strict=True):
        assert m.shape[:2] == hw and m.shape[2:] == (() if CODECS[spec.modality].channels == 1 else (3,))
        if spec.output == "classes":
            assert m.dtype == np.uint8 and int(m.max()) < spec.num_classes
        else:
            assert m.dtype == np.float32 and np.isfinite(m).all()


@pytest.mark.parametrize("name", SMOKE)
def test_smoke_labelers_are_deterministic_and_batch_independent(name):
    """Same batch twice: identical. Batched vs alone: equal up to float rounding (a small share of the
    map's range; batch size is in the recipe fingerprint because of exactly this rounding)."""
    lab = build_labeler(resolve_spec(name))
    images = _images()
    together = lab(images)
    assert all(np.array_equal(a, b) for a, b in zip(together, lab(images), strict=True))
    alone = [lab([im])[0] for im in images]
    for a, b in zip(together, alone, strict=True):
        if a.dtype == np.float32:
            assert np.abs(a - b).max() <= 1e-3 * max(float(np.ptp(a)), 1e-12)
        else:
            assert (a == b).mean() > 0.99


def downloaded(name: str) -> bool:
    """A real labeler whose weights come from elsewhere (not meaningless, not shipped with the package)."""
    spec = resolve_spec(name)
    return not spec.meaningless and "shipped_weights" not in spec.extra


@pytest.mark.parametrize("name", [n for n in available() if downloaded(n)])
def test_real_labelers_without_weights_fail_at_once_with_instructions(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="weights = "):
        build_labeler(resolve_spec(name))
    assert time.monotonic() - started < 10


def test_recipe_overrides_are_checked():
    assert resolve_spec("dpt-smoke", {"size": 96}).size == 96
    with pytest.raises(ValueError, match="unknown setting"):
        resolve_spec("dpt-smoke", {"sizee": 96})
    with pytest.raises(KeyError):
        resolve_spec("no-such-labeler")


@pytest.mark.parametrize(
    ("geometry", "hw", "expected"),
    [
        ("square", (333, 500), (64, 64)),
        ("short_side", (333, 500), (64, 96)),
        ("multiple_of_32", (333, 500), (320, 512)),
        ("multiple_of_32", (3000, 100), (1024, 32)),
        ("multiple_of_32", (20, 20), (32, 32)),
    ],
)
def test_network_geometry(geometry, hw, expected):
    spec = resolve_spec("dpt-smoke", {"geometry": geometry, "size": 64, "max_side": 1024})
    assert network_size(spec, *hw) == expected


def test_mask2former_scores_stay_fp32_under_bf16_autocast():
    """The builder labels under bf16 autocast on GPUs; the class scores (and so their argmax) must not drop to
    bf16. Checked with the CPU's autocast, which lowers einsum the same way."""
    import torch

    from labelers.mask2former import semantic_scores

    g = torch.Generator().manual_seed(0)
    class_logits, mask_logits = torch.randn(2, 10, 8, generator=g), torch.randn(2, 10, 12, 16, generator=g)
    plain = semantic_scores(class_logits, mask_logits, (24, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = semantic_scores(class_logits, mask_logits, (24, 32))
    assert under.dtype == torch.float32 and torch.equal(under, plain)

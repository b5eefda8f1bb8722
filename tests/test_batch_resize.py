"""The device-side batch resampling (`trainer.data.batch_resize`) gives the per-sample path's tensors
(`trainer.data.augment.augment`): float maps within 1e-4, uint8 images within one level, class maps equal."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelers.standards import IGNORE_ID, IMAGENET_STD
from pipeline.format.codecs import quantize_normal
from pipeline.synth.rectangles import write_dataset
from trainer.config import DataConfig, ModelConfig
from trainer.data import batch_resize
from trainer.data.augment import Crop, augment, cut, sample_crop
from trainer.data.dataset import load_dataset
from trainer.data.loader import Cursor, EpochPlan, ShardStream, collate
from trainer.model.modalities import MODALITIES

RGB_LEVEL = 1.0 / 255.0 / min(IMAGENET_STD)  # one intensity level, in normalised units
CPU = torch.device("cpu")


@pytest.mark.parametrize("mode", ["bilinear", "nearest-exact"])
@pytest.mark.parametrize("size", [224, 56, 17, 300])
def test_weights_are_interpolates_own(mode: str, size: int) -> None:
    """Every input length 1..639 (down- and upsampling): the 1-D weights of F.interpolate, read off the
    resize of the identity; zero beyond the length (the padding)."""
    lengths = torch.arange(1, 640)
    weights = batch_resize.resize_weights(lengths, 639, size, mode)
    kwargs = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
    for k, n in enumerate(lengths.tolist()):
        eye = torch.eye(n).view(1, 1, n, n)
        expected = F.interpolate(eye, size=(n, size), mode=mode, **kwargs)[0, 0].T
        got = weights[k, :, :n]
        if mode == "bilinear":
            assert (got - expected).abs().max() <= 3e-7, n
        else:
            assert torch.equal(got, expected), n
        assert not weights[k, :, n:].any()


def _arrays(rng: np.random.Generator, h: int, w: int) -> dict[str, np.ndarray]:
    """Hard cases for every built-in modality: noise rgb (every rounding matters), depth over the full
    uint16 range, class ids in small blocks (a shifted pixel shows; some blocks unlabelled, 255), random unit
    normals."""
    ids = rng.integers(0, 133, (h // 3 + 1, w // 3 + 1)).astype(np.uint8).repeat(3, 0).repeat(3, 1)[:h, :w]
    ids[ids % 10 == 0] = IGNORE_ID
    vectors = rng.normal(size=(h, w, 3))
    return {
        "rgb": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "depth": rng.integers(0, 65536, (h, w), dtype=np.uint16),
        "semseg": np.ascontiguousarray(ids),
        "normal": quantize_normal(vectors)[0],
    }


def _compare(reference: dict[str, torch.Tensor], batched: dict[str, torch.Tensor], k: int) -> None:
    assert set(batched) >= set(reference)
    for name, want in reference.items():
        got = batched[name][k]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        if name == "semseg":
            assert torch.equal(got, want), f"class map of sample {k} differs"
            assert set(got.unique().tolist()) <= set(range(133)) | {IGNORE_ID}  # 255 is kept, never blended
        elif name == "rgb":
            assert (got - want).abs().max() <= RGB_LEVEL + 1e-5, f"rgb of sample {k}"
        else:
            assert (got - want).abs().max() <= 1e-4, f"{name} of sample {k}: {(got - want).abs().max()}"


@pytest.mark.parametrize("image_size", [64, 224])
def test_batch_equals_the_per_sample_path_for_every_modality(image_size: int) -> None:
    """Mixed sizes (portrait and landscape, crops smaller and larger than the output), flipped and not, in
    chunks of the batch (more samples than one chunk)."""
    rng = np.random.default_rng(image_size)
    shapes = [(375, 500), (500, 375)] if image_size == 224 else [(96, 128), (128, 96), (40, 50), (150, 90)]
    arrays, crops = [], []
    for k in range(batch_resize.CHUNK + 6 if image_size == 64 else 6):
        h, w = shapes[k % len(shapes)]
        arrays.append(_arrays(rng, h, w))
        crops.append(sample_crop(h, w, rng, (0.05, 1.0), (0.75, 4 / 3), 0.5))
    assert {c.flip for c in crops} == {True, False}
    batch = batch_resize.pack([batch_resize.windows(a, c) for a, c in zip(arrays, crops, strict=True)], crops)
    batched = batch_resize.to_device(batch, CPU, image_size)
    for k, (a, c) in enumerate(zip(arrays, crops, strict=True)):
        _compare(augment(a, c, image_size), batched, k)


def test_a_crop_of_one_pixel_and_the_whole_image() -> None:
    rng = np.random.default_rng(1)
    arrays = [_arrays(rng, 30, 20), _arrays(rng, 30, 20)]
    crops = [Crop(top=7, left=3, height=1, width=1, flip=True), Crop(top=0, left=0, height=30, width=20, flip=False)]
    batched = batch_resize.to_device(
        batch_resize.pack([batch_resize.windows(a, c) for a, c in zip(arrays, crops, strict=True)], crops), CPU, 32
    )
    for k in range(2):
        _compare(augment(arrays[k], crops[k], 32), batched, k)


def test_a_packed_batch_that_does_not_match_its_crop_table_is_refused() -> None:
    rng = np.random.default_rng(2)
    crop = Crop(top=0, left=0, height=10, width=10, flip=False)
    batch = batch_resize.pack([batch_resize.windows({"rgb": _arrays(rng, 10, 10)["rgb"]}, crop)], [crop])
    batch["rgb"] = batch["rgb"][:-1]
    with pytest.raises(ValueError, match="crop table"):
        batch_resize.to_device(batch, CPU, 16)


def test_workers_hand_over_the_stored_values_and_the_device_gives_to_tensors_exactly() -> None:
    """A packed batch holds the decoded dtypes (rgb, class ids, normals 1 byte a pixel; depth 2), and the
    device's conversion of them is `to_tensor`'s, bit for bit, for every built-in modality."""
    rng = np.random.default_rng(4)
    arrays = _arrays(rng, 37, 23)
    crop = Crop(top=3, left=5, height=30, width=11, flip=False)
    batch = batch_resize.pack([batch_resize.windows(arrays, crop)], [crop])
    assert {name: batch[name].element_size() for name in arrays} == {"rgb": 1, "depth": 2, "semseg": 1, "normal": 1}
    for name, array in arrays.items():
        spec = MODALITIES[name]
        want = spec.to_tensor(cut(array, crop))
        got = spec.from_packed(batch[name]).view(crop.height, crop.width, -1).permute(2, 0, 1)
        assert got.dtype == want.dtype and torch.equal(got, want), name


def test_a_modality_without_a_packed_form_packs_its_to_tensor(monkeypatch) -> None:
    """A plugin modality that gives only `to_tensor` goes the device path too (float values, the same result)."""
    rng = np.random.default_rng(5)
    arrays = [{"depth": _arrays(rng, 40, 30)["depth"]} for _ in range(3)]
    crops = [sample_crop(40, 30, rng, (0.2, 1.0), (0.75, 4 / 3), 0.5) for _ in arrays]
    compact = batch_resize.to_device(
        batch_resize.pack([batch_resize.windows(a, c) for a, c in zip(arrays, crops, strict=True)], crops), CPU, 32
    )
    plain = dataclasses.replace(MODALITIES["depth"], to_packed=None, from_packed=None)
    monkeypatch.setattr(batch_resize, "MODALITIES", {**MODALITIES, "depth": plain})
    batch = batch_resize.pack([batch_resize.windows(a, c) for a, c in zip(arrays, crops, strict=True)], crops)
    assert batch["depth"].dtype == torch.float32
    assert torch.equal(batch_resize.to_device(batch, CPU, 32)["depth"], compact["depth"])
    with pytest.raises(ValueError, match="go together"):
        dataclasses.replace(MODALITIES["depth"], from_packed=None)


def test_the_loaders_two_modes_give_the_same_batches(tmp_path: Path) -> None:
    """Real shards through ShardStream: worker batches vs device batches of the same stream position."""
    info = load_dataset(write_dataset(tmp_path / "data", [10, 10], sizes=((96, 128), (128, 96))))
    model = ModelConfig(image_size=64, patch_size=16)
    data = DataConfig(batch_size=5, workers=0, shuffle_buffer=8)
    plan = EpochPlan(seed=3, epoch=0, rank=0, world=1, workers=1, micro_batches=4)
    streams = [
        ShardStream(info=info, data=data, model=model, plan=plan, cursors=[Cursor()], on_device=on)
        for on in (False, True)
    ]
    pairs = list(zip(*(s.batches(0) for s in streams), strict=True))
    assert len(pairs) == 4
    for per_sample, packed in pairs:
        assert packed["__cursor__"] == per_sample["__cursor__"]
        finished = batch_resize.to_device(packed, CPU, 64)
        for k in range(5):
            _compare({n: per_sample[n][k] for n in ("rgb", "depth", "semseg")}, finished, k)


def test_per_sample_batches_pass_through_unchanged() -> None:
    items = [{"rgb": torch.rand(3, 4, 4)} for _ in range(2)]
    batch = collate(items, 0, Cursor())
    moved = batch_resize.to_device(batch, CPU, 4)
    assert torch.equal(moved["rgb"], batch["rgb"]) and "__cursor__" not in moved


@pytest.mark.parametrize(
    ("setting", "read_back"),
    [
        ("pass", "torch.get_float32_matmul_precision()"),
        ("torch.backends.cuda.matmul.allow_tf32 = True", "torch.backends.cuda.matmul.allow_tf32"),
        ("torch.set_float32_matmul_precision('high')", "torch.get_float32_matmul_precision()"),
        ("torch.backends.cuda.matmul.fp32_precision = 'tf32'", "torch.backends.cuda.matmul.fp32_precision"),
    ],
)
def test_resampling_turns_tf32_off_and_restores_the_runs_setting(setting: str, read_back: str) -> None:
    """Whichever of torch's precision APIs the run used (a fresh process each: mixing them is an error)."""
    import subprocess
    import sys

    code = f"""
import torch
from trainer.data.batch_resize import full_fp32_matmul
{setting}
before = {read_back}
with full_fp32_matmul():
    try:
        inside = torch.get_float32_matmul_precision()
    except RuntimeError:
        inside = torch.backends.cuda.matmul.fp32_precision
print(repr(before), repr(inside), repr({read_back}))
"""
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    before, inside, after = done.stdout.split()
    assert inside in ("'highest'", "'ieee'") and after == before


def test_auto_keeps_unsupported_interpolations_in_the_workers_and_device_refuses(monkeypatch) -> None:
    from trainer.config import ConfigError
    from trainer.data.loader import augment_on_device

    cuda, used = torch.device("cuda"), ("rgb", "depth", "semseg")
    assert augment_on_device(DataConfig(), cuda, used) and not augment_on_device(DataConfig(), CPU, used)
    assert augment_on_device(DataConfig(augment_on="device"), CPU, used)
    assert not augment_on_device(DataConfig(augment_on="worker"), cuda, used)
    monkeypatch.setattr(batch_resize, "INTERPOLATIONS", ("bilinear",))  # as for a plugin's own interpolation
    assert not augment_on_device(DataConfig(), cuda, used)
    with pytest.raises(ConfigError, match="semseg"):
        augment_on_device(DataConfig(augment_on="device"), cuda, used)


def test_depth_is_packed_only_from_native_uint16_levels() -> None:
    """The int16 view is exact for decode_depth's native uint16; a byte-swapped or wider array would be
    misread, so it is refused instead."""
    depth = MODALITIES["depth"]
    assert depth.to_packed is not None
    levels = np.array([[0, 1], [32768, 65535]], dtype=np.uint16)
    assert depth.to_packed(levels).dtype == np.int16
    for wrong in (levels.astype(">u2"), levels.astype(np.int32)):
        with pytest.raises(ValueError, match="native uint16"):
            depth.to_packed(wrong)

"""Surface normals, the fourth modality: Omnidata normal conversion, codec, augmentation, end to end.

Conversion golden (tests/data/dpt_hybrid_normal_golden.npz): computed once, outside this repository, with the
public Omnidata reference code github.com/EPFL-VILAB/omnidata at commit
f69ff3aedf983cb34c490a0afd0d29fdd83f6a1c (omnidata_tools/torch/modules/midas, unmodified), timm 1.0.31 and
torch 2.14.1 (CPU, fp32): `DPTDepthModel(backbone="vitb_rn50_384", num_channels=3)` (timm.create_model called
with pretrained=False: the reference asks for ImageNet weights that loading overwrites anyway),
`load_state_dict(weights, strict=True)`, eval, forward on the input. Weights and input come from the same
generator as the depth golden (tests/test_dpt_original.py), over the normal layout
(tests/data/dpt-hybrid-normal-original-state-dict.tsv, written from that model). Stored: the raw 3 x 128 x 160
output (before Omnidata's clamp to [0, 1]) and a fingerprint of the generated weights. No reference code is
in this repository.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from labelers import build_labeler, resolve_spec
from labelers.dpt import dpt_forward
from labelers.dpt_original import CheckpointLayoutError, convert_weights, load_dpt_hybrid_original
from labelers.omnidata import load_omnidata
from labelers.torch_labeler import FACING, unit_normals
from pipeline.cli.app import app
from pipeline.format.codecs import (
    CODECS,
    NORMAL_LENGTH_TOLERANCE,
    decode_normal,
    dequantize_normal,
    encode_semseg,
    quantize_normal,
)
from tests.test_dpt_original import (
    FINGERPRINT_KEYS,
    INPUT_SHAPE,
    fingerprint,
    read_layout,
    synthetic_input,
    synthetic_tensor,
)
from trainer.data.augment import Crop, augment
from trainer.train import RunOptions, build_config, pretrain

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
NORMAL_LAYOUT = DATA / "dpt-hybrid-normal-original-state-dict.tsv"
GOLDEN = DATA / "dpt_hybrid_normal_golden.npz"


def synthetic_normal_state() -> dict[str, torch.Tensor]:
    return {key: synthetic_tensor(key, shape) for key, shape in read_layout(NORMAL_LAYOUT).items()}


def random_normals(h: int, w: int, seed: int = 0) -> np.ndarray:
    n = np.random.default_rng(seed).normal(size=(h, w, 3))
    n[..., 2] = np.abs(n[..., 2])
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------------------ conversion


def test_normal_layout_differs_from_depth_only_in_the_head() -> None:
    normal, depth = read_layout(NORMAL_LAYOUT), read_layout()
    assert normal.keys() == depth.keys() and len(normal) == 368
    differ = {k for k in normal if normal[k] != depth[k]}
    assert differ == {"scratch.output_conv.4.weight", "scratch.output_conv.4.bias"}
    assert normal["scratch.output_conv.4.weight"] == (3, 32, 1, 1)


@pytest.fixture(scope="module")
def normal_state() -> dict[str, torch.Tensor]:
    return synthetic_normal_state()


@pytest.mark.slow
def test_converted_normal_model_matches_reference(normal_state: dict[str, torch.Tensor]) -> None:
    golden = np.load(GOLDEN)
    assert FINGERPRINT_KEYS[-1] == "scratch.output_conv.4.weight"  # the 3-channel head is in the fingerprint
    changed = "the generated weights changed (numpy PCG64 stream?), not the conversion"
    np.testing.assert_allclose(fingerprint(normal_state), golden["fingerprint"], rtol=1e-6, err_msg=changed)
    model = load_dpt_hybrid_original(normal_state, out_channels=3)
    assert type(model).__name__ == "DPTForSurfaceNormals"
    with torch.inference_mode():
        out = dpt_forward(model, synthetic_input())[0].numpy()
    expected = golden["normal"]
    assert out.shape == expected.shape == (3, *INPUT_SHAPE[2:])
    assert float((expected > 0).mean()) > 0.2  # a real map, not the non-negative head's zeros
    # the same tolerance, for the same reasons, as the depth conversion (tests/test_dpt_original.py)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-4 * float(np.abs(expected).max()))


@pytest.mark.slow
def test_v2_ckpt_v1_pth_and_converted_folder_load_the_same(
    tmp_path: Path, normal_state: dict[str, torch.Tensor]
) -> None:
    expected = np.load(GOLDEN)["normal"]
    atol = 2e-4 * float(np.abs(expected).max())
    v2 = tmp_path / "omnidata_dpt_normal_v2.ckpt"  # Lightning: state_dict with a `model.` prefix
    torch.save({"state_dict": {f"model.{k}": v for k, v in normal_state.items()}, "epoch": 1}, v2)
    v1 = tmp_path / "omnidata_rgb2normal_dpt_hybrid.pth"  # plain state dict
    torch.save(normal_state, v1)
    folder = convert_weights(v2, tmp_path / "converted")
    config = json.loads((folder / "config.json").read_text())
    assert config["num_output_channels"] == 3
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.0] * 3 and processor["image_std"] == [1.0] * 3
    for weights in (v2, v1, folder):
        model = load_omnidata(str(weights), 3)
        with torch.inference_mode():
            out = dpt_forward(model, synthetic_input())[0].numpy()
        np.testing.assert_allclose(out, expected, rtol=0, atol=atol, err_msg=str(weights))
    with pytest.raises(CheckpointLayoutError, match=r"shape mismatches.*head\.head\.4\.weight"):
        load_omnidata(str(v1), 1)  # a normal checkpoint is no depth network
    with pytest.raises(CheckpointLayoutError, match="3 output map"):
        load_omnidata(str(folder), 1)


def test_missing_normal_weights_say_where_to_get_them() -> None:
    from labelers import check_labeler
    from labelers.weights import WeightsUnavailableError

    spec = resolve_spec("omnidata-dpt-hybrid-normal", {"weights": "/nowhere/omnidata_dpt_normal_v2.ckpt"})
    with pytest.raises(WeightsUnavailableError, match=r"zenodo.org/records/10447888.*labelers\.normal"):
        check_labeler(spec)


# ------------------------------------------------------------------------------------------ labeler, codec


def test_network_output_becomes_unit_normals() -> None:
    pred = torch.rand(3, 5, 7)
    pred[:, 0, 0] = 0.5  # no direction predicted: facing the camera
    pred[:, 0, 1] = torch.tensor([1.7, -0.2, 0.5])  # out of range: clamped as Omnidata does, then unit
    n = unit_normals(pred)
    assert n.shape == (5, 7, 3) and n.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
    assert tuple(n[0, 0]) == FACING
    np.testing.assert_allclose(n[0, 1], [1 / np.sqrt(2), -1 / np.sqrt(2), 0.0], atol=1e-6)
    np.testing.assert_allclose(n[2, 3], unit_normals(pred[:, 2:3, 3:4])[0, 0])  # per pixel, no mixing


def test_smoke_labeler_makes_unit_normals_at_the_image_size() -> None:
    labeler = build_labeler(resolve_spec("omnidata-normal-smoke"))
    image = np.asarray(Image.open(ROOT / "examples" / "images" / "astronaut.jpg").convert("RGB"))[:90, :70]
    (n,) = labeler([image])
    assert n.shape == (90, 70, 3) and n.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
    assert float(n.std(axis=(0, 1)).min()) > 0.01  # varies over the image (the smoke head is centred)


def test_normal_codec_round_trip_within_quantisation() -> None:
    n = random_normals(33, 47)
    stored, encoding = quantize_normal(n)
    assert encoding is None and stored.dtype == np.uint8
    codec = CODECS["normal"]
    decoded = codec.decode(codec.encode(stored))
    assert np.array_equal(decoded, stored) and codec.problem(decoded) is None and codec.check(decoded) is None
    back = dequantize_normal(decoded)
    assert float(np.abs(back - n).max()) <= 1 / 255 + 1e-6
    assert float(np.abs(np.linalg.norm(back, axis=-1) - 1).max()) <= NORMAL_LENGTH_TOLERANCE
    omnidata = quantize_normal(np.array([[[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]]))[0].tolist()
    assert omnidata == [[[0, 128, 128], [128, 128, 255]]]  # Omnidata's mapping: [-1, 1] -> 0..255


def test_normal_codec_refuses_non_rgb_and_flags_non_unit_vectors() -> None:
    with pytest.raises(ValueError, match="8-bit RGB"):
        decode_normal(encode_semseg(np.zeros((4, 4), np.uint8)))
    flat = np.full((4, 4, 3), 128, np.uint8)  # (0, 0, 0): not a direction
    reason = CODECS["normal"].check(flat)
    assert reason is not None and "16 px are not unit vectors" in reason


# ------------------------------------------------------------------------------------------ augmentation


def _normal_pixels(n: np.ndarray) -> np.ndarray:
    return quantize_normal(n)[0]


def test_flip_negates_x_and_mirrors_every_modality_alike() -> None:
    h, w = 32, 48
    n = np.zeros((h, w, 3), np.float32)
    n[:, : w // 2] = (0.6, 0.0, 0.8)  # left half faces right
    n[:, w // 2 :] = (0.0, 0.6, 0.8)  # right half faces down
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 2] = 255
    arrays = {"rgb": rgb, "normal": _normal_pixels(n)}
    crop = Crop(top=0, left=0, height=h, width=w, flip=False)
    plain = augment(arrays, crop, 32)
    flipped = augment(arrays, dataclasses.replace(crop, flip=True), 32)
    # pixels mirror: the white half and the "faces right" half move to the right together
    assert float(flipped["rgb"][0, :, -4:].mean()) > float(flipped["rgb"][0, :, :4].mean())
    assert torch.allclose(
        flipped["normal"], torch.flip(plain["normal"], dims=[-1]) * torch.tensor([-1.0, 1, 1]).view(3, 1, 1)
    )
    right = flipped["normal"][:, :, -4:].mean(dim=(1, 2))  # was the left half: x must now point left
    assert right[0] < -0.5 and abs(float(right[1])) < 0.02 and right[2] > 0.7
    left = flipped["normal"][:, :, :4].mean(dim=(1, 2))
    assert abs(float(left[0])) < 0.02 and left[1] > 0.5  # y and z unchanged by a horizontal flip


def test_bilinear_resampling_renormalises() -> None:
    n = random_normals(40, 60, seed=3)  # neighbours point all over: averaging shortens them
    out = augment({"normal": _normal_pixels(n)}, Crop(top=3, left=5, height=31, width=41, flip=True), 16)["normal"]
    assert out.shape == (3, 16, 16)
    torch.testing.assert_close(out.norm(dim=0), torch.ones(16, 16), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ end to end


def _members(tar_path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tar:
        for info in tar.getmembers():
            key, _, suffix = info.name.partition(".")
            f = tar.extractfile(info)
            assert f is not None
            samples.setdefault(key, {})[suffix] = f.read()
    return samples


@pytest.mark.slow
def test_four_modalities_build_verify_pretrain_resume(tmp_path: Path) -> None:
    out = tmp_path / "demo-normal"
    args = ["build-dataset", str(ROOT / "examples" / "images"), str(out)]
    built = CliRunner().invoke(app, [*args, "--recipe", str(ROOT / "manifests" / "demo-normal.toml"), "--quiet"])
    assert built.exit_code == 0, built.output
    verified = CliRunner().invoke(app, ["verify", str(out), "--deep"])
    assert verified.exit_code == 0, verified.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modalities"]["normal"]["member"] == "normal.png"
    assert "[-1, 1] -> 0..255" in manifest["modalities"]["normal"]["encoding"]
    assert manifest["members"] == ["rgb.jpg", "depth.png", "semseg.png", "normal.png", "json"]
    count = 0
    for tar_path in sorted((out / "shards").glob("*.tar")):
        for key, sample in _members(tar_path).items():
            rgb = np.asarray(Image.open(io.BytesIO(sample["rgb.jpg"])))
            normal = decode_normal(sample["normal.png"])
            assert normal.shape == rgb.shape, key  # pixel-aligned with the stored rgb
            length = np.linalg.norm(dequantize_normal(normal), axis=-1)
            assert float(np.abs(length - 1).max()) <= NORMAL_LENGTH_TOLERANCE, key
            count += 1
    assert count == manifest["totals"]["written"] == 12

    torch.set_num_threads(1)
    cfg = build_config(ROOT / "trainer" / "configs" / "smoke-normal.toml", steps=10)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False, checkpoint_every=5))
    assert "normal" in cfg.model.inputs and "normal" in cfg.model.outputs
    first = pretrain(cfg, RunOptions(data=out, out=tmp_path / "run", device="cpu"))
    assert first.steps == 10 and first.skipped_nonfinite == 0
    interrupted = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run", interrupted)  # as if killed after step 7: last checkpoint at 5
    for name in ("checkpoint-10.pt", "metrics.jsonl"):
        (interrupted / name).unlink()
    shutil.copyfile(interrupted / "checkpoint-5.pt", interrupted / "checkpoint-last.pt")
    resumed = pretrain(cfg, RunOptions(data=out, out=interrupted, device="cpu"))
    assert resumed.steps == 10 and len(resumed.losses) == 5
    assert resumed.losses == pytest.approx(first.losses[5:], rel=1e-5, abs=1e-6)  # step-exact resume
    metrics = [json.loads(line) for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(6, 11)) and all(
        np.isfinite(m["losses"]["normal"]) for m in metrics
    )


def test_stored_normals_are_unit_or_facing() -> None:
    n = np.array([[[0.0, 0.0, 0.0], [np.nan, 1.0, 0.0], [0.0, 3.0, 4.0]]], np.float32)
    back = dequantize_normal(quantize_normal(n)[0])
    np.testing.assert_allclose(back[0, 0], FACING, atol=1.01 / 255)  # no direction: facing the camera
    np.testing.assert_allclose(back[0, 2], [0.0, 0.6, 0.8], atol=1.01 / 255)  # scaled to unit length
    assert CODECS["normal"].check(quantize_normal(n)[0]) is None

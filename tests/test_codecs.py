"""Every entry of the codec table round-trips; readers refuse anything outside the table."""

import numpy as np
import pytest

from pipeline.format.codecs import (
    CODECS,
    IGNORE_ID,
    KINDS,
    EncodeOptions,
    class_ids_problem,
    decode_depth,
    decode_member,
    dequantize_depth,
    invalid_class_ids,
    quantize_depth,
    split_member,
)
from tests.conftest import gradient

SAMPLES = {
    "depth": np.arange(0, 65535, 7, dtype=np.uint16)[: 40 * 60].reshape(40, 60),
    "semseg": (np.arange(40 * 60) % 133).astype(np.uint8).reshape(40, 60),
    "json": {"source": "a/b ü.jpg", "size": {"width": 3, "height": 2}},
    "cls": 417,
    "normal": np.stack([*np.meshgrid(np.arange(60) * 4, np.arange(40) * 6), np.full((40, 60), 200)], -1).astype(
        np.uint8
    ),
}


@pytest.mark.parametrize("name", sorted(CODECS))
def test_round_trip(name):
    codec = CODECS[name]
    if name == "rgb":
        rgb = gradient(40, 60)
        back = codec.decode(codec.encode(rgb))
        assert back.shape == rgb.shape and back.dtype == np.uint8 and codec.problem(back) is None
        assert np.abs(back.astype(int) - rgb).mean() < 3  # JPEG is lossy; q95 4:4:4 stays close
        return
    value = SAMPLES[name]
    back = decode_member(codec.suffix, codec.encode(value))
    assert codec.problem(back) is None
    if isinstance(value, np.ndarray):
        assert back.dtype == value.dtype and np.array_equal(back, value)
    else:
        assert back == value


def test_semseg_palette_keeps_ids():
    ids = SAMPLES["semseg"]
    palette = [v for i in range(256) for v in (i, 255 - i, 7)]
    assert np.array_equal(CODECS["semseg"].decode(CODECS["semseg"].encode(ids, EncodeOptions(palette=palette))), ids)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_codec_facts(name):
    """Every codec declares what its values are; the checks of verify and the loader come from these."""
    codec = CODECS[name]
    assert codec.kind in KINDS
    if codec.is_map:
        assert codec.dtype in ("uint8", "uint16") and codec.channels in (1, 3)
        wrong = np.zeros((4, 4, 2), np.float32)
        assert "must decode to" in (codec.problem(wrong) or "")
    else:
        assert codec.dtype is None and codec.channels is None and codec.problem({"any": 1}) is None


def test_depth_quantization_round_trips_within_one_step():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.3, 80.0, (37, 53)).astype(np.float32)
    q, enc = quantize_depth(depth, "depth")
    back = dequantize_depth(CODECS["depth"].decode(CODECS["depth"].encode(q)), enc)
    assert enc["kind"] == "depth" and np.abs(back - depth).max() <= enc["scale"]


def test_constant_depth_is_encodable():
    q, enc = quantize_depth(np.full((4, 4), 2.5, np.float32), "inverse_depth")
    assert np.allclose(dequantize_depth(q, enc), 2.5)


def test_8bit_png_is_not_depth():
    eight = CODECS["semseg"].encode(SAMPLES["semseg"])
    with pytest.raises(ValueError, match="16-bit"):
        decode_depth(eight)


@pytest.mark.parametrize("suffix", ["pyd", "pickle", "pth", "jpg", "depth.jpg"])
def test_unknown_members_are_refused(suffix):
    with pytest.raises(ValueError, match="unknown member"):
        decode_member(suffix, b"\x80\x04K\x01.")


def test_split_member():
    assert split_member("00000100003.depth.png") == ("00000100003", "depth.png")
    with pytest.raises(ValueError):
        split_member("nodot")


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_a_class_map_holds_classes_and_the_ignore_id_only(dtype):
    """The one rule (builder, verify --deep, loader): ids < num_classes or 255; anything else, counted."""
    ids = np.array([[0, 132, IGNORE_ID], [IGNORE_ID, 5, 6]], dtype)
    assert invalid_class_ids(ids, 133) == {} and class_ids_problem(ids, 133) is None
    ids[0, :2] = 133, 254
    ids[1, 1] = 254
    assert invalid_class_ids(ids, 133) == {133: 1, 254: 2}
    assert class_ids_problem(ids, 133) == "class ids [133, 254] >= num_classes 133 (and not 255) in 3 px"
    assert invalid_class_ids(ids, 133, ignore_id=254) == {133: 1, 255: 2}
    assert invalid_class_ids(np.zeros((0, 4), dtype), 1) == {}


def test_a_labelers_ids_outside_uint8_are_invalid_not_wrapped():
    assert invalid_class_ids(np.array([[-1, 0], [300, 0]]), 133) == {-1: 1, 300: 1}  # as uint8: 255 and 44

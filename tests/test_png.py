"""The label-map PNG writer: every array it accepts reads back exactly through Pillow, as a valid PNG of the
right mode; anything PNG cannot hold exactly is refused."""

import io

import numpy as np
import pytest
from PIL import Image

from labelers.classes import generated_palette
from pipeline.format.png import SIGNATURE, encode_png

RNG = np.random.default_rng(0)
SHAPES = [(1, 1), (1, 7), (7, 1), (291, 352)]


def _read(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as probe:
        probe.verify()  # chunk CRCs and structure
    return Image.open(io.BytesIO(data))


def _smooth(shape: tuple[int, ...], top: int) -> np.ndarray:
    """A ramp with noise, crossing byte boundaries (so the Up filter's wrap-around is exercised)."""
    h, w = shape[:2]
    ramp = np.add.outer(np.arange(h) * 97, np.arange(w) * 13).astype(np.int64)
    if len(shape) == 3:
        ramp = ramp[..., None] + np.arange(shape[2]) * 50
    return ((ramp + RNG.integers(0, 300, ramp.shape)) % (top + 1)).astype(np.uint16 if top > 255 else np.uint8)


@pytest.mark.parametrize("shape", SHAPES)
def test_16bit_grey_reads_back_exactly(shape):
    depth = _smooth(shape, 65535)
    depth.flat[0], depth.flat[-1] = 65535, 0
    im = _read(encode_png(depth))
    assert im.mode == "I;16" and im.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(im).astype(np.uint16), depth)


@pytest.mark.parametrize("shape", SHAPES)
def test_8bit_grey_and_rgb_read_back_exactly(shape):
    grey, rgb = _smooth(shape, 255), _smooth((*shape, 3), 255)
    assert _read(encode_png(grey)).mode == "L"
    assert np.array_equal(np.asarray(_read(encode_png(grey))), grey)
    assert _read(encode_png(rgb)).mode == "RGB"
    assert np.array_equal(np.asarray(_read(encode_png(rgb))), rgb)


def test_palette_keeps_indices_and_colours():
    ids = _smooth((40, 30), 254)
    ids[0, 0] = 255  # the ignore id
    palette = generated_palette(150)
    im = _read(encode_png(ids, palette=palette))
    assert im.mode == "P" and im.getpalette() == palette
    assert np.array_equal(np.asarray(im), ids)


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_every_zlib_level_is_lossless(level):
    depth = _smooth((50, 60), 65535)
    assert np.array_equal(np.asarray(_read(encode_png(depth, level))).astype(np.uint16), depth)


def test_views_and_byte_order_are_handled():
    base = _smooth((80, 90), 65535)
    view = base[::2, 5:70]  # not contiguous
    swapped = view.astype(">u2")  # big-endian input
    for arr in (view, swapped):
        assert np.array_equal(np.asarray(_read(encode_png(arr))).astype(np.uint16), view)


def test_output_is_plain_png_with_one_image_chunk():
    data = encode_png(_smooth((20, 20), 255))
    assert data.startswith(SIGNATURE) and data.count(b"IDAT") == 1 and data.endswith(b"IEND\xaeB`\x82")


@pytest.mark.parametrize(
    "array, palette, words",
    [
        (np.zeros((4, 4), np.float32), None, "float32"),
        (np.zeros((4, 4), np.int32), None, "int32"),
        (np.zeros((4, 4, 4), np.uint8), None, "(4, 4, 4)"),
        (np.zeros((4, 4), np.uint16), [0, 0, 0], "with a palette"),
        (np.zeros((0, 4), np.uint8), None, "empty"),
        (np.full((4, 4), 3, np.uint8), [0] * 9, "index 3 has no colour"),
        (np.zeros((4, 4), np.uint8), [0] * 10, "RGB triples"),
        (np.zeros((4, 4), np.uint8), [0] * 771, "RGB triples"),
    ],
)
def test_arrays_png_cannot_hold_are_refused(array, palette, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        encode_png(array, palette=palette)

"""Bad images are data (a reasoned failure), odd images convert to the right 8-bit RGB."""

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.build.images import decode_image
from pipeline.format.codecs import decode_rgb
from tests.conftest import bad_image_bytes, gradient, odd_image_bytes

LIMIT = 89_478_485
EXPECTED_ERRORS = {
    "zero.jpg": "ValueError",
    "truncated.jpg": "OSError",
    "not_an_image.jpg": "UnidentifiedImageError",
    "bomb.png": "DecompressionBombError",
    "text_bomb.png": "ValueError",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_bad_images_raise_a_named_error(name):
    with pytest.raises(Exception) as info:
        decode_image(bad_image_bytes()[name], max_pixels=LIMIT)
    assert type(info.value).__name__ == EXPECTED_ERRORS[name]


@pytest.mark.parametrize("name", sorted(odd_image_bytes()))
def test_odd_images_become_rgb(name):
    img = decode_image(odd_image_bytes()[name], max_pixels=LIMIT)
    expected_hw = (64, 48) if name == "rotated.jpg" else (48, 64)
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (*expected_hw, 3)
    # the stored JPEG decodes to exactly what the labelers saw
    assert np.array_equal(decode_rgb(img.jpeg), img.rgb)


def test_rotation_follows_exif():
    img = decode_image(odd_image_bytes()["rotated.jpg"], max_pixels=LIMIT)
    src = gradient(48, 64)
    # orientation 6: the displayed image is the stored one turned 90 degrees clockwise
    assert np.abs(img.rgb.astype(int) - np.rot90(src, k=-1)).mean() < 6
    assert img.orig_size == (64, 48) and not img.stored_original


def test_sixteen_bit_keeps_its_range():
    img = decode_image(odd_image_bytes()["sixteen.png"], max_pixels=LIMIT)
    assert img.rgb.max() > 200  # not clipped to white or black by a naive 8-bit conversion
    assert np.abs(img.rgb[..., 0].astype(int) - gradient(48, 64)[..., 0]).max() <= 2


def test_alpha_is_composited_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, "PNG")
    img = decode_image(buf.getvalue(), max_pixels=LIMIT)
    assert (img.rgb == 255).all()


def test_baseline_rgb_jpeg_is_stored_as_is():
    buf = io.BytesIO()
    Image.fromarray(gradient(30, 50)).save(buf, "JPEG", quality=80)
    img = decode_image(buf.getvalue(), max_pixels=LIMIT)
    assert img.stored_original and img.jpeg == buf.getvalue()


@pytest.mark.parametrize("name", ["progressive.jpg", "cmyk.jpg", "png_named.JPEG", "grey.jpg"])
def test_unsafe_sources_are_reencoded(name):
    img = decode_image(odd_image_bytes()[name], max_pixels=LIMIT)
    assert not img.stored_original


def test_resize_bounds_the_long_side():
    buf = io.BytesIO()
    Image.fromarray(gradient(300, 500)).save(buf, "JPEG")
    img = decode_image(buf.getvalue(), max_pixels=LIMIT, max_side=100)
    assert img.rgb.shape == (60, 100, 3) and not img.stored_original


def test_pixel_limit_is_configurable():
    buf = io.BytesIO()
    Image.fromarray(gradient(100, 100)).save(buf, "PNG")
    with pytest.raises(Image.DecompressionBombError):
        decode_image(buf.getvalue(), max_pixels=5000)


def test_pixel_limit_can_be_raised_above_pillows_default():
    from tests.conftest import png_header_only

    header = png_header_only(10_000, 10_000)  # 100 M pixels: over Pillow's default, under this limit
    with pytest.raises(Exception) as info:
        decode_image(header, max_pixels=200_000_000)
    assert not isinstance(info.value, Image.DecompressionBombError)  # it fails later, on its missing data

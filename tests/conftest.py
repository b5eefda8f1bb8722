"""Shared test set-up: offline hub, one smoke-model cache, one Ray session, and generated bad images."""

from __future__ import annotations

import io
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner, Result

from pipeline.cli.app import app

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MMFORGE_CACHE", os.path.join(tempfile.gettempdir(), "mmforge-test-cache"))
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"
DEMO_RECIPE = ROOT / "manifests" / "demo.toml"


@pytest.fixture(scope="session")
def ray_session():
    """One Ray session for every Ray test (starting one costs ~3 s); actors ask for <= 1 CPU here."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels in a few bytes (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)


def bad_image_bytes() -> dict[str, bytes]:
    """Files that must become recorded failures."""
    good = _save(Image.fromarray(gradient(40, 60)), "JPEG")
    text_info = PngImagePlugin.PngInfo()
    text_info.add_text("comment", "x" * 3_000_000, zip=True)
    return {
        "zero.jpg": b"",
        "truncated.jpg": good[: len(good) // 2],
        "not_an_image.jpg": b"this is a text file, not a picture\n" * 10,
        "bomb.png": png_header_only(20_000, 20_000),
        "text_bomb.png": _save(Image.fromarray(gradient(8, 8)), "PNG", pnginfo=text_info),
    }


def odd_image_bytes() -> dict[str, bytes]:
    """Files that are fine but need conversion: each must be written, as 8-bit RGB of the right shape."""
    rgb = gradient(48, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "cmyk.jpg": _save(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "grey.jpg": _save(Image.fromarray(rgb[..., 0]), "JPEG"),
        "palette.png": _save(p, "PNG"),
        "rgba.png": _save(Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])), "PNG"),
        "sixteen.png": _save(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), "PNG"),
        "rotated.jpg": _save(Image.fromarray(rgb), "JPEG", exif=exif),
        "png_named.JPEG": _save(Image.fromarray(rgb), "PNG"),
        "progressive.jpg": _save(Image.fromarray(rgb), "JPEG", progressive=True),
    }


@pytest.fixture
def source_with_bad_files(tmp_path: Path) -> Path:
    """The bundled photos plus every kind of bad and odd file, in one flat folder."""
    src = tmp_path / "src"
    shutil.copytree(EXAMPLES, src, ignore=shutil.ignore_patterns("*.md"))
    for name, data in {**bad_image_bytes(), **odd_image_bytes()}.items():
        (src / name).write_bytes(data)
    return src


def mmforge(*args: str) -> Result:
    """`mmforge ARGS` in this process (Typer's runner), its output and exit code."""
    return CliRunner().invoke(app, list(args))


def error_line(result: Result) -> str:
    """The one line of a refused command (exit 2)."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]

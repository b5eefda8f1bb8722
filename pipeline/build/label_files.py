"""Ground truth from files: the `files` labeler, which fills a modality from label files in a parallel folder.

A recipe asks for it as any other labeler:

    [labelers.semseg]
    name = "files"
    root = "../../annotations/{name}"     # relative to SRC (or absolute); {name}: SRC's folder name
    suffix = ".png"                       # SRC/a/b.jpg -> ROOT/a/b.png
    num_classes = 150
    classes = "ade20k-150"
    reduce_zero_label = true              # 0 -> ignore (255), k -> k - 1

The label of `SRC/<rel>.<ext>` is `ROOT/<rel><suffix>`: any single-channel image Pillow reads (8- or 16-bit
PNG, TIFF, float TIFF) or a `.npy` array (never unpickled). It must have the source image's stored size; it
then follows the image's EXIF rotation and `max_side` resize, nearest neighbour, so it stays pixel-aligned.
A missing, unreadable, misaligned or out-of-range label file is a recorded failure of that image (stage
`label`), never a sample without its label. Value maps are multiplied by `scale` (0.001: millimetres to
metres); 0, negative values, NaN and infinities are invalid pixels and stored as 0, which the trainer masks out.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from labelers import LabelerSpec
from labelers.standards import IGNORE_ID
from pipeline.build.images import DecodedImage, read_source
from pipeline.format.codecs import CODECS
from pipeline.format.schema import ConfigError, load, setting

NAME = "files"
LOCAL_ONLY = "label files (labeler 'files') are read from a local source folder, not from a store"
_TRANSPOSE = {  # EXIF orientation -> the Pillow transposition that ImageOps.exif_transpose applies
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}


class LabelFileError(ValueError):
    """A label file that cannot give this image its label (missing, unreadable, misaligned, out of range)."""


@dataclass(frozen=True, kw_only=True)
class FileLabels:
    """The settings of one `files` labeler (a `[labelers.<modality>]` table with `name = "files"`)."""

    root: str = setting(pattern=r".+")  # folder of label files, relative to SRC or absolute
    suffix: str = setting(".png", pattern=r"\.[A-Za-z0-9._-]+")
    num_classes: int = setting(0, ge=0, le=254)  # class maps: ids 0..num_classes-1 after the mapping below
    classes: str | None = None  # class maps: the class table (labelers.classes), for names and colours
    reduce_zero_label: bool = False  # class maps: file id 0 -> ignore, k -> k - 1 (ADE20K, NYUv2)
    ignore_values: tuple[int, ...] = ()  # class maps: file ids that mean "ignore" (after reduce_zero_label)
    scale: float = setting(1.0, gt=0, le=1e6)  # value maps: stored value x scale = the value (0.001: mm -> m)
    license: str = "the dataset's own (see its terms)"
    notes: str = ""

    def problems(self) -> list[str]:
        bad = [v for v in self.ignore_values if not 0 <= v <= 65535]
        return [f"ignore_values must be 0..65535, got {bad}"] if bad else []


def spec_of(modality: str, table: dict[str, Any]) -> LabelerSpec:
    """The labeler spec of `[labelers.<modality>] name = "files"`: settings checked, facts from the codec."""
    settings = load(FileLabels, {k: v for k, v in table.items() if k != "name"}, f"labelers.{modality}")
    codec = CODECS.get(modality)
    if codec is None or codec.kind not in ("value_map", "class_map"):
        what = f"a {codec.kind}" if codec is not None else "not a member type"
        raise ConfigError(f"[labelers.{modality}]: files labels are value or class maps; {modality!r} is {what}")
    classes = codec.kind == "class_map"
    if classes and not settings.num_classes:
        raise ConfigError(f"[labelers.{modality}]: a class map needs num_classes (1..254)")
    extra = {
        "suffix": settings.suffix,
        "reduce_zero_label": settings.reduce_zero_label,
        "ignore_values": list(settings.ignore_values),
        "scale": settings.scale,
    }
    return LabelerSpec(
        name=NAME,
        modality=modality,
        model_class="label files",
        weights=settings.root,
        license=settings.license,
        size=32,
        output="classes" if classes else ("depth" if modality == "depth" else "value"),
        num_classes=settings.num_classes if classes else None,
        classes=settings.classes if classes else None,
        notes=settings.notes or f"ground truth read from {settings.root}/<relative path>{settings.suffix}",
        extra=extra,
    )


def is_files(spec: LabelerSpec) -> bool:
    return spec.name == NAME


def label_root(spec: LabelerSpec, src: Path) -> Path:
    """`root` resolved against SRC; `{name}` in it is SRC's own folder name (images/training ->
    annotations/training, images/validation -> annotations/validation with one recipe)."""
    return src / Path(spec.weights.replace("{name}", src.resolve().name)).expanduser()


def check_root(spec: LabelerSpec, src: Path) -> None:
    root = label_root(spec, src)
    if not root.is_dir():
        raise ConfigError(f"[labelers.{spec.modality}]: label folder {root} does not exist (root is relative to SRC)")


def label_path(spec: LabelerSpec, src: Path, source: str) -> Path:
    rel = PurePosixPath(source)
    return label_root(spec, src) / rel.with_suffix(spec.extra["suffix"]).as_posix()


def _decode(path: Path, data: bytes, max_pixels: int) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as err:
            raise LabelFileError(f"{path.name}: not a plain .npy array ({err})") from None
    else:
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "F", "1"):
                    raise LabelFileError(f"{path.name}: label must be single-channel, got mode {im.mode}")
                arr = np.asarray(im)
        except (OSError, SyntaxError) as err:
            raise LabelFileError(f"{path.name}: unreadable ({err})") from None
    if arr.ndim != 2:
        raise LabelFileError(f"{path.name}: label must be a 2-D map, got shape {arr.shape}")
    return arr


def _check_size(arr: np.ndarray, img: DecodedImage, path: Path) -> None:
    w, h = img.orig_size
    if arr.shape != (h, w):
        raise LabelFileError(f"{path.name}: label is {arr.shape[1]}x{arr.shape[0]}, the image is {w}x{h}")


def _align(arr: np.ndarray, img: DecodedImage) -> np.ndarray:
    """The label (uint8 class ids or float32 values: exact in Pillow's modes I and F) on the stored image's
    grid, turned and resized as the image was (nearest neighbour)."""
    out_h, out_w = img.rgb.shape[:2]
    if img.orientation in _TRANSPOSE or (out_h, out_w) != arr.shape:
        im = Image.fromarray(arr.astype(np.float32 if arr.dtype.kind == "f" else np.int32))  # mode F or I
        for op in _TRANSPOSE.get(img.orientation, []):
            im = im.transpose(op)
        if im.size != (out_w, out_h):
            im = im.resize((out_w, out_h), Image.Resampling.NEAREST)
        arr = np.asarray(im)
    return arr


def _classes(arr: np.ndarray, spec: LabelerSpec, path: Path) -> np.ndarray:
    if arr.dtype.kind not in "iub":
        raise LabelFileError(f"{path.name}: class ids must be integers, got {arr.dtype}")
    ids = arr.astype(np.int64)
    ignore = np.isin(ids, spec.extra["ignore_values"])
    if spec.extra["reduce_zero_label"]:
        ignore |= ids == 0
        ids = ids - 1
    n = spec.num_classes or 0
    bad = (~ignore) & ((ids < 0) | (ids >= n))
    if bad.any():
        found = sorted(set((arr[bad]).tolist()))[:10]
        raise LabelFileError(f"{path.name}: file ids {found} are not classes 0..{n - 1} (after the recipe's mapping)")
    return np.where(ignore, IGNORE_ID, ids).astype(np.uint8)


def read_label(
    spec: LabelerSpec, src: Path, source: str, img: DecodedImage, *, max_bytes: int, max_pixels: int
) -> np.ndarray:
    """The label map of one source image: uint8 class ids (255 = ignore) or float32 values (0 = invalid)."""
    path = label_path(spec, src, source)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise LabelFileError(f"no label file for {source}: {path} {what}")
    try:
        data = read_source(path, max_bytes=max_bytes, max_pixels=max_pixels)
    except (OSError, ValueError) as err:
        raise LabelFileError(f"{path.name}: {err}") from None
    arr = _decode(path, data, max_pixels)
    _check_size(arr, img, path)
    # mapped first, on the file's own values (an id of 64 bits would wrap in the 32-bit image the turn and
    # resize use, and could land on a valid class); nearest neighbour commutes with the mapping
    if spec.output == "classes":
        return _align(_classes(arr, spec, path), img)
    values = arr.astype(np.float64) * spec.extra["scale"]
    values[~np.isfinite(values) | (values < 0)] = 0.0
    return _align(values.astype(np.float32), img)

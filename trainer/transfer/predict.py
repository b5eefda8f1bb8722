"""`mmforge predict`: a fine-tuned model's predictions for new images, each at the image's own size.

Input: a folder (or store prefix) of images, listed and decoded by the builder's rules (`pipeline.build.plan`
walks it: extensions in any case, hidden files skipped; `pipeline.build.images` reads each one: regular files
only, size and pixel limits, EXIF orientation, any mode to 8-bit RGB), or a dataset, whose shards are read by the
one shard reader (`pipeline.format.samples`) and whose members are decoded by the codec table (an RGB-D model
needs a dataset: a photo has no depth). Each image is resized whole (no crop) to the model's square input,
forwarded in batches, and the output is resampled back to the image's size: bilinearly (as `F.interpolate` with
`align_corners=False`), the logits of a class map before their argmax, in bands of rows so a large image never
holds every class's logits at once.

What the model's output is comes from its task's registry entry (`TransferTask.output`), and each kind has one
writer (`WRITERS`):
- `value_map` (depth): `maps/ITEM.depth.png`, uint16, value = png x `DEPTH_SCALE` (0.001: millimetres, so the
  file decodes to metres when the model predicts metres; 0 = zero or below; clipped at 65.535), and
  `maps/ITEM.depth.color.png` (the colour map over the image's 2-98 % range, a colour bar and that range below);
- `class_map` (semseg): `maps/ITEM.semseg.png`, uint8 class ids in palette mode (as the shards store them), and
  `maps/ITEM.semseg.color.png` with a legend of the classes present (names from the checkpoint's `task.classes`,
  colours from the bundled class table of those names, else generated ones);
- `scores` (cls): `predictions.csv`, one row per image, the top-5 class names and probabilities, assembled at the
  end of every run from the per-batch parts in `parts/`.
ITEM is the image's path below the input folder (`a/b.jpg` -> `maps/a/b.jpg.depth.png`) or SHARD/KEY of a dataset.

OUT is new, empty, or an output of `predict` (its marker `mmforge-predict.json`, which also records the checkpoint
by sha256, the task, the classes and how to read every file); another checkpoint's output is refused, and one run
at a time writes it (the one-writer lock of `pipeline.format.ownership`, naming the other run). Every file
is written under a temp name and renamed, so a rerun skips exactly the items whose files all exist (`kept`). An
input that cannot be read or decoded is a failure with its reason in `failures.jsonl` (rewritten at the end of
each run: failures are tried again by a rerun), never a crash. Every check of the options, the checkpoint, the
input and OUT comes before the model is built: a ConfigError, DataError or CheckpointError of one line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from labelers.classes import BUNDLED, class_table, full_palette, generated_palette
from pipeline.build.images import decode_upright, read_source
from pipeline.build.plan import walk_source
from pipeline.build.recipe import DEFAULT_EXTENSIONS, ImageConfig
from pipeline.format import fs
from pipeline.format.codecs import CODECS, DEPTH_LEVELS, encode_depth, encode_semseg
from pipeline.format.contract import LOCK, MARKER, TOOL, DatasetPaths
from pipeline.format.outputs import check_output
from pipeline.format.ownership import BuildLock
from pipeline.format.samples import read_samples
from pipeline.format.stores import Location, location
from pipeline.pictures.figures import class_colours, class_legend, colorbar, picture, png_bytes, stack
from trainer.config import ModelConfig
from trainer.data.augment import Crop, augment
from trainer.data.dataset import DatasetInfo, load_dataset
from trainer.data.loader import check_arrays, decode_modalities
from trainer.errors import ConfigError, DataError
from trainer.model.modalities import MODALITIES
from trainer.transfer.config import FinetuneConfig
from trainer.transfer.finetune import build_finetuned, check_evaluate_options, read_finetuned
from trainer.transfer.model import MultiViT
from trainer.transfer.tasks import transfer_task

PREDICT_MARKER = "mmforge-predict.json"
FAILURES = "failures.jsonl"
CSV_NAME = "predictions.csv"
DEPTH_SCALE = 0.001  # a depth PNG's value x this = the model's depth (metres: the PNG holds millimetres)
TOP_K = 5
_BAND_VALUES = 1 << 24  # at most this many resampled values (classes x rows x columns) at once
_LISTED = 5
_PART = re.compile(r"part-[0-9]{6,}\.csv")  # a batch of classification rows, as `ScoresWriter` names it
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")
_LEGEND_CLASSES = 48  # the most frequent classes of a picture named in its legend


# ------------------------------------------------------------------------------------------------ resampling


def resample_back(out: Tensor, size: tuple[int, int], reduce: Callable[[Tensor], Tensor]) -> Tensor:
    """(C, s, s') -> `reduce` of its bilinear resampling to (C, H, W), computed in bands of rows: the same values as
    `F.interpolate(..., mode="bilinear", align_corners=False)`, never more than `_BAND_VALUES` at once."""
    c, (h, w) = out.shape[0], size
    rows = max(1, _BAND_VALUES // max(1, c * w))
    xs = (torch.arange(w, dtype=torch.float32, device=out.device) + 0.5) / w * 2 - 1
    parts = []
    for top in range(0, h, rows):
        ys = (torch.arange(top, min(h, top + rows), dtype=torch.float32, device=out.device) + 0.5) / h * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (rows, W, 2): x, y in [-1, 1]
        band = F.grid_sample(out[None].float(), grid[None], mode="bilinear", padding_mode="border", align_corners=False)
        parts.append(reduce(band[0]))
    return torch.cat(parts, dim=-2)


def model_inputs(arrays: dict[str, np.ndarray], image_size: int) -> dict[str, Tensor]:
    """Decoded arrays (H x W, pixel-aligned) -> the model's inputs: the whole image resized to the square input."""
    h, w = next(iter(arrays.values())).shape[:2]
    return augment(arrays, Crop(top=0, left=0, height=h, width=w, flip=False), image_size)


# ------------------------------------------------------------------------------------------------ writers


class Writer(Protocol):
    """One kind of output: which items are done, one item's output, the end of a batch and of the run."""

    def done(self, name: str) -> bool: ...

    def write(self, name: str, out: Tensor, size: tuple[int, int]) -> None: ...

    def flush(self) -> None: ...

    def finish(self) -> None: ...


@dataclass
class Classes:
    """The classes a checkpoint predicts: names by id (its `task.classes`, else `class N`) and their colours."""

    names: tuple[str, ...]
    palette: list[int]

    @classmethod
    def of(cls, count: int, names: tuple[str, ...]) -> Classes:
        shown = tuple(names[i] if i < len(names) else f"class {i}" for i in range(count))
        return cls(shown, _palette(names, count))


def _palette(names: tuple[str, ...], count: int) -> list[int]:
    """The colours of the bundled class table with exactly these names; generated ones otherwise."""
    for table in BUNDLED:
        if names and class_table(table).names == names:
            return class_table(table).palette()
    return full_palette(generated_palette(count))


class MapWriter:
    """A dense output: `maps/ITEM.<task>.png` (the values) and `maps/ITEM.<task>.color.png` (a picture)."""

    def __init__(self, out: Path, task: str, classes: Classes) -> None:
        self.root, self.task, self.classes = out / "maps", task, classes

    def paths(self, name: str) -> tuple[Path, Path]:
        return self.root / f"{name}.{self.task}.png", self.root / f"{name}.{self.task}.color.png"

    def done(self, name: str) -> bool:
        return all(p.is_file() for p in self.paths(name))

    def write(self, name: str, out: Tensor, size: tuple[int, int]) -> None:
        values, picture = self.encode(out, size)
        data, colour = self.paths(name)
        data.parent.mkdir(parents=True, exist_ok=True)
        fs.write_bytes_atomic(colour, picture)
        fs.write_bytes_atomic(data, values)  # last: the item is done once both exist

    def encode(self, out: Tensor, size: tuple[int, int]) -> tuple[bytes, bytes]:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        pass


class DepthWriter(MapWriter):
    def encode(self, out: Tensor, size: tuple[int, int]) -> tuple[bytes, bytes]:
        depth = resample_back(out[:1], size, lambda band: band[0]).cpu().numpy()
        q = np.clip(np.rint(np.nan_to_num(depth, nan=0.0) / DEPTH_SCALE), 0, DEPTH_LEVELS).astype(np.uint16)
        valid = q > 0
        lo, hi = np.percentile(depth[valid], (2, 98)) if valid.any() else (0.0, 0.0)
        im = Image.fromarray(picture(depth, "value_map", valid=valid))
        text = f"{self.task} 2-98 %: {lo:.3g} .. {hi:.3g} (bright = larger); values = {self.task}.png x {DEPTH_SCALE:g}"
        return encode_depth(q), png_bytes(stack([im, colorbar(text, max(im.width, 320))]))


class ClassMapWriter(MapWriter):
    def encode(self, out: Tensor, size: tuple[int, int]) -> tuple[bytes, bytes]:
        ids = resample_back(out, size, lambda band: band.argmax(dim=0)).to(torch.uint8).cpu().numpy()
        colours = class_colours(self.classes.palette)
        im = Image.fromarray(colours[ids])
        counts = np.bincount(ids.ravel(), minlength=256)
        present = [int(c) for c in np.argsort(-counts, kind="stable")[:_LEGEND_CLASSES] if counts[c]]
        shown = [(c, self.classes.names[c], tuple(colours[c].tolist())) for c in present]
        legend = class_legend(shown, max(im.width, 360))  # type: ignore[arg-type]
        return encode_semseg(ids, self.classes.palette), png_bytes(stack([im, legend]))


class ScoresWriter:
    """Class scores per image: the top-5 names and probabilities, one CSV row per image (`predictions.csv`),
    written per batch as a part (`parts/part-NNNNNN.csv`) and assembled from every part at the end of a run."""

    def __init__(self, out: Path, task: str, classes: Classes) -> None:
        self.out, self.classes = out, classes
        self.parts = out / "parts"
        self.rows: list[list[str]] = []
        self.seen = {row[0] for row in self._read_parts()}
        self.next = 1 + max((int(p.stem[len("part-") :]) for p in self._part_files()), default=0)

    def header(self) -> list[str]:
        k = min(TOP_K, len(self.classes.names))
        return ["image", *(f"{what}_{i}" for i in range(1, k + 1) for what in ("class", "probability"))]

    def done(self, name: str) -> bool:
        return name in self.seen

    def write(self, name: str, out: Tensor, size: tuple[int, int]) -> None:
        probs = out.float().softmax(dim=-1)
        top = probs.topk(min(TOP_K, probs.numel()))
        pairs = [(self.classes.names[int(i)], f"{float(p):.6f}") for p, i in zip(top.values, top.indices, strict=True)]
        self.rows.append([name, *(v for pair in pairs for v in pair)])

    def flush(self) -> None:
        if not self.rows:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        fs.write_bytes_atomic(self.parts / f"part-{self.next:06d}.csv", _csv([self.header(), *self.rows]))
        self.seen.update(row[0] for row in self.rows)
        self.next, self.rows = self.next + 1, []

    def finish(self) -> None:
        self.flush()
        rows = sorted(self._read_parts())
        fs.write_bytes_atomic(self.out / CSV_NAME, _csv([self.header(), *rows]))

    def _part_files(self) -> list[Path]:
        if not self.parts.is_dir():
            return []
        return sorted(p for p in self.parts.iterdir() if _PART.fullmatch(p.name))

    def _read_parts(self) -> list[list[str]]:
        rows = []
        for part in self._part_files():
            rows += list(csv.reader(io.StringIO(part.read_text(encoding="utf-8"))))[1:]
        return rows


def _csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode("utf-8")


WRITERS: dict[str, Callable[[Path, str, Classes], Writer]] = {
    "value_map": DepthWriter,
    "class_map": ClassMapWriter,
    "scores": ScoresWriter,
}


# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Item:
    """One input on its way to the model: its name in OUT and its decoded arrays (H x W, pixel-aligned)."""

    name: str
    arrays: dict[str, np.ndarray]


@dataclass
class Tally:
    """What became of the inputs that were not predicted: kept from an earlier run, or failed (with reasons)."""

    bar: Any = None  # the progress bar, moved on by each
    kept: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)

    def keep(self) -> None:
        self.kept += 1
        self._moved()

    def failed(self, name: str, err: BaseException | str) -> None:
        reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        reason = _ADDRESS.sub("", " ".join(reason.split()))  # `<_io.BytesIO object at 0x7f...>`: the same each run
        self.failures.append({"input": name, "reason": reason})
        self._moved()

    def _moved(self) -> None:
        if self.bar is not None:
            self.bar.update(1)


class Source(Protocol):
    @property
    def total(self) -> int: ...  # how many inputs (the progress bar's length)

    def items(self, skip: Callable[[str], bool], tally: Tally) -> Iterator[Item]: ...


@dataclass
class ImageFolder:
    """A folder or store prefix of images, walked as `build-dataset` walks its source."""

    root: Location
    files: list[str]
    limits: ImageConfig = field(default_factory=ImageConfig)

    @property
    def total(self) -> int:
        return len(self.files)

    def items(self, skip: Callable[[str], bool], tally: Tally) -> Iterator[Item]:
        for rel in self.files:
            if not _safe_name(rel):
                tally.failed(rel, "not a safe name for a file in OUT")
                continue
            if skip(rel):
                continue
            try:
                data = read_source(
                    self.root.join(rel), max_bytes=self.limits.max_file_bytes, max_pixels=self.limits.max_pixels
                )
                yield Item(rel, {"rgb": decode_upright(data, max_pixels=self.limits.max_pixels)})
            except Exception as err:  # any bad image is one recorded failure
                tally.failed(rel, err)


@dataclass
class Shards:
    """A dataset's shards: every sample, its model inputs decoded by the codec table."""

    info: DatasetInfo
    model: ModelConfig

    @property
    def total(self) -> int:
        return self.info.total_samples

    def items(self, skip: Callable[[str], bool], tally: Tally) -> Iterator[Item]:
        for shard in self.info.shards:

            def broken(err: Exception, where: str = shard.name) -> None:
                tally.failed(where, err)

            for key, sample in read_samples(shard.path, on_error=broken):
                name = f"{shard.name}/{key}"
                if not _safe_name(name):
                    tally.failed(name, "not a safe name for a file in OUT")
                elif not skip(name):
                    try:
                        arrays = decode_modalities(sample, self.model.inputs)
                        check_arrays(arrays, self.model)
                        yield Item(name, arrays)
                    except Exception as err:
                        tally.failed(name, err)


def _safe_name(name: str) -> bool:
    parts = name.split("/")
    return not name.startswith("/") and all(p not in ("", ".", "..") for p in parts) and "\0" not in name


def open_source(where: Location, cfg: FinetuneConfig) -> Source:
    """The input, checked: a dataset (its documents, the members the model reads) or a folder of images (some
    images; an RGB model); a DataError of one line otherwise."""
    if not where.is_folder():
        raise DataError(f"{where}: no such folder (predict takes a folder of images or a dataset)")
    inputs = tuple(cfg.model.inputs)
    if where.join(MARKER).exists(folder=False) or where.join("index.json").exists(folder=False):
        info = load_dataset(where)
        present = set(info.manifest.members) if info.manifest is not None else set()
        if info.manifest is not None:
            present |= {m.member for m in info.manifest.modalities.values()}
        missing = [n for n in inputs if CODECS[MODALITIES[n].codec].suffix not in present]
        if missing:
            raise DataError(f"dataset {where} lacks the model's input(s) {', '.join(missing)}")
        return Shards(info, cfg.model)
    if inputs != ("rgb",):
        raise DataError(
            f"this model reads {', '.join(inputs)}; a folder of images gives rgb alone: predict from a dataset "
            "holding every input (build-dataset labels them)"
        )
    try:
        files = [rel for rel, _, _ in walk_source(where, DEFAULT_EXTENSIONS)]
    except (OSError, ValueError) as err:
        raise DataError(f"{where}: cannot be listed: {err}") from None
    if not files:
        raise DataError(f"{where}: no images ({', '.join(DEFAULT_EXTENSIONS)}) and not a dataset")
    return ImageFolder(where, files)


# ------------------------------------------------------------------------------------------------ OUT


def check_out(out: Path, source: Location, record: dict[str, Any]) -> None:
    """OUT is new, empty, or `predict`'s output of this checkpoint (its marker); writable; not inside the input.
    A ConfigError of one line otherwise."""
    check_output(out, "OUT")  # not inside a dataset, not over a run's files
    if location(out).inside(source.absolute()):
        raise ConfigError(f"OUT {out} is inside the input {source}; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"OUT {out} is a file; predict writes a folder")
    existing = out if out.is_dir() else next(p for p in out.absolute().parents if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"OUT {out}: {existing} cannot be written")
    entries = sorted(p.name for p in out.iterdir() if not fs.is_temp(p) and p.name != LOCK) if out.is_dir() else []
    if not entries:
        return
    if PREDICT_MARKER not in entries:
        more = len(entries) - _LISTED
        listed = ", ".join(entries[:_LISTED]) + (f" and {more} more" if more > 0 else "")
        raise ConfigError(
            f"OUT {out} is not empty and has no {PREDICT_MARKER} marker, so it is not a predict output ({listed}); "
            "choose a new or empty folder"
        )
    try:
        marker = fs.read_json(out / PREDICT_MARKER)
    except (OSError, ValueError) as err:
        raise ConfigError(f"OUT {out}: {PREDICT_MARKER} cannot be read ({err}); choose a new or empty folder") from None
    if not isinstance(marker, dict) or marker.get("checkpoint_sha256") != record["checkpoint_sha256"]:
        was = marker.get("checkpoint") if isinstance(marker, dict) else "?"
        raise ConfigError(f"OUT {out} holds the predictions of another checkpoint ({was}); choose a new folder")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def marker_record(checkpoint: Path, source: str, cfg: FinetuneConfig, classes: Classes, output: str) -> dict[str, Any]:
    """The marker: what wrote OUT, from which checkpoint, and how to read its files."""
    files = {
        "value_map": {
            f"maps/ITEM.{cfg.task.name}.png": f"uint16; value = png x {DEPTH_SCALE} (metres when the model predicts "
            "metres: its training target, decoded depth x task.depth_scale); 0 = zero or below",
            f"maps/ITEM.{cfg.task.name}.color.png": "colour map over the image's 2-98 % range, colour bar below",
        },
        "class_map": {
            f"maps/ITEM.{cfg.task.name}.png": "uint8 class ids (palette mode; ids = `classes`)",
            f"maps/ITEM.{cfg.task.name}.color.png": "class colours, legend of the classes present below",
        },
        "scores": {CSV_NAME: f"image, then the top-{TOP_K} class names and softmax probabilities"},
    }[output]
    return {
        "tool": TOOL,
        "kind": "predict",
        "format": 1,
        "checkpoint": source,
        "checkpoint_sha256": _sha256(checkpoint),
        "task": cfg.task.name,
        "inputs": list(cfg.model.inputs),
        "image_size": cfg.model.image_size,
        "classes": list(classes.names),
        "depth_scale": DEPTH_SCALE if output == "value_map" else None,
        "files": files | {FAILURES: "one JSON line per input that could not be predicted, with its reason"},
    }


# ------------------------------------------------------------------------------------------------ predict


@dataclass(frozen=True, kw_only=True)
class PredictSummary:
    out: Path
    task: str
    predicted: int
    kept: int
    failed: int

    def text(self) -> str:
        where = f"; failures with their reasons: {self.out / FAILURES}" if self.failed else ""
        return f"{self.predicted} predicted, {self.kept} kept, {self.failed} failed ({self.task}) -> {self.out}{where}"


def predict(
    checkpoint: Path,
    inputs: Location,
    out: Path,
    device: str = "cpu",
    batch: int = 16,
    source: str | None = None,
    quiet: bool = False,
) -> PredictSummary:
    """`checkpoint`'s predictions for every image of `inputs` (a folder of images or a dataset) into `out`, each at
    the image's own size (see the module's text); `source`: where the checkpoint came from (a store URL, when
    `checkpoint` is its local copy). Every check comes before the model is built."""
    where = check_evaluate_options(device, None, batch)
    ckpt, cfg, model_classes = read_finetuned(checkpoint, use="predict")
    output = transfer_task(cfg.task.name).output
    if output not in WRITERS:
        kinds = ", ".join(WRITERS)
        raise ConfigError(
            f"{checkpoint}: predict writes no files for the {cfg.task.name} task (its registry entry's output is "
            f"{output!r}, not one of {kinds})"
        )
    classes = Classes.of(model_classes.count, cfg.task.classes)
    src = open_source(inputs, cfg)
    record = marker_record(checkpoint, source or str(checkpoint), cfg, classes, output)
    check_out(out, inputs, record)
    out.mkdir(parents=True, exist_ok=True)
    with BuildLock(DatasetPaths(out)):  # one writer per OUT; another run's pid, host and command named
        _remove_temps(out)
        fs.write_json_atomic(out / PREDICT_MARKER, record)
        writer = WRITERS[output](out, cfg.task.name, classes)
        model = build_finetuned(ckpt, cfg, model_classes, where)
        bar = tqdm(total=src.total, unit="img", desc="predict", disable=quiet, file=sys.stderr, dynamic_ncols=True)
        tally, predicted = Tally(bar), 0
        with bar:
            for chunk in _batches(src.items(lambda name: _kept(writer, name, tally), tally), batch):
                predicted += _forward(model, chunk, writer, where)
                bar.update(len(chunk))
                bar.set_postfix_str(f"kept {tally.kept}, failed {len(tally.failures)}", refresh=False)
        writer.finish()
        fs.write_bytes_atomic(out / FAILURES, "".join(json.dumps(f) + "\n" for f in tally.failures).encode())
    return PredictSummary(out=out, task=cfg.task.name, predicted=predicted, kept=tally.kept, failed=len(tally.failures))


def _remove_temps(out: Path) -> None:
    """The temp files a killed run left, in OUT and every folder below it."""
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir() and not p.is_symlink() and not fs.is_temp(p))]:
        fs.remove_temps(folder)


def _kept(writer: Writer, name: str, tally: Tally) -> bool:
    """Whether `name`'s outputs exist from an earlier run (then counted as kept)."""
    if not writer.done(name):
        return False
    tally.keep()
    return True


def _batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _forward(model: MultiViT, chunk: list[Item], writer: Writer, device: torch.device) -> int:
    """One batch through the model; each output written at its image's own size. Returns how many."""
    size = model.cfg.model.image_size
    tensors = [model_inputs(item.arrays, size) for item in chunk]
    batch = {n: torch.stack([t[n] for t in tensors]).to(device) for n in model.cfg.model.inputs}
    with torch.no_grad():
        out = model(batch).float()
    for item, one in zip(chunk, out, strict=True):
        h, w = next(iter(item.arrays.values())).shape[:2]
        writer.write(item.name, one, (int(h), int(w)))
    writer.flush()
    return len(chunk)

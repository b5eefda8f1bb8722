"""Typed configs of `build-dataset`: a recipe (TOML, versioned in manifests/) plus the run's own options.

Each part is a small keyword-only dataclass; unknown keys anywhere in a recipe are errors, never ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelers import LabelerSpec, resolve_spec

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif")
MAX_SHARD_SIZE = 99_999  # keys are shard * 10^5 + position


class ConfigError(ValueError):
    """Bad user input (recipe, options, paths): reported in one line, exit code 2, nothing written."""


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    split: str = "train"
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    class_folders: str = "auto"  # auto | yes | no


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    max_side: int = 0  # 0 keeps the original size
    max_pixels: int = 89_478_485  # decompression-bomb limit (Pillow's default)
    jpeg_quality: int = 95


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    size: int = 1000


@dataclass(frozen=True, kw_only=True)
class EncodingConfig:
    png_level: int = 1  # zlib level for depth/semseg PNGs: 1 is ~4x faster than 6 for 16-bit maps


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """How to run. Batch size and precision change float rounding inside the models, so they are part of
    the recipe's fingerprint (a resume must use the same); the rest never changes the output bytes."""

    batch_size: int = 16
    precision: str = "bf16"  # on GPU; CPU always runs fp32
    gpus_per_actor: float = 0.5  # depth and semseg actors share one GPU
    cpus_per_actor: float = 0.0  # 0 = auto (1 with GPUs, 0.5 on CPU-only nodes)
    actors_per_labeler: int = 0  # 0 = auto (one per GPU, else 1)
    max_retries: int = 2  # per shard, then the shard is reported failed
    shards_in_flight: int = 0  # 0 = auto (2 x cluster CPUs)


DEFAULT_LABELERS = {
    "depth": {"name": "dpt-hybrid-midas"},
    "semseg": {"name": "mask2former-swin-small-coco-panoptic"},
}


@dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str = "default"
    description: str = "Real labelers: MiDaS DPT-Hybrid depth and Mask2Former Swin-S COCO panoptic semantics."
    source: SourceConfig = field(default_factory=SourceConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    labelers: tuple[LabelerSpec, ...] = ()

    def output_dict(self) -> dict[str, Any]:
        """Everything that shapes the output bytes: all but the description and most of [runtime]."""
        d = {k: v for k, v in to_dict(self).items() if k not in ("runtime", "description")}
        d["runtime"] = {"batch_size": self.runtime.batch_size, "precision": self.runtime.precision}
        return d

    def fingerprint(self) -> str:
        blob = json.dumps(self.output_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain JSON-able dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if isinstance(obj, LabelerSpec):
            return obj.to_dict()
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _section(cls: type, table: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) in [{where}]: {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    for key, value in values.items():
        default = names[key].default
        if default is not dataclasses.MISSING and not _same_kind(value, default):
            raise ConfigError(f"[{where}] {key} must be {type(default).__name__}, got {value!r}")
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"[{where}]: {err}") from err


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return type(value) is type(default)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _labelers(table: dict[str, Any]) -> tuple[LabelerSpec, ...]:
    specs = []
    for modality, entry in table.items():
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"[labelers.{modality}] needs a `name` (a registered labeler)")
        overrides = {k: v for k, v in entry.items() if k != "name"}
        if isinstance(overrides.get("weights"), str) and Path(overrides["weights"]).expanduser().exists():
            overrides["weights"] = str(Path(overrides["weights"]).expanduser().resolve())  # workers need no cwd
        try:
            spec = resolve_spec(entry["name"], overrides)
        except (KeyError, ValueError, TypeError) as err:
            raise ConfigError(f"[labelers.{modality}]: {err.args[0]}") from err
        if spec.modality != modality:
            raise ConfigError(f"[labelers.{modality}]: labeler {spec.name!r} makes {spec.modality!r}, not {modality!r}")
        specs.append(spec)
    return tuple(specs)


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    data = dict(data)
    header = data.pop("recipe", {})
    parts = {
        "source": SourceConfig,
        "image": ImageConfig,
        "shards": ShardConfig,
        "encoding": EncodingConfig,
        "runtime": RuntimeConfig,
    }
    unknown = sorted(set(data) - set(parts) - {"labelers"})
    if unknown:
        raise ConfigError(
            f"unknown recipe section(s): {', '.join(unknown)}; allowed: recipe, labelers, {', '.join(parts)}"
        )
    header_unknown = sorted(set(header) - {"name", "description"})
    if header_unknown:
        raise ConfigError(f"unknown key(s) in [recipe]: {', '.join(header_unknown)}; allowed: description, name")
    kwargs = {name: _section(cls, data.get(name, {}), name) for name, cls in parts.items()}
    recipe = Recipe(**header, **kwargs, labelers=_labelers(data.get("labelers", DEFAULT_LABELERS)))
    validate(recipe)
    return recipe


def load_recipe(path: Path | None) -> Recipe:
    if path is None:
        return recipe_from_dict({})
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"recipe {path} is not valid TOML: {err}") from err
    return recipe_from_dict(data)


def validate(recipe: Recipe) -> None:
    if not 1 <= recipe.shards.size <= MAX_SHARD_SIZE:
        raise ConfigError(f"shard size must be between 1 and {MAX_SHARD_SIZE}, got {recipe.shards.size}")
    if recipe.runtime.batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {recipe.runtime.batch_size}")
    if recipe.source.class_folders not in ("auto", "yes", "no"):
        raise ConfigError("[source] class_folders must be auto, yes or no")
    if not re.fullmatch(r"[A-Za-z0-9_]+", recipe.source.split):
        raise ConfigError(
            f"split must be letters, digits or '_' (it names the shard files), got {recipe.source.split!r}"
        )
    if not 0 <= recipe.encoding.png_level <= 9:
        raise ConfigError("[encoding] png_level must be 0..9")
    if recipe.runtime.max_retries < 0:
        raise ConfigError("[runtime] max_retries must be >= 0")
    if not recipe.labelers:
        raise ConfigError("a recipe needs at least one labeler")


def with_overrides(
    recipe: Recipe, *, shard_size: int | None = None, batch_size: int | None = None, split: str | None = None
) -> Recipe:
    """CLI flags override the recipe."""
    if shard_size is not None:
        recipe = dataclasses.replace(recipe, shards=dataclasses.replace(recipe.shards, size=shard_size))
    if batch_size is not None:
        recipe = dataclasses.replace(recipe, runtime=dataclasses.replace(recipe.runtime, batch_size=batch_size))
    if split is not None:
        recipe = dataclasses.replace(recipe, source=dataclasses.replace(recipe.source, split=split))
    validate(recipe)
    return recipe


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    src: Path
    out: Path
    recipe: Recipe
    overwrite: bool = False
    address: str | None = None
    executor: str = "ray"  # ray | local (in-process, no Ray: debugging and tests)
    quiet: bool = False

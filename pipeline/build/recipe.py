"""Typed configs of `build-dataset`: a recipe (TOML, versioned in manifests/, each one named by its file name:
`--recipe demo`) plus the run's own options.

Each part is a small keyword-only dataclass; unknown keys anywhere in a recipe are errors, never ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelers import LabelerSpec, resolve_spec
from labelers.spec import OUTPUT_MEMBER_KIND
from labelers.standards import PRECISIONS
from pipeline.build import label_files
from pipeline.format.codecs import CODECS
from pipeline.format.schema import (
    ConfigError,
    load,
    named_file,
    problems_of,
    read_toml,
    setting,
    to_plain,
    with_command_line,
)
from pipeline.format.stores import Location, location

__all__ = [
    "RECIPES",
    "BuildConfig",
    "ConfigError",
    "Recipe",
    "load_recipe",
    "recipe_from_dict",
    "to_dict",
    "with_overrides",
]

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif")
MAX_SHARD_SIZE = 99_999  # keys are shard * 10^5 + position
# The shipped recipes, by name (--recipe demo): manifests/ of the checkout, through the link recipes ->
# ../../manifests; a wheel or sdist holds the files themselves here (package data).
RECIPES = Path(__file__).parent / "recipes"
to_dict = to_plain


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    split: str = setting("train", pattern=r"[A-Za-z0-9_]+")  # names the shard files
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    class_folders: str = setting("auto", choices=("auto", "yes", "no"))

    def problems(self) -> list[str]:
        bad = [e for e in self.extensions if not (e.startswith(".") and len(e) > 1 and "/" not in e)]
        found = [f"extensions must look like '.jpg', got {bad}"] if bad else []
        return found + (["extensions must not be empty"] if not self.extensions else [])


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    max_side: int = setting(0, ge=0, le=65_536)  # 0 keeps the original size; a larger image is shrunk to it
    # decompression-bomb limit (Pillow's default); <= 2^30 pixels (3 GiB decoded RGB)
    max_pixels: int = setting(89_478_485, ge=1, le=2**30)
    # larger source files are recorded failures, never read; <= 4 GiB
    max_file_bytes: int = setting(256 * 2**20, ge=1, le=2**32)
    jpeg_quality: int = setting(95, ge=1, le=100)


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    size: int = setting(1000, ge=1, le=MAX_SHARD_SIZE)


@dataclass(frozen=True, kw_only=True)
class EncodingConfig:
    png_level: int = setting(1, ge=0, le=9)  # zlib level for label PNGs: 1 is ~4x faster than 6 for 16-bit maps


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """How to run. Batch size and precision change float rounding inside the models, so they are part of
    the recipe's fingerprint (a resume must use the same); the rest never changes the output bytes."""

    batch_size: int = setting(16, ge=1, le=4096)
    precision: str = setting("bf16", choices=PRECISIONS)  # on GPU; CPU always runs fp32
    gpus_per_actor: float = setting(0.5, ge=0, le=64)  # depth and semseg actors share one GPU
    cpus_per_actor: float = setting(0.0, ge=0, le=1024)  # 0 = auto (1 with GPUs, 0.5 on CPU-only nodes)
    actors_per_labeler: int = setting(0, ge=0, le=65_536)  # 0 = auto (one per GPU, else 1)
    max_retries: int = setting(2, ge=0, le=100)  # per shard, then the shard is reported failed
    shards_in_flight: int = setting(0, ge=0, le=1_000_000)  # 0 = auto (2 x cluster CPUs)
    # name shards that made no progress this long (0 = never); <= 10,080 (a week)
    stall_minutes: float = setting(10.0, ge=0, le=10_080)


@dataclass(frozen=True, kw_only=True)
class RecipeHeader:
    name: str = "default"
    description: str = "Real labelers: MiDaS DPT-Hybrid depth and Mask2Former Swin-S COCO panoptic semantics."


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

    def problems(self) -> list[str]:
        return [] if self.labelers else ["a recipe needs at least one labeler"]


def member_problem(spec: LabelerSpec) -> str | None:
    """Why `spec`'s maps cannot be stored as its modality's member (None when they can)."""
    codec = CODECS.get(spec.modality)
    if codec is None:
        return f"labeler {spec.name!r} makes {spec.modality!r}, which no codec stores; known: {sorted(CODECS)}"
    if codec.kind != OUTPUT_MEMBER_KIND[spec.output]:
        return f"labeler {spec.name!r} makes {spec.output!r} maps, but member {codec.suffix} is a {codec.kind}"
    return None


def _labelers(table: Any, problems: list[str]) -> tuple[LabelerSpec, ...]:
    if not isinstance(table, dict) or not table:
        problems.append("[labelers] needs at least one [labelers.<modality>] table")
        return ()
    specs = []
    for modality, entry in table.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            problems.append(f"[labelers.{modality}] needs a `name` (a registered labeler)")
            continue
        if entry["name"] == label_files.NAME:
            try:
                specs.append(label_files.spec_of(modality, entry))
            except (ConfigError, ValueError) as err:
                problems += err.problems if isinstance(err, ConfigError) else [f"[labelers.{modality}]: {err}"]
            continue
        overrides = {k: v for k, v in entry.items() if k != "name"}
        if isinstance(overrides.get("weights"), str) and Path(overrides["weights"]).expanduser().exists():
            overrides["weights"] = str(Path(overrides["weights"]).expanduser().resolve())  # workers need no cwd
        try:
            spec = resolve_spec(entry["name"], overrides)
        except (KeyError, ValueError, TypeError) as err:
            problems.append(f"[labelers.{modality}]: {err.args[0] if err.args else err}")
            continue
        if spec.modality != modality:
            problems.append(f"[labelers.{modality}]: labeler {spec.name!r} makes {spec.modality!r}, not {modality!r}")
        elif member_problem(spec):
            problems.append(f"[labelers.{modality}]: {member_problem(spec)}")
        specs.append(spec)
    return tuple(specs)


_PARTS = {
    "source": SourceConfig,
    "image": ImageConfig,
    "shards": ShardConfig,
    "encoding": EncodingConfig,
    "runtime": RuntimeConfig,
}


def recipe_from_dict(data: dict[str, Any], heading: str = "recipe") -> Recipe:
    """A recipe from its parsed TOML: every problem (unknown keys, types, ranges, labelers) reported at once."""
    problems: list[str] = []
    unknown = sorted(set(data) - set(_PARTS) - {"recipe", "labelers"})
    if unknown:
        problems.append(
            f"unknown recipe section(s): {', '.join(unknown)}; allowed: recipe, labelers, {', '.join(_PARTS)}"
        )
    parts: dict[str, Any] = {"recipe": RecipeHeader()}
    for name, cls in {"recipe": RecipeHeader, **_PARTS}.items():
        try:
            parts[name] = load(cls, data.get(name, {}), name)
        except ConfigError as err:
            problems += err.problems
    labelers = _labelers(data.get("labelers", DEFAULT_LABELERS), problems)
    if problems:
        raise ConfigError(problems, heading)
    header = parts.pop("recipe")
    return Recipe(name=header.name, description=header.description, **parts, labelers=labelers)


def load_recipe(
    source: str | Path | None, overrides: Mapping[str, Any] | None = None, sets: Sequence[str] = ()
) -> Recipe:
    """A recipe: a TOML file, or the name of a shipped one (`demo` is manifests/demo.toml); none is the default
    (the real labelers). Then the command line's keys: `overrides` by dotted key (`{"shards.size": 8}`, None
    keeps the file's) and `--set KEY=VALUE` items. The file is checked alone first (its problems under its
    name), then what the command line changed, every problem at once (under "options")."""
    raw, heading = {"labelers": DEFAULT_LABELERS}, "recipe"
    if source is not None:
        path = named_file(source, RECIPES, "recipe")
        raw, heading = {**raw, **read_toml(path, "recipe")}, f"recipe {path}"
    recipe = recipe_from_dict(raw, heading)
    changed, problems = with_command_line(raw, overrides or {}, sets)
    if changed == raw and not problems:
        return recipe
    try:
        recipe = recipe_from_dict(changed, "options")
    except ConfigError as err:
        problems += err.problems
    if problems:
        raise ConfigError(problems, "options")
    return recipe


def validate(recipe: Recipe) -> None:
    found = problems_of(recipe)
    if found:
        raise ConfigError(found, "recipe")


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
    src: Location  # a folder or a store prefix (a str or Path is resolved by pipeline.format.stores.location)
    out: Location
    recipe: Recipe
    overwrite: bool = False
    address: str | None = None
    executor: str = "auto"  # auto (local below a size, else Ray: builder.choose_executor) | ray | local (in-process)
    quiet: bool = False
    command: str = ""  # the command line that repeats this build (recorded in manifest.json; verify quotes it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "src", location(self.src))
        object.__setattr__(self, "out", location(self.out))

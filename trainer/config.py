"""Keyword-only dataclass configs of a pretraining run, loaded from TOML with unknown keys refused.

A run's config is a tree: `PretrainConfig(model=..., data=..., optim=..., train=...)`; each component
receives only its own part. Paths (data folder, run folder) are options of the run, not of the recipe.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """MultiMAE shape. Defaults are the official ViT-B pretraining model."""

    image_size: int = 224
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    num_global_tokens: int = 1
    decoder_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    num_visible: int = 98
    dirichlet_alpha: float = 1.0
    num_classes: int = 133
    class_emb_dim: int = 64
    inputs: tuple[str, ...] = ("rgb", "depth", "semseg")
    outputs: tuple[str, ...] = ("rgb", "depth", "semseg", "norm_rgb")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Loader: per-rank micro-batch, workers per rank, mixing, crop and the corrupt-sample bound.

    Each worker reads `open_shards` shards at once, round-robin, into a buffer of `shuffle_buffer` encoded
    samples (about 0.3 MB each at ImageNet sizes: mind workers x buffer x ranks per node).
    """

    batch_size: int = 256
    workers: int = 10
    shuffle_buffer: int = 1000
    open_shards: int = 4
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    hflip: float = 0.5
    max_corrupt: int = 1000
    verify_checksums: bool = False


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with warmup-cosine; lr = base_lr x global batch / 256."""

    base_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_epochs: float = 40.0
    min_lr: float = 0.0
    clip_grad: float = 0.0
    accum_steps: int = 1


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Loop: length, precision, checkpoints, logging and the non-finite-loss policy."""

    epochs: int = 1600
    steps: int = 0
    seed: int = 0
    precision: str = "auto"
    compile: bool = False
    checkpoint_every: int = 1000
    keep_last: int = 3
    nonfinite: str = "skip"
    max_nonfinite: int = 20
    tensorboard: bool = False
    progress: bool = True


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


_CHOICES = {"precision": ("auto", "fp32", "bf16", "fp16"), "nonfinite": ("skip", "stop")}


def load_config(path: Path | None) -> PretrainConfig:
    """Read a TOML recipe; no path gives the defaults (the ViT-B 1600-epoch recipe)."""
    if path is None:
        return PretrainConfig()
    if not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> PretrainConfig:
    config = _build(PretrainConfig, raw, "")
    _validate(config)
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) for JSON, TOML and checkpoints."""
    return _plain(dataclasses.asdict(config))


def apply_overrides(config: PretrainConfig, **overrides: Any) -> PretrainConfig:
    """Command-line overrides: steps, epochs, batch_size, workers (None = keep the file's value)."""
    sections = {"steps": "train", "epochs": "train", "batch_size": "data", "workers": "data"}
    for key, value in overrides.items():
        if key not in sections:
            raise ConfigError(f"unknown override {key!r}")
        if value is not None:
            part = getattr(config, sections[key])
            config = dataclasses.replace(config, **{sections[key]: dataclasses.replace(part, **{key: value})})
    _validate(config)
    return config


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {where or 'top level'!r} must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown config key {where + unknown[0]!r}; allowed here: {', '.join(sorted(names))}")
    values = {key: _coerce(hints[key], value, where + key) for key, value in raw.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type, hint), value, where + ".")
    origin = typing.get_origin(hint)
    if origin is tuple:
        return _coerce_tuple(typing.get_args(hint), value, where)
    if origin is types.UnionType:
        raise ConfigError(f"config key {where!r}: unsupported type")
    return _coerce_scalar(hint, value, where)


def _coerce_tuple(args: tuple[Any, ...], value: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"config key {where!r} must be a list")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce_scalar(args[0], v, where) for v in value)
    if len(value) != len(args):
        raise ConfigError(f"config key {where!r} needs {len(args)} values, got {len(value)}")
    return tuple(_coerce_scalar(a, v, where) for a, v in zip(args, value, strict=True))


def _coerce_scalar(hint: Any, value: Any, where: str) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"config key {where!r} must be an integer, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"config key {where!r} must be {hint.__name__}, got {value!r}")
    return value


def _validate(config: PretrainConfig) -> None:
    for key, allowed in _CHOICES.items():
        if getattr(config.train, key) not in allowed:
            raise ConfigError(f"train.{key} must be one of {allowed}, got {getattr(config.train, key)!r}")
    positive = {
        "data.batch_size": config.data.batch_size,
        "optim.accum_steps": config.optim.accum_steps,
        "train.keep_last": config.train.keep_last,
        "train.checkpoint_every": config.train.checkpoint_every,
        "model.num_visible": config.model.num_visible,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if config.data.workers < 0 or config.train.steps < 0 or config.train.epochs < 0:
        raise ConfigError("data.workers, train.steps and train.epochs must be >= 0")
    _validate_model(config.model)


def _validate_model(model: ModelConfig) -> None:
    from trainer.modalities import MODALITIES, TASKS

    for name in model.inputs:
        if name not in MODALITIES:
            raise ConfigError(f"model.inputs: unknown modality {name!r}; known: {sorted(MODALITIES)}")
    for name in model.outputs:
        if name not in TASKS:
            raise ConfigError(f"model.outputs: unknown task {name!r}; known: {sorted(TASKS)}")
    if model.image_size % model.patch_size or model.dim % model.heads or model.dim % 4:
        raise ConfigError("model: image_size must divide by patch_size, dim by heads and by 4")

"""Keyword-only dataclass configs of a run, loaded from TOML with unknown keys refused.

A run's config is a tree: `PretrainConfig(model=..., data=..., optim=..., train=...)`, or for fine-tuning and
probing `FinetuneConfig` (the same parts plus `task`); each component receives only its own part. Paths (data
folder, run folder) are options of the run, not of the recipe. Both live here because every wing reads them
(a checkpoint holds one: `trainer.engine.checkpoint`). `load_run_config` reads the config of every run kind:
a TOML file or a shipped name (`trainer/configs/`), then the command line's keys (`--steps`, `--set`), all
checked by the one loader (`pipeline.format.schema`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from labelers.plugins import extends
from labelers.standards import PRECISIONS
from pipeline.format.schema import (
    ConfigError,
    load,
    named_file,
    read_toml,
    setting,
    to_plain,
    with_command_line,
)
from trainer.model import builtins
from trainer.transfer import rules
from trainer.transfer.rules import TaskRules

__all__ = [
    "CONFIGS",
    "RUN_KINDS",
    "ConfigError",
    "DataConfig",
    "FinetuneConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "TaskConfig",
    "TrainConfig",
    "config_to_dict",
    "load_config",
    "load_run_config",
    "smoke_config",
]


MAX_EPOCHS = 100_000  # the paper's longest schedule is 2,000 epochs (NYUv2 depth)
MAX_COUNT = 2**31 - 1  # steps and step counts: any a run can reach
MAX_GRID = 256  # patches per side of an input (4096 px at patch 16): bounds the position embeddings


def _twice(names: Sequence[str]) -> list[str]:
    return sorted({n for n in names if names.count(n) > 1})


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """MultiMAE shape. Defaults are the official ViT-B pretraining model."""

    # The upper bounds stop a mistyped value before any model is built (image_size = 1000000 asked for
    # position embeddings of billions of tokens); they are above any published ViT (ViT-22B: dim 6144,
    # 48 blocks, 48 heads).
    image_size: int = setting(224, ge=4, le=4096)  # a multiple of patch_size
    patch_size: int = setting(16, ge=4, le=64)  # a multiple of each modality's stride (semseg: 4)
    dim: int = setting(768, ge=4, le=8192)  # a multiple of heads and of 4
    depth: int = setting(12, ge=1, le=128)
    heads: int = setting(12, ge=1, le=128)
    mlp_ratio: float = setting(4.0, gt=0, le=16)
    num_global_tokens: int = setting(1, ge=0, le=64)
    decoder_dim: int = setting(256, ge=4, le=8192)  # a multiple of decoder_heads and of 4
    decoder_depth: int = setting(2, ge=0, le=64)
    decoder_heads: int = setting(8, ge=1, le=128)
    num_visible: int = setting(98, ge=1, le=2**20)  # pretraining: < the inputs' tokens
    dirichlet_alpha: float = setting(1.0, gt=0, le=1000)
    num_classes: int = setting(133, ge=0, le=255)  # semseg classes; 0: the dataset manifest's count
    class_emb_dim: int = setting(64, ge=1, le=4096)
    inputs: tuple[str, ...] = ("rgb", "depth", "semseg")
    outputs: tuple[str, ...] = ("rgb", "depth", "semseg", "norm_rgb")

    @property
    def num_tokens(self) -> int:
        """Patch tokens of all inputs together (the pool the visible tokens are drawn from)."""
        return (self.image_size // self.patch_size) ** 2 * len(self.inputs)

    def problems(self) -> list[str]:
        strides, sources = modality_strides(), task_sources()
        found = [f"inputs: unknown modality {n!r}; known: {sorted(strides)}" for n in self.inputs if n not in strides]
        found += [f"outputs: unknown task {n!r}; known: {sorted(sources)}" for n in self.outputs if n not in sources]
        if not self.inputs:
            found.append("inputs must name at least one modality")
        found += [f"inputs names {n!r} twice" for n in _twice(self.inputs)]
        found += [f"outputs names {n!r} twice" for n in _twice(self.outputs)]
        if self.image_size % self.patch_size:
            found.append(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        elif self.image_size // self.patch_size > MAX_GRID:
            found.append(f"image_size / patch_size must be <= {MAX_GRID} ({MAX_GRID**2} tokens per input)")
        used = {*self.inputs, *(sources[n] for n in self.outputs if n in sources)}  # read or predicted
        found += [
            f"patch_size {self.patch_size} must be a multiple of {strides[n]} (the {n} modality's stride)"
            for n in sorted(used)
            if n in strides and self.patch_size % strides[n]
        ]
        if self.dim % self.heads or self.dim % 4:
            found.append(f"dim {self.dim} must be a multiple of heads {self.heads} and of 4")
        if self.decoder_dim % self.decoder_heads or self.decoder_dim % 4:
            found.append(f"decoder_dim {self.decoder_dim} must be a multiple of decoder_heads and of 4")
        if int(min(self.dim, self.decoder_dim) * self.mlp_ratio) < 1:
            found.append(f"mlp_ratio {self.mlp_ratio} leaves an MLP without units")
        if self.inputs and self.outputs and self.num_visible >= self.num_tokens:  # masking: pretraining only
            found.append(f"num_visible {self.num_visible} must be < the {self.num_tokens} tokens of the inputs")
        return found


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Loader: per-rank micro-batch, workers per rank, mixing, crop and the corrupt-sample bound.

    Each worker reads `open_shards` shards at once, round-robin, into a buffer of `shuffle_buffer` encoded
    samples (about 0.3 MB each at ImageNet sizes: mind workers x buffer x ranks per node).

    `augment_on`: where the crop is resampled and finished. "worker": in the loader workers, sample by sample
    (`trainer.data.augment`); "device": the workers decode and cut the crop, the training device resizes, flips
    and normalises the batch (`trainer.data.batch_resize`); "auto": "device" when training on a GPU, else "worker".
    """

    batch_size: int = setting(256, ge=1, le=65536)
    workers: int = setting(10, ge=0, le=256)
    shuffle_buffer: int = setting(1000, ge=1, le=100_000)  # <= 100,000 samples: ~30 GB a worker at 0.3 MB
    open_shards: int = setting(4, ge=1, le=1024)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    hflip: float = setting(0.5, ge=0, le=1)
    max_corrupt: int = setting(1000, ge=0, le=MAX_COUNT)
    verify_checksums: bool = False
    augment_on: str = setting("auto", choices=("auto", "worker", "device"))

    def problems(self) -> list[str]:
        lo, hi = self.crop_scale
        found = [] if 0 < lo <= hi <= 1 else [f"crop_scale must be 0 < low <= high <= 1, got {list(self.crop_scale)}"]
        rlo, rhi = self.crop_ratio
        ok = 0.1 <= rlo <= rhi <= 10
        return found + ([] if ok else [f"crop_ratio must be 0.1 <= low <= high <= 10, got {list(self.crop_ratio)}"])


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with warmup-cosine; lr = base_lr x global batch / 256."""

    base_lr: float = setting(1e-4, gt=0, le=10)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = setting(0.05, ge=0, le=10)
    warmup_epochs: float = setting(40.0, ge=0, le=MAX_EPOCHS)
    min_lr: float = setting(0.0, ge=0, le=10)  # absolute (not scaled by the batch); <= the peak lr
    clip_grad: float = setting(0.0, ge=0, le=1e6)  # 0: no clipping
    accum_steps: int = setting(1, ge=1, le=4096)

    def problems(self) -> list[str]:
        # min_lr is checked against the peak (base_lr x global batch / 256) when the run's batch is known:
        # `trainer.engine.run.Schedule.build`
        return [] if all(0 <= b < 1 for b in self.betas) else [f"betas must be in [0, 1), got {list(self.betas)}"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Loop: length, precision, checkpoints, logging and the non-finite-loss policy."""

    epochs: int = setting(1600, ge=0, le=MAX_EPOCHS)
    steps: int = setting(0, ge=0, le=MAX_COUNT)
    seed: int = setting(0, ge=0, le=2**31 - 1)
    precision: str = setting("auto", choices=("auto", *PRECISIONS))
    compile: bool = False
    checkpoint_every: int = setting(1000, ge=1, le=MAX_COUNT)
    keep_last: int = setting(3, ge=1, le=1000)
    nonfinite: str = setting("skip", choices=("skip", "stop"))
    max_nonfinite: int = setting(20, ge=0, le=MAX_COUNT)
    tensorboard: bool = True  # scalars and figures under run/tensorboard
    wandb: bool = False  # Weights & Biases (the `wandb` extra); WANDB_MODE=offline works without a network
    figure_every: int = setting(
        1000, ge=0, le=MAX_COUNT
    )  # reconstruction figure of a fixed sample every N steps (0: never)
    progress: bool = True

    def problems(self) -> list[str]:
        return [] if self.epochs or self.steps else ["epochs or steps must be > 0"]


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# The registries a config is checked against (modalities, pretraining tasks, transfer tasks) hold torch code:
# a check reads their built-in entries without them (`trainer.model.builtins`, `trainer.transfer.rules`), and
# the registry itself once a plugin extends it or it is already imported (then every entry, plugins' too).


def _registry_needed(module: str, group: str) -> bool:
    return module in sys.modules or extends(group)


def modality_strides() -> Mapping[str, int]:
    """Every registered modality's stride, by name."""
    if not _registry_needed(builtins.REGISTRY, builtins.GROUP):
        return builtins.STRIDES
    from trainer.model.modalities import MODALITIES

    return {name: m.stride for name, m in MODALITIES.items()}


def task_sources() -> Mapping[str, str]:
    """Every registered pretraining task's source modality, by name."""
    if not _registry_needed(builtins.REGISTRY, builtins.GROUP):
        return builtins.SOURCES
    from trainer.model.modalities import TASKS

    return {name: t.source for name, t in TASKS.items()}


def task_rules() -> Mapping[str, TaskRules]:
    """What a settings check reads of every registered transfer task, by name."""
    if not _registry_needed(rules.REGISTRY, rules.GROUP):
        return rules.BUILT_IN
    from trainer.transfer.tasks import TRANSFER_TASKS

    return {
        name: TaskRules(
            config_problems=t.config_problems,
            reads_main_input=t.reads_main_input,
            hooked=t.hooked,
            probe=t.probe is not None,
            recipe=t.recipe,
            probe_recipe=t.probe_recipe,
        )
        for name, t in TRANSFER_TASKS.items()
    }


def transfer_task_names() -> tuple[str, ...]:
    """The registered transfer tasks (`trainer.transfer.tasks`), read when a config is checked."""
    return tuple(task_rules())


def eval_protocol_names() -> tuple[str, ...]:
    """The evaluation protocols (`trainer.transfer.protocols`; not extensible), read when a config is checked."""
    return rules.EVAL_PROTOCOL_NAMES


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """What is learnt and how: the head (as the official fine-tuning adapters), its loss and its lr decay."""

    name: str = setting("cls", choices=transfer_task_names)  # a registered transfer task
    num_classes: int = setting(0, ge=0, le=255)  # 0: from the dataset's manifest (or the .cls class folders)
    # the names of class ids 0, 1, ... (a checkpoint's record of what its ids mean; every split is mapped onto
    # them by name: `trainer.transfer.classes`); (): the training split's, filled in when the run starts
    classes: tuple[str, ...] = ()
    main_input: str = "rgb"  # dense heads read this input's tokens (RGB-D semseg: rgb, as the paper)
    # dense heads read these inputs' tokens concatenated on channels, in this order (the official
    # `main_tasks`, e.g. ["rgb", "depth"]); empty: `main_input` alone
    readout: tuple[str, ...] = ()
    probe: bool = False  # linear probe: frozen encoder, BatchNorm (no affine) + Linear on mean-pooled tokens
    freeze_encoder: bool = False  # only the task's own head trains, on the frozen encoder (a probe implies it)
    layer_decay: float = setting(0.75, gt=0, le=1)
    drop_path: float = setting(0.1, ge=0, lt=1)
    label_smoothing: float = setting(0.1, ge=0, lt=1)
    mixup: float = setting(0.0, ge=0, le=100)  # Beta(alpha, alpha) of timm's Mixup; 0 = off
    cutmix: float = setting(0.0, ge=0, le=100)
    ignore_id: int = setting(255, ge=0, le=255)
    head_embed_dim: int = setting(6144, ge=16, le=65536)  # ConvNeXt head: preds_per_patch x channels
    preds_per_patch: int = setting(16, ge=1, le=1024)  # a square (4 x 4 sub-patches) dividing head_embed_dim
    head_depth: int = setting(4, ge=0, le=64)
    hooks: tuple[int, ...] = (2, 5, 8, 11)  # DPT head: encoder blocks whose outputs it reads
    layer_dims: tuple[int, ...] = (96, 192, 384, 768)
    features: int = setting(256, ge=2, le=8192)
    depth_scale: float = setting(1.0, gt=0, le=1e6)  # depth target = decoded value x depth_scale (0.001: mm -> m)
    depth_loss: str = setting("berhu", choices=("berhu", "l1"))  # over valid pixels: berHu or the masked L1
    eval_every: int = setting(0, ge=0, le=MAX_COUNT)  # evaluate on --val every N steps (0: at the end only)
    # how validation (and `evaluate`, unless --protocol) places an image: `trainer.transfer.protocols`
    eval_protocol: str = setting("center", choices=eval_protocol_names)

    @property
    def frozen(self) -> bool:
        """The encoder (input adapters, global tokens, blocks) does not train: a probe, or `freeze_encoder`."""
        return self.probe or self.freeze_encoder

    @property
    def read_inputs(self) -> tuple[str, ...]:
        """The inputs a dense head reads: `readout`, or `main_input` alone."""
        return self.readout or (self.main_input,)

    def problems(self) -> list[str]:
        spec = task_rules().get(self.name)  # an unknown name is the `choices` rule's problem
        if spec is None:
            return []
        found = spec.config_problems(self)
        if len(set(self.classes)) != len(self.classes):
            found.append("task.classes names a class twice")
        if self.num_classes and len(self.classes) > self.num_classes:
            found.append(f"task.classes names {len(self.classes)} classes, task.num_classes is {self.num_classes}")
        if len(set(self.readout)) != len(self.readout):
            found.append(f"task.readout names an input twice: {list(self.readout)}")
        if self.readout and not spec.reads_main_input:
            found.append(f"task.readout: the {self.name} task's head reads no input's tokens (nothing to read out)")
        if self.probe and not spec.probe:
            with_probe = ", ".join(name for name, t in task_rules().items() if t.probe)
            found.append(f"probe = true: the {self.name} task has no linear probe (tasks with one: {with_probe})")
        return found


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(inputs=("rgb",), outputs=()))
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(figure_every=0))

    def problems(self) -> list[str]:
        found = []
        spec = task_rules().get(self.task.name)
        if spec is not None and spec.reads_main_input:
            key = "task.readout" if self.task.readout else "task.main_input"
            found += [
                f"{key} {n!r} is not one of model.inputs {list(self.model.inputs)}"
                for n in self.task.read_inputs
                if n not in self.model.inputs
            ]
        bad = [h for h in self.task.hooks if not 0 <= h < self.model.depth]
        if spec is not None and spec.hooked and bad:
            found.append(f"task.hooks {bad} are not blocks of a {self.model.depth}-block encoder")
        if self.data.augment_on == "device":
            found.append('data.augment_on = "device" is pretraining\'s; fine-tuning resamples in the workers ("auto")')
        return found


CONFIGS = Path(__file__).parent / "configs"  # the shipped configs (package data), by name: --config smoke
SMOKE_CONFIG = CONFIGS / "smoke.toml"  # the one tiny flavour: demo, tests, benchmarks


@dataclass(frozen=True)
class RunKind:
    """What a run kind reads: its config type, what its file is called in errors, the keys the kind fixes."""

    config: type[PretrainConfig] | type[FinetuneConfig]
    what: str
    fixed: Mapping[str, Any] = field(default_factory=dict)


RUN_KINDS = {
    "pretrain": RunKind(PretrainConfig, "trainer config"),
    "finetune": RunKind(FinetuneConfig, "fine-tuning config"),
    "probe": RunKind(FinetuneConfig, "fine-tuning config", {"task.name": "cls", "task.probe": True}),
}


@overload
def load_run_config(
    kind: Literal["pretrain"],
    source: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
) -> PretrainConfig: ...
@overload
def load_run_config(
    kind: Literal["finetune", "probe"],
    source: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
) -> FinetuneConfig: ...
@overload
def load_run_config(
    kind: str, source: str | Path | None = None, overrides: Mapping[str, Any] | None = None, sets: Sequence[str] = ()
) -> PretrainConfig | FinetuneConfig: ...
def load_run_config(
    kind: str, source: str | Path | None = None, overrides: Mapping[str, Any] | None = None, sets: Sequence[str] = ()
) -> PretrainConfig | FinetuneConfig:
    """The config of a run of `kind` (pretrain, finetune, probe): the file `source` (a TOML path, or the name of
    a shipped config: `smoke`; none: the defaults, ViT-B), then the kind's fixed keys, `overrides` (by dotted
    key, None keeps the file's value: the options that stand for a key, `trainer.options.config_overrides`) and
    the `--set KEY=VALUE` items `sets`. The file is checked alone first (its problems under its name); then
    what the command line changed, by the same loader, every problem at once (under "options")."""
    spec = RUN_KINDS.get(kind)
    if spec is None:
        raise ConfigError(f"unknown run kind {kind!r}; known: {', '.join(RUN_KINDS)}")
    cfg = spec.config()
    if source is not None:
        path = named_file(source, CONFIGS, spec.what)
        try:
            cfg = load(spec.config, read_toml(path, spec.what))
        except ConfigError as err:
            raise ConfigError(err.problems, f"{spec.what} {path}") from None
    table = to_plain(cfg)
    changed, problems = with_command_line(table, {**spec.fixed, **(overrides or {})}, sets)
    if changed == table and not problems:
        return cfg
    try:
        cfg = load(spec.config, changed)
    except ConfigError as err:
        problems += err.problems
    if problems:
        raise ConfigError(problems, "options")
    return cfg


def smoke_config() -> PretrainConfig:
    """The tiny CPU flavour (`trainer/configs/smoke.toml`): the same modalities, decoders and losses as ViT-B."""
    return load_config(SMOKE_CONFIG)


def load_config(path: str | Path | None) -> PretrainConfig:
    """A pretraining config: a TOML file or a shipped name; none gives the defaults (the ViT-B 1600-epoch recipe)."""
    return load_run_config("pretrain", path)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) for JSON, TOML and checkpoints."""
    return to_plain(config)


# The config of a run of the one training loop: pretraining, or fine-tuning and probing. Both have the model,
# data, optim and train sections the loop reads; fine-tuning adds its task.
RunConfig = PretrainConfig | FinetuneConfig

"""The command-line options of every run that trains (pretrain, finetune, probe), declared once.

`OPTIONS` is the one declaration: `mmforge pretrain | finetune | probe` take its Typer form
(`pipeline.cli.options`) and the torchrun entry (`python -m trainer.train`) its argparse form, so both accept the
same flags with the same defaults (`tests/test_trainer_cli.py` pins it). An option says where and how to run
(`--data`, `--out`, `--device`, ...: `trainer.engine.run.RunOptions`), which config to start from (`--config`, a
file or a shipped name) and what to change in it (`--set KEY=VALUE`), or it is a shorthand for one config key
(`key`: `--steps 3` is `--set train.steps=3`). Nothing heavy is imported here: `mmforge --help` reads this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.format.locations import local_location
from pipeline.format.schema import ConfigError
from pipeline.format.stores import location

__all__ = ["OPTIONS", "RUN_KINDS", "TrainingOption", "config_overrides", "option", "options_of"]

RUN_KINDS = ("pretrain", "finetune", "probe")  # the configs of each: `trainer.config.load_run_config`


@dataclass(frozen=True, kw_only=True)
class TrainingOption:
    """One option: its Python name (`batch_size` is `--batch-size`), the value it takes and its default, its
    help, and the config key it stands for ("" for an option of the run itself)."""

    name: str
    help: str
    value: type = str  # str, int or bool (a bool option is a --flag/--no-flag pair)
    default: Any = None
    required: bool = False
    key: str = ""  # the dotted config key it sets: train.steps
    parse: Callable[[str], Any] | None = None  # a location parser: what the value must be before anything runs
    metavar: str | None = None
    names: bool = False  # comma-separated names, given to the config as a list
    repeat: bool = False  # may be given several times; the values come as a list
    flag_name: str = ""  # the flag when it is not the name's (--set, whose values are `sets`)
    kinds: tuple[str, ...] = RUN_KINDS  # the run kinds that take it
    zero: str = ""  # what 0 means in the config, refused on the command line (`--steps 0`: train the epochs)

    @property
    def flag(self) -> str:
        return self.flag_name or "--" + self.name.replace("_", "-")


_TRANSFER = ("finetune", "probe")
OPTIONS = (
    TrainingOption(
        name="data",
        required=True,
        parse=location,
        metavar="LOCATION",
        help="Dataset folder or store prefix from build-dataset (index.json, manifest.json, shards/).",
    ),
    TrainingOption(
        name="out",
        required=True,
        parse=location,
        metavar="LOCATION",
        help="Run folder or store prefix: checkpoints, metrics.jsonl, config.json.",
    ),
    TrainingOption(
        name="config",
        parse=local_location,
        metavar="NAME|PATH",
        help="Run config: a name of trainer/configs (mmforge list configs) or a TOML file; default: ViT-B.",
    ),
    TrainingOption(
        name="sets",
        flag_name="--set",
        repeat=True,
        metavar="KEY=VALUE",
        help="Set any config key to a TOML value, e.g. --set optim.base_lr=3e-4 --set 'train.precision=\"bf16\"' "
        "(repeatable; applied after the other options).",
    ),
    TrainingOption(name="device", default="auto", help="auto (GPU when present), cpu, cuda or cuda:N."),
    TrainingOption(
        name="resume", value=bool, default=True, help="Continue from OUT/checkpoint-last.pt when there is one."
    ),
    TrainingOption(
        name="reschedule",
        value=bool,
        default=False,
        help="Resume with another schedule (steps, epochs, warmup, lr) than the checkpoint's: the learning rate "
        "follows the new plan from the checkpoint's step on (recorded in the checkpoint and config.json).",
    ),
    TrainingOption(
        name="steps",
        value=int,
        key="train.steps",
        zero="train the config's epochs instead: give at least 1, or leave --steps out",
        help="Total optimizer steps (overrides epochs).",
    ),
    TrainingOption(name="epochs", value=int, key="train.epochs", help="Epochs (overrides the config)."),
    TrainingOption(name="batch_size", value=int, key="data.batch_size", help="Samples per rank per micro-batch."),
    TrainingOption(name="workers", value=int, key="data.workers", help="Loader worker processes per rank."),
    TrainingOption(
        name="allow_defects",
        value=bool,
        default=False,
        help="Train on a dataset that fails its checks or is incomplete (warned, not refused).",
    ),
    TrainingOption(name="tensorboard", value=bool, key="train.tensorboard", help="TensorBoard scalars and figures."),
    TrainingOption(name="wandb", value=bool, key="train.wandb", help="Weights & Biases logs (the wandb extra)."),
    TrainingOption(
        name="task",
        key="task.name",
        kinds=("finetune",),
        help="A registered transfer task (cls, semseg, depth or a plugin's); default: the config's.",
    ),
    TrainingOption(
        name="inputs",
        key="model.inputs",
        names=True,
        kinds=("finetune",),
        help="Input modalities, comma-separated (rgb, or rgb,depth ...); default: the config's.",
    ),
    TrainingOption(
        name="init",
        parse=location,
        metavar="LOCATION",
        kinds=_TRANSFER,
        help="Pretrained weights: our or an official checkpoint (a file or store object); none: random init.",
    ),
    TrainingOption(
        name="val",
        parse=location,
        metavar="LOCATION",
        kinds=_TRANSFER,
        help="Validation shards: evaluated at the end (and every task.eval_every steps).",
    ),
)
_BY_NAME = {option.name: option for option in OPTIONS}


def options_of(kind: str) -> tuple[TrainingOption, ...]:
    """The options a run kind takes, in the order of `OPTIONS`."""
    return tuple(option for option in OPTIONS if kind in option.kinds)


def option(name: str) -> TrainingOption:
    return _BY_NAME[name]


def config_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """The config keys that option values (by option name, as parsed) stand for: `{"steps": 3}` gives
    `{"train.steps": 3}`; None keeps the config's value, and the run's own options have no key."""
    unknown = sorted(set(values) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(_BY_NAME)}")
    found = {}
    for name, value in values.items():
        spec = _BY_NAME[name]
        if spec.zero and value == 0:  # other bad values: the config's checks, all at once
            raise ConfigError(f"{spec.flag} 0 would {spec.zero}")
        if spec.names and value is not None:
            value = [n.strip() for n in value.split(",") if n.strip()] or None
        if spec.key and value is not None:
            found[spec.key] = value
    return found

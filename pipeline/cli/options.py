"""Option types shared by the commands: one `Annotated` type per option, declared once here and reused.

The options of the commands that train (pretrain, finetune, probe) are made from their one declaration,
`trainer.options.OPTIONS` (the torchrun entry's argparse is made from it too): a command lists the ones it
takes, `steps: Steps = None`, and passes their values on by name (`click.Context.params`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.format.locations import local_location
from trainer.options import option


def _typer(name: str) -> Any:
    """The Typer option of `trainer.options.option(name)`."""
    spec = option(name)
    flag = f"{spec.flag}/--no-{spec.flag.removeprefix('--')}" if spec.value is bool else spec.flag
    return typer.Option(flag, parser=spec.parse, metavar=spec.metavar, help=spec.help)


# Every run that trains
Data = Annotated[str, _typer("data")]
Out = Annotated[str, _typer("out")]
Config = Annotated[Path | None, _typer("config")]
Sets = Annotated[list[str] | None, _typer("sets")]
Device = Annotated[str, _typer("device")]
Resume = Annotated[bool, _typer("resume")]
Reschedule = Annotated[bool, _typer("reschedule")]
Steps = Annotated[int | None, _typer("steps")]
Epochs = Annotated[int | None, _typer("epochs")]
BatchSize = Annotated[int | None, _typer("batch_size")]
Workers = Annotated[int | None, _typer("workers")]
AllowDefects = Annotated[bool, _typer("allow_defects")]
Tensorboard = Annotated[bool | None, _typer("tensorboard")]
Wandb = Annotated[bool | None, _typer("wandb")]
# Fine-tuning and probing
Task = Annotated[str | None, _typer("task")]
Inputs = Annotated[str | None, _typer("inputs")]
Init = Annotated[str | None, _typer("init")]
Val = Annotated[str | None, _typer("val")]

# build-dataset
Recipe = Annotated[
    Path | None,
    typer.Option(
        parser=local_location,
        metavar="NAME|PATH",
        help="Recipe: a name of manifests/ (mmforge list recipes) or a TOML file; default: the real labelers.",
    ),
]
RecipeSets = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Set any recipe key to a TOML value, e.g. --set image.max_side=512 --set 'runtime.precision=\"fp16\"' "
        "(repeatable; applied after the other options).",
    ),
]

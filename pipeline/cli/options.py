"""Option types shared by the commands: one `Annotated` type per option, declared once here and reused.

The options of the commands that train (pretrain, finetune, probe) are made from their one declaration,
`trainer.options.OPTIONS` (the torchrun entry's argparse is made from it too): a command lists the ones it
is made from the options its kind takes (`run_parameters`) and passes their values on by name
(`click.Context.params`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.format.locations import local_location
from trainer.options import TrainingOption, option, options_of


def _typer(name: str) -> Any:
    """The Typer option of `trainer.options.option(name)`."""
    spec = option(name)
    flag = f"{spec.flag}/--no-{spec.flag.removeprefix('--')}" if spec.value is bool else spec.flag
    return typer.Option(flag, parser=spec.parse, metavar=spec.metavar, help=spec.help)


def run_parameters(kind: str) -> list[inspect.Parameter]:
    """The parameters of `mmforge KIND` (pretrain, finetune, probe): one per option of `options_of(kind)`, in
    its order, each typed and declared as Typer reads it, with the option's default."""
    keyword, required = inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.empty
    return [
        inspect.Parameter(
            spec.name, keyword, default=required if spec.required else spec.default, annotation=_annotated(spec)
        )
        for spec in options_of(kind)
    ]


def _annotated(spec: TrainingOption) -> Any:
    """`Annotated[type, typer.Option(...)]` of one option: the type its values take (None: not given)."""
    kind: Any = list[str] if spec.repeat else Path if spec.parse is local_location else spec.value
    if spec.default is None and not spec.required:
        kind = kind | None
    return Annotated[kind, _typer(spec.name)]


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

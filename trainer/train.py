"""Pretraining: `pretrain(config, options)`; under torchrun: `torchrun ... -m trainer.train ...`.

Every command that trains (pretrain, finetune, probe) goes through `trainer.engine.loop.run(job, config,
options)`; they differ only in their job. The torchrun entry's options are `trainer.options`' (argparse form),
the same as `mmforge pretrain`'s.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.format.stores import location
from trainer.config import PretrainConfig, load_run_config
from trainer.engine.loop import run
from trainer.engine.run import RunOptions, RunSummary
from trainer.engine.stop import RunStopped
from trainer.errors import USER_ERRORS
from trainer.options import TrainingOption, config_overrides, options_of

log = logging.getLogger(__name__)


def pretrain(config: PretrainConfig, options: RunOptions) -> RunSummary:
    """Pretrain MultiMAE on the shards in `options.data`, writing the run folder `options.out`."""
    from trainer.pretrain.job import PretrainJob

    return run(PretrainJob(), config, options)


def build_config(config: str | Path | None, **options: Any) -> PretrainConfig:
    """The config (a TOML file or a shipped name; none: ViT-B 1600 epochs) with option values by name
    (`steps=20`; None keeps the file's)."""
    return load_run_config("pretrain", config, config_overrides(options))


def run_options(values: Mapping[str, Any]) -> RunOptions:
    """Where and how to run, from the command line's values (by option name)."""
    return RunOptions(
        data=location(values["data"]),
        out=location(values["out"]),
        resume=values["resume"],
        device=values["device"],
        allow_defects=values["allow_defects"],
        reschedule=values.get("reschedule") or False,
    )


def parser() -> argparse.ArgumentParser:
    """The torchrun entry's options: `mmforge pretrain`'s, made from the same declaration (`trainer.options`)."""
    p = argparse.ArgumentParser(prog="python -m trainer.train", description="MultiMAE pretraining (torchrun)")
    for option in options_of("pretrain"):
        p.add_argument(option.flag, dest=option.name, help=option.help, **_argparse(option))
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parser().parse_args(argv)


def _argparse(option: TrainingOption) -> dict[str, Any]:
    """How argparse takes `option`: as Typer does (bools as --flag/--no-flag, repeatable ones as lists)."""
    if option.value is bool:
        return {"action": argparse.BooleanOptionalAction, "default": option.default}
    how = {"type": option.parse or option.value, "default": option.default, "metavar": option.metavar}
    return {**how, "required": option.required, "action": "append" if option.repeat else "store"}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    values = vars(args)
    try:
        cfg = load_run_config("pretrain", args.config, config_overrides(values), args.sets or ())
        summary = pretrain(cfg, run_options(values))
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunStopped as stopped:  # SIGTERM / SIGINT: its line is printed, the checkpoint written
        return int(stopped.code)  # type: ignore[arg-type]
    if os.environ.get("RANK", "0") == "0":  # the end of the run, once (as `mmforge pretrain` prints it)
        print(summary.text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

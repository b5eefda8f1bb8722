"""Pretraining: `pretrain(config, options)`; under torchrun: `torchrun ... -m trainer.train ...`.

Every command that trains (pretrain, finetune, probe) goes through `trainer.engine.loop.run(job, config,
options)`; they differ only in their job.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.format.locations import local_location
from pipeline.format.stores import location
from trainer.config import PretrainConfig, apply_overrides, load_config
from trainer.engine.loop import run
from trainer.engine.run import RunOptions, RunSummary
from trainer.errors import USER_ERRORS

log = logging.getLogger(__name__)


def pretrain(config: PretrainConfig, options: RunOptions) -> RunSummary:
    """Pretrain MultiMAE on the shards in `options.data`, writing the run folder `options.out`."""
    from trainer.pretrain.job import PretrainJob

    return run(PretrainJob(), config, options)


def build_config(config: Path | None, **overrides: Any) -> PretrainConfig:
    """The TOML recipe (defaults: ViT-B 1600 epochs) with command-line overrides applied."""
    return apply_overrides(load_config(config), **overrides)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer.train", description="MultiMAE pretraining (torchrun)")
    p.add_argument(
        "--data",
        type=location,
        required=True,
        help="dataset folder or store prefix (index.json, manifest.json, shards/)",
    )
    p.add_argument("--config", type=local_location, default=None, help="TOML recipe, e.g. trainer/configs/smoke.toml")
    p.add_argument(
        "--out",
        type=location,
        required=True,
        help="run folder or store prefix (checkpoints, metrics.jsonl, config.json)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--allow-defects", action="store_true", help="train on a dataset that fails its checks")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None, help="TensorBoard logs")
    p.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None, help="Weights & Biases logs")
    for name in ("steps", "epochs", "batch-size", "workers"):
        p.add_argument(f"--{name}", type=int, default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = build_config(
            args.config,
            steps=args.steps,
            epochs=args.epochs,
            batch_size=args.batch_size,
            workers=args.workers,
            tensorboard=args.tensorboard,
            wandb=args.wandb,
        )
        options = RunOptions(
            data=args.data, out=args.out, resume=args.resume, device=args.device, allow_defects=args.allow_defects
        )
        pretrain(cfg, options)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

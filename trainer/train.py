"""Pretraining: `pretrain(config, options)`; under torchrun: `torchrun ... -m trainer.train ...`.

`run(job, config, options)` is the entry of every command that trains (pretrain, finetune, probe): the loop
itself is `trainer.loop.Trainer`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.locations import local_location
from pipeline.stores import location
from trainer.config import PretrainConfig, apply_overrides, load_config
from trainer.distributed import init_distributed, shutdown
from trainer.errors import USER_ERRORS
from trainer.loop import Trainer
from trainer.run import Job, RunOptions, RunSummary

log = logging.getLogger(__name__)


def pretrain(config: PretrainConfig, options: RunOptions) -> RunSummary:
    """Pretrain MultiMAE on the shards in `options.data`, writing the run folder `options.out`."""
    from trainer.jobs import PretrainJob

    return run(PretrainJob(), config, options)


def run(job: Job, config: Any, options: RunOptions) -> RunSummary:
    """The one loop (`trainer.loop.Trainer`): pretraining, fine-tuning and probing differ only in their `job`."""
    dist = init_distributed(options.device)
    try:
        trainer = Trainer.start(job, config, options, dist)
        trainer.train()
        return trainer.close()
    finally:
        shutdown()


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

"""The `mmforge` command: a thin Typer app. Options -> typed config -> one library call per command."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Pseudo-label RGB folders, write aligned WebDataset shards, verify them, pretrain MultiMAE.",
)


@app.callback()
def _root() -> None:
    """multimae-forge: datasets and pretraining for multi-modal masked autoencoders."""


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command("build-dataset")
def build_dataset_cmd(
    src: Annotated[Path, typer.Argument(help="Folder of RGB images (class folders, nested or flat).")],
    out: Annotated[Path, typer.Argument(help="Output dataset folder (shards/, plan/, manifest.json, index.json).")],
    recipe: Annotated[
        Path | None, typer.Option(help="Recipe TOML (see manifests/); default: the real labelers.")
    ] = None,
    shard_size: Annotated[int | None, typer.Option(help="Samples per shard (overrides the recipe).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per labeler batch (overrides the recipe).")] = None,
    split: Annotated[
        str | None, typer.Option(help="Split name used in shard names (default: recipe, 'train').")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Discard an earlier build in OUT and start over.")] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address ('auto' or host:port); default: local Ray.")
    ] = None,
    executor: Annotated[str, typer.Option(help="'ray' (default) or 'local' (in-process, no Ray).")] = "ray",
    quiet: Annotated[bool, typer.Option(help="No progress bar; log lines only.")] = False,
) -> None:
    """Label every image in SRC with depth and semantic segmentation and write aligned shards to OUT."""
    from pipeline.build import build_dataset, describe, summary
    from pipeline.config import BuildConfig, ConfigError, load_recipe, with_overrides

    try:
        if executor not in ("ray", "local"):
            raise ConfigError(f"--executor must be 'ray' or 'local', got {executor!r}")
        resolved = with_overrides(load_recipe(recipe), shard_size=shard_size, batch_size=batch_size, split=split)
        cfg = BuildConfig(
            src=src, out=out, recipe=resolved, overwrite=overwrite, address=address, executor=executor, quiet=quiet
        )
        typer.echo(describe(cfg), err=True)
        result = build_dataset(cfg)
    except ConfigError as err:
        raise fail(str(err)) from None
    typer.echo(summary(result))
    if not result.ok:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

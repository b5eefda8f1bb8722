"""The `mmforge` command: a thin Typer app. Options -> typed config -> one library call per command."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from pipeline.cli import options as opts
from pipeline.format.locations import LocalPath, local_location
from pipeline.format.stores import Location, location

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Pseudo-label RGB folders, write aligned WebDataset shards, verify them, pretrain MultiMAE.",
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"mmforge {version('multimae-forge')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("mmforge (not installed: pip install -e .)")
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """multimae-forge: datasets and pretraining for multi-modal masked autoencoders."""


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command("build-dataset")
def build_dataset_cmd(
    src: Annotated[
        str,
        typer.Argument(
            parser=location,
            metavar="SRC",
            help="Folder or store prefix (s3://, gs://, ...) of RGB images (class folders, nested or flat).",
        ),
    ],
    out: Annotated[
        str,
        typer.Argument(
            parser=location,
            metavar="OUT",
            help="Output dataset folder or store prefix (shards/, plan/, manifest.json, index.json).",
        ),
    ],
    recipe: opts.Recipe = None,
    sets: opts.RecipeSets = None,
    shard_size: Annotated[int | None, typer.Option(help="Samples per shard (overrides the recipe).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per labeler batch (overrides the recipe).")] = None,
    split: Annotated[
        str | None, typer.Option(help="Split name used in shard names (default: recipe, 'train').")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Discard an earlier build in OUT and start over.")] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address ('auto' or host:port); default: local Ray.")
    ] = None,
    executor: Annotated[
        str,
        typer.Option(help="'auto' (in-process for a small build, else Ray; the summary says why), 'ray' or 'local'."),
    ] = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bar; log lines only.")] = False,
) -> None:
    """Label every image in SRC with depth and semantic segmentation and write aligned shards to OUT."""
    from pipeline.build.builder import build_dataset, check_source_folder, describe, summary
    from pipeline.build.recipe import BuildConfig, ConfigError, load_recipe

    try:
        if isinstance(location(src), LocalPath):  # before the labelers (and torch) load; a store's: in the build
            check_source_folder(location(src))
        if executor not in ("auto", "ray", "local"):
            raise ConfigError(f"--executor must be 'auto', 'ray' or 'local', got {executor!r}")
        if executor == "local" and address:
            raise ConfigError("--executor local runs in this process; --address needs Ray")
        flags = {"shards.size": shard_size, "runtime.batch_size": batch_size, "source.split": split}
        resolved = load_recipe(recipe, flags, sets or ())
        cfg = BuildConfig(
            src=location(src),
            out=location(out),
            recipe=resolved,
            overwrite=overwrite,
            address=address,
            executor=executor,
            quiet=quiet,
            command=_rebuild_command(src, out, recipe, sets, flags, address, executor),
        )
        typer.echo(describe(cfg), err=True)
        result = build_dataset(cfg)
    except ConfigError as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume", err=True)
        raise typer.Exit(130) from None
    typer.echo(summary(result))
    if not result.ok:
        raise typer.Exit(1)


def _rebuild_command(
    src: str,
    out: str,
    recipe: Path | None,
    sets: list[str] | None,
    flags: Mapping[str, Any],
    address: str | None,
    executor: str,
) -> str:
    """The command line that repeats a build from anywhere (paths made absolute; no --overwrite, which would
    start over, and no --quiet), recorded in manifest.json for `verify` to quote."""
    import shlex

    def absolute(value: str) -> str:
        return str(location(value).absolute())

    names = {"shards.size": "--shard-size", "runtime.batch_size": "--batch-size", "source.split": "--split"}
    words = ["mmforge", "build-dataset", absolute(src), absolute(out)]
    if recipe is not None:
        words += ["--recipe", str(recipe.resolve()) if recipe.is_file() else str(recipe)]
    for item in sets or ():
        words += ["--set", item]
    for key, flag in names.items():
        if flags.get(key) is not None:
            words += [flag, str(flags[key])]
    if address:
        words += ["--address", address]
    if executor != "auto":
        words += ["--executor", executor]
    return shlex.join(words)


@app.command("scenes")
def scenes_cmd(
    out: Annotated[Path, typer.Argument(parser=local_location, metavar="OUT", help="Folder for the scenes.")],
    n: Annotated[int, typer.Option("--n", help="Scenes to render in this split.")],
    seed: Annotated[int, typer.Option(help="Seed: the same seed, split and settings give the same bytes.")] = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels (32..1024).")] = 96,
    split: Annotated[str, typer.Option(help="Split name (folder); different splits are different scenes.")] = "train",
    classes: Annotated[str, typer.Option(help="Class set: which shapes are placed (primitives).")] = "primitives",
    distance: Annotated[
        str, typer.Option(metavar="LO:HI", help="Camera distance in metres, drawn per scene (nearer: larger shapes).")
    ] = "1.8:3.4",
    workers: Annotated[int, typer.Option(help="Processes; 0 = one per CPU (the bytes do not depend on it).")] = 0,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Render procedural 3-D scenes with exact labels (depth in metres, classes by shape, normals) into the
    task-folder layout the `files` labeler reads; then build shards with --recipe manifests/scenes.toml."""
    from pipeline.synth.scenes import SceneConfig, ScenesError, render_scenes

    try:
        chosen = {"workers": workers} if workers else {}
        near_far = _distance_range(distance)
        cfg = SceneConfig(n=n, seed=seed, size=size, split=split, classes=classes, distance=near_far, **chosen)
        done = render_scenes(out, cfg, quiet=quiet)
    except ScenesError as err:
        raise fail(str(err)) from None
    except OSError as err:  # a folder it may not write, a full disk: what is finished is kept
        raise fail(f"cannot write the scenes to {out}: {err.strerror or err}") from None
    except KeyboardInterrupt:
        typer.echo(f"interrupted: rerun the same command to finish {out / split} (finished scenes are kept)", err=True)
        raise typer.Exit(130) from None
    typer.echo(
        f"{done.rendered} scenes rendered, {done.kept} kept, in {done.out / done.split} "
        f"({done.scenes_per_second:.0f} scenes/s)"
    )


def _distance_range(text: str) -> tuple[float, float]:
    """--distance LO:HI (metres) -> (lo, hi); one number is a fixed distance."""
    from pipeline.synth.scenes import ScenesError

    parts = text.split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) for v in values):
        raise ScenesError(f"--distance takes LO:HI in metres (e.g. 1.0:1.8), got {text!r}")
    return (values[0], values[-1])


@app.command("verify")
def verify_cmd(
    out: Annotated[
        str,
        typer.Argument(parser=location, metavar="OUT", help="Dataset folder or store prefix written by build-dataset."),
    ],
    deep: Annotated[
        bool, typer.Option(help="Also decode every member: pixel formats, sizes, class ids, json fields.")
    ] = False,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", parser=local_location, metavar="PATH", help="Write the complete report (JSON) here."),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Processes over shards (0: one per CPU, none when small; 1: no pool).")
    ] = 0,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Prove a dataset is complete and intact. Exit 0: all checks hold; 1: defects (listed); 2: bad usage."""
    from pipeline.format.schema import ConfigError
    from pipeline.verify.verifier import NotADatasetError, VerifyConfig, summary, verify_dataset

    try:
        report = verify_dataset(
            VerifyConfig(out=location(out), deep=deep, workers=workers, json_path=json_path, quiet=quiet)
        )
    except (NotADatasetError, ConfigError) as err:  # ConfigError: --json cannot or must not take the report
        raise fail(str(err)) from None
    except OSError as err:  # a store that cannot be listed or read (credentials, network)
        raise fail(f"cannot read {out}: {err}") from None
    typer.echo(summary(report))
    if not report.ok:
        raise typer.Exit(1)


@app.command("preview")
def preview_cmd(
    data: Annotated[
        str,
        typer.Argument(parser=location, metavar="DATA", help="Dataset folder or prefix written by build-dataset."),
    ],
    n: Annotated[int, typer.Option("--n", help="Samples (rows), chosen with --seed over the whole dataset.")] = 16,
    out: Annotated[
        str | None,
        typer.Option(parser=location, metavar="LOCATION", help="Write the grid here (PNG); default preview.png."),
    ] = None,
    html: Annotated[
        str | None,
        typer.Option(
            parser=location, metavar="LOCATION", help="Write a self-contained page to this folder (index.html)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample choice (same seed, same samples).")] = 0,
    tile: Annotated[int, typer.Option(help="Tile size in pixels.")] = 160,
) -> None:
    """Show what a dataset holds: rgb | depth (colour map) | semseg (palette) | any other modality, per sample."""
    from pipeline.format.schema import ConfigError, validate
    from pipeline.pictures.preview import PreviewConfig, preview

    try:
        cfg = PreviewConfig(data=location(data), n=n, out=_maybe(out), html=_maybe(html), seed=seed, tile=tile)
        validate(cfg, "preview")
        result = preview(cfg)
    except ConfigError as err:
        raise fail(str(err)) from None
    wrote = ", ".join(str(p) for p in (result.png, result.html) if p is not None)
    typer.echo(f"{result.rows} samples x {len(result.columns)} columns ({', '.join(result.columns)}): {wrote}")


RUN_COMMANDS = {
    "pretrain": "Pretrain MultiMAE on a dataset's shards. Several GPUs: torchrun ... -m trainer.train (same options).",
    "finetune": "Fine-tune a pretrained MultiMAE on classification, semantic segmentation or depth, from RGB or RGB-D.",
    "probe": "Linear probe (frozen encoder, BatchNorm + Linear): a fast signal of what pretraining learnt.",
}


def _run_command(kind: Literal["pretrain", "finetune", "probe"], summary: str) -> None:
    """Register `mmforge KIND`: its options are `trainer.options`' for the kind (`opts.run_parameters`), and
    their values go on by name to `_train`."""

    def command(ctx: typer.Context, **_: Any) -> None:
        _train(kind, ctx.params)

    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    command.__signature__ = inspect.Signature([context, *opts.run_parameters(kind)])  # type: ignore[attr-defined]
    command.__doc__, command.__name__ = summary, f"{kind}_cmd"
    app.command(kind)(command)


for _kind, _summary in RUN_COMMANDS.items():
    _run_command(_kind, _summary)  # type: ignore[arg-type]


def _train(kind: Literal["pretrain", "finetune", "probe"], values: Mapping[str, Any]) -> None:
    """pretrain / finetune / probe: the option values (by name, as parsed: `ctx.params`) -> the typed config and
    the run options -> one library call (the shared loop); one summary, one-line errors with exit 2."""
    from trainer.config import PretrainConfig, load_run_config
    from trainer.errors import USER_ERRORS
    from trainer.options import config_overrides
    from trainer.preflight import check_run

    try:
        check_run(kind, values)  # paths, device, --init: before torch is imported
        overrides, sets = config_overrides(values), values["sets"] or ()
        source = values["config"]
        if kind != "pretrain" and source is None:  # the task's own recipe, never the pretraining defaults
            from trainer.transfer.config import task_recipe

            source = task_recipe(kind, values.get("task"), sets)  # None: an unknown task, named below
            if source is not None:
                typer.echo(f"no --config: reading {source}, the task's recipe", err=True)
        cfg = load_run_config(kind, source, overrides, sets)  # every setting checked, before the run's imports
        from trainer.train import pretrain, run_options

        if isinstance(cfg, PretrainConfig):
            result = pretrain(cfg, run_options(values))
        else:
            from trainer.transfer.finetune import finetune

            with ExitStack() as stack:
                init = values["init"]
                weights = stack.enter_context(location(init).fetched()) if init is not None else None
                result = finetune(cfg, run_options(values), weights, _maybe(values["val"]))
    except USER_ERRORS as err:
        raise fail(str(err)) from None
    typer.echo(result.text())


def _maybe(value: str | None) -> Location | None:
    return None if value is None else location(value)


@app.command("list")
def list_cmd(
    what: Annotated[
        str | None, typer.Argument(metavar="[recipes|configs]", help="What to list; both when left out.")
    ] = None,
) -> None:
    """The shipped recipes (build-dataset --recipe NAME) and run configs (pretrain, finetune, probe --config NAME),
    each with the first line of its description."""
    from pipeline.build.recipe import RECIPES
    from pipeline.format.schema import opening_line, shipped_files
    from trainer.config import CONFIGS

    folders = {
        "recipes (build-dataset --recipe NAME)": RECIPES,
        "configs (pretrain, finetune, probe --config NAME)": CONFIGS,
    }
    if what not in (None, "recipes", "configs"):
        raise fail(f"list takes recipes or configs, got {what!r}")
    for heading, folder in folders.items():
        if what is None or heading.startswith(what):
            shipped = shipped_files(folder)
            width = max(map(len, shipped), default=0)
            typer.echo(f"{heading}:")
            for name, path in shipped.items():
                typer.echo(f"  {name:<{width}}  {opening_line(path)}")


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Annotated[
        str,
        typer.Argument(
            parser=location, metavar="CHECKPOINT", help="A fine-tuning checkpoint (checkpoint-best.pt, ...)."
        ),
    ],
    data: Annotated[str, typer.Option(parser=location, metavar="LOCATION", help="Shards to evaluate on.")],
    json_path: Annotated[
        Path | None,
        typer.Option("--json", parser=local_location, metavar="PATH", help="Write the metrics here (JSON)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto (GPU when present), cpu, cuda or cuda:N.")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="Samples per forward.")] = 16,
    protocol: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="How each image is placed: center, pad, slide (at the model's size) or the official ade20k, "
            "nyuv2-semseg, nyuv2-depth, imagenet (default: the checkpoint's task.eval_protocol).",
        ),
    ] = None,
) -> None:
    """The task's metrics over a whole split: top-1/top-5, mIoU/pixel accuracy, or delta1-3/RMSE/AbsRel, under
    an evaluation protocol (recorded in --json, with per-class values and a confusion matrix file beside it).
    The split's classes are mapped onto the model's by name; every check comes before the first forward."""
    from trainer.errors import USER_ERRORS
    from trainer.preflight import check_checkpoint, check_data, check_device, check_output_file

    try:
        check_device(device)  # before torch is imported
        check_output_file(json_path, "--json")
        check_checkpoint(checkpoint, "finetune-run", use="evaluate")
        check_data(data)
        from trainer.transfer.finetune import check_evaluate_options, evaluate

        check_evaluate_options(device, json_path, batch_size, protocol)  # before a checkpoint is fetched
        with location(checkpoint).fetched() as weights:
            result = evaluate(
                weights, location(data), json_path, device, batch_size, source=str(checkpoint), protocol=protocol
            )
    except USER_ERRORS as err:
        raise fail(str(err)) from None
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"{result.task} on {data}: {result.metrics_text()} (protocol {result.protocol})")


@app.command("predict")
def predict_cmd(
    checkpoint: Annotated[
        str,
        typer.Argument(
            parser=location, metavar="CHECKPOINT", help="A fine-tuning checkpoint (checkpoint-best.pt, ...)."
        ),
    ],
    inputs: Annotated[
        str,
        typer.Argument(
            parser=location,
            metavar="IMAGES_OR_SHARDS",
            help="A folder or store prefix of images (recursive), or a dataset (its shards).",
        ),
    ],
    out: Annotated[
        Path,
        typer.Argument(
            parser=local_location, metavar="OUT", help="New or empty folder, or an earlier predict output to resume."
        ),
    ],
    device: Annotated[str, typer.Option(help="auto (GPU when present), cpu, cuda or cuda:N.")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="Images per forward.")] = 16,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """The model's predictions for every image, at the image's own size: depth (16-bit PNG, millimetres) or class
    maps (class-id PNG), each with a coloured picture, or a CSV of the top-5 classes. Rerun to resume."""
    from trainer.errors import USER_ERRORS
    from trainer.preflight import check_checkpoint, check_device, check_input

    try:
        check_device(device)  # before torch is imported
        check_checkpoint(checkpoint, "finetune-run", use="predict")
        check_input(inputs, "predict takes a folder of images or a dataset")
        from trainer.transfer.finetune import check_evaluate_options
        from trainer.transfer.predict import predict

        check_evaluate_options(device, None, batch_size)  # before a checkpoint on a store is fetched
        with location(checkpoint).fetched() as weights:
            result = predict(weights, location(inputs), out, device, batch_size, source=str(checkpoint), quiet=quiet)
    except USER_ERRORS as err:
        raise fail(str(err)) from None
    typer.echo(result.text())
    if result.failed:
        raise typer.Exit(1)


@app.command("export")
def export_cmd(
    checkpoint: Annotated[
        str,
        typer.Argument(
            parser=location,
            metavar="CHECKPOINT",
            help="Our pretraining or fine-tuning checkpoint, or an official one (a file or store object).",
        ),
    ],
    out: Annotated[
        str,
        typer.Argument(
            parser=location, metavar="OUT", help="timm: a new folder (or prefix); official: a .pth file (or object)."
        ),
    ],
    format: Annotated[str, typer.Option(help="timm (local-dir folder) or official (MultiMAE .pth).")] = "timm",
) -> None:
    """Export to timm (timm.create_model("local-dir:OUT", pretrained=True): a fine-tuned classifier with its
    head, else the encoder) or to the official layout."""
    from pipeline.format.schema import ConfigError
    from trainer.engine.checkpoint_kind import EXPORTABLE
    from trainer.errors import USER_ERRORS
    from trainer.preflight import check_checkpoint

    try:
        if format not in ("timm", "official"):
            raise ConfigError(f"--format must be timm or official, got {format!r}")
        target = location(out)
        if target.exists(folder=format == "timm"):
            raise ConfigError(f"{out} exists; export writes a new {'file' if format == 'official' else 'folder'}")
        check_checkpoint(checkpoint, *EXPORTABLE, use="export")  # before torch is imported
        from trainer.transfer.export import encoder_state, export_official, export_timm_checkpoint

        with location(checkpoint).fetched() as weights, target.published() as local:
            if format == "timm":
                held = export_timm_checkpoint(weights, local)
            else:
                held = "the official layout"
                export_official(encoder_state(weights)[0], local)
    except (*USER_ERRORS, KeyError) as err:
        raise fail(f"cannot export {checkpoint}: {err}") from None
    typer.echo(f"wrote {target}: {held}")


def _keep_counts(keep: list[str]) -> dict[str, int]:
    from pipeline.format.schema import ConfigError

    counts = {}
    for item in keep:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ConfigError(f"--keep takes MODALITY=TOKENS (e.g. rgb=98), got {item!r}")
        counts[name.strip()] = int(value)
    return counts


@app.command("reconstruct")
def reconstruct_cmd(
    checkpoint: Annotated[
        str,
        typer.Argument(
            parser=location, metavar="CHECKPOINT", help="Our checkpoint-*.pt or an official MultiMAE checkpoint."
        ),
    ],
    out: Annotated[
        str, typer.Option(parser=location, metavar="LOCATION", help="Where to write the figure (PNG).")
    ] = "reconstruction.png",
    image: Annotated[
        Path | None, typer.Option(parser=local_location, metavar="PATH", help="An image file as input.")
    ] = None,
    sample: Annotated[str | None, typer.Option(help="A dataset sample as input: OUT:SHARD/KEY.")] = None,
    labels_from: Annotated[
        Path | None,
        typer.Option(
            parser=local_location, metavar="PATH", help="Label --image with the labelers of this dataset's manifest."
        ),
    ] = None,
    keep: Annotated[
        list[str] | None, typer.Option(help="Visible tokens per modality, e.g. --keep rgb=98 --keep depth=0.")
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option(parser=local_location, metavar="PATH", help="An .npz with one 0/1 array (1 = masked) per input."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the Dirichlet masks (or of the positions for --keep).")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    tile: Annotated[int, typer.Option(help="Tile size in pixels.")] = 160,
    score: Annotated[
        str | None,
        typer.Option(
            parser=location,
            metavar="DATASET",
            help="Score the depth and semseg decoders from rgb alone over this labelled split (delta1, mIoU) "
            "beside the trivial baselines; with --keep, their predictions of the masked patches with those visible "
            "tokens (positions drawn per sample from --seed); with no --image or --sample, no figure.",
        ),
    ] = None,
) -> None:
    """Show what a checkpoint predicts: masked input | prediction | prediction + visible | target, per modality."""
    from pipeline.format.schema import ConfigError
    from trainer.engine.checkpoint_kind import RECONSTRUCTS
    from trainer.errors import USER_ERRORS
    from trainer.preflight import check_checkpoint, check_device, check_output_file

    try:  # before torch is imported
        check_device(device)
        check_checkpoint(checkpoint, *RECONSTRUCTS, use="reconstruct")
        if not 32 <= tile <= 1024:
            raise ConfigError(f"--tile must be 32..1024, got {tile}")
        figure = location(out)
        if isinstance(figure, LocalPath) and (image is not None or sample is not None or score is None):
            check_output_file(figure.path, "--out")
    except (*USER_ERRORS, ConfigError) as err:
        raise fail(str(err)) from None
    from trainer.pretrain.reconstruct import ReconstructConfig, reconstruct

    if score is not None and image is None and sample is None:
        raise _score_cross_modal(checkpoint, score, device, keep, seed)
    if score is not None:
        _score_cross_modal(checkpoint, score, device, keep, seed)
    try:
        stack = ExitStack()
        cfg = ReconstructConfig(
            checkpoint=stack.enter_context(location(checkpoint).fetched()),
            out=stack.enter_context(location(out).published()),
            image=image,
            sample=sample,
            labels_from=labels_from,
            keep=_keep_counts(keep or []),
            mask=mask,
            seed=seed,
            device=device,
            tile=tile,
        )
        with stack:
            result = reconstruct(cfg)
    except (*USER_ERRORS, ConfigError) as err:
        raise fail(str(err)) from None
    shown = ", ".join(f"{n}={v}" for n, v in result.visible.items())
    typer.echo(f"wrote {location(out)} ({len(result.rows)} modalities; visible tokens {shown})")


def _score_cross_modal(checkpoint: str, data: str, device: str, keep: list[str] | None, seed: int) -> typer.Exit:
    """Print the cross-modal scores of `checkpoint` on the split `data`, from rgb alone or with the `keep` visible
    tokens (one line and exit 2 on bad input)."""
    from trainer.errors import USER_ERRORS
    from trainer.pretrain.cross_modal import cross_modal_scores

    try:
        counts = _keep_counts(keep) if keep else None
        with location(checkpoint).fetched() as weights:
            scores = cross_modal_scores(weights, location(data), device=device, keep=counts, seed=seed)
    except USER_ERRORS as err:
        raise fail(str(err)) from None
    typer.echo(scores.table())
    return typer.Exit(0)


@app.command("convert-weights")
def convert_weights_cmd(
    src: Annotated[
        Path,
        typer.Argument(
            parser=local_location,
            metavar="SRC",
            help="DPT-Hybrid checkpoint in the original DPT layout (.pth, Lightning .ckpt).",
        ),
    ],
    dst: Annotated[
        Path,
        typer.Argument(
            parser=local_location, metavar="DST", help="New folder for the transformers DPTForDepthEstimation."
        ),
    ],
) -> None:
    """Convert original-layout DPT-Hybrid weights (e.g. omnidata_rgb2depth_dpt_hybrid.pth) to a transformers folder."""
    if not src.is_file():  # the library's first checks, before it imports torch and transformers
        raise fail(f"DPT-Hybrid checkpoint not found: {src}")
    if dst.exists():
        raise fail(f"{dst} exists; convert-weights writes a new folder")
    if not dst.parent.is_dir():
        raise fail(f"cannot write {dst}: the folder {dst.parent} does not exist")
    from labelers.dpt_original import CheckpointLayoutError, convert_weights

    try:
        folder = convert_weights(src, dst)
    except (CheckpointLayoutError, FileNotFoundError, FileExistsError) as err:
        raise fail(str(err)) from None
    typer.echo(f"wrote {folder}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

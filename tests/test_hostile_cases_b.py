"""Hostile input where a traceback used to come instead of one line (issue 26, item 7): each case ends in a clear
one-line error (`error: ...` on stderr, exit 2) or a recorded failure, with nothing lost and no code executed.

Case -> the tests that show it (here unless a file is named):
a. a class-table TSV with a short row or a stray quote: `test_a_class_table_with_a_short_row_or_a_stray_quote`;
   tests/test_classes.py::test_own_class_table_from_a_tsv (ids out of order)
b. deeply nested TOML (RecursionError) in a recipe, a run config or a --set value:
   `test_deeply_nested_toml_is_one_line`
c. a plugin that raises at import or registers a taken name: `test_a_broken_plugin_is_named_and_verify_still_works`,
   `test_a_name_of_a_plugin_that_failed_names_the_plugin`; tests/test_registry.py::test_a_failing_plugin_is_named,
   tests/test_transfer_tasks.py::test_a_failing_task_plugin_is_named
d. a malformed timm export folder for `finetune --init`: `test_a_malformed_timm_export_is_a_checkpoint_error`
   (CheckpointError is what the training commands report in one line with exit 2)
e. `convert-weights` of a truncated or garbage file: `test_convert_weights_of_a_truncated_or_garbage_file`;
   tests/test_dpt_original.py::test_pickled_objects_are_refused, ::test_missing_file_fails_fast
f. `reconstruct --labels-from` a dataset whose manifest names unusable labelers:
   `test_reconstruct_labels_from_a_manifest_with_unusable_labelers`
g. a checkpoint write that fails (ENOSPC): `test_a_checkpoint_write_that_fails_is_one_line_and_keeps_the_last`
h. an unreachable store endpoint (a loopback port with nothing listening):
   `test_an_unreachable_store_endpoint_is_one_line`; tests/test_object_store.py::
   test_a_missing_bucket_or_object_is_a_one_line_error (a missing bucket, on a real S3 API); store credentials
   that are missing (item 5): `test_store_credentials_that_are_missing_are_one_line`
i. output paths that are folders, files or too long, for the commands' output options:
   `test_output_paths_that_are_folders_or_files` (verify --json, evaluate --json, preview --out/--html,
   reconstruct --out, export, build-dataset, scenes, pretrain --out);
   `test_names_over_255_bytes_are_refused_before_anything_runs` (a usage error, exit 2, from the one local-path
   parser); `test_a_long_legal_name_gets_a_legal_temp_name` (temp names of fs.temp_name and convert-weights);
   tests/test_hostile.py::test_recipe_not_utf8_and_output_that_cannot_be_created;
   tests/test_transfer_trust.py::test_evaluate_refuses_bad_input_before_any_compute
j. `verify --json` into a folder blamed the dataset: `test_output_paths_that_are_folders_or_files` (its first case)
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from labelers import registry
from labelers.classes import class_table
from pipeline.cli.app import app
from pipeline.format import fs
from pipeline.synth.rectangles import write_dataset
from tests.conftest import DEMO_RECIPE, EXAMPLES, ROOT
from trainer.config import config_to_dict, smoke_config
from trainer.engine.checkpoint import read_checkpoint, save_checkpoint
from trainer.errors import CheckpointError
from trainer.model.multimae import MultiMAE
from trainer.transfer.config import load_finetune_config
from trainer.transfer.export import export_timm_checkpoint
from trainer.transfer.init_weights import initialise
from trainer.transfer.model import MultiViT

SMOKE = ROOT / "trainer" / "configs" / "smoke.toml"
FINETUNE_SMOKE = ROOT / "trainer" / "configs" / "finetune-cls-smoke.toml"


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_error(result, code: int = 2) -> str:
    """The result's stderr, asserted to be one `error:` line and exit `code` (no traceback)."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.fixture
def smoke_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    cfg = smoke_config()
    state = {"model": MultiMAE(cfg.model).state_dict(), "config": config_to_dict(cfg)}
    return save_checkpoint(tmp_path / "pretrain", 1, state, 1)


# ----------------------------------------------------------------------------------------- a. class tables


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ("index\tname\tr\tg\tb\n0\tsea\t0\t0\n", "line 2: 4 field(s), the header has 5"),
        ('index\tname\tr\tg\tb\n0\t"sea\t0\t0\t255\n1\tland\t0\t255\t0\n', "line 2: a quote"),
        ("index\tname\tr\tg\tb\n0\tsea\tzero\t0\t255\n", "line 2: index, r, g and b must be integers"),
    ],
)
def test_a_class_table_with_a_short_row_or_a_stray_quote(tmp_path: Path, table: str, why: str) -> None:
    tsv = tmp_path / "mine.tsv"
    tsv.write_text(table)
    with pytest.raises(ValueError, match=re.escape(why)):  # ClassTableError
        class_table(str(tsv))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        DEMO_RECIPE.read_text().replace('name = "mask2former-smoke"', f'name = "mask2former-smoke"\nclasses = "{tsv}"')
    )
    out = tmp_path / "out"
    line = one_line_error(run("build-dataset", str(EXAMPLES), str(out), "--recipe", str(recipe), "--quiet"))
    assert str(tsv) in line and why in line and not out.exists()


# ---------------------------------------------------------------------------------------------- b. TOML


def test_deeply_nested_toml_is_one_line(tmp_path: Path) -> None:
    deep = "[" * 2000 + "]" * 2000
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f"[shards]\nsize = {deep}\n")
    out = tmp_path / "out"
    line = one_line_error(run("build-dataset", str(EXAMPLES), str(out), "--recipe", str(recipe)))
    assert "nests arrays or tables too deeply" in line and not out.exists()
    config = tmp_path / "run.toml"
    config.write_text(f"[train]\nsteps = {deep}\n")
    data = write_dataset(tmp_path / "data", [2])  # a real dataset: the paths are checked before the config
    common = ["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert "nests arrays or tables too deeply" in one_line_error(run(*common, "--config", str(config)))
    assert "is not a TOML value" in one_line_error(run(*common, "--set", f"train.steps={deep}"))
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------------------------------------- c. plugins

BROKEN = "raise RuntimeError('boom at import')\n"
TAKEN = """
import dataclasses
from pipeline.format.codecs import CODECS, register_codec
register_codec("depth", dataclasses.replace(CODECS["depth"]))  # a name that is taken
"""


def fake_distribution(folder: Path, groups: dict[str, dict[str, str]], modules: dict[str, str]) -> Path:
    """A package on `folder` whose entry points (group -> name -> module) name `modules` (name -> source)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    dist = folder / "mmforge_hostile-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mmforge-hostile\nVersion: 0.1\n")
    lines = [f"[{g}]\n" + "".join(f"{n} = {m}\n" for n, m in eps.items()) for g, eps in groups.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines))
    return folder


@pytest.mark.timeout(120)
def test_a_broken_plugin_is_named_and_verify_still_works(tmp_path: Path) -> None:
    """Every command imports the codec table, which loads the codec plugins: a plugin that raised stopped them all
    (verify too, with a traceback). Now it is left out with one warning naming it, and verify does its work."""
    plugins = fake_distribution(
        tmp_path / "plugins",
        {
            "multimae_forge.codecs": {"broken": "hostile_broken", "taken": "hostile_taken"},
            "multimae_forge.labelers": {"broken-labeler": "hostile_broken"},
        },
        {"hostile_broken": BROKEN, "hostile_taken": TAKEN},
    )
    data = write_dataset(tmp_path / "data", [2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.app", "verify", str(data), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=110,
    )
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "broken = hostile_broken (group multimae_forge.codecs, package mmforge-hostile)" in done.stderr
    assert "RuntimeError: boom at import" in done.stderr
    assert "taken = hostile_taken" in done.stderr and "'depth' is registered twice" in done.stderr


def test_a_name_of_a_plugin_that_failed_names_the_plugin(tmp_path: Path, monkeypatch) -> None:
    plugins = fake_distribution(
        tmp_path / "plugins", {"multimae_forge.labelers": {"mine": "hostile_labeler"}}, {"hostile_labeler": BROKEN}
    )
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_loaded", False)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(DEMO_RECIPE.read_text().replace('name = "dpt-smoke"', 'name = "my-depth"'))
    result = run("build-dataset", str(EXAMPLES), str(tmp_path / "out"), "--recipe", str(recipe), "--quiet")
    line = one_line_error(result)
    assert "unknown labeler 'my-depth'" in line and "mine = hostile_labeler" in line and "boom at import" in line
    assert "dpt-smoke" in line  # the built-in labelers are still there


# ----------------------------------------------------------------------------------------------- d. timm


def _forgeries(good: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    pos, cls = good["pos_embed"], good["cls_token"]
    return {
        "pos_embed flat": {**good, "pos_embed": pos.flatten()},
        "pos_embed without a batch row": {**good, "pos_embed": pos[0]},
        "pos_embed not a square grid": {**good, "pos_embed": pos[:, :-3]},
        "pos_embed empty": {**good, "pos_embed": pos[:, :0]},
        "cls_token flat": {**good, "cls_token": cls.flatten()},
        "cls_token of another width": {**good, "cls_token": torch.zeros(1, 1, 7)},
        "patch_embed flat": {**good, "patch_embed.proj.weight": good["patch_embed.proj.weight"].flatten()},
        "no patch_embed bias": {k: v for k, v in good.items() if k != "patch_embed.proj.bias"},
        "a block of another shape": {**good, "blocks.0.attn.qkv.weight": torch.zeros(3)},
    }


def test_a_malformed_timm_export_is_a_checkpoint_error(tmp_path: Path, smoke_checkpoint: Path) -> None:
    export_timm_checkpoint(smoke_checkpoint, tmp_path / "export")
    good = load_file(tmp_path / "export" / "model.safetensors")
    model = MultiViT(load_finetune_config(FINETUNE_SMOKE), 10)
    assert initialise(model, tmp_path / "export").kind == "timm"
    for name, state in _forgeries(good).items():
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
        with pytest.raises(CheckpointError) as caught:  # not an IndexError from slicing what is not there
            initialise(model, folder)
        assert "\n" not in str(caught.value), name


# ---------------------------------------------------------------------------------------- e. convert-weights


def test_convert_weights_of_a_truncated_or_garbage_file(tmp_path: Path) -> None:
    whole = tmp_path / "whole.pth"
    torch.save({"model": {"w": torch.zeros(4096)}}, whole)
    files = {
        "truncated.pth": (whole.read_bytes()[:2000], "truncated or not a checkpoint"),
        "garbage.pth": (bytes(range(7, 256)) * 20, "not a PyTorch file"),
        "empty.pth": (b"", "the file is empty"),
        "short.pth": (b"hello", "not a PyTorch file"),
        "garbage.safetensors": (whole.read_bytes()[:100], "truncated or not a checkpoint"),
    }
    for name, (data, why) in files.items():
        (tmp_path / name).write_bytes(data)
        line = one_line_error(run("convert-weights", str(tmp_path / name), str(tmp_path / f"{name}-out")))
        assert why in line, line
        assert not (tmp_path / f"{name}-out").exists()
        assert len(line) < 400, line  # torch's paragraphs are cut to their first sentence


# ------------------------------------------------------------------------------------ f. --labels-from


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ({"name": "dpt-smoke", "weights": "/nonexistent/weights"}, "are not a local folder"),
        ({"name": "no-such-labeler"}, "unknown labeler 'no-such-labeler'"),
        ({"name": "omnidata-dpt-hybrid", "weights": "{tmp}/garbage.pth"}, "cannot be loaded"),
        ({"name": "dpt-smoke", "size": "big"}, "labeler 'dpt-smoke'"),
    ],
)
def test_reconstruct_labels_from_a_manifest_with_unusable_labelers(
    tmp_path: Path, smoke_checkpoint: Path, entry: dict, why: str
) -> None:
    (tmp_path / "garbage.pth").write_bytes(b"\x80\x02" + b"garbage" * 10)
    data = write_dataset(tmp_path / "data", [2])
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["labelers"] = [{k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in entry.items()}]
    (data / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "figure.png"
    image = EXAMPLES / "brick.jpg"
    args = ["reconstruct", str(smoke_checkpoint), "--image", str(image), "--labels-from", str(data), "--out", str(out)]
    line = one_line_error(run(*args))
    assert why in line and f"{data}/manifest.json" in line and not out.exists()


# ---------------------------------------------------------------------------------------- g. full disk


def test_a_checkpoint_write_that_fails_is_one_line_and_keeps_the_last(tmp_path: Path, monkeypatch) -> None:
    data = write_dataset(tmp_path / "data", [4, 4])
    saves: list[int] = []
    real_save = torch.save

    def disk_fills(obj, f, *args, **kwargs):  # the second checkpoint finds the disk full halfway
        saves.append(1)
        if len(saves) >= 2:
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills)
    run_dir = tmp_path / "run"
    args = ["pretrain", "--data", str(data), "--out", str(run_dir), "--config", str(SMOKE), "--device", "cpu"]
    line = one_line_error(run(*args, "--steps", "2", "--set", "train.checkpoint_every=1"))
    assert "cannot write checkpoint" in line and "No space left on device" in line
    monkeypatch.setattr(torch, "save", real_save)
    assert read_checkpoint(run_dir / "checkpoint-last.pt").step == 1  # still the one before, and whole
    assert not (run_dir / "checkpoint-2.pt").exists()
    assert not [p for p in run_dir.iterdir() if fs.is_temp(p)]


# ------------------------------------------------------------------------------------- h. unreachable store


def test_an_unreachable_store_endpoint_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """A loopback port that is bound but not listening refuses every connection: verify gave a traceback, and
    build-dataset said the bucket does not exist."""
    s3fs = pytest.importorskip("s3fs")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_MAX_ATTEMPTS": "1",  # botocore's retries only make the test slow
        }.items():
            monkeypatch.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()  # no client made for another endpoint
        try:
            line = one_line_error(run("verify", "s3://bucket/dataset", "--quiet"))
            assert "cannot reach the store of s3://bucket/dataset" in line and endpoint in line
            out = tmp_path / "never"
            line = one_line_error(
                run("build-dataset", str(EXAMPLES), "s3://bucket/out", "--recipe", str(DEMO_RECIPE), "--quiet")
            )
            assert "cannot reach the store of s3://bucket/out" in line and "does not exist" not in line
            assert not out.exists()
            data, image = write_dataset(tmp_path / "data", [2]), str(EXAMPLES / "brick.jpg")
            smoke = ["--config", str(SMOKE), "--device", "cpu", "--steps", "1"]
            for args in (  # every other command that reads or writes a store: one line too
                ("build-dataset", "s3://bucket/src", str(out), "--recipe", str(DEMO_RECIPE), "--quiet"),
                ("pretrain", "--data", "s3://bucket/data", "--out", str(tmp_path / "run"), *smoke),
                ("pretrain", "--data", str(data), "--out", "s3://bucket/run", *smoke),
                ("preview", "s3://bucket/data", "--n", "1"),
                ("preview", str(data), "--n", "1", "--out", "s3://bucket/grid.png"),
                ("reconstruct", "s3://bucket/ckpt.pt", "--image", image),
                ("export", "s3://bucket/ckpt.pt", str(tmp_path / "export")),
            ):
                assert "cannot reach the store of s3://bucket/" in one_line_error(run(*args)), args
            assert not out.exists() and not (tmp_path / "run").exists() and not (tmp_path / "export").exists()
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


def test_store_credentials_that_are_missing_are_one_line(tmp_path: Path, monkeypatch) -> None:
    """No credentials anywhere (variables, files, instance metadata): botocore's NoCredentialsError was a
    traceback with exit 1, the code for defects; now one line naming where credentials are read from."""
    s3fs = pytest.importorskip("s3fs")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-role lookup over the network
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # never contacted: signing fails first
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        data = write_dataset(tmp_path / "data", [2])
        smoke = ["--config", str(SMOKE), "--device", "cpu", "--steps", "1"]
        for args in (
            ("verify", "s3://bucket/dataset", "--quiet"),
            ("preview", "s3://bucket/dataset", "--n", "1"),
            ("build-dataset", "s3://bucket/src", str(tmp_path / "out"), "--recipe", str(DEMO_RECIPE), "--quiet"),
            ("pretrain", "--data", str(data), "--out", "s3://bucket/run", *smoke),
        ):
            line = one_line_error(run(*args))
            assert "no credentials for the store of s3://bucket/" in line and "AWS_ACCESS_KEY_ID" in line, line
        assert not (tmp_path / "out").exists()
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


# --------------------------------------------------------------------------- i, j. output paths


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data", [2])


def test_output_paths_that_are_folders_or_files(tmp_path: Path, data: Path, smoke_checkpoint: Path) -> None:
    """Each output option given a folder where a file goes, or a file where a folder goes: one line that names
    the option, said before any work; `verify --json` used to blame the dataset ("cannot read OUT")."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("mine")
    folder, file = str(tmp_path / "folder"), str(tmp_path / "file")
    image = str(EXAMPLES / "brick.jpg")
    cases = {
        ("verify", str(data), "--quiet", "--json", folder): "--json",
        ("verify", str(data), "--quiet", "--json", f"{file}/report.json"): "is a file, not a folder",
        ("evaluate", "any.pt", "--data", str(data), "--json", f"{file}/metrics.json"): "is a file, not a folder",
        ("preview", str(data), "--n", "1", "--out", folder): "--out",
        ("preview", str(data), "--n", "1", "--html", file): "--html",
        ("reconstruct", str(smoke_checkpoint), "--image", image, "--out", folder): "--out",
        ("export", str(smoke_checkpoint), folder, "--format", "official"): "exists",
        ("export", str(smoke_checkpoint), file): "exists",
        ("build-dataset", str(EXAMPLES), file, "--recipe", str(DEMO_RECIPE), "--quiet"): "not a folder",
        ("scenes", file, "--n", "1", "--quiet"): "not a folder",
        ("pretrain", "--data", str(data), "--out", file, "--config", str(SMOKE), "--device", "cpu"): "run folder",
    }
    for args, named in cases.items():
        line = one_line_error(run(*args))
        assert named in line and "cannot read" not in line, (args, line)
    assert (tmp_path / "file").read_text() == "mine" and not any((tmp_path / "folder").iterdir())


def test_names_over_255_bytes_are_refused_before_anything_runs(tmp_path: Path, data: Path) -> None:
    too_long = str(tmp_path / ("x" * 256))
    for args in (
        ("verify", str(data), "--json", too_long),
        ("build-dataset", str(EXAMPLES), too_long, "--recipe", str(DEMO_RECIPE)),
        ("scenes", too_long, "--n", "1"),
        ("pretrain", "--data", str(data), "--out", too_long, "--config", str(SMOKE)),
        ("reconstruct", "ckpt.pt", "--image", too_long),
    ):
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "a file or folder name has at most 255" in " ".join(result.stderr.split()).replace("│", ""), args
        assert "Traceback" not in result.output


def test_a_long_legal_name_gets_a_legal_temp_name(tmp_path: Path, data: Path, smoke_checkpoint: Path, monkeypatch):
    """A name of 240 bytes is legal; its temp name `.{name}.tmp-{pid}-{hex}` was not (ENAMETOOLONG)."""
    for name in ("n" * 255, "é" * 127, "a" + "é" * 127):
        temp = fs.temp_name(tmp_path / name)
        assert len(os.fsencode(temp.name)) <= 255 and fs.is_temp(temp)
        temp.write_bytes(b"")  # a name the file system takes
    image = str(EXAMPLES / "brick.jpg")
    long = "n" * 240
    for args, made in (
        (("verify", str(data), "--quiet", "--json", str(tmp_path / f"{long}.json")), f"{long}.json"),
        (("preview", str(data), "--n", "1", "--out", str(tmp_path / f"{long}.png")), f"{long}.png"),
        (
            ("reconstruct", str(smoke_checkpoint), "--image", image, "--out", str(tmp_path / f"r{long}.png")),
            f"r{long}.png",
        ),
        (("export", str(smoke_checkpoint), str(tmp_path / f"{long}.pth"), "--format", "official"), f"{long}.pth"),
    ):
        result = run(*args)
        assert result.exit_code == 0, (args, result.output)
        assert (tmp_path / made).is_file()

    from transformers import DPTForDepthEstimation

    from labelers import dpt_original
    from labelers.smoke import tiny_dpt_config

    config = tiny_dpt_config(True)
    config.num_output_channels = 1  # what convert_weights reads off a converted model
    monkeypatch.setattr(dpt_original, "load_dpt_hybrid_original", lambda src: DPTForDepthEstimation(config))
    dst = tmp_path / ("d" * 250)
    assert dpt_original.convert_weights("any.pth", dst) == dst and (dst / "config.json").is_file()

"""Hostile cases of issue 26, item 7 (this part): data lost or spoiled, runaway resources, silently wrong.
Each is handled with one clear line (exit code 2) or a recorded failure, loses nothing, never hangs. The tests
that show each case (in this file unless a file is named):

a. `pretrain` / `finetune --out` a run folder without checkpoint-last.pt would prune its numbered checkpoints
   and overwrite config.json, metrics.jsonl and the export: refused, untouched:
   test_a_run_without_its_last_checkpoint_is_never_started_over,
   test_a_fine_tuning_run_without_its_last_checkpoint_is_never_started_over;
   a run killed before its first checkpoint still starts again:
   test_a_run_killed_before_its_first_checkpoint_starts_again;
   checkpoint-last.pt is written first, so a kill before checkpoint-N.pt leaves a run that resumes:
   test_the_last_checkpoint_is_written_before_the_numbered_one;
   ownership of the run folder: tests/test_run_survives.py::test_a_folder_of_photos_is_refused_and_left_untouched,
   ::test_a_dataset_folder_is_named_as_such, ::test_a_run_marks_its_folder_and_another_kind_of_run_is_refused,
   ::test_a_second_writer_is_refused_with_the_holder_named, ::test_a_refused_run_removes_the_folder_it_made.
b. `--out` equal to `--data` (the same path, spelled otherwise, a link to it, a folder around it; pretrain and
   finetune): one line, the dataset untouched: test_out_equal_to_data_is_refused_and_the_dataset_untouched;
   the library: tests/test_run_survives.py::test_a_run_never_writes_into_its_dataset.
c. No output over an input, into a dataset, or over a run's files; reports written atomically:
   test_reconstruct_never_writes_over_its_checkpoint_or_input, test_preview_and_verify_never_write_into_a_dataset,
   test_evaluate_json_never_writes_over_its_checkpoint, test_check_output_refuses_run_files_and_allows_the_rest,
   test_verify_json_is_written_atomically; predict OUT inside its input:
   tests/test_predict.py::test_out_must_be_new_empty_or_ours.
d. A failed `mmforge export` leaves no half folder, and the rerun succeeds:
   test_a_failed_export_leaves_no_half_folder.
e. A very long class name is drawn in time linear in its length: test_a_long_class_name_is_drawn_at_once.
f. `max_file_bytes` far above memory: sources are read in blocks, never one buffer of that size:
   test_a_huge_max_file_bytes_still_reads_every_image.
g. A label id wider than 32 bits (.npy of the `files` labeler) never wraps into a valid class when the label
   is turned or resized: test_a_64_bit_label_id_is_a_failure_not_a_class.
h. Labeler overrides in a recipe are validated (std = [0, 0, 0], NaN mean, wrong types, sides):
   test_labeler_overrides_are_validated.
i. A non-finite loss is null in metrics.jsonl (never 0.0) and left out of the summary's means:
   test_a_nonfinite_loss_is_null_in_the_metrics_and_left_out_of_the_means; `--init` weights holding NaN are
   refused before the run folder is made: test_nan_init_weights_are_refused.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline.build import images
from pipeline.build.images import decode_image
from pipeline.build.label_files import LabelFileError, read_label, spec_of
from pipeline.build.recipe import recipe_from_dict
from pipeline.cli.app import app
from pipeline.format.outputs import check_output
from pipeline.format.schema import ConfigError
from pipeline.pictures import figures
from pipeline.synth.rectangles import write_dataset
from tests.conftest import gradient
from trainer.engine import checkpoint
from trainer.engine.run_folder import RUN_MARKER
from trainer.model.multimae import MultiMAE
from trainer.train import RunOptions, build_config, pretrain

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "trainer" / "configs" / "smoke.toml"
OLD = ROOT / "tests" / "data" / "checkpoints"
PRETRAIN_CKPT = OLD / "pretrain-run" / "checkpoint-last.pt"
FINETUNE_BEST = OLD / "finetune-run" / "checkpoint-best.pt"
QUIET = ["--device", "cpu", "--set", "train.progress=false", "--set", "train.figure_every=0", "--no-tensorboard"]


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset the checkpoints of tests/data/checkpoints were trained on (8 + 8 samples)."""
    return write_dataset(tmp_path_factory.mktemp("hostile-a") / "data", [8, 8])


def smoke_pretrain(data: Path, out: Path, steps: int, **train: object):
    torch.set_num_threads(1)
    cfg = build_config(SMOKE, steps=steps)
    fields = dict(progress=False, tensorboard=False, figure_every=0, checkpoint_every=2) | train
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **fields))
    return pretrain(cfg, RunOptions(data=data, out=out, device="cpu"))


# ---------------------------------------------------------------------------------------------- a. run folders


@pytest.mark.parametrize("removed", ["last", "all-checkpoints"])
def test_a_run_without_its_last_checkpoint_is_never_started_over(data: Path, tmp_path: Path, removed: str) -> None:
    out = tmp_path / "run"
    smoke_pretrain(data, out, steps=4, keep_last=2)
    (out / "checkpoint-last.pt").unlink()
    if removed == "all-checkpoints":
        for path in out.glob("checkpoint-*.pt"):
            path.unlink()
    before = tree(out)
    args = ["pretrain", "--data", str(data), "--out", str(out), "--config", str(SMOKE), "--steps", "4", *QUIET]
    line = one_line_error(cli(*args), "holds a run without checkpoint-last.pt", "choose a new --out")
    assert ("checkpoint-4.pt" in line) == (removed == "last") and "encoder-timm.safetensors" in line
    assert tree(out) == before  # nothing pruned, nothing overwritten, no marker or lock left


def test_a_fine_tuning_run_without_its_last_checkpoint_is_never_started_over(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    out.mkdir()
    shutil.copyfile(FINETUNE_BEST, out / "checkpoint-best.pt")
    (out / RUN_MARKER).write_text(json.dumps({"tool": "multimae-forge", "kind": "finetune-run", "format": 1}))
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    before = tree(out)
    args = ["finetune", "--data", str(data), "--out", str(out), "--config", str(OLD / "finetune-tiny.toml")]
    one_line_error(cli(*args, "--steps", "2", *QUIET), "checkpoint-best.pt", "starting afresh would overwrite it")
    assert tree(out) == before


def test_a_run_killed_before_its_first_checkpoint_starts_again(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    smoke_pretrain(data, out, steps=2)
    for path in out.glob("checkpoint-*.pt"):
        path.unlink()
    (out / "encoder-timm.safetensors").unlink()
    document = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(document | {"step": None}))  # as written at the start
    assert smoke_pretrain(data, out, steps=2).steps == 2 and (out / "checkpoint-last.pt").is_file()


def test_the_last_checkpoint_is_written_before_the_numbered_one(tmp_path: Path, monkeypatch) -> None:
    def killed(src: Path, dst: Path) -> None:
        raise KeyboardInterrupt  # the kill between the two files

    monkeypatch.setattr(checkpoint, "_link", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(tmp_path, 2, {"model": {"a": torch.ones(1)}}, keep_last=2)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-last.pt"]  # what a rerun resumes from


# ---------------------------------------------------------------------------------------------- b. --out = --data


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
@pytest.mark.parametrize("spelling", ["same", "dotted", "link", "around"])
def test_out_equal_to_data_is_refused_and_the_dataset_untouched(
    data: Path, tmp_path: Path, command: str, spelling: str
) -> None:
    (tmp_path / "link").symlink_to(data)
    out = {
        "same": str(data),
        "dotted": f"{data}/../{data.name}/.",
        "link": str(tmp_path / "link"),
        "around": str(data.parent),
    }[spelling]
    before = tree(data.parent)
    config = SMOKE if command == "pretrain" else OLD / "finetune-tiny.toml"
    args = [command, "--data", str(data), "--out", out, "--config", str(config), "--steps", "1", *QUIET]
    one_line_error(cli(*args), "overlap: a run never writes into its dataset")
    assert tree(data.parent) == before


# ---------------------------------------------------------------------------------------------- c. outputs


def test_reconstruct_never_writes_over_its_checkpoint_or_input(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    shutil.copyfile(PRETRAIN_CKPT, ckpt)
    image = tmp_path / "photo.png"
    Image.fromarray(gradient(32, 32)).save(image)
    kept = {ckpt: ckpt.read_bytes(), image: image.read_bytes()}
    (tmp_path / "hard.pt").hardlink_to(ckpt)
    (tmp_path / "x").mkdir()  # x/../photo.png: the image, spelled otherwise
    for out in (ckpt, tmp_path / "hard.pt", image, tmp_path / "x" / ".." / "photo.png"):
        result = cli("reconstruct", str(ckpt), "--image", str(image), "--out", str(out))
        one_line_error(result, "which this command reads")
    assert {p: p.read_bytes() for p in kept} == kept


@pytest.mark.parametrize("doc", ["manifest.json", "index.json", "mmforge.json", "shards/train-000000.tar", "new.png"])
def test_preview_and_verify_never_write_into_a_dataset(tmp_path: Path, doc: str) -> None:
    dataset = write_dataset(tmp_path / "d", [2, 2])
    before = tree(dataset)
    one_line_error(cli("preview", str(dataset), "--out", str(dataset / doc)), "inside the dataset")
    one_line_error(cli("preview", str(dataset), "--html", str(dataset / "page")), "inside the dataset")
    one_line_error(cli("verify", str(dataset), "--json", str(dataset / doc), "--quiet"), "inside the dataset")
    assert tree(dataset) == before
    assert cli("verify", str(dataset), "--json", str(tmp_path / "report.json"), "--quiet").exit_code == 0


def test_evaluate_json_never_writes_over_its_checkpoint(data: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "best.pt"
    shutil.copyfile(FINETUNE_BEST, ckpt)
    kept = ckpt.read_bytes()
    for json_path in (ckpt, data / "metrics.json"):
        result = cli("evaluate", str(ckpt), "--data", str(data), "--json", str(json_path))
        one_line_error(result, "--json")
    assert ckpt.read_bytes() == kept


def test_check_output_refuses_run_files_and_allows_the_rest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_MARKER).write_text("{}")
    for name in ("config.json", "metrics.jsonl", "checkpoint-7.pt", "figures/step-1.png", RUN_MARKER):
        with pytest.raises(ConfigError, match="of the run folder"):
            check_output(run / name, "--out")
    check_output(run / "reconstruction.png", "--out")  # a picture beside the run's files
    check_output(tmp_path / "elsewhere.png", "--out", (run / "checkpoint-last.pt",))


def test_verify_json_is_written_atomically(tmp_path: Path) -> None:
    """A new file renamed over the old report (a kill or a full disk leaves the old one whole), never the old
    file truncated and rewritten in place: a hard link to the old report keeps its bytes."""
    dataset = write_dataset(tmp_path / "d", [2])
    report = tmp_path / "report.json"
    report.write_text('{"earlier": "report"}')
    (tmp_path / "kept.json").hardlink_to(report)
    assert cli("verify", str(dataset), "--json", str(report), "--quiet").exit_code == 0
    assert json.loads(report.read_text())["ok"] is True
    assert (tmp_path / "kept.json").read_text() == '{"earlier": "report"}'
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temp left


# ---------------------------------------------------------------------------------------------- d. export


def test_a_failed_export_leaves_no_half_folder(tmp_path: Path, monkeypatch) -> None:
    from trainer.transfer import export

    out = tmp_path / "timm"
    real = export.fs.write_bytes_atomic
    calls = {"n": 0}

    def full_disk(path: Path, payload: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # config.json written, then the weights fail
            raise ConfigError("No space left on device")
        real(path, payload)

    monkeypatch.setattr(export.fs, "write_bytes_atomic", full_disk)
    one_line_error(cli("export", str(PRETRAIN_CKPT), str(out)), "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no half folder, no temp folder
    monkeypatch.undo()
    result = cli("export", str(PRETRAIN_CKPT), str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


# ---------------------------------------------------------------------------------------------- e, f. resources


def test_a_long_class_name_is_drawn_at_once() -> None:
    name = "x" * 200_000  # the old clip measured the text once per character: hours for this one
    started = time.perf_counter()
    legend = figures.class_legend([(1, name, (200, 0, 0))], 800)
    caption = figures.caption(name, 800)
    image = Image.new("RGB", (100, 100))
    figures._wrapped(figures.ImageDraw.Draw(image), f"{name} {'y/' * 100_000}", (0, 0), 90, figures._font())
    assert time.perf_counter() - started < 5.0
    assert legend.width == caption.width == 800
    font = figures._font()
    clipped = figures._clip("z" * 300, 100, font)
    assert clipped.endswith("…") and font.getlength(clipped) <= 92 < font.getlength(clipped[:-1] + "z…")
    assert figures._clip("short", 100, font) == "short"


def test_a_huge_max_file_bytes_still_reads_every_image(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(gradient(16, 16)).save(path)
    data = images.read_source(path, max_bytes=1 << 60, max_pixels=10**8)  # a buffer of 2^60 bytes: MemoryError
    assert data == path.read_bytes()
    with pytest.raises(ValueError, match="over the recipe's limit"):
        images.read_source(path, max_bytes=10, max_pixels=10**8)


# ---------------------------------------------------------------------------------------------- g, h. labels


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.uint32])
def test_a_64_bit_label_id_is_a_failure_not_a_class(tmp_path: Path, dtype: type) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    ids = np.full((40, 60), 2, dtype)
    wide = 2**32 + 1 if dtype != np.uint32 else 2**31 + 1  # int32 of it: 1 or -2147483647
    ids[5, 7] = wide
    np.save(tmp_path / "lab" / "a.npy", ids)
    exif = Image.Exif()
    exif[0x0112] = 6  # the label is turned with the image: through Pillow's 32-bit mode I
    buf = io.BytesIO()
    Image.fromarray(gradient(40, 60)).save(buf, format="JPEG", exif=exif.tobytes())
    img = decode_image(buf.getvalue(), max_pixels=10**8, max_side=30)
    spec = spec_of("semseg", {"root": "../lab", "suffix": ".npy", "num_classes": 5})
    with pytest.raises(LabelFileError, match=rf"file ids \[{wide}\] are not classes 0\.\.4"):
        read_label(spec, tmp_path / "img", "a.jpg", img, max_bytes=10**7, max_pixels=10**8)


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"std": [0, 0, 0]}, "std must be three finite numbers > 0"),
        ({"std": [0.5, -1, 0.5]}, "std must be three finite numbers > 0"),
        ({"mean": [0.5, math.nan, 0.5]}, "mean must be three finite numbers"),
        ({"mean": [0.5, 0.5]}, "mean must be three numbers"),
        ({"std": "0.5"}, "std must be three numbers"),
        ({"size": "big"}, "size must be an integer 32..8192"),
        ({"max_side": 10**9}, "max_side must be an integer 1..8192"),
        ({"revision": 3}, "revision must be str or null"),
        ({"meaningless": "no"}, "meaningless must be bool"),
    ],
)
def test_labeler_overrides_are_validated(override: dict, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[labelers\.depth\]: dpt-smoke: {problem}"):
        recipe_from_dict({"labelers": {"depth": {"name": "dpt-smoke", **override}}})
    assert recipe_from_dict({"labelers": {"depth": {"name": "dpt-smoke", "std": [0.2, 0.3, 0.4]}}}).labelers


# ---------------------------------------------------------------------------------------------- i. non-finite


def test_a_nonfinite_loss_is_null_in_the_metrics_and_left_out_of_the_means(
    data: Path, tmp_path: Path, monkeypatch
) -> None:
    original, calls = MultiMAE.forward_loss, {"n": 0}

    def nan_on_the_second(self, preds, targets, masks):
        total, per_task = original(self, preds, targets, masks)
        calls["n"] += 1
        if calls["n"] == 2:
            return total * math.nan, {k: v * math.nan for k, v in per_task.items()}
        return total, per_task

    monkeypatch.setattr(MultiMAE, "forward_loss", nan_on_the_second)
    summary = smoke_pretrain(data, tmp_path / "run", steps=3, checkpoint_every=100)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # strict JSON: no NaN literal
    assert [r["loss"] is None for r in records] == [False, True, False]
    assert set(records[1]["losses"].values()) == {None} and records[1]["grad_norm"] is None
    assert all(r["loss"] > 0 for r in (records[0], records[2]))
    text = summary.text()
    mean = (records[0]["loss"] + records[2]["loss"]) / 2
    assert f"mean {mean:.4f} over 2 steps (1 non-finite left out)" in text, text


def test_nan_init_weights_are_refused(data: Path, tmp_path: Path) -> None:
    state = torch.load(PRETRAIN_CKPT, weights_only=True)
    state["model"]["encoder.0.attn.qkv.weight"][0, 0] = math.nan
    bad = tmp_path / "nan.pt"
    torch.save(state, bad)
    out = tmp_path / "ft"
    args = ["finetune", "--data", str(data), "--out", str(out), "--config", str(OLD / "finetune-tiny.toml")]
    one_line_error(cli(*args, "--init", str(bad), "--steps", "1", *QUIET), "encoder.0.attn.qkv.weight", "NaN")
    assert not out.exists()

"""Transfer you can trust: class ids follow class names from training to validation and evaluation, `evaluate`
runs `finetune`'s checks before any compute (each a line and exit 2), `finetune --val` is checked before the
first step, a run without `--config` reads its task's recipe, and metrics print with their units."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from labelers import LabelerSpec
from pipeline.build.recipe import Recipe
from pipeline.synth import rectangles
from pipeline.synth.rectangles import write_digit_images
from tests.conftest import error_line, mmforge
from trainer.config import ConfigError, FinetuneConfig, TaskConfig, load_run_config, smoke_config
from trainer.data.dataset import load_dataset
from trainer.engine.checkpoint import payload
from trainer.errors import DataError
from trainer.model.multimae import MultiMAE
from trainer.transfer.classes import ClassIds, ModelClasses, SplitClasses, match
from trainer.transfer.config import load_finetune_config, task_recipe
from trainer.transfer.finetune import eval_batches, read_finetuned, split_ids
from trainer.transfer.tasks import TRANSFER_TASKS, transfer_task

CLS_SMOKE = ["--config", "finetune-cls-smoke", "--set", "model.image_size=32"]
SEMSEG_SMOKE = ["--config", "finetune-semseg-smoke", "--set", "model.image_size=32"]
QUIET = ["--device", "cpu", "--no-tensorboard", "--set", "train.progress=false"]
DEPTH_ONLY = """
[recipe]
name = "digits"
description = "Class folders with smoke depth."
[source]
class_folders = "yes"
[image]
max_side = 0
[shards]
size = 10
[labelers.depth]
name = "dpt-smoke"
[runtime]
batch_size = 10
precision = "fp32"
"""


# ------------------------------------------------------------------------------------------------ fixtures


def build(src: Path, out: Path, recipe: Path, split: str) -> Path:
    args = ["build-dataset", str(src), str(out), "--recipe", str(recipe), "--split", split, "--executor", "local"]
    done = mmforge(*args, "--quiet")
    assert done.exit_code == 0, done.output
    return out


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """train: the 10 digit folders (2 images each); val: folders 8 and 9 alone (their ids there: 0 and 1);
    alien: folder 8 and a folder `cat` the model never saw."""
    tmp = tmp_path_factory.mktemp("digits")
    recipe = tmp / "recipe.toml"
    recipe.write_text(DEPTH_ONLY)
    every = write_digit_images(tmp / "all", per_class=2, side=32)
    for name, folders in (("val", {"8": "8", "9": "9"}), ("alien", {"8": "8", "cat": "9"})):
        for folder, source in folders.items():
            shutil.copytree(every / source, tmp / f"{name}-src" / folder)
    return {
        "train": build(every, tmp / "train", recipe, "train"),
        "val": build(tmp / "val-src", tmp / "val", recipe, "val"),
        "alien": build(tmp / "alien-src", tmp / "alien", recipe, "val"),
    }


@pytest.fixture(scope="module")
def cls_run(digits: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cls") / "run"
    args = ["finetune", "--data", str(digits["train"]), "--val", str(digits["val"]), "--out", str(out)]
    done = mmforge(*args, *CLS_SMOKE, *QUIET, "--steps", "1")
    assert done.exit_code == 0, done.output
    assert "best validation (by top1, step 1): top1 " in done.output and "%, top5 " in done.output
    return out


def rigged(run: Path, to: Path, *, favourite: int, names: bool = True) -> Path:
    """The run's best checkpoint with its head biased to one class (every sample predicted as `favourite`);
    `names=False`: its config without class names, as checkpoints were written before they were recorded."""
    raw = torch.load(run / "checkpoint-best.pt", weights_only=True)
    raw["model"]["output_adapters.cls.head.bias"][favourite] = 1e4
    if not names:
        raw["config"]["task"]["classes"] = []
    torch.save(raw, to)
    return to


def semseg_split(root: Path, table: str, classes: int) -> Path:
    """A rectangles split whose class maps are labelled with the class table `table` (`classes` ids)."""
    spec = LabelerSpec(
        name="synthetic-semseg",
        modality="semseg",
        output="classes",
        num_classes=classes,
        classes=table,
        **rectangles._SPEC,  # type: ignore[arg-type]
    )
    recipe = Recipe(name="synthetic", description="rectangles", labelers=(rectangles.LABELERS[0], spec))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rectangles, "RECIPE", recipe)
        patch.setattr(rectangles, "NUM_CLASSES", classes)
        return rectangles.write_dataset(root, [4], sizes=((48, 48),))


@pytest.fixture(scope="module")
def semseg(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ade: a split of the ADE20K table (150 classes), trained on for one step; nyu: one of NYUv2's (40)."""
    tmp = tmp_path_factory.mktemp("semseg")
    ade, nyu = semseg_split(tmp / "ade", "ade20k-150", 150), semseg_split(tmp / "nyu", "nyu40", 40)
    args = ["finetune", "--data", str(ade), "--val", str(ade), "--out", str(tmp / "run"), *SEMSEG_SMOKE, *QUIET]
    done = mmforge(*args, "--steps", "1")
    assert done.exit_code == 0, done.output
    return {"ade": ade, "nyu": nyu, "run": tmp / "run"}


@pytest.fixture
def no_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation must not start: a refusal comes before the first forward."""

    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError("evaluated before every check was made")

    monkeypatch.setattr("trainer.transfer.finetune.evaluate_model", refuse)
    monkeypatch.setattr("trainer.transfer.finetune.score_split", refuse)


# ------------------------------------------------------------------------------------------------ class ids by name


def test_a_fine_tuning_checkpoint_records_its_class_names(cls_run: Path) -> None:
    _, cfg, classes = read_finetuned(cls_run / "checkpoint-best.pt")
    assert cfg.task.classes == tuple("0123456789") and classes == ModelClasses(count=10, names=tuple("0123456789"))
    saved = json.loads((cls_run / "config.json").read_text())["config"]["task"]["classes"]
    assert saved == list("0123456789")


def test_a_split_of_some_class_folders_keeps_the_models_ids(cls_run: Path, digits: dict[str, Path]) -> None:
    """Folders 8 and 9 are ids 0 and 1 of the validation split, 8 and 9 of the model."""
    _, cfg, classes = read_finetuned(cls_run / "checkpoint-best.pt")
    info = load_dataset(digits["val"])
    ids, note = split_ids(info, cfg, classes)
    assert ids is not None and ids.table == (8, 9) and note == ""
    targets = torch.cat([b["cls"] for b in eval_batches(info, cfg, 10, 3, ids)])
    assert sorted(targets.tolist()) == [8, 8, 9, 9]


def test_evaluate_scores_a_subset_split_by_name(cls_run: Path, digits: dict[str, Path], tmp_path: Path) -> None:
    """A model that always says "8" is right on the two 8s of the validation split: 50 %, not 0 %."""
    eights = rigged(cls_run, tmp_path / "eights.pt", favourite=8)
    scored = mmforge("evaluate", str(eights), "--data", str(digits["val"]), "--json", str(tmp_path / "m.json"))
    assert scored.exit_code == 0, scored.output
    assert f"cls on {digits['val']}: top1 50.00%, top5 " in scored.output and "samples 4" in scored.output
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["metrics"]["top1"] == 50.0 and doc["units"]["top1"] == "%" and doc["notes"] == []
    whole = mmforge("evaluate", str(eights), "--data", str(digits["train"]))
    assert whole.exit_code == 0 and "top1 10.00%" in whole.output, whole.output  # 2 of the 20


def test_a_checkpoint_without_names_reads_ids_by_position_and_says_so(
    cls_run: Path, digits: dict[str, Path], tmp_path: Path
) -> None:
    old = rigged(cls_run, tmp_path / "old.pt", favourite=0, names=False)
    scored = mmforge("evaluate", str(old), "--data", str(digits["val"]))
    assert scored.exit_code == 0, scored.output
    assert "note: the checkpoint records no class names" in scored.output
    assert "top1 50.00%" in scored.output  # ids by position: the split's 8s are its id 0


def test_a_class_the_model_does_not_know_is_refused(
    cls_run: Path, digits: dict[str, Path], no_compute: None, tmp_path: Path
) -> None:
    line = error_line(mmforge("evaluate", str(cls_run / "checkpoint-best.pt"), "--data", str(digits["alien"])))
    assert line == (
        f"error: dataset {digits['alien']}: 1 of its 2 cls classes are not the model's (cat); the model knows 10 "
        "(0, 1, 2, 3, ... 6 more)"
    )
    out = tmp_path / "run"
    args = ["finetune", "--data", str(digits["train"]), "--val", str(digits["alien"]), "--out", str(out)]
    refused = mmforge(*args, *CLS_SMOKE, *QUIET, "--steps", "1")
    assert error_line(refused).endswith("are not the model's (cat); the model knows 10 (0, 1, 2, 3, ... 6 more)")
    assert not list(out.glob("checkpoint-*.pt")) and not (out / "metrics.jsonl").exists()  # no step was taken


def test_another_class_table_is_refused(semseg: dict[str, Path], no_compute: None, tmp_path: Path) -> None:
    best = semseg["run"] / "checkpoint-best.pt"
    _, cfg, classes = read_finetuned(best)
    assert classes.count == 150 and cfg.task.classes[:2] == ("wall", "building")
    line = error_line(mmforge("evaluate", str(best), "--data", str(semseg["nyu"])))
    assert line.startswith(f"error: dataset {semseg['nyu']}: its semseg classes are another table than the model's")
    assert "40 (wall, floor, cabinet, bed, ... 36 more) here, 150 (wall, building, sky, floor, ... 146 more)" in line
    out = tmp_path / "run"
    args = ["finetune", "--data", str(semseg["ade"]), "--val", str(semseg["nyu"]), "--out", str(out)]
    refused = mmforge(*args, *SEMSEG_SMOKE, *QUIET, "--steps", "1")
    assert "its semseg classes are another table than the model's" in error_line(refused)
    assert not list(out.glob("checkpoint-*.pt"))


def test_finetune_checks_the_val_members_before_the_first_step(
    semseg: dict[str, Path], digits: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["finetune", "--data", str(semseg["ade"]), "--val", str(digits["val"]), "--out", str(out)]
    line = error_line(mmforge(*args, *SEMSEG_SMOKE, *QUIET, "--steps", "1"))
    assert line.startswith(f"error: dataset {digits['val']} lacks the semseg target (semseg.png), which this semseg")
    assert not list(out.glob("checkpoint-*.pt")) and not (out / "metrics.jsonl").exists()


def test_same_names_in_another_order_or_count_are_another_table() -> None:
    spec = transfer_task("semseg")
    model = ModelClasses(count=3, names=("a", "b", "c"))
    assert match(spec, model, SplitClasses(where="s", count=3, names=("a", "b", "c")), 255) == (None, "")
    with pytest.raises(DataError, match="another table than the model's: 3 \\(a, c, b\\) here, 3 \\(a, b, c\\)"):
        match(spec, model, SplitClasses(where="s", count=3, names=("a", "c", "b")), 255)
    with pytest.raises(DataError, match="s has 4 semseg classes, the model 3"):
        match(spec, ModelClasses(count=3), SplitClasses(where="s", count=4, names=None), 255)
    ids, note = match(spec, ModelClasses(count=3), SplitClasses(where="s", count=3, names=None), 255)
    assert ids is None and note.startswith("the checkpoint records no class names")


def test_class_ids_keep_the_ignore_id_and_refuse_ids_outside_the_split() -> None:
    ids = ClassIds((8, 9), ignore_id=255)
    assert ids.apply(torch.tensor([[0, 1], [255, 0]])).tolist() == [[8, 9], [255, 8]]
    with pytest.raises(ValueError, match="class id 2 is not one of the split's 2 classes"):
        ids.apply(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="class id 300 is not one"):
        ids.apply(torch.tensor(300))


def test_task_class_names_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"task\.classes names a class twice"):
        load_run_config("finetune", "finetune-cls-smoke", sets=['task.classes=["a", "a"]'])
    with pytest.raises(ConfigError, match=r"task\.classes names 3 classes, task\.num_classes is 2"):
        load_run_config("finetune", "finetune-cls-smoke", sets=['task.classes=["a", "b", "c"]', "task.num_classes=2"])


# ------------------------------------------------------------------------------------------------ evaluate's checks


def test_evaluate_refuses_bad_input_before_any_compute(
    cls_run: Path, semseg: dict[str, Path], digits: dict[str, Path], no_compute: None, tmp_path: Path
) -> None:
    best, val = str(cls_run / "checkpoint-best.pt"), str(digits["val"])
    missing = error_line(mmforge("evaluate", str(semseg["run"] / "checkpoint-best.pt"), "--data", val))
    assert missing.startswith(f"error: dataset {val} lacks the semseg target (semseg.png), which this semseg model")
    folder = tmp_path / "nope" / "m.json"
    assert error_line(mmforge("evaluate", best, "--data", val, "--json", str(folder))) == (
        f"error: --json {folder}: the folder {folder.parent} does not exist"
    )
    assert error_line(mmforge("evaluate", best, "--data", val, "--batch-size", "0")) == (
        "error: --batch-size must be >= 1, got 0"
    )
    pretrained = tmp_path / "pretrained.pt"
    torch.save(payload(smoke_config(), step=1, model=MultiMAE(smoke_config().model).state_dict()), pretrained)
    kind = error_line(mmforge("evaluate", str(pretrained), "--data", val))
    assert kind == f"error: {pretrained} is a pretraining checkpoint; evaluate needs a fine-tuning checkpoint"
    if not torch.cuda.is_available():
        cuda = error_line(mmforge("evaluate", best, "--data", val, "--device", "cuda"))
        assert cuda.startswith("error: --device cuda") and cuda.endswith(": CUDA is not available on this machine")


def test_evaluate_takes_device_auto(cls_run: Path, digits: dict[str, Path]) -> None:
    scored = mmforge("evaluate", str(cls_run / "checkpoint-best.pt"), "--data", str(digits["val"]), "--device", "auto")
    assert scored.exit_code == 0 and "samples 4" in scored.output, scored.output


def test_a_corrupt_shard_is_one_line(cls_run: Path, digits: dict[str, Path], tmp_path: Path) -> None:
    """The same bytes count, so the index still matches; the tar inside does not hold."""
    bad = Path(shutil.copytree(digits["val"], tmp_path / "bad"))
    shard = next((bad / "shards").glob("*.tar"))
    data = bytearray(shard.read_bytes())
    data[148:156] = b"garbage!"  # the first header's checksum field
    shard.write_bytes(bytes(data))
    line = error_line(mmforge("evaluate", str(cls_run / "checkpoint-best.pt"), "--data", str(bad)))
    assert line.startswith(f"error: dataset {bad}: shard val-000000") and "mmforge verify --deep" in line


# ------------------------------------------------------------------------------------------------ recipes and units


def captured(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []

    class Done:
        def text(self) -> str:
            return "done"

    def record(*args: object) -> Done:
        calls.append(args)
        return Done()

    monkeypatch.setattr("trainer.transfer.finetune.finetune", record)
    return calls


@pytest.mark.parametrize(
    ("args", "recipe"),
    [
        ([], "finetune-in1k-cls"),
        (["--task", "semseg"], "finetune-ade20k-semseg"),
        (["--set", 'task.name="depth"'], "finetune-nyuv2-depth"),
    ],
)
def test_finetune_without_a_config_reads_the_tasks_recipe(
    args: list[str], recipe: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits: dict[str, Path]
) -> None:
    calls = captured(monkeypatch)
    done = mmforge("finetune", "--data", str(digits["val"]), "--out", str(tmp_path / "r"), *args)
    assert done.exit_code == 0, done.output
    assert f"no --config: reading {recipe}, the task's recipe" in done.output
    cfg = calls[0][0]
    expected = load_run_config("finetune", recipe)
    assert cfg == expected and cfg.train.epochs == expected.train.epochs != 1600
    assert load_finetune_config(None, task=cfg.task.name) == expected


def test_an_unknown_task_without_a_config_is_named(tmp_path: Path, digits: dict[str, Path]) -> None:
    line = error_line(mmforge("finetune", "--data", str(digits["val"]), "--out", str(tmp_path / "r"), "--task", "nope"))
    assert line.startswith("error: options: task.name must be one of cls, semseg, depth")


def test_a_probe_without_a_config_asks_for_one(tmp_path: Path, digits: dict[str, Path]) -> None:
    line = error_line(mmforge("probe", "--data", str(digits["val"]), "--out", str(tmp_path / "r")))
    assert line == (
        "error: probe without --config: a linear probe of the cls task ships no recipe; pass --config NAME|PATH "
        "(mmforge list configs)"
    )


@pytest.mark.parametrize("name", sorted(TRANSFER_TASKS))
def test_every_task_recipe_is_its_own(name: str) -> None:
    recipe = task_recipe("finetune", name)
    if recipe is not None:
        assert load_run_config("finetune", recipe).task.name == name


def test_metrics_print_with_their_units() -> None:
    cls, depth = transfer_task("cls"), transfer_task("depth")
    assert cls.metric_text({"top1": 83.126, "top5": 96.4, "samples": 50000.0}) == (
        "top1 83.13%, top5 96.40%, samples 50000"
    )
    shown = depth.metric_text({"delta1": 86.4, "rmse": 0.5123, "pixels": 12.0})
    assert shown == "delta1 86.40%, rmse 0.5123, pixels 12"
    assert transfer_task("semseg").metric_text({"miou": 0.021}) == "miou 0.02%"


def test_a_task_without_classes_refuses_class_names(tmp_path: Path, semseg: dict[str, Path]) -> None:
    from trainer.transfer.finetune import FinetuneJob

    cfg = load_finetune_config("finetune-depth-smoke")
    named = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, classes=("a",)))
    with pytest.raises(ConfigError, match="the depth task has no classes"):
        FinetuneJob().check(load_dataset(semseg["ade"]), named)
    assert FinetuneJob().check(load_dataset(semseg["ade"]), cfg).task.classes == ()
    assert isinstance(TaskConfig().classes, tuple) and FinetuneConfig().task.classes == ()

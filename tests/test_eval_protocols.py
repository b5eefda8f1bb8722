"""Evaluation protocols (`trainer.transfer.protocols`): each protocol's geometry worked out by hand on small
images, padding that no metric counts, a sliding window that covers every pixel, every sample of a split
scored, and the metrics JSON recording the protocol, the per-class values by name and the confusion matrix."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from labelers import LabelerSpec
from pipeline.build.recipe import Recipe
from pipeline.cli.app import app
from pipeline.synth import rectangles
from trainer.config import ConfigError, load_run_config
from trainer.data.augment import Crop, View, place_arrays
from trainer.data.dataset import load_dataset
from trainer.engine.checkpoint import atomic_save, payload
from trainer.transfer.config import load_finetune_config
from trainer.transfer.finetune import eval_batches, evaluate, load_finetuned, score_split
from trainer.transfer.model import MultiViT
from trainer.transfer.protocols import EVAL_PROTOCOLS, eval_protocol, slide, windows
from trainer.transfer.tasks import transfer_task

SIZES = ((24, 48), (40, 20))  # a landscape and a portrait image, alternating
SAMPLES = 5  # shards of 3 and 2: batches of 2 cross a shard's end
IGNORE = 255


def crop(top: int, left: int, height: int, width: int) -> Crop:
    return Crop(top=top, left=left, height=height, width=width, flip=False)


# ------------------------------------------------------------------------------------------------ geometry by hand


@pytest.mark.parametrize(
    ("name", "h", "w", "image_size", "expected"),
    [
        ("center", 30, 40, 16, View(crop=crop(0, 5, 30, 30), size=(16, 16), canvas=(16, 16))),
        ("pad", 30, 40, 16, View(crop=crop(0, 0, 30, 40), size=(12, 16), canvas=(16, 16))),
        ("pad", 40, 30, 16, View(crop=crop(0, 0, 40, 30), size=(16, 12), canvas=(16, 16))),
        ("slide", 30, 40, 16, View(crop=crop(0, 0, 30, 40), size=(16, 21), canvas=(16, 21))),
        ("ade20k", 300, 400, 64, View(crop=crop(0, 0, 300, 400), size=(384, 512), canvas=(512, 512))),
        ("nyuv2-semseg", 480, 640, 64, View(crop=crop(0, 0, 480, 640), size=(480, 640), canvas=(640, 640))),
        ("nyuv2-depth", 480, 640, 64, View(crop=crop(0, 80, 480, 480), size=(256, 256), canvas=(256, 256))),
        # 256 -> 224 of the shortest side: a 262-px centred square (300 x 224 / 256 = 262.5), bicubic
        (
            "imagenet",
            300,
            400,
            64,
            View(crop=crop(19, 69, 262, 262), size=(224, 224), canvas=(224, 224), smooth="bicubic"),
        ),
    ],
)
def test_each_protocol_places_an_image_as_worked_out_by_hand(
    name: str, h: int, w: int, image_size: int, expected: View
) -> None:
    assert eval_protocol(name).view(h, w, image_size) == expected


def test_padding_is_grey_in_the_image_and_ignored_in_the_labels() -> None:
    """A 6 x 8 image at 4 px: resized to 3 x 4, the bottom row padded (rgb 128 before normalisation, label
    ignore id); a class-map input is padded too, then brought to its stride."""
    rgb = np.zeros((6, 8, 3), np.uint8)
    view = eval_protocol("pad").view(6, 8, 4)
    assert view.size == (3, 4) and view.canvas == (4, 4)
    raw = torch.zeros(3, 6, 8, dtype=torch.uint8)
    placed = view.place(raw, "bilinear", 128.0)
    assert (placed[:, :3] == 0).all() and (placed[:, 3:] == 128).all()
    labels = view.place(torch.ones(1, 6, 8), "nearest-exact", IGNORE)
    assert (labels[:, :3] == 1).all() and (labels[:, 3:] == IGNORE).all()
    finished = place_arrays({"rgb": rgb}, view)["rgb"]
    grey = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert finished.shape == (3, 4, 4) and torch.allclose(finished[:, 3, 0], grey)


def test_a_square_view_is_trainings_resize() -> None:
    """The training path (`augment`) is the square view: padding changes nothing there."""
    x = torch.arange(2 * 6 * 8, dtype=torch.float32).reshape(2, 6, 8)
    a = View.square(crop(1, 2, 4, 4), 8).place(x, "bilinear", 0.0)
    b = torch.nn.functional.interpolate(x[None, :, 1:5, 2:6], size=(8, 8), mode="bilinear", antialias=True)[0]
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ sliding window


def test_sliding_windows_are_mmsegs() -> None:
    """Crop 512, stride 341 (2/3): the last window ends at the edge; a 2048-wide image takes 6 windows."""
    assert windows(512, 683, 512) == [(0, 0), (0, 171)]
    assert [left for _, left in windows(512, 2048, 512)] == [0, 341, 682, 1023, 1364, 1536]
    assert windows(16, 16, 16) == [(0, 0)]
    assert windows(21, 16, 16) == [(0, 0), (5, 0)]


@pytest.mark.parametrize(("h", "w"), [(16, 21), (16, 64), (40, 16), (16, 16)])
def test_the_sliding_window_covers_every_pixel_and_averages_the_outputs(h: int, w: int) -> None:
    """A model that returns its input's first channel gives back the input itself: every pixel is covered
    and put back where it came from, overlaps averaged; a stride-4 input is cut at its own resolution."""
    image = torch.rand(1, 3, h, w)
    ids = torch.randint(0, 5, (1, h // 4, w // 4))
    seen: list[tuple[int, ...]] = []

    def forward(x: dict[str, torch.Tensor]) -> torch.Tensor:
        seen.append((*x["rgb"].shape, *x["semseg"].shape))
        return x["rgb"][:, :1]

    out = slide(forward, {"rgb": image, "semseg": ids}, {"rgb": 1, "semseg": 4}, 16)
    assert out.shape == (1, 1, h, w) and torch.allclose(out, image[:, :1])
    n = len(windows(h, w, 16))
    assert seen == [(n, 3, 16, 16, n, 4, 4)]


def test_a_sliding_window_of_scores_is_their_mean() -> None:
    image = torch.zeros(1, 3, 16, 40)
    out = slide(lambda x: torch.arange(x["rgb"].shape[0], dtype=torch.float32)[:, None], {"rgb": image}, {"rgb": 1}, 16)
    assert out.shape == (1, 1) and float(out) == pytest.approx(np.mean(range(len(windows(16, 40, 16)))))


# ------------------------------------------------------------------------------------------------ a split, scored


def write_split(root: Path, table: str, classes: int) -> Path:
    """Rectangles of two shapes (`SIZES`) in shards of 3 and 2, class maps labelled with the table `table`."""
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
        return rectangles.write_dataset(root, [3, 2], sizes=SIZES)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_split(tmp_path_factory.mktemp("protocols") / "nyu", "nyu40", 40)


def checkpoint(folder: Path, task: str, image_size: int = 32, names: tuple[str, ...] = (), **task_keys: object) -> Path:
    """A fine-tuning checkpoint of the smoke model for `task` (random head; no step taken); semseg: 40 classes,
    `names` their names (none: a split's ids are taken by position)."""
    cfg = load_finetune_config(f"finetune-{task}-smoke")
    classes = 40 if task == "semseg" else 0
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, image_size=image_size),
        task=dataclasses.replace(cfg.task, classes=names, **task_keys),  # type: ignore[arg-type]
    )
    torch.manual_seed(0)
    model = MultiViT(cfg, classes)
    path = folder / f"{task}.pt"
    atomic_save(payload(cfg, step=0, model=model.state_dict()), path)
    return path


# image pixels per sample at 32 px: pad keeps the image (16 x 32 or 32 x 16) and pads the rest;
# slide scores the image resized to shortest side 32 (32 x 64 or 64 x 32); center a 32 x 32 square
PIXELS = {"center": 32 * 32, "pad": 16 * 32, "slide": 32 * 64}


@pytest.mark.parametrize("name", ["center", "pad", "slide"])
def test_every_sample_is_scored_and_no_pad_pixel_counts(split: Path, tmp_path: Path, name: str) -> None:
    model = load_finetuned(checkpoint(tmp_path, "semseg"))
    info = load_dataset(split)
    scored = score_split(model, info, 2, torch.device("cpu"), protocol=eval_protocol(name))
    assert scored.samples == SAMPLES and scored.protocol.name == name
    confusion = scored.metric.confusion  # type: ignore[attr-defined]
    assert int(confusion.sum()) == SAMPLES * PIXELS[name]  # the rectangles have no unlabelled pixel


def test_padded_targets_carry_the_ignore_id(split: Path, tmp_path: Path) -> None:
    model = load_finetuned(checkpoint(tmp_path, "semseg"))
    batches = list(eval_batches(load_dataset(split), model.cfg, 40, 2, protocol=eval_protocol("pad")))
    targets = torch.cat([b["semseg"] for b in batches])
    assert targets.shape == (SAMPLES, 32, 32) and [b["rgb"].shape[0] for b in batches] == [2, 2, 1]
    assert (targets[0, 16:] == IGNORE).all() and (targets[0, :16] != IGNORE).all()  # landscape: rows padded
    assert (targets[1, :, 16:] == IGNORE).all() and (targets[1, :, :16] != IGNORE).all()  # portrait: columns


def test_depth_pads_with_invalid_pixels(split: Path, tmp_path: Path) -> None:
    model = load_finetuned(checkpoint(tmp_path, "depth"))
    for name, pixels in PIXELS.items():
        scored = score_split(model, load_dataset(split), 3, torch.device("cpu"), protocol=eval_protocol(name))
        assert scored.samples == SAMPLES and scored.metric.result()["pixels"] == SAMPLES * pixels, name


def test_an_official_protocol_works_at_its_own_size(split: Path, tmp_path: Path) -> None:
    """`nyuv2-semseg` forwards 640 x 640 whatever the model's size: longest side 640, the rest padded."""
    model = load_finetuned(checkpoint(tmp_path, "semseg"))
    scored = score_split(model, load_dataset(split), 5, torch.device("cpu"), protocol=eval_protocol("nyuv2-semseg"))
    assert int(scored.metric.confusion.sum()) == SAMPLES * 320 * 640  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------ the record


def test_the_json_records_the_protocol_per_class_values_and_the_confusion(split: Path, tmp_path: Path) -> None:
    names = nyu40_names(split)
    ckpt = checkpoint(tmp_path, "semseg", names=names, eval_protocol="pad")
    out = tmp_path / "metrics.json"
    result = evaluate(ckpt, split, out, batch=2)  # the checkpoint's protocol
    doc = json.loads(out.read_text())
    assert result.protocol == "pad" and doc["protocol"]["name"] == "pad" and doc["protocol"]["side"] == 32
    assert doc["samples"] == SAMPLES and doc["protocol"]["about"]
    per = doc["per_class"]
    assert [row["class"] for row in per] == list(names) and names[:2] == ("wall", "floor")
    assert any(row["iou"] is None for row in per)  # a class neither present nor predicted: null, not NaN
    defined = [row["iou"] for row in per if row["iou"] is not None]
    assert np.mean(defined) == pytest.approx(doc["metrics"]["miou"])
    assert doc["confusion"] == "metrics.confusion.csv" and doc["units"]["per_class.iou"] == "%"
    rows = list(csv.reader((tmp_path / "metrics.confusion.csv").open()))
    assert rows[0][1:] == [row["class"] for row in per] and [r[0] for r in rows[1:]] == rows[0][1:]
    assert sum(int(v) for r in rows[1:] for v in r[1:]) == SAMPLES * PIXELS["pad"]

    other = evaluate(ckpt, split, tmp_path / "slide.json", batch=2, protocol="slide")
    assert (
        other.protocol == "slide" and json.loads((tmp_path / "slide.json").read_text())["protocol"]["name"] == "slide"
    )


def test_classes_without_names_are_labelled_by_id(split: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    evaluate(checkpoint(tmp_path, "semseg"), split, out, batch=5)
    doc = json.loads(out.read_text())
    assert [row["class"] for row in doc["per_class"]] == [f"class {i}" for i in range(40)]
    assert doc["protocol"]["name"] == "center"  # the checkpoint's (the default: the centre square)


def nyu40_names(split: Path) -> tuple[str, ...]:
    manifest = load_dataset(split).manifest
    assert manifest is not None
    return manifest.modalities["semseg"].classes


def test_depth_json_has_no_class_table(split: Path, tmp_path: Path) -> None:
    out = tmp_path / "depth.json"
    evaluate(checkpoint(tmp_path, "depth"), split, out, batch=4, protocol="nyuv2-depth")
    doc = json.loads(out.read_text())
    assert doc["protocol"]["name"] == "nyuv2-depth" and doc["protocol"]["side"] == 256
    assert doc["metrics"]["pixels"] == SAMPLES * 256 * 256 and "per_class" not in doc and "confusion" not in doc
    assert set(doc["metrics"]) >= {"delta1", "delta2", "delta3", "absrel", "sqrel", "rmse", "rmse_log"}


def test_evaluate_takes_protocol_and_refuses_an_unknown_one(split: Path, tmp_path: Path) -> None:
    ckpt = str(checkpoint(tmp_path, "semseg"))
    done = CliRunner().invoke(app, ["evaluate", ckpt, "--data", str(split), "--protocol", "pad"])
    assert done.exit_code == 0 and done.output.rstrip().endswith("(protocol pad)"), done.output
    bad = CliRunner().invoke(app, ["evaluate", ckpt, "--data", str(split), "--protocol", "sliding"])
    assert bad.exit_code == 2 and "--protocol 'sliding': known protocols are center, pad, slide" in bad.output


# ------------------------------------------------------------------------------------------------ recipes


@pytest.mark.parametrize(
    ("recipe", "protocol"),
    [
        ("finetune-ade20k-semseg", "ade20k"),
        ("finetune-nyuv2-semseg-rgbd", "nyuv2-semseg"),
        ("finetune-nyuv2-depth", "nyuv2-depth"),
        ("finetune-in1k-cls", "imagenet"),
        ("finetune-semseg-smoke", "center"),
    ],
)
def test_the_paper_recipes_name_their_official_protocol(recipe: str, protocol: str) -> None:
    assert load_finetune_config(recipe).task.eval_protocol == protocol


def test_an_unknown_protocol_in_a_config_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"task\.eval_protocol"):
        load_run_config("finetune", "finetune-semseg-smoke", sets=["task.eval_protocol='sliding'"])


def test_every_protocol_is_documented() -> None:
    import trainer.transfer.protocols as module

    assert module.__doc__ is not None
    for name, p in EVAL_PROTOCOLS.items():
        assert f"`{name}`" in module.__doc__ and p.about and p.record(64)["name"] == name


def test_validation_uses_the_runs_protocol(split: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["finetune", "--data", str(split), "--val", str(split), "--out", str(out), "--device", "cpu"]
    args += ["--config", "finetune-semseg-smoke", "--set", "model.image_size=32", "--set", "task.eval_protocol='pad'"]
    done = CliRunner().invoke(app, [*args, "--no-tensorboard", "--set", "train.progress=false", "--steps", "1"])
    assert done.exit_code == 0, done.output
    record = json.loads((out / "val.jsonl").read_text().splitlines()[-1])
    assert record["protocol"] == "pad"
    assert transfer_task("semseg").main_metric in record["val"]

"""`mmforge predict`: each task's outputs at every image's own size (values that decode back to the model's
prediction), resume, bad images recorded as failures, dataset shards as input, and the one-line refusals made
before any compute."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from labelers.classes import class_table
from pipeline.build.images import decode_upright
from pipeline.format.codecs import decode_depth, decode_semseg
from pipeline.format.contract import DatasetPaths
from pipeline.format.ownership import BuildLock
from pipeline.format.stores import location
from pipeline.synth import rectangles
from tests.conftest import bad_image_bytes, error_line, gradient, mmforge
from trainer.config import load_run_config, smoke_config
from trainer.engine.checkpoint import payload
from trainer.model.multimae import MultiMAE
from trainer.transfer import predict as predict_module
from trainer.transfer.finetune import load_finetuned
from trainer.transfer.model import MultiViT
from trainer.transfer.predict import DEPTH_SCALE, PREDICT_MARKER, model_inputs, predict, resample_back

SIZES = {"a.png": (37, 53), "nested/deeper/b.jpg": (64, 20), "c.PNG": (32, 32)}  # (height, width)
NYU = class_table("nyu40").names


def fine_tuned(path: Path, config: str, classes: int, names: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> Path:
    """A fine-tuning checkpoint of the smoke config at 32 px, random weights (seeded), `names` recorded."""
    cfg = load_run_config("finetune", config, sets=["model.image_size=32", *sets])
    cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, classes=names))
    torch.manual_seed(0)
    model = MultiViT(cfg, classes)
    state = model.state_dict()
    if cfg.task.name == "depth":  # positive depth everywhere, so the PNG holds values, not zeros
        state["output_adapters.depth.head.4.bias"] += 3.0
    torch.save(payload(cfg, step=1, model=state), path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ckpts")
    return {
        "depth": fine_tuned(tmp / "depth.pt", "finetune-depth-smoke", 0),
        "semseg": fine_tuned(tmp / "semseg.pt", "finetune-semseg-smoke", 40, NYU),
        "cls": fine_tuned(tmp / "cls.pt", "finetune-cls-smoke", 3, ("cat", "dog", "fish")),
        "rgbd": fine_tuned(tmp / "rgbd.pt", "finetune-semseg-smoke", 40, NYU, ("model.inputs=['rgb', 'depth']",)),
    }


@pytest.fixture
def images(tmp_path: Path) -> Path:
    src = tmp_path / "images"
    for rel, (h, w) in SIZES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gradient(h, w)).save(src / rel, format="JPEG" if rel.endswith(".jpg") else "PNG")
    return src


def expected(ckpt: Path, image: Path) -> tuple[torch.Tensor, tuple[int, int]]:
    """The model's output for one image, resampled to its size with F.interpolate (the reference)."""
    model = load_finetuned(ckpt)
    rgb = decode_upright(image.read_bytes(), max_pixels=10**8)
    batch = {k: v[None] for k, v in model_inputs({"rgb": rgb}, model.cfg.model.image_size).items()}
    with torch.no_grad():
        out = model(batch).float()
    if out.ndim == 2:
        return out[0], rgb.shape[:2]
    size = rgb.shape[:2]
    return F.interpolate(out, size=size, mode="bilinear", align_corners=False)[0], size


# ------------------------------------------------------------------------------------------------ outputs


def test_depth_maps_have_each_images_size_and_decode_to_the_prediction(
    ckpts: dict[str, Path], images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = predict(ckpts["depth"], location(images), out, batch=2, quiet=True)
    assert (summary.predicted, summary.kept, summary.failed) == (3, 0, 0)
    marker = json.loads((out / PREDICT_MARKER).read_text())
    assert marker["task"] == "depth" and marker["depth_scale"] == DEPTH_SCALE
    for rel, (h, w) in SIZES.items():
        q = decode_depth((out / "maps" / f"{rel}.depth.png").read_bytes())
        assert q.shape == (h, w) and q.dtype == np.uint16
        reference, _ = expected(ckpts["depth"], images / rel)
        metres = q.astype(np.float64) * marker["depth_scale"]
        assert np.abs(metres - reference[0].numpy()).max() <= DEPTH_SCALE / 2 + 1e-5
        colour = Image.open(out / "maps" / f"{rel}.depth.color.png")
        assert colour.mode == "RGB" and colour.width >= w and colour.height > h
    assert (out / "failures.jsonl").read_text() == ""


def test_class_maps_are_the_argmax_of_upsampled_logits_with_the_tables_colours(
    ckpts: dict[str, Path], images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    predict(ckpts["semseg"], location(images), out, batch=16, quiet=True)
    for rel, (h, w) in SIZES.items():
        path = out / "maps" / f"{rel}.semseg.png"
        ids = decode_semseg(path.read_bytes())
        logits, _ = expected(ckpts["semseg"], images / rel)
        assert ids.shape == (h, w) and (ids == logits.argmax(0).numpy()).all()
        palette = Image.open(path).getpalette()
        assert palette is not None and palette[: 3 * 40] == class_table("nyu40").palette()[: 3 * 40]
        assert Image.open(out / "maps" / f"{rel}.semseg.color.png").height > h  # the legend below
    assert json.loads((out / PREDICT_MARKER).read_text())["classes"] == list(NYU)


def test_classification_writes_the_top_classes_per_image(ckpts: dict[str, Path], images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    predict(ckpts["cls"], location(images), out, batch=2, quiet=True)
    rows = list(csv.reader((out / "predictions.csv").open()))
    assert rows[0] == ["image", "class_1", "probability_1", "class_2", "probability_2", "class_3", "probability_3"]
    assert sorted(r[0] for r in rows[1:]) == sorted(SIZES)
    for row in rows[1:]:
        logits, _ = expected(ckpts["cls"], images / row[0])
        probs = logits.softmax(-1)
        order = probs.argsort(descending=True)
        assert row[1::2] == [("cat", "dog", "fish")[int(i)] for i in order]
        assert np.allclose([float(p) for p in row[2::2]], probs[order].numpy(), atol=1e-5)


def test_resampling_in_bands_equals_interpolate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predict_module, "_BAND_VALUES", 5 * 3 * 17)  # 5 rows of 3 x 17 at a time
    x = torch.randn(3, 8, 8)
    for size in ((23, 17), (5, 3), (8, 8)):
        reference = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        assert torch.allclose(resample_back(x, size, lambda band: band), reference, atol=1e-5)


# ------------------------------------------------------------------------------------------------ resume, failures


def test_a_rerun_keeps_what_is_done_and_bad_images_are_failures(
    ckpts: dict[str, Path], images: Path, tmp_path: Path
) -> None:
    for name, data in bad_image_bytes().items():
        if name in ("zero.jpg", "truncated.jpg", "not_an_image.jpg"):
            (images / name).write_bytes(data)
    out = tmp_path / "out"
    first = mmforge("predict", str(ckpts["semseg"]), str(images), str(out), "--quiet")
    assert first.exit_code == 1, first.output
    assert "3 predicted, 0 kept, 3 failed" in first.output
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted(f["input"] for f in failures) == ["not_an_image.jpg", "truncated.jpg", "zero.jpg"]
    assert all(f["reason"] for f in failures)
    (out / "maps" / "a.png.semseg.png").unlink()  # as if killed before it
    (out / "maps" / ".c.PNG.semseg.png.tmp-1-0123abcd").write_bytes(b"half")  # a killed writer's temp file
    second = mmforge("predict", str(ckpts["semseg"]), str(images), str(out), "--quiet")
    assert "1 predicted, 2 kept, 3 failed" in second.output, second.output
    assert not list((out / "maps").glob(".*"))
    for image in ("zero.jpg", "truncated.jpg", "not_an_image.jpg"):
        (images / image).unlink()
    third = mmforge("predict", str(ckpts["semseg"]), str(images), str(out), "--quiet")
    assert third.exit_code == 0 and "0 predicted, 3 kept, 0 failed" in third.output, third.output


def test_classification_resumes_from_its_parts(ckpts: dict[str, Path], images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    predict(ckpts["cls"], location(images), out, batch=2, quiet=True)
    before = (out / "predictions.csv").read_text()
    again = predict(ckpts["cls"], location(images), out, batch=2, quiet=True)
    assert (again.predicted, again.kept) == (0, 3) and (out / "predictions.csv").read_text() == before


def test_a_datasets_shards_are_predicted_at_each_samples_size(ckpts: dict[str, Path], tmp_path: Path) -> None:
    data = rectangles.write_dataset(tmp_path / "data", [2, 1], sizes=((40, 56), (48, 32)))
    out = tmp_path / "out"
    done = mmforge("predict", str(ckpts["rgbd"]), str(data), str(out), "--quiet")
    assert done.exit_code == 0 and "3 predicted, 0 kept, 0 failed" in done.output, done.output
    maps = sorted((out / "maps").rglob("*.semseg.png"))
    assert [p.relative_to(out / "maps").parts[0] for p in maps] == ["train-000000"] * 2 + ["train-000001"]
    assert {decode_semseg(p.read_bytes()).shape for p in maps} == {(40, 56), (48, 32)}


# ------------------------------------------------------------------------------------------------ refusals


@pytest.fixture
def no_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError("a model was built before every check was made")

    monkeypatch.setattr(predict_module, "build_finetuned", refuse)


def test_bad_input_is_one_line_before_any_compute(
    ckpts: dict[str, Path], images: Path, tmp_path: Path, no_compute: None
) -> None:
    ckpt, out = str(ckpts["depth"]), str(tmp_path / "out")
    missing = tmp_path / "missing"
    assert error_line(mmforge("predict", ckpt, str(missing), out)) == (
        f"error: {missing}: no such folder (predict takes a folder of images or a dataset)"
    )
    assert "not-a-checkpoint" in error_line(mmforge("predict", str(tmp_path / "not-a-checkpoint.pt"), str(images), out))
    pretrained = tmp_path / "pretrained.pt"
    torch.save(payload(smoke_config(), step=1, model=MultiMAE(smoke_config().model).state_dict()), pretrained)
    assert error_line(mmforge("predict", str(pretrained), str(images), out)) == (
        f"error: {pretrained} is a pretraining checkpoint; predict needs a fine-tuning checkpoint"
    )
    assert error_line(mmforge("predict", ckpt, str(images), out, "--device", "tpu!")).startswith("error: --device")
    assert error_line(mmforge("predict", ckpt, str(images), out, "--batch-size", "0")) == (
        "error: --batch-size must be >= 1, got 0"
    )
    if not torch.cuda.is_available():
        cuda = error_line(mmforge("predict", ckpt, str(images), out, "--device", "cuda"))
        assert cuda.startswith("error: --device cuda") and cuda.endswith(": CUDA is not available on this machine")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_line(mmforge("predict", ckpt, str(empty), out)).startswith(f"error: {empty}: no images")
    rgbd = error_line(mmforge("predict", str(ckpts["rgbd"]), str(images), out))
    assert rgbd.startswith("error: this model reads rgb, depth; a folder of images gives rgb alone")


def test_out_must_be_new_empty_or_ours(ckpts: dict[str, Path], images: Path, tmp_path: Path, no_compute: None) -> None:
    ckpt = str(ckpts["depth"])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    assert error_line(mmforge("predict", ckpt, str(images), str(foreign))) == (
        f"error: OUT {foreign} is not empty and has no {PREDICT_MARKER} marker, so it is not a predict output "
        "(holiday.jpg); choose a new or empty folder"
    )
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert error_line(mmforge("predict", ckpt, str(images), str(a_file))) == (
        f"error: OUT {a_file} is a file; predict writes a folder"
    )
    inside = images / "predictions"
    assert error_line(mmforge("predict", ckpt, str(images), str(inside))) == (
        f"error: OUT {inside} is inside the input {images}; choose a folder outside it"
    )
    other = tmp_path / "other"
    other.mkdir()
    (other / PREDICT_MARKER).write_text(json.dumps({"checkpoint": "elsewhere.pt", "checkpoint_sha256": "0" * 64}))
    assert error_line(mmforge("predict", ckpt, str(images), str(other))) == (
        f"error: OUT {other} holds the predictions of another checkpoint (elsewhere.pt); choose a new folder"
    )
    busy = tmp_path / "busy"
    busy.mkdir()
    with BuildLock(DatasetPaths(busy), "mmforge predict (the other run)"):
        line = error_line(mmforge("predict", ckpt, str(images), str(busy)))
    assert line.startswith(f"error: output {busy} is being built by another process") and "the other run" in line
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not _is_root():  # root writes anywhere
        assert error_line(mmforge("predict", ckpt, str(images), str(locked / "out"))) == (
            f"error: OUT {locked / 'out'}: {locked} cannot be written"
        )


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


@pytest.mark.slow
def test_images_and_checkpoint_on_a_store(ckpts: dict[str, Path], images: Path, tmp_path: Path) -> None:
    from tests.s3_server import s3_server

    with s3_server("mmforge-predict") as s3:
        s3.fs.put(str(images) + "/", "mmforge-predict/photos/", recursive=True)  # type: ignore[attr-defined]
        s3.fs.put(str(ckpts["depth"]), "mmforge-predict/runs/depth.pt")  # type: ignore[attr-defined]
        ckpt, photos, out = "s3://mmforge-predict/runs/depth.pt", "s3://mmforge-predict/photos", tmp_path / "out"
        done = mmforge("predict", ckpt, photos, str(out), "--quiet")
        assert done.exit_code == 0 and "3 predicted, 0 kept, 0 failed" in done.output, done.output
        assert json.loads((out / PREDICT_MARKER).read_text())["checkpoint"] == ckpt
        for rel, (h, w) in SIZES.items():
            assert decode_depth((out / "maps" / f"{rel}.depth.png").read_bytes()).shape == (h, w)
        again = mmforge("predict", ckpt, photos, str(out), "--quiet")
        assert "0 predicted, 3 kept, 0 failed" in again.output, again.output

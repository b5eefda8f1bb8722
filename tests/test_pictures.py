"""Pictures a person can check: `mmforge preview` (PNG grid and a self-contained HTML page, opened in a real
headless Chromium), `mmforge reconstruct` on the demo dataset and a smoke checkpoint, the figures and the
summaries of a pretraining run, and a warmup that fits a `--steps` run."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.pictures.figures import MASKED, TITLE_H
from tests.conftest import DEMO_RECIPE, EXAMPLES
from trainer.config import SMOKE_CONFIG
from trainer.engine.optim import lr_at

pytestmark = pytest.mark.slow  # one demo build (12 photos, smoke labelers) and a 4-step smoke run per module
LABEL_W = 220
FORMAT1 = Path(__file__).parent / "data" / "format1-dataset"


def run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pictures") / "demo"
    built = run(
        "build-dataset", str(EXAMPLES), str(out), "--recipe", str(DEMO_RECIPE), "--executor", "local", "--quiet"
    )
    assert built.exit_code == 0, built.output
    return out


@pytest.fixture(scope="module")
def checkpoint(demo: Path) -> Path:
    run_dir = demo.parent / "run"
    args = ["pretrain", "--data", str(demo), "--out", str(run_dir), "--config", str(SMOKE_CONFIG), "--steps", "4"]
    result = run(*args, "--device", "cpu", "--no-tensorboard")
    assert result.exit_code == 0, result.output
    return run_dir / "checkpoint-last.pt"


def png(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def tile_at(image: np.ndarray, row: int, col: int, tile: int) -> np.ndarray:
    top, left = TITLE_H + row * tile, LABEL_W + col * tile
    return image[top : top + tile - 2, left : left + tile - 2]


# ------------------------------------------------------------------------------------------------ preview


def test_preview_grid_has_one_row_per_sample_and_one_column_per_modality(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "preview.png"
    result = run("preview", str(demo), "--n", "5", "--out", str(out), "--tile", "96")
    assert result.exit_code == 0, result.output
    image = png(out)
    assert image.shape[1] == LABEL_W + 3 * 96 and image.shape[0] > TITLE_H + 5 * 96  # + the legend
    for row in range(5):
        for col in range(3):
            cell = tile_at(image, row, col, 96)
            assert (cell != 255).any(), (row, col)  # every tile holds a picture
    again = tmp_path / "again.png"
    assert run("preview", str(demo), "--n", "5", "--out", str(again), "--tile", "96").exit_code == 0
    assert again.read_bytes() == out.read_bytes()  # seeded: the same samples every time
    other = tmp_path / "other.png"
    assert run("preview", str(demo), "--n", "5", "--out", str(other), "--tile", "96", "--seed", "3").exit_code == 0
    assert other.read_bytes() != out.read_bytes()


def test_preview_html_is_self_contained_and_lists_failures(tmp_path: Path) -> None:
    data = tmp_path / "old"
    shutil.copytree(FORMAT1, data)  # a dataset with a recorded failure (and of the previous format)
    result = run("preview", str(data), "--n", "4", "--html", str(tmp_path / "report"), "--out", str(tmp_path / "p.png"))
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "index.html").read_text()
    assert 'id="grid"' in page and "dog/broken.jpg" in page and "UnidentifiedImageError" in page
    assert "pixel share" in page and "histogram" in page and "dpt-smoke" in page and "train-000002" in page
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # nothing fetched


def test_preview_of_any_modality_set(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(EXAMPLES.glob("*.jpg"))[:2]:
        shutil.copy(p, src / p.name)
    recipe = tmp_path / "depth-only.toml"
    text = DEMO_RECIPE.read_text()
    recipe.write_text(text.replace('[labelers.semseg]\nname = "mask2former-smoke"\n', ""))
    out = tmp_path / "out"
    assert run("build-dataset", str(src), str(out), "--recipe", str(recipe), "--executor", "local").exit_code == 0
    result = run("preview", str(out), "--n", "2", "--out", str(tmp_path / "p.png"), "--tile", "64")
    assert result.exit_code == 0 and "2 columns (rgb, depth)" in result.output
    assert png(tmp_path / "p.png").shape[1] == LABEL_W + 2 * 64


def test_preview_refuses_what_is_not_a_dataset(tmp_path: Path) -> None:
    result = run("preview", str(tmp_path), "--out", str(tmp_path / "p.png"))
    assert result.exit_code == 2 and "not a dataset folder" in result.stderr
    assert run("preview", str(tmp_path), "--n", "0").exit_code == 2


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.timeout(180)
@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_preview_page_opens_in_chromium_without_errors(demo: Path, tmp_path: Path) -> None:
    report, grid = tmp_path / "report", tmp_path / "grid.png"
    assert run("preview", str(demo), "--n", "3", "--html", str(report), "--out", str(grid)).exit_code == 0
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    flags += [
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        "--window-size=1400,2400",
        "--enable-logging=stderr",
    ]
    flags += [f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}"]
    done = subprocess.run(
        [str(chromium()), *flags, (report / "index.html").as_uri()], capture_output=True, text=True, timeout=150
    )
    assert shot.is_file(), done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    page, tile = png(shot), tile_at(png(grid), 0, 0, 160)
    patch = tile[60:72, 60:72]  # a piece of the first rgb tile must be on the screen, pixel for pixel
    ys, xs = np.nonzero((page[:, :, 0] == patch[0, 0, 0]) & (page[:, :, 1] == patch[0, 0, 1]))
    assert any(
        (page[y : y + 12, x : x + 12].shape == patch.shape and np.array_equal(page[y : y + 12, x : x + 12], patch))
        for y, x in zip(ys.tolist(), xs.tolist(), strict=True)
    )


# ------------------------------------------------------------------------------------------------ reconstruct


def test_reconstruct_with_depth_and_semseg_hidden(demo: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "recon.png"
    sample = f"{demo}:train-000000/00000000000"
    args = ["reconstruct", str(checkpoint), "--sample", sample, "--out", str(out)]
    result = run(*args, "--keep", "rgb=8", "--keep", "depth=0", "--keep", "semseg=0")
    assert result.exit_code == 0, result.output
    image = png(out)
    assert image.shape[:2] == (TITLE_H + 3 * 160, LABEL_W + 4 * 160)  # rows rgb, depth, semseg; 4 columns
    for row in (1, 2):  # depth and semseg: the masked input is masked everywhere
        assert (tile_at(image, row, 0, 160) == np.array(MASKED, np.uint8)).all()
    rgb_input = tile_at(image, 0, 0, 160)
    assert (rgb_input == np.array(MASKED, np.uint8)).all(axis=-1).mean() == pytest.approx(
        0.5, abs=0.06
    )  # 8 of 16 tokens; resampled edges blend
    assert "rgb=8, depth=0, semseg=0" in result.output


def test_reconstruct_scores_cross_modal_prediction_beside_the_baselines(
    demo: Path, checkpoint: Path, tmp_path: Path
) -> None:
    """--score DATASET: the decoders' depth and semseg from rgb alone, over the whole split, beside the per-image
    mean depth and the majority class; no figure without an input; bad input is one line, exit 2."""
    result = run("reconstruct", str(checkpoint), "--score", str(demo), "--out", str(tmp_path / "none.png"))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "cross-modal prediction from rgb alone, 12 samples:"
    depth = re.search(r"delta1 ([0-9.]+) % \(per-image mean depth ([0-9.]+) %\)", lines[1])
    semseg = re.search(r"semseg: mIoU ([0-9.]+) % \(majority class ([0-9.]+) %\)", lines[2])
    assert depth and semseg and all(0 <= float(v) <= 100 for v in (*depth.groups(), *semseg.groups()))
    assert not (tmp_path / "none.png").exists()
    missing = run("reconstruct", str(checkpoint), "--score", str(tmp_path / "nothing"))
    assert missing.exit_code == 2 and missing.output.startswith("error: ") and missing.output.count("\n") == 1
    for device in ("cuda:x", "tpu"):  # a device string torch refuses: one line, before any compute
        bad = run("reconstruct", str(checkpoint), "--score", str(demo), "--device", device)
        assert bad.exit_code == 2 and bad.output.startswith("error: --device") and bad.output.count("\n") == 1


def test_reconstruct_scores_the_masked_patches_with_visible_tokens(
    demo: Path, checkpoint: Path, tmp_path: Path
) -> None:
    """--score with --keep: depth and classes are inputs too, and only the masked patches are scored; the
    positions follow --seed; a budget the model cannot take is one line, exit 2."""
    args = ["reconstruct", str(checkpoint), "--score", str(demo), "--keep", "rgb=4", "--keep", "depth=4"]
    first = run(*args, "--keep", "semseg=4")
    assert first.exit_code == 0, first.output
    lines = first.output.splitlines()
    assert lines[0] == "prediction of the masked patches with rgb=4, depth=4, semseg=4 tokens visible, 12 samples:"
    assert re.search(r"delta1 [0-9.]+ % \(per-image mean depth [0-9.]+ %\)", lines[1])
    assert re.search(r"semseg: mIoU [0-9.]+ % \(majority class [0-9.]+ %\)", lines[2])
    assert run(*args, "--keep", "semseg=4").output == first.output  # the same seed, the same positions
    assert run(*args, "--keep", "semseg=4", "--seed", "1").output != first.output
    every = run(*args, "--keep", "semseg=16")  # all 16 class tokens visible: nothing of semseg to predict
    assert every.exit_code == 0 and "semseg not scored: every semseg token is visible" in every.output
    for bad, says in (
        (["--keep", "semseg=17"], "--keep semseg=17: a semseg input has 16 tokens"),
        (["--keep", "normal=3"], "--keep normal: scoring reads the inputs among rgb, depth and semseg"),
        (["--keep", "rgb=x"], "--keep takes MODALITY=TOKENS"),
    ):
        refused = run("reconstruct", str(checkpoint), "--score", str(demo), *bad)
        assert refused.exit_code == 2 and refused.output.count("\n") == 1 and says in refused.output, refused.output
    none = run("reconstruct", str(checkpoint), "--score", str(demo), "--keep", "rgb=0", "--keep", "depth=0")
    assert none.exit_code == 2 and "--keep leaves no token visible" in none.output


def test_scoring_with_keep_never_feeds_class_maps_of_another_class_table(demo: Path, checkpoint: Path) -> None:
    """A model with other classes than the split: its class maps stay out of the input (no out-of-range
    embedding), depth is still scored, and asking for visible class tokens is one ConfigError."""
    import dataclasses

    from pipeline.format.stores import location
    from trainer.errors import ConfigError
    from trainer.model.multimae import MultiMAE
    from trainer.pretrain.cross_modal import cross_modal_scores
    from trainer.pretrain.reconstruct import load_model

    cfg = load_model(checkpoint).cfg
    other = MultiMAE(dataclasses.replace(cfg, num_classes=cfg.num_classes + 3)).eval()
    scores = cross_modal_scores(checkpoint, location(str(demo)), model=other, keep={"rgb": 4, "depth": 4})
    assert scores.depth is not None and scores.semseg is None
    assert any("semseg not scored" in note for note in scores.notes)
    with pytest.raises(ConfigError, match=r"--keep semseg=4: .* classes and the model \d+; its class maps cannot"):
        cross_modal_scores(checkpoint, location(str(demo)), model=other, keep={"rgb": 4, "semseg": 4})


def test_keep_masks_hold_the_budget_per_sample_at_drawn_positions() -> None:
    import torch

    from trainer.config import ModelConfig
    from trainer.model.multimae import MultiMAE
    from trainer.pretrain.cross_modal import keep_masks, masked_pixels

    cfg = ModelConfig(
        image_size=64,
        patch_size=16,
        dim=32,
        depth=1,
        heads=2,
        decoder_dim=16,
        decoder_heads=2,
        num_visible=12,
        num_classes=5,
        class_emb_dim=4,
    )
    model = MultiMAE(cfg)
    masks = keep_masks(model, 32, {"rgb": 3, "semseg": 5}, torch.Generator().manual_seed(0))
    assert {n: int((m == 0).sum(1).unique().item()) for n, m in masks.items()} == {"rgb": 3, "depth": 0, "semseg": 5}
    assert len({tuple(row.tolist()) for row in masks["rgb"]}) > 20  # positions drawn per sample
    pixels = masked_pixels(masks["semseg"], 64)
    assert pixels.shape == (32, 64, 64) and float(pixels.float().mean()) == 11 / 16
    first, last = masks["semseg"][:, 0].bool(), masks["semseg"][:, -1].bool()  # tokens in row-major order
    assert torch.equal(pixels[:, :16, :16].all(dim=(1, 2)), first) and torch.equal(
        pixels[:, 48:, 48:].any(dim=(1, 2)), last
    )


def test_reconstruct_an_image_labelled_on_the_fly(demo: Path, checkpoint: Path, tmp_path: Path) -> None:
    photo = sorted(EXAMPLES.glob("*.jpg"))[0]
    out = tmp_path / "recon.png"
    args = ["reconstruct", str(checkpoint), "--image", str(photo), "--labels-from", str(demo), "--out", str(out)]
    result = run(*args, "--seed", "3")
    assert result.exit_code == 0, result.output
    assert png(out).shape[:2] == (TITLE_H + 3 * 160, LABEL_W + 4 * 160)
    unlabelled = run("reconstruct", str(checkpoint), "--image", str(photo), "--out", str(tmp_path / "rgb.png"))
    assert unlabelled.exit_code == 0 and "depth=0, semseg=0" in unlabelled.output  # only rgb is known


def test_reconstruct_from_a_mask_file(demo: Path, checkpoint: Path, tmp_path: Path) -> None:
    masks = {n: np.ones(16, np.int64) for n in ("rgb", "depth", "semseg")}
    masks["depth"][:5] = 0
    np.savez(tmp_path / "m.npz", **masks)
    args = ["reconstruct", str(checkpoint), "--sample", f"{demo}:train-000000/00000000001", "--mask"]
    result = run(*args, str(tmp_path / "m.npz"), "--out", str(tmp_path / "r.png"))
    assert result.exit_code == 0 and "rgb=0, depth=5, semseg=0" in result.output


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--keep", "rgb=99"], "has 16 tokens"),
        (["--keep", "normal=3"], "not inputs of this model"),
        (["--keep", "rgb"], "MODALITY=TOKENS"),
        (["--keep", "rgb=0"], "no token visible"),
    ],
)
def test_reconstruct_refuses_bad_masks(demo: Path, checkpoint: Path, tmp_path: Path, extra, fragment) -> None:
    args = ["reconstruct", str(checkpoint), "--sample", f"{demo}:train-000000/00000000000"]
    result = run(*args, "--out", str(tmp_path / "r.png"), *extra)
    assert result.exit_code == 2 and fragment in result.stderr, result.output


def test_reconstruct_refuses_bad_inputs(demo: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "r.png")]
    assert "exactly one of" in run("reconstruct", str(checkpoint), *out).stderr
    assert "no sample" in run("reconstruct", str(checkpoint), "--sample", f"{demo}:train-000000/nope", *out).stderr
    assert "cannot read checkpoint" in run("reconstruct", str(tmp_path / "x.pt"), "--image", "y.jpg", *out).stderr


def test_reconstruct_refuses_a_model_with_no_modality_to_draw(demo: Path, tmp_path: Path) -> None:
    """MAE on its own target (norm_rgb alone, as scenes-mae.toml) has nothing a figure can draw: one line, exit 2,
    no file, instead of an empty figure."""
    run_dir, out = tmp_path / "mae", tmp_path / "r.png"
    sets = ["--set", 'model.inputs=["rgb"]', "--set", 'model.outputs=["norm_rgb"]', "--set", "model.num_visible=4"]
    trained = run("pretrain", "--data", str(demo), "--out", str(run_dir), "--config", str(SMOKE_CONFIG), *sets,
                  "--steps", "1", "--device", "cpu", "--no-tensorboard")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    sample = f"{demo}:train-000000/00000000000"
    result = run("reconstruct", str(run_dir / "checkpoint-last.pt"), "--sample", sample, "--out", str(out))
    assert result.exit_code == 2 and "predicts norm_rgb only: no modality to draw" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_an_official_layout_checkpoint_loads(demo: Path, tmp_path: Path) -> None:
    """A checkpoint with only the official ViT-B state dict (no config of ours) is read as ViT-B."""
    import torch

    from trainer.config import ModelConfig
    from trainer.model.multimae import MultiMAE

    path = tmp_path / "official.pth"
    torch.save({"model": MultiMAE(ModelConfig()).state_dict()}, path)
    args = ["reconstruct", str(path), "--sample", f"{demo}:train-000000/00000000000", "--out", str(tmp_path / "r.png")]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert png(tmp_path / "r.png").shape[:2] == (TITLE_H + 3 * 160, LABEL_W + 4 * 160)
    assert "98" in result.output or "visible tokens" in result.output


# ------------------------------------------------------------------------------------------------ pretraining


def test_a_run_a_person_can_follow(demo: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    args = ["pretrain", "--data", str(demo), "--out", str(run_dir), "--config", str(SMOKE_CONFIG), "--device", "cpu"]
    result = run(*args, "--steps", "12", "--wandb")
    assert result.exit_code == 0, result.output
    text = result.output
    for fragment in ("M parameters", "inputs rgb, depth, semseg", "12 samples in 3 shards", "global batch 4"):
        assert fragment in text, text
    assert "3 warmup steps (scaled to 25.0% of the 12 steps" in text and "peak lr" in text
    assert "pretrained 12 steps in" in text and "loss semseg: last" in text and "checkpoint-last.pt" in text
    assert "resolved config: {" not in text  # the resolved config goes to config.json only
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == ["step-0000010.png", "step-0000012.png"]
    assert png(run_dir / "figures" / "step-0000010.png").shape[1] == LABEL_W + 4 * 160
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run_dir / "wandb").glob("offline-run-*"))


def test_lr_reaches_its_peak_within_a_steps_run_and_follows_warmup_cosine(demo: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["pretrain", "--data", str(demo), "--out", str(run_dir), "--config", str(SMOKE_CONFIG), "--device", "cpu"]
    assert run(*args, "--steps", "20", "--no-tensorboard").exit_code == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records]
    peak = 0.1 * 4 / 256  # base_lr x global batch / 256
    warmup = 5  # 0.5 of 2 epochs in the recipe: a quarter of the 20 steps
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) == warmup
    assert lrs == pytest.approx([lr_at(i, peak=peak, warmup_steps=warmup, total_steps=20) for i in range(20)])
    assert lrs[1] > lrs[0] and lrs[-1] < lrs[warmup + 1]  # up, then down


def test_the_figure_step_leaves_training_as_it_was(demo: Path, tmp_path: Path) -> None:
    """Figures use their own random stream: a run with them trains exactly as one without."""
    losses = []
    for every in ("0", "2"):
        cfg = tmp_path / f"every{every}.toml"
        cfg.write_text(SMOKE_CONFIG.read_text().replace("figure_every = 10", f"figure_every = {every}"))
        run_dir = tmp_path / f"run{every}"
        args = ["pretrain", "--data", str(demo), "--out", str(run_dir), "--config", str(cfg), "--device", "cpu"]
        assert run(*args, "--steps", "6", "--no-tensorboard").exit_code == 0
        losses.append([json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()])
    assert losses[0] == losses[1]

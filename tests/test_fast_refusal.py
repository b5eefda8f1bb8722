"""Bad input to any command is one line and exit 2 before a heavy library is imported (issue 26, item 5).

Each case runs the command in a fresh interpreter and asks it, as it exits, which of torch, transformers,
ray and timm it imported: none may be. That is what keeps a refusal under two seconds (the command-line
layer alone loads in a few tenths of a second; torch alone takes over a second). The wall time of each
refusal is also held under a bound loose enough for a loaded machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from pipeline.synth.rectangles import write_dataset
from tests.test_checkpoints import FINETUNE_BEST, PRETRAIN_RUN, TIMM
from trainer.preflight import cuda_driver_present

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "ray", "timm")
RUNNER = f"""
import sys
from pipeline.cli.app import app
try:
    app(sys.argv[1:], prog_name="mmforge")
finally:
    print("heavy:" + ",".join(m for m in {HEAVY!r} if m in sys.modules))
"""
LOOSE_SECONDS = 6.0  # a refusal takes ~0.4 s on an idle 2-core machine; this bound only catches a heavy import


def refuse(*args: str) -> tuple[str, float]:
    """Run `mmforge ARGS`; assert exit 2, one `error:` line (a list of problems: its heading, then one
    `  - ` line each), no heavy import; the first line and the wall time."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    seconds = time.perf_counter() - start
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (args, done.stdout, done.stderr)
    assert lines and lines[0].startswith("error: "), done.stderr
    assert len(lines) == 1 or all(line.startswith("  - ") for line in lines[1:]), done.stderr
    heavy = done.stdout.strip().splitlines()[-1]
    assert heavy == "heavy:", f"{args}: imported {heavy} before refusing: {lines[0]}"
    assert seconds < LOOSE_SECONDS, (args, seconds)
    return lines[0], seconds


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refusal")
    data = write_dataset(root / "data", [4, 4])
    photos = root / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"\xff\xd8not really")
    (root / "notes.txt").write_text("not a checkpoint\n" * 8)
    (root / "cut.pt").write_bytes(PRETRAIN_RUN.read_bytes()[:4000])
    with zipfile.ZipFile(root / "other.zip", "w") as z:
        z.writestr("readme.txt", "a zip, not torch.save's")
    return {"data": data, "photos": photos, "root": root}


def run_cases(p: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, a fragment of the one line)."""
    data, root, photos = str(p["data"]), p["root"], str(p["photos"])
    out = str(root / "run")
    cases: dict[str, tuple[list[str], str]] = {}
    for kind in ("pretrain", "finetune", "probe"):
        base = [kind, "--data", data, "--out", out]
        cases |= {
            f"{kind}-data-missing": ([kind, "--data", str(root / "nope"), "--out", out], "data folder not found"),
            f"{kind}-data-not-a-dataset": ([kind, "--data", photos, "--out", out], "--data:"),
            f"{kind}-device-misspelt": ([*base, "--device", "gpu"], "expected auto, cpu, cuda"),
            f"{kind}-out-is-a-file": ([kind, "--data", data, "--out", str(root / "notes.txt")], "is a file"),
            f"{kind}-out-foreign": ([kind, "--data", data, "--out", photos], "no mmforge-run.json marker"),
            f"{kind}-out-inside-data": ([kind, "--data", data, "--out", f"{data}/run"], "overlap"),
            f"{kind}-out-is-data": ([kind, "--data", data, "--out", data], "overlap"),
        }
    cases |= {
        "pretrain-steps-zero": (["pretrain", "--data", data, "--out", out, "--steps", "0"], "--steps 0"),
        "finetune-init-missing": (["finetune", "--data", data, "--out", out, "--init", str(root / "x.pt")], "x.pt"),
        "finetune-init-text": (
            ["finetune", "--data", data, "--out", out, "--init", str(root / "notes.txt")],
            "neither a PyTorch file",
        ),
        "finetune-init-truncated": (
            ["finetune", "--data", data, "--out", out, "--init", str(root / "cut.pt")],
            "truncated or corrupt",
        ),
        "finetune-init-other-zip": (
            ["finetune", "--data", data, "--out", out, "--init", str(root / "other.zip")],
            "without torch.save's data.pkl",
        ),
        "probe-val-missing": (["probe", "--data", data, "--out", out, "--val", str(root / "nope")], "--val"),
        "evaluate-pretraining-checkpoint": (
            ["evaluate", str(PRETRAIN_RUN), "--data", data],
            "is a pretraining checkpoint; evaluate needs a fine-tuning checkpoint",
        ),
        "evaluate-timm-export": (["evaluate", str(TIMM), "--data", data], "is a timm export"),
        "evaluate-data-missing": (["evaluate", str(FINETUNE_BEST), "--data", str(root / "nope")], "not found"),
        "evaluate-json-folder-missing": (
            ["evaluate", str(FINETUNE_BEST), "--data", data, "--json", str(root / "no" / "m.json")],
            "does not exist",
        ),
        "evaluate-json-is-a-folder": (
            ["evaluate", str(FINETUNE_BEST), "--data", data, "--json", str(root)],
            "is a folder",
        ),
        "evaluate-device": (["evaluate", str(FINETUNE_BEST), "--data", data, "--device", "cuda:x"], "cuda:x"),
        "predict-pretraining-checkpoint": (
            ["predict", str(PRETRAIN_RUN), photos, str(root / "pred")],
            "predict needs a fine-tuning checkpoint",
        ),
        "predict-input-missing": (["predict", str(FINETUNE_BEST), str(root / "nope"), str(root / "pred")], "nope"),
        "reconstruct-fine-tuning-checkpoint": (
            ["reconstruct", str(FINETUNE_BEST), "--sample", f"{data}:train-000000/x"],
            "reconstruct needs a pretraining checkpoint",
        ),
        "reconstruct-tile": (["reconstruct", str(PRETRAIN_RUN), "--tile", "5"], "--tile"),
        "reconstruct-out-folder-missing": (
            ["reconstruct", str(PRETRAIN_RUN), "--out", str(root / "no" / "r.png")],
            "does not exist",
        ),
        "export-not-a-checkpoint": (["export", str(root / "notes.txt"), str(root / "exp")], "neither a PyTorch"),
        "export-format": (["export", str(PRETRAIN_RUN), str(root / "exp"), "--format", "onnx"], "--format"),
        "build-source-missing": (["build-dataset", str(root / "nope"), str(root / "ds")], "does not exist"),
        "convert-source-missing": (["convert-weights", str(root / "nope.pth"), str(root / "dpt")], "not found"),
        "convert-target-exists": (["convert-weights", str(root / "notes.txt"), str(root)], "exists"),
        "verify-missing": (["verify", str(root / "nope")], "does not exist"),
        "preview-missing": (["preview", str(root / "nope")], "does not exist"),
        "scenes-n": (["scenes", str(root / "sc"), "--n", "0"], "n must be at least 1"),
    }
    if not cuda_driver_present():
        cases["pretrain-cuda-without-driver"] = (
            ["pretrain", "--data", data, "--out", out, "--device", "cuda"],
            "CUDA is not available",
        )
    return cases


CASE_NAMES = sorted(run_cases({"data": Path("d"), "root": Path("r"), "photos": Path("p")}))


@pytest.mark.parametrize(
    "args",
    [
        ["pretrain", "--set", "model.patch_size=0", "--set", "optim.base_lr=-1", "--set", "model.image_size=1000000"],
        ["finetune", "--set", "task.layer_decay=5", "--set", "task.name='nope'"],
        ["probe", "--config", "probe-smoke", "--set", "data.batch_size=0"],
        ["build-dataset", "--set", "shards.size=0", "--set", "labelers.depth.size=5", "--set", "image.max_side=0"],
    ],
)
def test_bad_settings_are_listed_at_once_in_seconds(args: list[str], places: dict[str, Path]) -> None:
    """Every setting is checked, all problems at once, against the registries' built-in entries read without
    torch (`trainer.model.builtins`, `trainer.transfer.rules`): nothing built, nothing written."""
    kind, *sets = args
    if kind == "build-dataset":
        line, _ = refuse(kind, str(places["photos"]), str(places["root"] / "run"), "--recipe", "demo", *sets)
    else:
        line, _ = refuse(kind, "--data", str(places["data"]), "--out", str(places["root"] / "run"), *sets)
    assert line.startswith("error: options: ") and ("problems" in line or "must" in line), line
    assert not (places["root"] / "run").exists()


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_bad_argument_is_refused_before_any_heavy_import(name: str, places: dict[str, Path]) -> None:
    args, fragment = run_cases(places)[name]
    line, _ = refuse(*args)
    assert fragment in line, line
    assert not (places["root"] / "run").exists()  # nothing made for a refused run

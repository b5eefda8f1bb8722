"""Does the machinery learn? Transfer on a small real labelled set (scikit-learn's digits), end to end on CPU.

Builds a train split and a held-out split of the digits (disjoint images) with the demo recipe, then:
  1. fine-tunes the smoke encoder from random init on classification -> top-1 on the held-out split;
  2. pretrains the smoke MultiMAE on the train split (rgb + smoke depth + smoke semseg), then a linear probe
     on its frozen encoder -> top-1;
  3. the same linear probe on a random-init encoder (the baseline row) -> top-1;
  4. fine-tunes from the pretrained checkpoint -> top-1.
Each row runs the `mmforge` commands a user would; the numbers are whatever they print. Depth and semseg of
the demo recipe come from random-weight labelers (meaningless), so only the RGB part of pretraining carries
signal here. Chance is 10 %.

    .venv/bin/python -m benchmarks.bench_transfer            # ~10-15 min on 2 CPU cores
    .venv/bin/python -m benchmarks.bench_transfer --quick    # a few steps of each (a smoke test of the script)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import exits_2, scratch_folder
from pipeline.synth.rectangles import write_digit_images

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "benchmarks" / "configs"  # digits-*.toml: the smoke sizes, no flips, mild crops
MMFORGE = [sys.executable, "-m", "pipeline.cli.app"]


def mmforge(*args: str) -> tuple[str, float]:
    started = time.perf_counter()
    done = subprocess.run([*MMFORGE, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"mmforge {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr, time.perf_counter() - started


def top1(work: Path, run: str, val: Path) -> float:
    out = work / f"{run}-eval.json"
    mmforge("evaluate", str(work / run / "checkpoint-best.pt"), "--data", str(val), "--json", str(out))
    return float(json.loads(out.read_text())["metrics"]["top1"])


@exits_2
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/mmforge-bench-transfer"))
    p.add_argument("--train-per-class", type=int, default=120)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--pretrain-steps", type=int, default=3000)
    p.add_argument("--finetune-steps", type=int, default=1500)
    p.add_argument("--probe-steps", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="tiny splits and a few steps: checks the script runs")
    a = p.parse_args(argv)
    if a.quick:
        a.train_per_class, a.val_per_class, a.pretrain_steps, a.finetune_steps, a.probe_steps = 4, 2, 3, 3, 3
    work = scratch_folder(a.work)
    rows: list[dict[str, object]] = []

    def record(name: str, accuracy: float, seconds: float, steps: int) -> None:
        row = {"bench": "transfer-digits", "row": name, "top1": round(accuracy, 2), "steps": steps}
        rows.append(row | {"seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)

    write_digit_images(work / "train-src", per_class=a.train_per_class)
    write_digit_images(work / "val-src", per_class=a.val_per_class, offset=a.train_per_class)  # disjoint images
    for split in ("train", "val"):
        src, out = work / f"{split}-src", work / split
        recipe = ["--recipe", "manifests/demo.toml", "--split", split, "--shard-size", "200"]
        mmforge("build-dataset", str(src), str(out), *recipe, "--executor", "local", "--quiet")
    train, val = work / "train", work / "val"
    common = ["--data", str(train), "--val", str(val), "--device", "cpu", "--no-tensorboard"]

    ft = CONFIGS / "digits-finetune.toml"
    ft_args = ["--config", str(ft), "--steps", str(a.finetune_steps)]
    _, s = mmforge("finetune", *common, *ft_args, "--out", str(work / "ft-random"))
    record("fine-tune, random init", top1(work, "ft-random", val), s, a.finetune_steps)

    pre = ["--data", str(train), "--config", str(CONFIGS / "digits-pretrain.toml"), "--out", str(work / "pretrain")]
    _, s = mmforge("pretrain", *pre, "--device", "cpu", "--steps", str(a.pretrain_steps), "--no-tensorboard")
    row = {"bench": "transfer-digits", "row": "pretrain (smoke MultiMAE)", "steps": a.pretrain_steps}
    rows.append(row | {"seconds": round(s, 1)})
    print(json.dumps(rows[-1]), flush=True)
    init = str(work / "pretrain" / "checkpoint-last.pt")

    probe = CONFIGS / "digits-probe.toml"
    for name, run, extra in (
        ("linear probe, pretrained encoder", "probe-pretrained", ["--init", init]),
        ("linear probe, random-init encoder", "probe-random", []),
    ):
        probe_args = ["--config", str(probe), "--steps", str(a.probe_steps), *extra]
        _, s = mmforge("probe", *common, *probe_args, "--out", str(work / run))
        record(name, top1(work, run, val), s, a.probe_steps)

    _, s = mmforge("finetune", *common, *ft_args, "--init", init, "--out", str(work / "ft-pretrained"))
    record("fine-tune, pretrained init", top1(work, "ft-pretrained", val), s, a.finetune_steps)

    n_train, n_val = 10 * a.train_per_class, 10 * a.val_per_class
    print(f"\n| digits, {n_train} train / {n_val} held-out images | steps | top-1 | seconds |")
    print("|---|---|---|---|")
    for r in rows:
        top = f"{float(r['top1']):.1f} %" if "top1" in r else "-"  # type: ignore[arg-type]
        print(f"| {r['row']} | {r['steps']} | {top} | {r['seconds']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

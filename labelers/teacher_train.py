"""Train and score a teacher labeler (`labelers.teacher`) on rendered scenes with exact labels.

    python -m labelers.teacher_train SCENES_ROOT --task depth --out labelers/data/teachers/ --steps 1600 --lr 3e-3
    python -m labelers.teacher_train SCENES_ROOT --task semseg --out labelers/data/teachers/ --steps 1600 --lr 6e-3

(the shipped teachers: SCENES_ROOT rendered with `render_scenes(root, SceneConfig(n=4000, seed=7, size=96,
split="teacher"))` and `n=400, split="teacher-val"`; each report JSON records its exact command and scenes).

Contract:
- Reads the task folders of `pipeline.synth.scenes` straight from disk (labelers never import `pipeline`):
  `SCENES_ROOT/<split>/rgb/data/*.png` (8-bit RGB) with the same names under `depth/data` (16-bit millimetres,
  0 = invalid) or `semseg/data` (8-bit class ids, 255 = void), and `SCENES_ROOT/scenes.json` when present
  (recorded in the report: generator, seed, size). Train on split `teacher`, score on `teacher-val`: never on
  the benchmark's train / val / test.
- Deterministic on the CPU: fixed seed, fixed thread count, `torch.use_deterministic_algorithms`, data order
  and flips from one seeded generator; the same settings give the same weights, bit for bit.
- Scores over the whole held-out split (sums over every valid pixel, not per-image means): depth delta1 (%),
  absrel and RMSE on pixels with depth > 0; semseg mIoU (%) over the classes present in the ground truth and
  pixel accuracy on pixels != 255. Trivial baselines from the training split beside them: its mean depth
  everywhere, its majority class everywhere. The teacher is scored with the weights as stored (fp16).
- Writes `OUT/<labeler>.safetensors` and `OUT/<labeler>.json` (the report), each to a temp name then renamed.
- The CLI refuses bad paths and settings out of range with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from labelers.standards import IGNORE_ID
from labelers.teacher import TeacherNet, depth_metres, normalise, save_teacher, sha256_of
from labelers.teacher_spec import TASKS, TeacherTask

STORE_DTYPE = torch.float16
BENCHMARK_SPLITS = ("train", "val", "test")  # the benchmark's splits: a teacher never trains or scores on them
TARGET_FOLDER = {"depth": "depth", "semseg": "semseg"}
DELTA1 = 1.25


class TeacherDataError(ValueError):
    """A scenes folder, split or setting the trainer cannot use (one line, for the CLI)."""


# ---------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One teacher training: which task, on which splits, for how long, how."""

    task: str
    split: str = "teacher"
    eval_split: str = "teacher-val"
    steps: int = 1600
    batch: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05  # share of the steps
    class_balance: float = 0.5  # semseg: cross-entropy weight of a class = frequency ** -class_balance
    seed: int = 0
    threads: int = 1

    def problems(self) -> list[str]:
        checks = [
            (self.task in TASKS, f"task must be one of {', '.join(TASKS)}, got {self.task!r}"),
            (1 <= self.steps <= 1_000_000, f"steps must be 1..1000000, got {self.steps}"),
            (1 <= self.batch <= 1024, f"batch must be 1..1024, got {self.batch}"),
            (0 < self.lr <= 1, f"lr must be in (0, 1], got {self.lr}"),
            (0 <= self.weight_decay <= 1, f"weight decay must be in [0, 1], got {self.weight_decay}"),
            (0 <= self.class_balance <= 1, f"class balance must be in [0, 1], got {self.class_balance}"),
            (0 <= self.warmup < 1, f"warmup must be in [0, 1), got {self.warmup}"),
            (0 <= self.seed < 2**63, f"seed must be 0..2^63-1, got {self.seed}"),
            (1 <= self.threads <= 256, f"threads must be 1..256, got {self.threads}"),
            (self.split != self.eval_split, f"the held-out split must differ from the training split {self.split!r}"),
        ]
        for name in (self.split, self.eval_split):
            checks.append((name not in BENCHMARK_SPLITS, f"split {name!r} is the benchmark's; use e.g. teacher"))
        return [message for ok, message in checks if not ok]


# ---------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SceneSplit:
    """A split in memory: (N, 3, H, W) uint8 images and (N, H, W) targets (depth float32 metres, 0 = invalid;
    classes int64, 255 = void)."""

    images: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, ValueError) as err:
        raise TeacherDataError(f"{path}: unreadable PNG ({err})") from err


def _target(path: Path, task: str) -> np.ndarray:
    """Depth PNGs: millimetres -> metres (0 stays 0); class PNGs: ids as they are (palette indices)."""
    a = _png(path)
    if task == "depth":
        if a.dtype != np.uint16 or a.ndim != 2:
            raise TeacherDataError(f"{path}: depth must be a 16-bit single-channel PNG, got {a.dtype} {a.shape}")
        return a.astype(np.float32) / 1000.0
    if a.dtype != np.uint8 or a.ndim != 2:
        raise TeacherDataError(f"{path}: classes must be an 8-bit single-channel PNG, got {a.dtype} {a.shape}")
    return a.astype(np.int64)


def read_split(root: Path, split: str, task: str) -> SceneSplit:
    """Every scene of `root/split` (sorted by name) with its `task` target; mismatches are TeacherDataError."""
    rgb_dir, target_dir = root / split / "rgb" / "data", root / split / TARGET_FOLDER[task] / "data"
    for folder in (rgb_dir, target_dir):
        if not folder.is_dir():
            raise TeacherDataError(f"{folder} is not a folder (render the split with `mmforge scenes`)")
    names = sorted(p.name for p in rgb_dir.glob("*.png"))
    if not names:
        raise TeacherDataError(f"{rgb_dir} holds no scenes")
    images, targets = [], []
    for name in names:
        rgb, target = _png(rgb_dir / name), _target(target_dir / name, task)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.shape[:2] != target.shape:
            raise TeacherDataError(f"{rgb_dir / name}: not 8-bit RGB of its label's size {target.shape}")
        images.append(rgb.transpose(2, 0, 1))
        targets.append(target)
    if len({im.shape for im in images}) != 1:
        raise TeacherDataError(f"{rgb_dir}: scenes of different sizes")
    return SceneSplit(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets)))


SCENES_KEYS = ("generator", "version", "seed", "size", "classes", "min_objects", "max_objects", "camera", "splits")


def scenes_settings(root: Path) -> dict[str, Any] | None:
    """What the renderer recorded about the scenes (generator, version, seed, size, splits), if it did."""
    try:
        data = json.loads((root / "scenes.json").read_text())
    except (OSError, ValueError):
        return None
    return {k: data[k] for k in SCENES_KEYS if k in data} if isinstance(data, dict) else None


def batches(n: int, batch: int, steps: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`steps` batches of indices (epochs of seeded permutations, the tail of each dropped) and flip flags."""
    per_epoch = max(n // batch, 1)
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=gen)
        for i in range(min(per_epoch, steps - done)):
            idx = order[i * batch : (i + 1) * batch]
            yield idx, torch.rand(len(idx), generator=gen) < 0.5
        done += min(per_epoch, steps - done)


def flipped(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror the samples marked in `flips` left to right (the last axis)."""
    return torch.where(flips.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


# ---------------------------------------------------------------------------------------------------- losses


def depth_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between predicted and true log depth over valid pixels (absrel's close cousin, scale-balanced)."""
    valid = target > 0
    log_true = torch.where(valid, target, torch.ones_like(target)).log()
    return (out[:, 0] - log_true).abs()[valid].mean()


def class_weights(train: SceneSplit, num_classes: int, power: float) -> torch.Tensor:
    """Cross-entropy weights frequency ** -power over the training split's labelled pixels, mean 1 (the floor
    covers ~95 % of them: unweighted, the small shapes hardly move the loss)."""
    labelled = train.targets[train.targets != IGNORE_ID].flatten()
    freq = torch.bincount(labelled, minlength=num_classes).double().clamp(min=1) / max(labelled.numel(), 1)
    w = freq**-power
    return (w / w.mean()).float()


def semseg_loss(out: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, target, weight=weights, ignore_index=IGNORE_ID)


def loss_for(
    task: TeacherTask, train: SceneSplit, cfg: TrainConfig
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task.name == "depth":
        return depth_loss
    weights = class_weights(train, task.out_channels, cfg.class_balance)
    return lambda out, target: semseg_loss(out, target, weights)


# ---------------------------------------------------------------------------------------------------- metrics


@dataclass
class DepthTally:
    """Sums over every valid pixel of a split: delta1 count, absolute relative error, squared error."""

    pixels: int = 0
    within: int = 0
    absrel: float = 0.0
    squared: float = 0.0

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        valid = target > 0
        p, t = pred[valid].double().clamp(min=1e-6), target[valid].double()
        self.pixels += int(valid.sum())
        self.within += int((torch.maximum(p / t, t / p) < DELTA1).sum())
        self.absrel += float(((p - t).abs() / t).sum())
        self.squared += float(((p - t) ** 2).sum())

    def result(self) -> dict[str, float]:
        n = max(self.pixels, 1)
        return {
            "delta1": round(100.0 * self.within / n, 2),
            "absrel": round(self.absrel / n, 4),
            "rmse_m": round(math.sqrt(self.squared / n), 4),
            "pixels": self.pixels,
        }


@dataclass
class ClassTally:
    """A confusion matrix summed over a split (rows: truth, columns: prediction); void pixels are skipped."""

    num_classes: int
    confusion: torch.Tensor = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        keep = target != IGNORE_ID
        t, p = target[keep].long(), pred[keep].long()
        k = self.num_classes
        self.confusion += torch.bincount(t * k + p, minlength=k * k).view(k, k)

    def result(self) -> dict[str, Any]:
        c = self.confusion.double()
        inter, truth, predicted = c.diag(), c.sum(1), c.sum(0)
        iou = inter / (truth + predicted - inter).clamp(min=1)
        present = truth > 0
        return {
            "miou": round(100.0 * float(iou[present].mean()), 2) if bool(present.any()) else 0.0,
            "pixel_acc": round(100.0 * float(inter.sum() / c.sum().clamp(min=1)), 2),
            "iou": [round(100.0 * float(v), 2) if bool(present[i]) else None for i, v in enumerate(iou)],
            "pixels": int(c.sum()),
        }


def tally_for(task: TeacherTask) -> DepthTally | ClassTally:
    return DepthTally() if task.name == "depth" else ClassTally(task.out_channels)


def predicted_maps(task: TeacherTask, out: torch.Tensor) -> torch.Tensor:
    """Network output -> what the labeler stores: depth in metres, or the argmax class."""
    return depth_metres(out) if task.name == "depth" else out.argmax(1)


@torch.inference_mode()
def evaluate(net: TeacherNet, task: TeacherTask, data: SceneSplit, batch: int = 64) -> dict[str, Any]:
    """The teacher's scores over all of `data` (eval mode, fp32)."""
    net.eval()
    tally = tally_for(task)
    for start in range(0, len(data), batch):
        images = normalise(data.images[start : start + batch]).contiguous(memory_format=torch.channels_last)
        tally.add(predicted_maps(task, net(images)), data.targets[start : start + batch])
    return tally.result()


def baseline(task: TeacherTask, train: SceneSplit, held_out: SceneSplit) -> dict[str, Any]:
    """The trivial predictor from the training split (mean depth / majority class) scored on `held_out`."""
    tally = tally_for(task)
    if task.name == "depth":
        valid = train.targets > 0
        constant = float(train.targets[valid].double().mean())
        tally.add(torch.full(held_out.targets.shape, constant), held_out.targets)
        return {"predictor": f"mean training depth {constant:.3f} m", **tally.result()}
    counts = torch.bincount(train.targets[train.targets != IGNORE_ID].flatten(), minlength=task.out_channels)
    majority = int(counts.argmax())
    tally.add(torch.full(held_out.targets.shape, majority), held_out.targets)
    return {"predictor": f"majority training class {majority}", **tally.result()}


# ---------------------------------------------------------------------------------------------------- training


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic kernels for the block; the previous settings restored after."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def schedule(cfg: TrainConfig) -> Any:
    """Linear warm-up over `cfg.warmup` of the steps, then cosine to zero (a factor on the base lr)."""
    warm = max(int(cfg.warmup * cfg.steps), 1)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(cfg.steps - warm, 1)))

    return factor


def init_head(net: TeacherNet, task: TeacherTask, train: SceneSplit) -> None:
    """Depth: start the head at the training split's mean log depth (so step 0 predicts the baseline)."""
    if task.name == "depth":
        valid = train.targets > 0
        assert net.head.bias is not None
        with torch.no_grad():
            net.head.bias.fill_(float(train.targets[valid].log().mean()))


def fit(net: TeacherNet, task: TeacherTask, train: SceneSplit, cfg: TrainConfig, quiet: bool) -> list[float]:
    """Train `net` in place for `cfg.steps` steps; returns the loss of every step."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_at = torch.optim.lr_scheduler.LambdaLR(opt, schedule(cfg))
    loss_fn = loss_for(task, train, cfg)
    losses: list[float] = []
    net.train()
    bar = tqdm(total=cfg.steps, desc=f"teacher {task.name}", unit="step", file=sys.stderr, disable=quiet)
    for idx, flips in batches(len(train), cfg.batch, cfg.steps, gen):
        images = normalise(flipped(train.images[idx], flips)).contiguous(memory_format=torch.channels_last)
        loss = loss_fn(net(images), flipped(train.targets[idx], flips))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_at.step()
        losses.append(loss.item())
        bar.update(1)
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / 20:.4f}")
    bar.close()
    return losses


def as_stored(net: TeacherNet) -> TeacherNet:
    """Round every float tensor to the storage dtype and back, so scores are those of the shipped file."""
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.to(STORE_DTYPE).float())
    return net


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(temp path)` then rename onto `path` (same folder, so a killed run leaves no half-written file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # shipped package data: readable by all, as the rest of the tree
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def train_teacher(
    scenes_root: Path,
    task: str,
    out: Path,
    *,
    split: str = "teacher",
    eval_split: str = "teacher-val",
    steps: int = 1600,
    batch: int = 32,
    lr: float = 3e-3,
    class_balance: float = 0.5,
    seed: int = 0,
    threads: int = 1,
    quiet: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Train the `task` teacher on `scenes_root/split`, score it on `eval_split`, write weights and report into
    `out`; returns the report. Settings out of range or unusable scenes raise TeacherDataError."""
    cfg = TrainConfig(
        task=task, split=split, eval_split=eval_split, steps=steps, batch=batch, lr=lr,
        class_balance=class_balance, seed=seed, threads=threads,
    )  # fmt: skip
    problems = cfg.problems()
    if problems:
        raise TeacherDataError("; ".join(problems))
    spec = TASKS[task]
    train, held_out = read_split(scenes_root, split, task), read_split(scenes_root, eval_split, task)
    started, cpu_started = time.monotonic(), time.process_time()
    with deterministic(threads):
        torch.manual_seed(seed)
        net = TeacherNet(spec.net_config()).to(memory_format=torch.channels_last)
        init_head(net, spec, train)
        losses = fit(net, spec, train, cfg, quiet)
        scores = evaluate(as_stored(net), spec, held_out)
    report = {
        "labeler": spec.labeler,
        "task": task,
        "scenes": scenes_settings(scenes_root),
        "split": split,
        "eval_split": eval_split,
        "train_scenes": len(train),
        "eval_scenes": len(held_out),
        "image_size": list(train.images.shape[-2:]),
        "config": dataclasses.asdict(cfg),
        "net": {**dataclasses.asdict(spec.net_config()), "parameters": sum(p.numel() for p in net.parameters())},
        "teacher": scores,
        "baseline": baseline(spec, train, held_out),
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 5),
        "train_seconds": round(time.monotonic() - started, 1),
        "train_cpu_seconds": round(time.process_time() - cpu_started, 1),
        "torch": torch.__version__,
        "command": command or "",
    }
    write_outputs(net, spec, out, report)
    return report


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


def write_outputs(net: TeacherNet, task: TeacherTask, out: Path, report: dict[str, Any]) -> None:
    """Weights, then the report (with the weights' sha256) beside them; each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    weights = out / task.file
    _atomic_write(weights, lambda tmp: save_teacher(net, task, tmp, STORE_DTYPE))
    report["weights"] = {
        "file": task.file,
        "sha256": sha256_of(weights),
        "bytes": weights.stat().st_size,
        "dtype": "float16",
    }
    text = json.dumps(report, indent=2) + "\n"
    _atomic_write(out / f"{task.labeler}.json", lambda tmp: _write_text(tmp, text))


# ---------------------------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (exit 2), without the usage block."""

    def error(self, message: str) -> Any:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m labelers.teacher_train", description="Train and score a teacher labeler on rendered scenes."
    )
    p.add_argument("scenes_root", type=Path, help="a folder written by `mmforge scenes` (holds SPLIT/rgb/data ...)")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--out", type=Path, required=True, help="folder for <labeler>.safetensors and <labeler>.json")
    defaults = TrainConfig(task="depth")
    p.add_argument("--split", default=defaults.split, help="training split (never train/val/test)")
    p.add_argument("--eval-split", default=defaults.eval_split, help="held-out split scored against ground truth")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch", type=int, default=defaults.batch)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--class-balance", type=float, default=defaults.class_balance, help="semseg: CE weight = freq ** -x")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--threads", type=int, default=defaults.threads, help="CPU threads (the weights depend on it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.scenes_root.is_dir():
        return _refuse(f"scenes root {str(args.scenes_root)!r} is not a folder")
    if args.out.exists() and not args.out.is_dir():
        return _refuse(f"--out {str(args.out)!r} exists and is not a folder")
    words = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(shlex.quote(w) for w in ["python", "-m", "labelers.teacher_train", *words])
    try:
        report = train_teacher(
            args.scenes_root, args.task, args.out, split=args.split, eval_split=args.eval_split,
            steps=args.steps, batch=args.batch, lr=args.lr, class_balance=args.class_balance, seed=args.seed,
            threads=args.threads, quiet=args.quiet, command=command,
        )  # fmt: skip
    except TeacherDataError as err:
        return _refuse(str(err))
    print(json.dumps({"teacher": report["teacher"], "baseline": report["baseline"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

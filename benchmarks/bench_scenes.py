"""Proof of learning on rendered scenes: do pseudo-labelled shards + MultiMAE pretraining make a better model?

Rendered scenes (pipeline/synth/scenes.py) have exact depth and classes, so the claim can be tested on a CPU:

1. Render four disjoint splits (seeded; kept in --work and reused by a rerun): `pretrain` (unlabelled for the
   claim), `finetune` (the few labelled scenes), `val` (labelled, for every choice made while tuning this
   benchmark) and `test` (held out: scored, never tuned on).
2. Label the SAME pretraining scenes three ways: ground truth (manifests/scenes.toml), the scenes teachers'
   pseudo-labels (manifests/scenes-teacher.toml) and random-weight smoke labelers (manifests/scenes-smoke.toml);
   build finetune, val and test with ground truth.
3. Pretrain MultiMAE (rgb + depth + semseg) on each labelling and MAE on rgb alone
   (trainer/configs/scenes-pretrain.toml, scenes-mae.toml); random init is the fifth row. The rgb-visible rows
   pretrain MultiMAE with every visible token from rgb (scenes-pretrain-rgb-visible.toml: depth and semseg
   are targets only, predicted at every patch), on each labelling.
4. Transfer with few labels: fine-tune each init to depth (delta1, AbsRel) and semseg (mIoU) on `finetune`,
   score on `test` (whole split). Two ways: fine-tuned (layer decay 0.75, the paper's recipe) and the dense
   linear probe (`task.probe`: the encoder frozen, BatchNorm + Linear per patch token, upsampled: what the
   frozen features say, with no head that could learn the task from the pixels alone, as a DPT head on a
   frozen random encoder does). Several seeds per cell (one pretraining per row).
5. Cross-modal prediction (trainer.pretrain.cross_modal): each MultiMAE's depth and semseg decoders with only
   the rgb tokens visible, scored on `test` against ground truth (depth aligned per image by least-squares
   scale and shift, as relative-depth benchmarks do) beside the per-image mean depth and the majority class.
6. The goal, checked per protocol (fine-tuned, probe) for each row on teacher labels: >= 3 points above
   random init and above MAE on delta1 and on mIoU, and by more than 2 std (the larger std of the two rows).

Every run goes through the library the commands call (trainer.train.pretrain, trainer.transfer.finetune), on
`--jobs` processes of one torch thread each (on a shared 2-core machine, one thread per process is several
times faster than two threads fighting over busy cores). Results of every run are kept in --work, so an
interrupted benchmark continues where it stopped.

    .venv/bin/python -m benchmarks.bench_scenes                      # the full benchmark (RESULTS.md: wall time)
    .venv/bin/python -m benchmarks.bench_scenes --quick --work /tmp/s # tiny splits, a few steps: ~1-2 min
    .venv/bin/python -m benchmarks.bench_scenes --eval-on val         # score on val: for choices, never test
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import heapq
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks.common import SCRATCH_MARK, Refused, exits_2

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "trainer" / "configs"
MANIFESTS = ROOT / "manifests"
RECIPES = {"gt": "scenes.toml", "teacher": "scenes-teacher.toml", "smoke": "scenes-smoke.toml"}
# rows of the table: init name -> (pretraining config, labels of its pretraining data); random: none
INITS: dict[str, tuple[str, str] | None] = {
    "random": None,
    "mae": ("scenes-mae.toml", "gt"),  # rgb only: the labels are not read
    "multimae-gt": ("scenes-pretrain.toml", "gt"),  # the ceiling
    "multimae-teacher": ("scenes-pretrain.toml", "teacher"),  # the claim
    "multimae-smoke": ("scenes-pretrain.toml", "smoke"),  # the control
    # the same three with every visible token from rgb: depth and semseg are targets only (predicted everywhere)
    "rgb-visible-gt": ("scenes-pretrain-rgb-visible.toml", "gt"),
    "rgb-visible-teacher": ("scenes-pretrain-rgb-visible.toml", "teacher"),
    "rgb-visible-smoke": ("scenes-pretrain-rgb-visible.toml", "smoke"),
}
TASKS = {"depth": "scenes-finetune-depth.toml", "semseg": "scenes-finetune-semseg.toml"}
MODES = ("finetuned", "probe")
COLUMNS = {"depth": ("delta1", "absrel"), "semseg": ("miou",)}
GOAL_POINTS = 3.0
# the claim's rows: pretrained on the teachers' labels (multimae-teacher, rgb-visible-teacher)
TEACHER_ROWS = tuple(name for name, spec in INITS.items() if spec is not None and spec[1] == "teacher")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Sizes and lengths of one benchmark run (the defaults are the full run; `quick()` the CI one)."""

    pretrain_n: int = 2000
    finetune_n: int = 300
    val_n: int = 150
    test_n: int = 300
    size: int = 96
    distance: tuple[float, float] = (1.0, 1.8)  # camera distance (m): the shapes ~23 % of the labelled pixels
    scene_seed: int = 0
    pretrain_epochs: int = 60
    finetune_epochs: int = 12
    probe_epochs: int = 20
    probe_lr: float = 1.0  # the probe's base lr (chosen on val-150: at 0.1 the depth probe does not reach metres)
    pretrain_steps: int = 0  # > 0: a fixed number of steps instead of epochs (quick)
    finetune_steps: int = 0
    pretrain_batch: int = 0  # > 0: overrides the configs' batch size (quick: the splits are tiny)
    finetune_batch: int = 0
    seeds: int = 3
    jobs: int = 2
    eval_on: str = "test"
    inits: tuple[str, ...] = tuple(INITS)
    modes: tuple[str, ...] = MODES

    @staticmethod
    def quick(**kw: Any) -> Plan:
        sizes = {"pretrain_n": 48, "finetune_n": 16, "val_n": 8, "test_n": 16, "pretrain_steps": 2}
        return Plan(**({"finetune_steps": 2, "seeds": 2, "pretrain_batch": 8, "finetune_batch": 8} | sizes | kw))

    def splits(self) -> dict[str, int]:
        """Scene split name -> scenes; the count is in the name, so a changed size is other scenes, never a
        folder that mixes two runs' scenes."""
        n = {"pretrain": self.pretrain_n, "finetune": self.finetune_n, "val": self.val_n, "test": self.test_n}
        return {f"{role}-{count}": count for role, count in n.items()}

    def split(self, role: str) -> str:
        return next(s for s in self.splits() if s.startswith(f"{role}-"))


# ------------------------------------------------------------------------------------------------ the folder


def work_folder(folder: Path, fresh: bool) -> Path:
    """--work: new or empty (then marked), or marked by an earlier run of a benchmark (then reused: its scenes,
    datasets and finished runs are kept). `fresh` empties a marked folder first. Anything else is refused."""
    from benchmarks.common import scratch_folder

    if fresh or not (folder / SCRATCH_MARK).is_file():
        return scratch_folder(folder)
    if folder.is_symlink() or not folder.is_dir():
        raise Refused(f"{folder}: not a folder")
    return folder


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------------------ data


def render(work: Path, plan: Plan) -> dict[str, Path]:
    """Every split's scenes (kept when already rendered); split name -> its rgb folder."""
    from pipeline.synth.scenes import SceneConfig, render_scenes

    lo, hi = plan.distance
    out = work / f"scenes-{plan.size}px-seed{plan.scene_seed}-d{lo:g}-{hi:g}"
    folders = {}
    for split, n in plan.splits().items():
        cfg = SceneConfig(
            n=n, seed=plan.scene_seed, size=plan.size, split=split, distance=plan.distance, workers=plan.jobs
        )
        render_scenes(out, cfg, quiet=True)
        folders[split] = out / split / "rgb"
    return folders


def build(rgb: Path, out: Path, labels: str) -> Path:
    """Shards of the scenes under `rgb` labelled by `labels` (gt, teacher, smoke); a finished build is kept."""
    from pipeline.build.builder import build_dataset
    from pipeline.build.recipe import BuildConfig, load_recipe, with_overrides
    from pipeline.format.stores import location

    if (out / "index.json").is_file() and (out / "manifest.json").is_file():
        return out
    recipe = with_overrides(load_recipe(MANIFESTS / RECIPES[labels]), split="train")
    result = build_dataset(
        BuildConfig(src=location(rgb), out=location(out), recipe=recipe, executor="local", quiet=True)
    )
    if not result.ok:
        raise SystemExit(f"building {out} failed: {result}")
    return out


def datasets(work: Path, plan: Plan, rgb: dict[str, Path]) -> dict[str, Path]:
    """'pretrain-gt', 'pretrain-teacher', 'pretrain-smoke' (the labellings the inits need), 'finetune', 'val',
    'test' (ground truth) -> dataset folders."""
    needed = sorted({spec[1] for name in plan.inits if (spec := INITS[name]) is not None})
    folder = work / "data" / rgb[plan.split("pretrain")].parents[1].name  # one per scene settings
    found = {
        f"pretrain-{labels}": build(rgb[plan.split("pretrain")], folder / f"{plan.split('pretrain')}-{labels}", labels)
        for labels in needed
    }
    for role in ("finetune", "val", "test"):
        found[role] = build(rgb[plan.split(role)], folder / f"{plan.split(role)}-gt", "gt")
    return found


# ------------------------------------------------------------------------------------------------ jobs


def _single_thread(log_file: Path) -> Any:
    """A worker process: one torch thread, its prints to `log_file` (returned, to close)."""
    import torch

    torch.set_num_threads(1)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    stream = log_file.open("a")
    sys.stdout = sys.stderr = stream
    return stream


def lengths(cfg: Any, steps: int, epochs: int, batch: int) -> Any:
    """A run config (pretraining or fine-tuning) run for `steps` (when > 0) or `epochs`, at `batch` (when > 0)."""
    train = dataclasses.replace(cfg.train, steps=steps, epochs=0 if steps else epochs)
    data = dataclasses.replace(cfg.data, batch_size=batch or cfg.data.batch_size)
    return dataclasses.replace(cfg, train=train, data=data)


def pretrain_job(config: Path, data: Path, out: Path, plan: Plan, test: Path) -> dict[str, Any]:
    """Pretrain (or finish pretraining) into `out`; then the cross-modal scores on `test` when the model has
    depth or semseg decoders. Runs in a worker process."""
    from pipeline.format.stores import location
    from trainer.config import load_config
    from trainer.engine.run import RunOptions
    from trainer.pretrain.cross_modal import cross_modal_scores
    from trainer.train import pretrain

    stream = _single_thread(out.parent / f"{out.name}.log")
    try:
        cfg = lengths(load_config(config), plan.pretrain_steps, plan.pretrain_epochs, plan.pretrain_batch)
        started = time.perf_counter()
        summary = pretrain(cfg, RunOptions(data=location(data), out=location(out), device="cpu"))
        seconds = time.perf_counter() - started
        result: dict[str, Any] = {"seconds": round(seconds, 1), "steps": summary.steps}
        result["last_losses"] = {k: round(v[-1], 4) for k, v in summary.task_losses.items() if v}
        if {"depth", "semseg"} & set(cfg.model.outputs):
            scores = cross_modal_scores(out / "checkpoint-last.pt", location(test))
            result["cross_modal"] = dataclasses.asdict(scores)
        return result
    finally:
        stream.close()


def transfer_config(task: str, mode: str, seed: int, plan: Plan) -> Any:
    """The fine-tuning config of one cell: the task's TOML, the seed, the length, fine-tuned or probed."""
    from trainer.transfer.config import load_finetune_config

    cfg = lengths(
        load_finetune_config(CONFIGS / TASKS[task]), plan.finetune_steps, plan.finetune_epochs, plan.finetune_batch
    )
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
    if mode == "probe":  # the dense linear probe on the frozen encoder: what its patch tokens say
        cfg = lengths(cfg, plan.finetune_steps, plan.probe_epochs, plan.finetune_batch)
        optim = dataclasses.replace(cfg.optim, base_lr=plan.probe_lr, weight_decay=0.0)
        cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, probe=True), optim=optim)
    return cfg


def transfer_job(
    init: Path | None, task: str, mode: str, seed: int, data: Path, score_on: Path, out: Path, plan: Plan
) -> dict[str, Any]:
    """Fine-tune one cell into `out`, then its metrics over the whole split `score_on`. Runs in a worker."""
    from pipeline.format.stores import location
    from trainer.engine.run import RunOptions
    from trainer.transfer.finetune import evaluate, finetune

    stream = _single_thread(out.parent / f"{out.name}.log")
    try:
        cfg = transfer_config(task, mode, seed, plan)
        started = time.perf_counter()
        options = RunOptions(data=location(data), out=location(out), device="cpu")
        finetune(cfg, options, init, None)
        seconds = time.perf_counter() - started
        metrics = evaluate(out / "checkpoint-last.pt", location(score_on)).metrics
        return {"seconds": round(seconds, 1), "metrics": metrics}
    finally:
        stream.close()


@dataclass(order=True)
class Job:
    priority: tuple[int, ...]
    name: str = field(compare=False)
    record: Path = field(compare=False)
    fn: Callable[..., dict[str, Any]] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)
    then: Callable[[str, dict[str, Any]], None] = field(compare=False)


@dataclass
class Pool:
    """Jobs on `jobs` worker processes, lowest priority first (a partial run has the rows that matter most);
    each finished job's result is kept as JSON beside its run, and a rerun reuses it."""

    jobs: int
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    queue: list[Job] = field(default_factory=list)
    running: dict[Future, Job] = field(default_factory=dict)

    def __post_init__(self) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        self.executor = ProcessPoolExecutor(max_workers=self.jobs, mp_context=get_context("spawn"))

    def submit(self, job: Job) -> None:
        if job.record.is_file():
            self.results[job.name] = json.loads(job.record.read_text())
            job.then(job.name, self.results[job.name])
            return
        heapq.heappush(self.queue, job)

    def drain(self) -> None:
        """Run every job, each one's `then` (which may submit more) as it finishes."""
        while self.queue or self.running:
            while self.queue and len(self.running) < self.jobs:
                job = heapq.heappop(self.queue)
                self.running[self.executor.submit(job.fn, *job.args)] = job
            done, _ = wait(list(self.running), return_when=FIRST_COMPLETED)
            for future in done:
                job = self.running.pop(future)
                result = future.result()
                job.record.write_text(json.dumps(result, indent=1))
                self.results[job.name] = result
                print(f"  done {job.name}: {_brief(result)}", flush=True)
                job.then(job.name, result)
        self.executor.shutdown()


def nothing(name: str, result: dict[str, Any]) -> None:
    """A job with nothing to do after it."""


def _brief(result: dict[str, Any]) -> str:
    shown = result.get("metrics", result.get("last_losses", {}))
    text = ", ".join(
        f"{k} {v:.3g}" for k, v in shown.items() if k in ("delta1", "absrel", "miou") or "metrics" not in result
    )
    return f"{text} ({result.get('seconds', 0):.0f} s)"


# ------------------------------------------------------------------------------------------------ the run


def run_all(work: Path, plan: Plan, data: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Every pretraining, then every transfer cell as soon as its init exists; name -> result. Order: the
    claim's pretrainings (MAE, MultiMAE on ground truth, on teacher labels), then transfers seed by seed, the
    smoke control last."""
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    pool = Pool(plan.jobs)
    for name in plan.inits:
        spec = INITS[name]
        if spec is None:
            continue
        config, source = CONFIGS / spec[0], data[f"pretrain-{spec[1]}"]
        lengths = (plan.pretrain_steps, plan.pretrain_epochs, plan.pretrain_batch)
        out = runs / f"pre-{name}-{digest(config.read_text(), str(source), lengths, str(data['test']))}"
        args = (config, source, out, plan, data["test"])

        def then(key: str, _: dict[str, Any], out: Path = out) -> None:
            submit_transfers(pool, plan, data, runs, key.split("/", 1)[1], out / "checkpoint-last.pt")

        pool.submit(Job(_rank(name), f"pretrain/{name}", out.with_suffix(".json"), pretrain_job, args, then))
    if "random" in plan.inits:
        submit_transfers(pool, plan, data, runs, "random", None)
    pool.drain()
    return pool.results


def _rank(init: str, seed: int | None = None) -> tuple[int, ...]:
    """Priority of a job: pretrainings before transfers, seed 0 of every row before seed 1; the control last."""
    control = int(init == "multimae-smoke")
    order = list(INITS).index(init)
    return (2 * control, 0, order) if seed is None else (2 * control + 1, seed, order)


def submit_transfers(
    pool: Pool, plan: Plan, data: dict[str, Path], runs: Path, init: str, checkpoint: Path | None
) -> None:
    """Every transfer cell (task x mode x seed) of one init. A cell without its record needs the init's
    checkpoint: a pretraining recorded as done whose checkpoint is gone is refused before any work starts."""
    for task in TASKS:
        for mode in plan.modes:
            for seed in range(plan.seeds):
                key = f"{init}/{task}/{mode}/s{seed}"
                cfg = transfer_config(task, mode, seed, plan)
                out = runs / f"ft-{key.replace('/', '-')}-{digest(str(checkpoint), cfg, str(data['finetune']))}"
                record = out.parent / f"{out.name}-on-{plan.eval_on}.json"
                if checkpoint is not None and not checkpoint.is_file() and not record.is_file():
                    raise Refused(
                        f"{checkpoint.parent} is recorded as pretrained but has no {checkpoint.name}, which the "
                        f"cell {key} needs: delete it and {checkpoint.parent.name}.json to pretrain it again"
                    )
                args = (checkpoint, task, mode, seed, data["finetune"], data[plan.eval_on], out, plan)
                pool.submit(Job(_rank(init, seed), key, record, transfer_job, args, nothing))


# ------------------------------------------------------------------------------------------------ the table


def mean_std(values: list[float]) -> dict[str, Any]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def table(plan: Plan, results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """init -> column ("<mode> <task> <metric>") -> mean, std and the per-seed values."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for init in plan.inits:
        row = rows.setdefault(init, {})
        for mode in plan.modes:
            for task, metrics in COLUMNS.items():
                cells = [results[f"{init}/{task}/{mode}/s{s}"]["metrics"] for s in range(plan.seeds)]
                for metric in metrics:
                    row[f"{mode} {task} {metric}"] = mean_std([float(c[metric]) for c in cells])
    return rows


def goal(rows: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The goal, each part judged on every row and protocol present.

    The claim: each row pretrained on teacher labels (multimae-teacher, rgb-visible-teacher) vs random and mae
    on delta1 and mIoU, per transfer protocol (fine-tuned, probe): >= 3 points and > 2 std (the larger std of
    the two rows). `met_by_row`: per row and protocol. The ceiling: the same pretraining on ground truth is
    not beaten by its teacher row by more than 2 std. The control: the same pretraining on smoke labels is not
    above mae by more than 2 std. `met`: some teacher row meets the claim under every protocol run, and every
    ceiling and control present holds."""
    checks: dict[str, dict[str, Any]] = {}
    by_row: dict[str, dict[str, bool]] = {}
    modes = sorted({column.split(" ", 1)[0] for row in rows.values() for column in row})
    for row in (name for name in TEACHER_ROWS if name in rows):
        by_row[row] = {}
        for mode in modes:
            mine = {}
            for other in ("random", "mae"):
                for column, gap, spread in _compare(rows, row, other, mode):
                    mine[f"{row} - {other}, {column}"] = {
                        "gap": gap,
                        "two_std": spread,
                        "met": gap >= GOAL_POINTS and gap > spread,
                    }
            checks |= mine
            by_row[row][mode] = bool(mine) and all(c["met"] for c in mine.values())
    bounds: dict[str, dict[str, Any]] = {}
    for row in TEACHER_ROWS:
        gt, smoke = _relabelled(row, "gt"), _relabelled(row, "smoke")
        for mode in modes:
            for column, gap, spread in _compare(rows, gt, row, mode):  # the ceiling: gt - teacher
                bounds[f"ceiling: {gt} - {row}, {column}"] = {"gap": gap, "two_std": spread, "holds": gap >= -spread}
            for column, gap, spread in _compare(rows, smoke, "mae", mode):  # the control: smoke - mae
                bounds[f"control: {smoke} - mae, {column}"] = {"gap": gap, "two_std": spread, "holds": gap <= spread}
    by_mode = {mode: any(row[mode] for row in by_row.values()) for mode in modes}
    claim = any(bool(row) and all(row.values()) for row in by_row.values())
    met = claim and all(b["holds"] for b in bounds.values())
    return {"checks": checks, "met_by_row": by_row, "met_by_protocol": by_mode, "bounds": bounds, "met": met}


def _relabelled(row: str, labels: str) -> str:
    """The row with `row`'s pretraining config on other labels: its ceiling ("gt") or its control ("smoke")."""
    mine = INITS[row]
    assert mine is not None, f"{row} is not pretrained"
    return next(name for name, spec in INITS.items() if spec == (mine[0], labels))


def _compare(
    rows: dict[str, dict[str, dict[str, Any]]], row: str, other: str, mode: str
) -> Iterator[tuple[str, float, float]]:
    """(column, row's mean - other's mean, 2 x the larger std) for delta1 and mIoU under one protocol, where
    both rows have the column."""
    for column in (f"{mode} depth delta1", f"{mode} semseg miou"):
        if row in rows and other in rows and column in rows[row] and column in rows[other]:
            a, b = rows[row][column], rows[other][column]
            yield column, a["mean"] - b["mean"], 2 * max(a["std"], b["std"])


def markdown(plan: Plan, rows: dict[str, dict[str, dict[str, Any]]], pretrains: dict[str, dict[str, Any]]) -> str:
    columns = [c for c in next(iter(rows.values()))]
    head = "| init | " + " | ".join(columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    for init, row in rows.items():
        cells = [_cell(row[c], c) for c in columns]
        lines.append(f"| {init} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| pretrained | cross-modal depth delta1 (per-image mean) | AbsRel (mean) | semseg mIoU (majority) |",
        "|---|---|---|---|",
    ]
    for name, result in pretrains.items():
        lines.append(_cross_line(name, result.get("cross_modal")))
    return "\n".join(lines)


def _cell(stat: dict[str, Any], column: str) -> str:
    digits = 3 if column.endswith("absrel") else 1
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _cross_line(name: str, scores: dict[str, Any] | None) -> str:
    if not scores:
        return f"| {name} | - | - | - |"
    d, db, s, sb = (scores.get(k) for k in ("depth", "depth_baseline", "semseg", "semseg_baseline"))
    depth = f"{d['delta1']:.1f} ({db['delta1']:.1f})" if d and db else "-"
    absrel = f"{d['absrel']:.3f} ({db['absrel']:.3f})" if d and db else "-"
    semseg = f"{s['miou']:.1f} ({sb['miou']:.1f})" if s and sb else "- (other classes)"
    return f"| {name} | {depth} | {absrel} | {semseg} |"


def _finite(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


# ------------------------------------------------------------------------------------------------ main


def parse_plan(argv: list[str] | None) -> tuple[argparse.Namespace, Plan]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/mmforge-bench-scenes"))
    p.add_argument("--json", type=Path, default=None, help="write the table and every result here")
    p.add_argument("--quick", action="store_true", help="tiny splits and a few steps: checks the script runs")
    p.add_argument("--fresh", action="store_true", help="empty --work first (else finished work is reused)")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    p.add_argument("--eval-on", choices=("test", "val"), default="test", help="val: for choices made while tuning")
    p.add_argument("--inits", default=",".join(INITS), help=f"rows to run, of {', '.join(INITS)}")
    p.add_argument("--modes", default=",".join(MODES), help="finetuned, probe or both")
    for name in ("pretrain-n", "finetune-n", "val-n", "test-n", "pretrain-epochs", "finetune-epochs"):
        p.add_argument(f"--{name}", type=int, default=None)
    a = p.parse_args(argv)
    inits, modes = tuple(a.inits.split(",")), tuple(a.modes.split(","))
    if bad := [i for i in inits if i not in INITS] + [m for m in modes if m not in MODES]:
        raise Refused(f"unknown --inits / --modes entries {bad}")
    given = {
        k: v
        for k, v in vars(a).items()
        if v is not None
        and k.replace("_", "-")
        in ("pretrain-n", "finetune-n", "val-n", "test-n", "pretrain-epochs", "finetune-epochs", "seeds")
    }
    if any(v < 1 for v in given.values()) or a.jobs < 1:
        raise Refused("sizes, epochs, --seeds and --jobs must be at least 1")
    common = {"jobs": a.jobs, "eval_on": a.eval_on, "inits": inits, "modes": modes} | given
    return a, (Plan.quick(**common) if a.quick else Plan(**common))


@exits_2
def main(argv: list[str] | None = None) -> int:
    a, plan = parse_plan(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = work_folder(a.work, a.fresh)
    started, stages = time.perf_counter(), {}
    print(f"bench_scenes: {plan}", flush=True)
    rgb = render(work, plan)
    stages["render_s"] = time.perf_counter() - started
    data = datasets(work, plan, rgb)
    stages["label_s"] = time.perf_counter() - started - stages["render_s"]
    results = run_all(work, plan, data)
    stages["train_s"] = time.perf_counter() - started - stages["render_s"] - stages["label_s"]
    rows = table(plan, results)
    pretrains = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith("pretrain/")}
    report: dict[str, Any] = {
        "bench": "scenes",
        "plan": dataclasses.asdict(plan),
        "eval_on": plan.eval_on,
        "rows": rows,
        "pretrain": pretrains,
        "goal": goal(rows),
        "wall_s": round(time.perf_counter() - started, 1),
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
        "runs": results,
    }
    print("\n" + markdown(plan, rows, pretrains), flush=True)
    verdict = ", ".join(f"{mode} {ok}" for mode, ok in report["goal"]["met_by_protocol"].items())
    bounds = report["goal"]["bounds"]
    for name, bound in bounds.items():
        if not bound["holds"]:
            print(f"does not hold: {name} ({bound['gap']:+.1f}, 2 std {bound['two_std']:.1f})")
    held = f"{sum(b['holds'] for b in bounds.values())} of {len(bounds)} ceiling and control checks hold"
    met, wall = report["goal"]["met"], report["wall_s"]
    print(f"\ngoal met: {met} ({verdict}; {held}); wall {wall:.0f} s; scored on {plan.eval_on}")
    if a.json is not None:
        a.json.write_text(json.dumps(report, indent=1))
    return 0 if _finite(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

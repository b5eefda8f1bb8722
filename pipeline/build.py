"""`build-dataset`: plan (or resume a plan), run the shards on a distributor, write the dataset files."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelers import check_labeler
from labelers.weights import WeightsUnavailableError
from pipeline import fs
from pipeline.config import BuildConfig, ConfigError
from pipeline.dataset_files import WIDS_INDEX, write_dataset_files
from pipeline.executors import Callbacks, init_ray, run_local, run_ray
from pipeline.plan import Plan, ShardSpec, load_plan, make_plan, save_plan, source_fingerprint
from pipeline.progress import BuildProgress
from pipeline.shard import ShardContext, shard_paths

OWN_ENTRIES = ("manifest.json", "index.json", WIDS_INDEX, "shards", "plan")  # deletion order: files first


@dataclass(frozen=True)
class BuildResult:
    out: Path
    manifest: dict[str, Any]
    seconds: float
    images_this_run: int

    @property
    def ok(self) -> bool:
        return bool(self.manifest["complete"]) and self.manifest["totals"]["failed"] == 0


def _check_paths(cfg: BuildConfig) -> None:
    if not cfg.src.is_dir():
        raise ConfigError(f"source folder {cfg.src} does not exist or is not a folder")
    if cfg.out.exists() and not cfg.out.is_dir():
        raise ConfigError(f"output {cfg.out} exists and is not a folder")
    if cfg.out.resolve() == cfg.src.resolve() or cfg.src.resolve() in cfg.out.resolve().parents:
        raise ConfigError(f"output {cfg.out} must not be inside the source folder {cfg.src}")
    entries = list(cfg.out.iterdir()) if cfg.out.is_dir() else []
    foreign = sorted(p.name for p in entries if p.name not in OWN_ENTRIES and not fs.is_temp(p))
    if foreign:
        raise ConfigError(
            f"output {cfg.out} holds files that are not part of a dataset ({', '.join(foreign[:3])}); "
            "choose a new or empty folder"
        )


def _check_weights(cfg: BuildConfig) -> None:
    """Fail before any work when real weights are missing (skipped on a remote cluster: workers load them)."""
    if cfg.address:
        return
    for spec in cfg.recipe.labelers:
        try:
            check_labeler(spec)
        except WeightsUnavailableError as err:
            raise ConfigError(f"labeler {spec.name}: {err}") from err


def _prepare(cfg: BuildConfig) -> Plan:
    """A new plan, or the frozen one of an earlier run if source and recipe are unchanged."""
    if cfg.overwrite:
        for name in OWN_ENTRIES:
            target = cfg.out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    plan_dir = cfg.out / "plan"
    if (plan_dir / "plan.json").is_file():
        plan = load_plan(plan_dir)
        if plan.recipe_fingerprint != cfg.recipe.fingerprint():
            raise ConfigError(
                f"{cfg.out} was built with another recipe (or batch size / precision); use the same, or "
                "--overwrite to start over"
            )
        if plan.source_fingerprint != source_fingerprint(cfg.src, cfg.recipe.source):
            raise ConfigError(f"source {cfg.src} changed since {cfg.out} was planned; rerun with --overwrite")
        return plan
    plan = make_plan(cfg.src, cfg.recipe.source, cfg.recipe.shards.size, cfg.recipe.fingerprint())
    if plan.num_inputs == 0:
        raise ConfigError(f"no images found under {cfg.src} (extensions: {' '.join(cfg.recipe.source.extensions)})")
    (cfg.out / "shards").mkdir(parents=True, exist_ok=True)
    save_plan(plan, plan_dir)
    return plan


def _completed(out: Path, plan: Plan) -> dict[str, dict[str, Any]]:
    """Stats of the shards a previous run finished: marker present, the tar's size matches it, and no image
    failed in labelling (that may have been the labeller's fault, so a rerun tries those shards again)."""
    done = {}
    for shard in plan.shards:
        tar, marker = shard_paths(out, shard.name)
        if marker.is_file() and tar.is_file():
            stats = fs.read_json(marker)
            retry = any(f.get("stage") == "label" for f in stats.get("failures", []))
            if stats.get("bytes") == tar.stat().st_size and not retry:
                done[shard.name] = stats
    return done


def _context(cfg: BuildConfig, plan: Plan) -> ShardContext:
    r = cfg.recipe
    return ShardContext(
        src=str(cfg.src.resolve()),
        out=str(cfg.out.resolve()),
        classes=plan.classes,
        image=r.image,
        encoding=r.encoding,
        labelers=r.labelers,
        batch_size=r.runtime.batch_size,
    )


def _run(cfg: BuildConfig, todo: list[ShardSpec], ctx: ShardContext, cb: Callbacks) -> None:
    if not todo:
        return
    if cfg.executor == "local":
        run_local(todo, ctx, cfg.recipe.runtime, cb)
    else:
        init_ray(cfg.address, cfg.quiet)
        run_ray(todo, ctx, cfg.recipe.runtime, cb)


def build_dataset(cfg: BuildConfig) -> BuildResult:
    """Build (or finish building) the dataset `cfg` describes. Raises ConfigError on bad input."""
    _check_paths(cfg)
    _check_weights(cfg)
    started = time.perf_counter()
    plan = _prepare(cfg)
    for folder in (cfg.out, cfg.out / "plan", cfg.out / "shards"):
        fs.remove_temps(folder)
    stats = _completed(cfg.out, plan)
    todo = [s for s in plan.shards if s.name not in stats]
    done_images = sum(len(s.entries) for s in plan.shards if s.name in stats)
    bar = BuildProgress(
        images=plan.num_inputs,
        shards=len(plan.shards),
        done_images=done_images,
        done_shards=len(stats),
        quiet=cfg.quiet,
    )
    failed: dict[str, str] = {}

    def done(shard: ShardSpec, s: dict[str, Any]) -> None:
        stats[shard.name] = s
        bar.shard_done(shard.name, s["written"], s["failed"])

    def lost(shard: ShardSpec, error: str) -> None:
        failed[shard.name] = error
        bar.shard_failed(shard.name, len(shard.entries))

    try:
        _run(cfg, todo, _context(cfg, plan), Callbacks(bar.images, done, lost))
    finally:
        bar.close()
    manifest = write_dataset_files(cfg.out, plan, cfg.recipe, stats, failed)
    return BuildResult(cfg.out, manifest, time.perf_counter() - started, plan.num_inputs - done_images)


def summary(result: BuildResult, max_listed: int = 20) -> str:
    t = result.manifest["totals"]
    rate = result.images_this_run / result.seconds if result.seconds > 0 else 0.0
    lines = [
        f"{result.out}: {t['written']} of {t['inputs']} images written in {t['shards_complete']}/{t['shards']} "
        f"shards, {t['failed']} failed ({result.images_this_run} processed this run in {result.seconds:.1f} s, "
        f"{rate:.1f} img/s)"
    ]
    for f in result.manifest["failures"][:max_listed]:
        lines.append(f"  failed: {f['path']}: {f['error']}: {f['message']}")
    if len(result.manifest["failures"]) > max_listed:
        lines.append(f"  ... {len(result.manifest['failures']) - max_listed} more in manifest.json")
    for s in result.manifest["failed_shards"]:
        lines.append(f"  shard {s['shard']} failed ({s['planned']} images): {s['error'].splitlines()[0]}")
    if result.manifest["meaningless_labels"]:
        lines.append("  note: labels come from random-weight smoke models and are meaningless")
    return "\n".join(lines)


def describe(cfg: BuildConfig) -> str:
    """One line: the resolved recipe in short (the full one is saved in manifest.json)."""
    r = cfg.recipe
    labs = ", ".join(f"{s.modality}={s.name}" for s in r.labelers)
    return (
        f"recipe {r.name} ({r.fingerprint()[:12]}): {labs}; shard size {r.shards.size}, "
        f"batch {r.runtime.batch_size}; {cfg.src} -> {cfg.out} [{cfg.executor}]"
    )

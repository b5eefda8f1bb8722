"""Distributors over `process_shard`: in-process (tests, debugging) and Ray (a laptop or a GPU cluster).

Both run the same per-shard function and report each shard's outcome through the same callbacks, with
bounded retries: a shard that keeps failing is reported failed and the other shards go on.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from labelers import LabelerSpec, build_labeler
from pipeline.build.plan import ShardSpec
from pipeline.build.recipe import RuntimeConfig
from pipeline.build.shard import Labels, ShardContext, Submit, local_submit, process_shard
from pipeline.format.contract import ShardStats


@dataclass
class Callbacks:
    images: Callable[[int], None]
    done: Callable[[ShardSpec, ShardStats], None]
    failed: Callable[[ShardSpec, str], None]
    stalled: Callable[[list[str], float], None] = lambda names, minutes: None  # shards without progress


class Watchdog:
    """Names the running shards that reported no progress for `minutes` (again after each further period)."""

    def __init__(self, minutes: float, report: Callable[[list[str], float], None]) -> None:
        self.seconds, self.report = minutes * 60, report
        self.last: dict[int, tuple[float, str]] = {}

    def alive(self, shard: ShardSpec) -> None:
        self.last[shard.index] = (time.monotonic(), shard.name)

    def gone(self, shard: ShardSpec) -> None:
        self.last.pop(shard.index, None)

    def check(self) -> None:
        if self.seconds <= 0:
            return
        now = time.monotonic()
        quiet = sorted(name for since, name in self.last.values() if now - since >= self.seconds)
        if quiet:
            self.report(quiet, self.seconds / 60)
            self.last = {i: ((now, n) if n in quiet else (t, n)) for i, (t, n) in self.last.items()}


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)}"


class Attempts:
    """The one retry policy of every distributor. A shard is tried `max_retries + 1` times; its last attempt
    isolates (labels image by image, so only a poison image is lost); the images a failed attempt reported
    are taken back from the progress count, so a retried or lost shard's images are counted once."""

    def __init__(self, max_retries: int, cb: Callbacks) -> None:
        self.max_retries, self.cb = max_retries, cb
        self.tries: dict[int, int] = {}
        self.counted: dict[int, int] = {}

    def is_last(self, shard: ShardSpec) -> bool:
        return self.tries.get(shard.index, 0) == self.max_retries

    def progress(self, shard: ShardSpec, n: int) -> None:
        self.counted[shard.index] = self.counted.get(shard.index, 0) + n
        self.cb.images(n)

    def succeeded(self, shard: ShardSpec, stats: ShardStats) -> None:
        self.cb.done(shard, stats)

    def failed(self, shard: ShardSpec, error: str) -> bool:
        """Record a failed attempt; True when the shard is to be tried again, False when it is reported lost."""
        self.cb.images(-self.counted.pop(shard.index, 0))
        if self.tries.get(shard.index, 0) < self.max_retries:
            self.tries[shard.index] = self.tries.get(shard.index, 0) + 1
            return True
        self.cb.failed(shard, error)
        return False


def run_local(shards: Sequence[ShardSpec], ctx: ShardContext, runtime: RuntimeConfig, cb: Callbacks) -> None:
    device = "cuda" if _cuda() else "cpu"
    labelers = [build_labeler(s, device=device, precision=runtime.precision) for s in ctx.model_labelers]
    submit, attempts = local_submit(labelers), Attempts(runtime.max_retries, cb)
    for shard in shards:
        retry = True
        while retry:
            try:
                report = lambda n, shard=shard: attempts.progress(shard, n)  # noqa: E731
                stats = process_shard(shard, ctx, submit, progress=report, isolate=attempts.is_last(shard))
            except Exception as err:
                retry = attempts.failed(shard, _error_text(err) + "\n" + traceback.format_exc(limit=3))
                continue
            attempts.succeeded(shard, stats)
            retry = False


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------- Ray


class LabelerActor:
    """Holds one labeler's weights, loaded once inside the actor."""

    def __init__(self, spec: LabelerSpec, precision: str, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.labeler = build_labeler(spec, device=device, precision=precision)

    def label(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return self.labeler(images)


class ProgressActor:
    """Images processed per shard since the driver last asked (so a retried shard's count can be undone)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def add(self, shard: int, n: int) -> None:
        self.counts[shard] = self.counts.get(shard, 0) + n

    def take(self) -> dict[int, int]:
        counts, self.counts = self.counts, {}
        return counts


def _ray_submit(actors: dict[str, list[Any]], shard_index: int) -> Submit:
    import ray

    chosen = {m: pool[shard_index % len(pool)] for m, pool in actors.items()}

    def submit(images: list[np.ndarray]) -> Callable[[], Labels]:
        ref = ray.put(images)
        refs = {m: actor.label.remote(ref) for m, actor in chosen.items()}

        return lambda: {m: ray.get(r) for m, r in refs.items()}

    return submit


def _shard_task(
    shard: ShardSpec, ctx: ShardContext, actors: dict[str, list[Any]], progress: Any, isolate: bool
) -> ShardStats:
    submit = _ray_submit(actors, shard.index)
    report = lambda n: progress.add.remote(shard.index, n)  # noqa: E731
    return process_shard(shard, ctx, submit, progress=report, isolate=isolate)


def _resources(runtime: RuntimeConfig, labelers: int) -> tuple[float, float, int]:
    """(gpus per actor, cpus per actor, actors per labeler) for the cluster Ray sees. The actors always
    leave at least one CPU to the shard tasks (else nothing could decode and Ray would wait forever)."""
    import ray

    total = ray.cluster_resources()
    gpus, cpus = float(total.get("GPU", 0)), float(total.get("CPU", 0))
    if cpus < 1:
        raise RuntimeError(f"the Ray cluster has {cpus:g} CPUs; shard tasks need at least 1")
    gpu_each = runtime.gpus_per_actor if gpus else 0.0
    replicas = runtime.actors_per_labeler or (max(1, int(gpus)) if gpus else 1)
    cpu_each = runtime.cpus_per_actor or (1.0 if gpus else min(1.0, max(0.25, cpus / 4)))
    spare = (cpus - 1) / (labelers * replicas)
    return gpu_each, max(0.0, min(cpu_each, spare)), replicas


def init_ray(address: str | None, quiet: bool) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": not quiet,
        "configure_logging": True,
        "logging_level": "WARNING",
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=len(os.sched_getaffinity(0)), **kwargs)


def run_ray(shards: Sequence[ShardSpec], ctx: ShardContext, runtime: RuntimeConfig, cb: Callbacks) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    gpu_each, cpu_each, replicas = _resources(runtime, len(ctx.model_labelers))
    threads = max(1, int(cpu_each))
    # An actor killed by one input restarts (-1: the shard retries bound the work, not the restarts); its
    # in-flight calls fail, so the shard is retried, and its last attempt labels image by image.
    actor_cls = ray.remote(LabelerActor).options(
        num_cpus=cpu_each, num_gpus=gpu_each, max_restarts=-1, max_task_retries=0
    )
    actors: dict[str, list[Any]] = {
        s.modality: [actor_cls.remote(s, runtime.precision, threads) for _ in range(replicas)]
        for s in ctx.model_labelers
    }
    # the progress counter lives on the driver's node: a lost worker node must not take it along
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    progress: Any = ray.remote(ProgressActor).options(num_cpus=0, scheduling_strategy=here).remote()
    task = ray.remote(_shard_task).options(num_cpus=1, max_retries=0)
    in_flight = runtime.shards_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    try:
        attempts = Attempts(runtime.max_retries, cb)

        def start(shard: ShardSpec) -> Any:
            return task.remote(shard, ctx, actors, progress, attempts.is_last(shard))

        watchdog = Watchdog(runtime.stall_minutes, cb.stalled)
        _drive(list(shards), start, progress, in_flight, attempts, watchdog)
    except KeyboardInterrupt:
        _stop_quietly()
        raise
    finally:
        if ray.is_initialized():
            for pool in actors.values():
                for actor in pool:
                    ray.kill(actor)
            ray.kill(progress)


def _stop_quietly() -> None:
    """Ctrl-C: leave Ray without its report of every task and actor call the stop cut short (each an
    ActorDiedError or TaskCancelledError, printed in colour as an 'unhandled error'). Finished shards are
    kept; the shards in flight leave only temp files, which the rerun discards."""
    import ray

    os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
    ray.shutdown()


def _drive(
    queue: list[ShardSpec],
    start: Callable[[ShardSpec], Any],
    progress: Any,
    in_flight: int,
    attempts: Attempts,
    watchdog: Watchdog,
) -> None:
    """Keep `in_flight` shard tasks running; failed shards go back to the queue while `attempts` allows."""
    import ray

    running: dict[Any, ShardSpec] = {}
    by_index = {s.index: s for s in queue}

    def poll() -> None:
        for index, n in ray.get(progress.take.remote()).items():
            attempts.progress(by_index[index], n)
            if any(s.index == index for s in running.values()):
                watchdog.alive(by_index[index])
        watchdog.check()

    queue = list(reversed(queue))
    while queue or running:
        while queue and len(running) < in_flight:
            shard = queue.pop()
            running[start(shard)] = shard
            watchdog.alive(shard)
        ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
        poll()
        for ref in ready:
            shard = running.pop(ref)
            watchdog.gone(shard)
            try:
                stats = ray.get(ref)
            except Exception as err:
                if attempts.failed(shard, _error_text(err)):
                    queue.append(shard)
                continue
            attempts.succeeded(shard, stats)
    poll()

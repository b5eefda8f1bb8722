"""The run folder: owned like a dataset folder, and written as a stage (`Location.stage`) like a local disk,
published to where `--out` is.

Ownership (`claimed`, before anything is written): `--out` must be new, empty, or a run folder this tool
wrote, which carries the marker `mmforge-run.json` (tool, kind of run, format); a folder of an earlier
version's run (`checkpoint-last.pt` and run files only, no marker) is taken on and said so. Anything else
(photos, a dataset: `--out` inside `--data` or around it is refused first) is refused with what it holds.
A run folder without `checkpoint-last.pt` is started afresh only when that loses nothing: one holding numbered
or best checkpoints, a timm export, or a config.json of a checkpointed step is refused (a fresh start would
prune those checkpoints and overwrite the rest); a run killed before its first checkpoint holds none of them.
One writer at a time: rank 0 holds the one-writer lock of `pipeline.format.ownership` (`.mmforge.lock`,
naming pid, host and command; one left by a killed run is taken over) for the whole run, the other ranks of
the run never take it, and every rank gets rank 0's verdict. The marker is written once the run is checked
and about to write (`claim`); a folder made for a run that was refused is removed again. (Runs into one
store prefix from two machines at once are not detected: the lock is this machine's.)

A local `--out` is its own stage: written in place, nothing to copy or upload. A run folder on an object store
(`--out s3://bucket/runs/name`) is written into a stage folder of this rank (`$MMFORGE_CACHE/stage/runs/...`).
Rank 0 publishes it after every checkpoint and at the end: each changed file is one upload (all or nothing: no
partial checkpoint is ever visible), numbered checkpoints before the other files, and `checkpoint-last.pt`
last, so the last always names a complete checkpoint whose metrics are already there; numbered checkpoints past
`keep_last` are removed from the store. Resuming, every rank first copies the last (and best) checkpoint, the
metrics, the validation log and `config.json` from the store into its own fresh stage, so all ranks read the
same checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.format import fs
from pipeline.format.contract import LOCK, MARKER, TOOL, DatasetPaths, DocumentError, parse_doc
from pipeline.format.outputs import LAST, RUN_FILES, RUN_MARKER
from pipeline.format.ownership import BuildLock
from pipeline.format.schema import ConfigError, setting
from pipeline.format.stores import Location, Stage
from trainer.engine.checkpoint_kind import Kind

if TYPE_CHECKING:  # the ownership checks run before torch is imported (`trainer.preflight`)
    from trainer.engine.distributed import DistInfo

log = logging.getLogger(__name__)
_NUMBERED = re.compile(r"checkpoint-(\d+)\.pt")
_PULLED = (LAST, "metrics.jsonl", "config.json", "val.jsonl", "checkpoint-best.pt", RUN_MARKER)  # what a resume reads
_KEPT = re.compile(r"checkpoint-(\d+|best)\.pt|encoder-timm\.safetensors")  # what a fresh start overwrites
_RUNS = {"pretrain-run": "a pretraining run", "finetune-run": "a fine-tuning run"}
_LISTED = 5


@dataclass(frozen=True, kw_only=True)
class RunMarker:
    """`mmforge-run.json`: this folder is a run written by multimae-forge, of this kind."""

    tool: str = setting(choices=(TOOL,))
    kind: str = setting(choices=tuple(_RUNS))
    format: int = setting(choices=(1,))


class RunFolder:
    """The stage of one rank and where it is published to (`published_to`: "" for a local run folder)."""

    def __init__(self, out: Location, rank: int) -> None:
        self.out = out
        self.stage: Stage = out.stage("runs", f"rank-{rank}")
        self.local = self.stage.root
        self.published_to = self.stage.published_to
        self._sent: dict[str, tuple[int, int]] = {}  # rel -> (size, mtime_ns) as last published
        self._taken_on = False  # an earlier version's run folder, taken on (said once)

    # ------------------------------------------------------------------------------------------ ownership

    def entries(self) -> list[str]:
        """What `--out` holds at its top (a store: the first part of each object's name); our lock and temp
        files are left out."""
        if self.published_to:
            return sorted({rel.split("/")[0] for rel in self.stage.listing()})
        if not self.local.is_dir():
            return []
        names = [p for p in self.local.iterdir() if not (fs.is_temp(p) and not p.is_symlink())]
        return sorted(p.name for p in names if not (p.name == LOCK and p.is_file() and not p.is_symlink()))

    def check_owned(self, kind: Kind, *, read_marker: bool = True) -> None:
        """ConfigError unless `--out` is new, empty, or a run folder of `kind` this tool wrote (its marker,
        read unless `read_marker` is False: a store's, before it is staged)."""
        entries, where = self.entries(), str(self.out)
        if not entries:
            return
        more = len(entries) - _LISTED
        listed = ", ".join(entries[:_LISTED]) + (f" and {more} more" if more > 0 else "")
        if RUN_MARKER not in entries:
            if LAST in entries and all(RUN_FILES.fullmatch(e) for e in entries):
                if not self._taken_on:
                    log.warning("%s: a run folder of an earlier version (no %s): taken on", where, RUN_MARKER)
                self._taken_on = True
                return
            what = f"a dataset ({MARKER})" if MARKER in entries else "not a run folder written by mmforge"
            raise ConfigError(
                f"--out {where} is not empty and has no {RUN_MARKER} marker, so it is {what} ({listed}); "
                "choose a new or empty folder"
            )
        if LAST not in entries:  # the run would start afresh: only over a run that has nothing to lose
            self._check_nothing_kept(entries, where, read_config=read_marker)
        if not read_marker:
            return
        try:
            marker = parse_doc(RunMarker, fs.read_file(self.local / RUN_MARKER), RUN_MARKER)
        except (OSError, DocumentError) as err:
            raise ConfigError(f"--out {where}: {err}; choose a new or empty folder") from None
        if marker.kind != kind:
            raise ConfigError(f"--out {where} holds {_RUNS[marker.kind]}; {_RUNS[kind]} needs its own folder")

    def _check_nothing_kept(self, entries: list[str], where: str, *, read_config: bool) -> None:
        """ConfigError when a run folder without checkpoint-last.pt holds what a fresh start would prune or
        overwrite: checkpoints, an export, or a config.json of a checkpointed step (its checkpoints removed).
        A run killed before its first checkpoint holds none of these, and its rerun starts it again."""
        kept = [e for e in entries if _KEPT.fullmatch(e)]
        if read_config and not kept and "config.json" in entries:
            step = _config_step(self.local / "config.json")
            kept = [f"config.json of step {step}"] if step != 0 else []
        if kept:
            listed = ", ".join(kept[:_LISTED]) + (f" and {len(kept) - _LISTED} more" if len(kept) > _LISTED else "")
            raise ConfigError(
                f"--out {where} holds a run without {LAST} ({listed}): starting afresh would overwrite it; "
                f"choose a new --out (or, to resume, restore {LAST} as a copy of its newest checkpoint)"
            )

    def claim(self, kind: Kind) -> None:
        """Mark the folder ours (rank 0, once the run is checked and about to write)."""
        if not (self.local / RUN_MARKER).is_file():
            fs.write_json_atomic(self.local / RUN_MARKER, {"tool": TOOL, "kind": kind, "format": 1})

    def pull(self) -> None:
        """A fresh stage holding the store's last checkpoint, metrics and config (those that exist)."""
        listing = self.stage.listing()
        self.stage.fetch(lambda rel: rel in _PULLED, listing)
        self._sent = {rel: _signature(self.local / rel) for rel in _PULLED if rel in listing}

    def publish(self, keep_last: int) -> None:
        """Upload what changed since the last call (numbered checkpoints, then the last one, then the rest),
        then remove numbered checkpoints past `keep_last` from the store."""
        files = sorted(p for p in self.local.rglob("*") if p.is_file() and not p.name.startswith("."))
        # numbered checkpoints, then everything else, and checkpoint-last.pt last: when it names step S, the
        # store already holds the metrics and files of step S
        files.sort(key=lambda p: (0 if _NUMBERED.fullmatch(p.name) else 2 if p.name == LAST else 1, str(p)))
        for path in files:
            rel = path.relative_to(self.local).as_posix()
            signature = _signature(path)
            if self._sent.get(rel) != signature:
                self.stage.publish(path)
                self._sent[rel] = signature
        numbered = sorted(
            (int(m[1]), rel) for rel in self.stage.listing() if "/" not in rel and (m := _NUMBERED.fullmatch(rel))
        )
        self.stage.remove([rel for _, rel in numbered[: max(0, len(numbered) - keep_last)]])


def _config_step(path: Path) -> int | str:
    """The checkpoint step config.json records (0: none yet, the run was killed before its first checkpoint);
    "unknown" for a document this tool did not write (never taken as nothing to lose)."""
    try:
        step = json.loads(fs.read_file(path)).get("step")
    except (OSError, ValueError, AttributeError, RecursionError):
        return "unknown"
    return 0 if step is None else step if isinstance(step, int) and not isinstance(step, bool) else "unknown"


def _signature(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def claimed(out: Location, data: Location, kind: Kind, dist: DistInfo) -> Iterator[RunFolder]:
    """`--out` checked (`RunFolder.check_owned`), made, locked by rank 0 until the block ends, and staged on
    every rank (a store's last checkpoint and documents pulled); every rank raises rank 0's refusal."""
    folder, stack = RunFolder(out, dist.rank), contextlib.ExitStack()
    with stack:
        _agree(lambda: _take(folder, data, kind, stack) if dist.is_main else None, dist)
        _agree(lambda: _pull(folder, kind, dist.is_main), dist)
        yield folder


def check_apart(out: Location, data: Location) -> None:
    """A run never writes into its dataset: `--out` inside `--data`, or around it, is refused."""
    if out.inside(data) or data.inside(out):
        raise ConfigError(f"--out {out} and --data {data} overlap: a run never writes into its dataset")


def _take(folder: RunFolder, data: Location, kind: Kind, stack: contextlib.ExitStack) -> None:
    check_apart(folder.out, data)
    folder.check_owned(kind, read_marker=not folder.published_to)
    created = not folder.local.exists()
    try:
        folder.local.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the run folder {folder.out}: {err.strerror or err}") from None
    if created:
        stack.callback(_remove_if_empty, folder.local)  # a run refused before it wrote: as if never started
    stack.enter_context(BuildLock(DatasetPaths(folder.stage.lock_root), shlex.join(sys.argv)))


def _pull(folder: RunFolder, kind: Kind, main: bool) -> None:
    try:
        folder.pull()
    except OSError as err:
        raise ConfigError(f"cannot read the run folder {folder.out}: {err}") from None
    if main:
        folder.check_owned(kind)  # again, now that no other run can change it (a store's marker: staged now)


def _agree(work: Callable[[], None], dist: DistInfo) -> None:
    """Run `work` on this rank; every rank raises (its own error, or the first rank's refusal) or none does."""
    from trainer.engine.distributed import gather_objects

    error: Exception | None = None
    try:
        work()
    except Exception as err:  # anything: a rank that raised alone would leave the others waiting for it
        error = err
    messages = [m for m in gather_objects(str(error) if error else None, dist.world) if m]
    if error is not None:
        raise error
    if messages:
        raise ConfigError(messages[0])


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        if not any(folder.iterdir()):
            folder.rmdir()

"""Where a command's output file may go: never over a file the command reads, never into a dataset folder (only
`build-dataset` writes there), never over a run's own files (checkpoints, config.json, metrics.jsonl, ...).

Each command that writes a file or folder named by the user (`preview --out/--html`, `verify --json`,
`reconstruct --out`, `evaluate --json`, `export OUT`, `predict OUT`) calls `check_output` before it reads or
writes anything; the refusal is one ConfigError line (exit code 2). Paths are compared resolved (links
followed) and by inode, so `./x/../manifest.json`, a link to it or a hard link to a checkpoint are caught too.
An output in a store is not checked here (nothing of a store is written in place).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from pipeline.format.contract import LOCK, MARKER
from pipeline.format.locations import LocalPath, Location
from pipeline.format.schema import ConfigError

RUN_MARKER = "mmforge-run.json"  # a run folder (`trainer.engine.run_folder`)
LAST = "checkpoint-last.pt"  # a run's last checkpoint (`trainer.engine.checkpoint` writes it)
RUN_FILES = re.compile(  # what a run writes at the top of its folder (an earlier version's run: without marker)
    r"checkpoint-(\d+|last|best)\.pt|config\.json|metrics\.jsonl|val\.jsonl|encoder-timm\.safetensors"
    r"|figures|tensorboard|wandb"
)


def check_output(out: Location | Path | None, flag: str, reads: Iterable[Location | Path | None] = ()) -> None:
    """ConfigError when the output `out` (named by the option `flag`) is one of `reads` (files or folders the
    command reads), lies inside a dataset folder, or is one of a run folder's own files."""
    target = _local(out)
    if target is None:
        return
    for read in reads:
        source = _local(read)
        if source is not None and _same(target, source):
            raise ConfigError(f"{flag} {out} is {read}, which this command reads: write the output elsewhere")
    for folder in target.parents:
        if (folder / MARKER).is_file():
            raise ConfigError(
                f"{flag} {out} is inside the dataset {folder} (only build-dataset writes there): write it elsewhere"
            )
        if (folder / RUN_MARKER).is_file() or (folder / LAST).is_file():
            top = target.relative_to(folder).parts[0]
            if top in (RUN_MARKER, LOCK) or RUN_FILES.fullmatch(top):
                raise ConfigError(f"{flag} {out} is {top} of the run folder {folder}: write the output elsewhere")


def _local(where: Location | Path | None) -> Path | None:
    if where is None or (isinstance(where, Location) and not isinstance(where, LocalPath)):
        return None
    return Path(os.path.abspath(where.path if isinstance(where, LocalPath) else where)).resolve()


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False
